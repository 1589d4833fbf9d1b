"""The Grok-1 forward pass: attention, Mixture-of-Experts, the scanned decoder stack."""

from grok.model.transformer import Memory, abstract_params, build_forward, init_memory

__all__ = ["Memory", "abstract_params", "build_forward", "init_memory"]
