"""Allocations, one file each (see :mod:`probe.pruning.allocation.base` for the protocol and
:data:`probe.core.registry.ALLOCATIONS` for the names)."""
