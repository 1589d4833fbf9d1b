"""grok: an inference engine for Grok-1-style Mixture-of-Experts models on JAX and Haiku."""

__version__ = "0.2.0"
