"""Scorers, one file each (see :mod:`probe.pruning.scorers.base` for the protocol and
:data:`probe.core.registry.SCORERS` for the names)."""
