"""Evaluation of dense, pruned and probe models."""
