"""Runtime choices: how a model is run, as opposed to what the model is (grok.config).

`grok.config.LanguageModelConfig` is bound to a checkpoint (shapes, Grok-1's field names,
the GROK_1 preset); `RuntimeConfig` holds everything one may change without touching the
weights: the MoE implementation, the activation dtype, the device mesh, the number of slots,
the prefill buckets and the scheduler's prefill budget. Both are frozen; a multi-process job
checks that every process runs with equal ones (grok.parallel.multihost.check_consistent).

`RUNTIME_FIELDS_IN_CONFIG` names the runtime choices an old config.json may still carry
(`fprop_dtype`, `moe_impl`, `moe_block_rows`); grok.config.config_from_dict ignores them with
one warning naming the RuntimeConfig field (and the flag) that sets each, so what the caller
chose (`--dtype`, RuntimeConfig) always wins.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

MOE_IMPLS = ("sparse", "dense")
# Which kernels run the sparse MoE and the attention's projections and weighted sum: "auto" =
# grok.kernels' Pallas kernels where the step is compiled for a GPU, XLA's ops elsewhere;
# "xla" = XLA's ops everywhere; "interpret" = the Pallas kernels in interpret mode (CPU tests).
KERNEL_CHOICES = ("auto", "xla", "interpret")
ACTIVATION_DTYPES = ("bfloat16", "float32")
SPECULATIVE_METHODS = ("ngram",)   # how speculative decoding drafts (grok.serving.drafting)
# Reference defaults: Grok-1's run.py prefills prompts in one 1024-token bucket; the reference
# ModelRunner's bs_per_device is 2.0; the sparse MoE's routed-path threshold (see below).
DEFAULT_PREFILL_BUCKETS = (1024,)
DEFAULT_BS_PER_DEVICE = 2.0
DEFAULT_MOE_BLOCK_ROWS = 256
# Batched prefill: at most this many prompts in one call (more costs compile variants and
# memory for little gain; see grok/benchmarks/prefill_batch.py).
DEFAULT_MAX_PREFILL_BATCH = 4
# Prefix cache budget in positions (grok.serving.prefix_cache): Grok-1's sequence_len, i.e.
# at most one more slot's KV (2.1 GB for Grok-1 in bf16), enough for a long system prompt
# and a few conversations, small beside the 320 GB of weights.
DEFAULT_PREFIX_CACHE_TOKENS = 8192

# A runtime choice an old config.json may carry -> the RuntimeConfig field (and flag) for it.
RUNTIME_FIELDS_IN_CONFIG = {"fprop_dtype": "activation_dtype (--dtype)",
                            "moe_impl": "moe_impl (--moe)", "moe_block_rows": "moe_block_rows"}


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _mesh_shape(value) -> bool:
    return (isinstance(value, tuple) and len(value) == 2 and all(_positive_int(v) for v in value))


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How to run a model (see module docstring). Every field has a working default."""

    # Mixture-of-Experts computation; all give the same numbers (tests/test_model.py).
    moe_impl: str = "sparse"
    # Sparse MoE: the most rows (tokens in one call) that take the routed path, where each
    # selected expert's weights are read in place once for all rows (decode); more rows take
    # the grouped path, one grouped matmul per weight (prefill). See grok.model.moe.
    moe_block_rows: int = DEFAULT_MOE_BLOCK_ROWS
    # Which kernels run the sparse MoE and the attention (see KERNEL_CHOICES).
    kernels: str = "auto"
    # Activations and the KV cache (the reference's fprop_dtype); weights stay int8 + scales.
    activation_dtype: str = "bfloat16"
    # Device mesh (data, model) per host, and how hosts tile it (the reference's arguments).
    local_mesh_config: tuple[int, int] = (1, 1)
    between_hosts_config: tuple[int, int] = (1, 1)
    # Slots = max(1, int(bs_per_device * devices)) (the reference's rule).
    bs_per_device: float = DEFAULT_BS_PER_DEVICE
    # Prompt chunk sizes T (the reference's pad_sizes): each compiles once.
    prefill_buckets: tuple[int, ...] = DEFAULT_PREFILL_BUCKETS
    # Prompt tokens the scheduler may prefill between two decode steps; 0 = one largest bucket.
    prefill_chunk_tokens: int = 0
    # Most prompts one batched prefill call takes (1 turns batched prefill off).
    max_prefill_batch: int = DEFAULT_MAX_PREFILL_BATCH
    # Positions of prompt KV the prefix cache keeps on the device (0 turns the cache off).
    prefix_cache_tokens: int = DEFAULT_PREFIX_CACHE_TOKENS
    # The prefix cache also keeps a finished request's output KV (written by decode steps),
    # so a conversation's next turn prefills only its new text (see grok.serving.scheduler).
    prefix_cache_outputs: bool = True
    # Speculative decoding: drafted tokens verified per slot and step (0 = off), and how they
    # are drafted (grok.serving.speculation); the tokens are the same either way.
    speculative_tokens: int = 0
    speculative_method: str = "ngram"

    def __post_init__(self):
        if self.moe_impl not in MOE_IMPLS:
            raise ValueError(f"RuntimeConfig.moe_impl must be one of {MOE_IMPLS}, got {self.moe_impl!r}")
        if self.kernels not in KERNEL_CHOICES:
            raise ValueError(f"RuntimeConfig.kernels must be one of {KERNEL_CHOICES}, "
                             f"got {self.kernels!r}")
        if self.activation_dtype not in ACTIVATION_DTYPES:
            raise ValueError(f"RuntimeConfig.activation_dtype must be one of {ACTIVATION_DTYPES}, "
                             f"got {self.activation_dtype!r}")
        for name in ("moe_block_rows", "max_prefill_batch"):
            if not _positive_int(getattr(self, name)):
                raise ValueError(f"RuntimeConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if self.speculative_method not in SPECULATIVE_METHODS:
            raise ValueError(f"RuntimeConfig.speculative_method must be one of "
                             f"{SPECULATIVE_METHODS}, got {self.speculative_method!r}")
        for name in ("prefill_chunk_tokens", "prefix_cache_tokens", "speculative_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"RuntimeConfig.{name} must be an int >= 0, got {value!r}")
        if not isinstance(self.prefix_cache_outputs, bool):
            raise ValueError(f"RuntimeConfig.prefix_cache_outputs must be a bool, "
                             f"got {self.prefix_cache_outputs!r}")
        for name in ("local_mesh_config", "between_hosts_config"):
            value = getattr(self, name)
            value = tuple(value) if isinstance(value, (list, tuple)) else value
            if not _mesh_shape(value):
                raise ValueError(f"RuntimeConfig.{name} must be two positive ints, got {value!r}")
            object.__setattr__(self, name, value)
        bs = self.bs_per_device
        if not (isinstance(bs, (int, float)) and not isinstance(bs, bool) and math.isfinite(bs) and bs > 0):
            raise ValueError(f"RuntimeConfig.bs_per_device must be a finite number > 0, got {bs!r}")
        buckets = self.prefill_buckets
        if (not isinstance(buckets, (list, tuple)) or not buckets
                or not all(_positive_int(b) for b in buckets)):
            raise ValueError(f"RuntimeConfig.prefill_buckets (pad_sizes) must be positive ints, "
                             f"got {buckets!r}")
        object.__setattr__(self, "prefill_buckets", tuple(sorted(set(buckets))))

    def replace(self, **changes) -> "RuntimeConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def chunk_tokens(self) -> int:
        """The scheduler's prefill budget per decode step, resolved (0 -> largest bucket)."""
        return self.prefill_chunk_tokens or self.prefill_buckets[-1]
