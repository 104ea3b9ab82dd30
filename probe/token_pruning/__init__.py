"""Visual token pruning at inference: methods that drop visual tokens inside the decoder, one file each
(see :mod:`probe.token_pruning.base` for the protocol, :mod:`probe.token_pruning.runtime` for how they
attach to a loaded model, and :data:`probe.core.registry.TOKEN_PRUNERS` for the names)."""
