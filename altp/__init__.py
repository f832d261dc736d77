"""ALTP harness: pruning interface and engine, the ALTP method, models, data and the runner."""
