"""grok: an inference engine for Grok-1-style Mixture-of-Experts models on JAX and Haiku.

The public names are importable from the package (`from grok import InferenceRunner`); each is
imported on first use, so `import grok` (the CLI, `--help`, `__version__`) does not start JAX.

- The one-call API: `LLM(checkpoint).generate(prompts, SamplingParams(...))` (grok.llm).
- Configs: `LanguageModelConfig`, `TransformerConfig`, `GROK_1`, `load_config` (the
  architecture, bound to a checkpoint) and `RuntimeConfig` (how it runs: mesh, slots,
  buckets, MoE implementation, activation dtype).
- The reference's protocol: `ModelRunner`, `InferenceRunner` (`.run()` is the request
  generator), `sample_from_model`, with `Request` (a bad field: `RequestError`), `Completion`,
  `TokenEvent`.
- The engine API (grok.engine.api) for host loops of one's own: `Engine`, `Prefix`,
  `SlotArm`, `SampleParams`, `PrefillResult`, `StepHandle`, `TokenOutput`, and `JaxEngine`
  (`InferenceRunner.engine`).
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_EXPORTS = {
    "grok.llm": ("LLM", "SamplingParams"),
    "grok.config": ("GROK_1", "LanguageModelConfig", "TransformerConfig", "load_config"),
    "grok.runtime_config": ("RuntimeConfig",),
    "grok.engine.runner": ("ModelRunner",),
    "grok.serving.runner": ("InferenceRunner", "sample_from_model"),
    "grok.engine.api": ("Engine", "Prefix", "SlotArm", "SampleParams", "PrefillResult",
                        "StepHandle", "TokenOutput"),
    "grok.engine.engine": ("JaxEngine",),
    "grok.serving.requests": ("Request", "RequestError"),
    "grok.serving.results": ("Completion", "TokenEvent"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["__version__", *_MODULE_OF]


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'grok' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value    # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))
