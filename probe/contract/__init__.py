"""The family contract: ``probe check`` on one model and the coverage table over transformers' architectures."""
