"""The sequential pruning engine, its four axes (token selectors, scorers, allocations, sparsity
patterns) and the MoT probe."""
