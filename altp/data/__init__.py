"""Datasets: the GranD-f val/test ground truth and the synthetic scene generator that mimics it."""
