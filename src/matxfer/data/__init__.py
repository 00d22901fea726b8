"""Datasets, crystal records, graphs and splits."""
