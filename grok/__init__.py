"""grok: an inference engine for Grok-1-style Mixture-of-Experts models on JAX and Haiku.

`grok.LLM` and `grok.SamplingParams` (grok/llm.py) are the one-call API; importing `grok`
itself stays light (they load JAX on first use).
"""

__version__ = "0.2.0"
__all__ = ["LLM", "SamplingParams", "__version__"]


def __getattr__(name: str):
    if name in ("LLM", "SamplingParams"):
        from grok import llm

        return getattr(llm, name)
    raise AttributeError(f"module 'grok' has no attribute {name!r}")
