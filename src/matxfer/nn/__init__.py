"""Building blocks shared by the backbones and heads (no model-specific logic)."""
