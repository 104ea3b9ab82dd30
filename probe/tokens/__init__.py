"""Token selectors, one file each (see :mod:`probe.tokens.base` for the protocols and
:data:`probe.registry.TOKEN_SELECTORS` for the names)."""
