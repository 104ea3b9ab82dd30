"""From calibration samples to captured decoder-block inputs, replayed one block at a time."""
