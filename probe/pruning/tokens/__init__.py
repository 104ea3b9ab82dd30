"""Token selectors, one file each (see :mod:`probe.pruning.tokens.base` for the protocols and
:data:`probe.core.registry.TOKEN_SELECTORS` for the names)."""
