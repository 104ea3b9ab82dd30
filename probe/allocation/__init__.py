"""Allocations, one file each (see :mod:`probe.allocation.base` for the protocol and
:data:`probe.registry.ALLOCATIONS` for the names)."""
