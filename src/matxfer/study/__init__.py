"""Studies: recipes x training sizes x seeds against scratch, with reports."""
