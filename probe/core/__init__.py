"""What every stage shares: atomic writes and manifests, run records, progress bars and Ctrl-C handling."""
