"""Experiment grids: cells, plans, resumable runs, cluster executors and per-task checkpoints."""
