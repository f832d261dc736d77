"""Baseline visual-token pruners, one module per method."""
