"""Scorers, one file each (see :mod:`probe.scorers.base` for the protocol and
:data:`probe.registry.SCORERS` for the names)."""
