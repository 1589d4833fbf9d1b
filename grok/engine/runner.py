"""ModelRunner (mesh, shardings, weights) and InferenceRunner (compiled prefill and decode).

The reference's roles and names: `ModelRunner.initialize(init_data, local_mesh_config,
between_hosts_config)` builds the (data, model) mesh; `load_or_init` restores the checkpoint
with the partition rules; `InferenceRunner.initialize()` compiles `new_memory`,
`prefill_memory` and `sample_step` with explicit shardings and donated state; `run()` is the
request generator (grok.serving.scheduler), and `sample_from_model` wraps it as the reference does.

Glossary: B slots, T prompt bucket, S sequence_len, V vocabulary, A reported alternatives.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from grok import checkpoint
from grok.parallel import sharding
from grok.config import LanguageModelConfig
from grok.model.transformer import Memory, abstract_params, build_forward, init_memory
from grok.engine.sampling import SampleSettings, sample_token, token_logprobs

logger = logging.getLogger(__name__)


class DecodeState(NamedTuple):
    """Everything the device keeps per slot between calls (donated to each call)."""

    memory: Memory
    settings: SampleSettings
    rngs: jax.Array         # [B, 2] uint32 PRNG key per slot (raw key data; 2 for threefry)
    last_tokens: jax.Array  # [B] int32: the token each slot feeds to the next step


def pack_output(out) -> jax.Array:
    """A SampleOutput as one float32 array [B, 2 + 2A], so a step costs one host copy.

    Token ids are below 2**24, so they are exact in float32.
    """
    return jnp.concatenate([out.token_id.astype(jnp.float32)[:, None], out.logprob[:, None],
                            out.top_k_token_ids.astype(jnp.float32), out.top_k_logprobs], axis=1)


def unpack_output(packed: np.ndarray):
    """Host side of `pack_output`: (token ids [B], logprobs [B], top ids [B, A], top lps [B, A])."""
    a = (packed.shape[1] - 2) // 2
    return (packed[:, 0].astype(np.int64), packed[:, 1], packed[:, 2:2 + a].astype(np.int64),
            packed[:, 2 + a:])


@dataclasses.dataclass
class ModelRunner:
    model: LanguageModelConfig
    bs_per_device: float = 2.0
    checkpoint_path: Optional[str] = None
    rng_seed: int = 42

    def initialize(self, init_data: Any = None, local_mesh_config=(1, 1),
                   between_hosts_config=(1, 1), devices=None):
        """Builds the mesh and shardings; init_data is accepted for reference compatibility."""
        del init_data
        self.mesh = sharding.make_mesh(local_mesh_config, between_hosts_config, devices)
        num_devices = self.mesh.devices.size
        self.batch_size = max(1, int(self.bs_per_device * num_devices))
        forward = build_forward(self.model)

        def forward_on_mesh(*args):
            with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):   # for grok.model.moe
                return forward(*args)

        self.forward = forward_on_mesh
        self.param_shardings = sharding.param_shardings(abstract_params(self.model), self.mesh)
        logger.info("mesh %s, %d slots", dict(self.mesh.shape), self.batch_size)

    def load_or_init(self, params: Optional[dict] = None) -> dict:
        """Restores `checkpoint_path`, places given host params, or makes random weights."""
        if params is None and self.checkpoint_path:
            params = checkpoint.load_checkpoint(self.checkpoint_path, self.model,
                                                self.param_shardings)
        else:
            if params is None:
                logger.warning("no checkpoint given: using random weights (seed %d)", self.rng_seed)
                params = checkpoint.random_params(self.model, self.rng_seed)
            params = jax.device_put(params, self.param_shardings)
        return self._embeddings_in_fprop_dtype(params)

    def _embeddings_in_fprop_dtype(self, params: dict) -> dict:
        """Casts the embedding table once, so no step re-reads it as float32 (same numbers:
        the model casts it to the activation dtype on every use)."""
        embed = params["language_model/in_out_embed"]["embeddings"]
        dtype = jnp.dtype(self.model.fprop_dtype)
        if embed.dtype != dtype:
            cast = jax.jit(lambda a: a.astype(dtype), out_shardings=embed.sharding)
            params = {**params, "language_model/in_out_embed": {"embeddings": cast(embed)}}
        return params


@dataclasses.dataclass
class InferenceRunner:
    runner: ModelRunner
    name: str = "grok"
    load: Optional[str] = None          # checkpoint dir; overrides runner.checkpoint_path
    tokenizer_path: Optional[str] = None
    local_mesh_config: Sequence[int] = (1, 1)
    between_hosts_config: Sequence[int] = (1, 1)
    pad_sizes: Sequence[int] = (1024,)
    tokenizer: Any = None               # an object with encode/decode; else from tokenizer_path
    params: Optional[dict] = None       # host params to use instead of a checkpoint
    precompile: bool = True

    def initialize(self):
        from grok.tokenizer import load_tokenizer

        if not self.pad_sizes or any(not isinstance(p, int) or p < 1 for p in self.pad_sizes):
            raise ValueError(f"pad_sizes must be positive ints, got {self.pad_sizes}")
        self.pad_sizes = tuple(sorted(set(self.pad_sizes)))
        runner = self.runner
        if self.load:
            runner.checkpoint_path = self.load
        if jax.process_count() > 1:   # every process must compile the same programs
            from grok.parallel.multihost import check_consistent

            check_consistent({"config": self.runner.model.to_dict(), "pad_sizes": self.pad_sizes,
                              "bs_per_device": runner.bs_per_device,
                              "local_mesh_config": list(self.local_mesh_config),
                              "between_hosts_config": list(self.between_hosts_config)})
        runner.initialize(None, self.local_mesh_config, self.between_hosts_config)
        if self.tokenizer is None:
            if self.tokenizer_path is None:
                logger.warning("no tokenizer_path: text prompts use the byte tokenizer "
                               "(token-id prompts are unaffected)")
            self.tokenizer = load_tokenizer(self.tokenizer_path)
        self.params = runner.load_or_init(self.params)
        self.batch_size = runner.batch_size
        self.config = runner.model
        self._compile()

    # ---- compiled functions -------------------------------------------------------------
    def _state_shardings(self, state_shape: DecodeState) -> DecodeState:
        mesh = self.runner.mesh
        per_slot = lambda x: sharding.batch_sharding(x.shape, mesh)
        return DecodeState(
            sharding.memory_shardings(state_shape.memory, mesh),
            jax.tree.map(per_slot, state_shape.settings),
            per_slot(state_shape.rngs), per_slot(state_shape.last_tokens))

    def _new_state(self) -> DecodeState:
        b = self.batch_size
        return DecodeState(
            init_memory(self.config, b, self.config.sequence_len),
            SampleSettings(jnp.zeros((b,), jnp.float32), jnp.ones((b,), jnp.float32),
                           jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool)),
            jnp.zeros((b,) + jax.random.PRNGKey(0).shape, jnp.uint32), jnp.zeros((b,), jnp.int32))

    def _compile(self):
        mesh = self.runner.mesh
        state_sh = self._state_shardings(jax.eval_shape(self._new_state))
        params_sh = self.runner.param_shardings
        rep = sharding.replicated(mesh)
        self.new_memory = jax.jit(self._new_state, out_shardings=state_sh)
        self.prefill_jit = {}   # per echo flag; each prompt bucket compiles once
        for echo in (False, True):
            self.prefill_jit[echo] = jax.jit(
                lambda *a, echo=echo: self._prefill_fn(*a, echo=echo),
                in_shardings=(params_sh, state_sh) + (rep,) * 7,
                out_shardings=(state_sh, rep), donate_argnums=(1,))
        self.sample_step = jax.jit(self._sample_step_fn, in_shardings=(params_sh, state_sh),
                                   out_shardings=(state_sh, rep), donate_argnums=(1,))
        self.release_slot = jax.jit(self._release_fn, in_shardings=(state_sh, rep),
                                    out_shardings=state_sh, donate_argnums=(0,))
        if self.precompile:
            self._precompile()

    def _precompile(self):
        """Compiles every bucket up front so no request waits for XLA (as the reference)."""
        state = self.new_memory()
        for t in self.pad_sizes:
            args = self.prefill_args(np.ones(t, np.int32), np.ones(t, np.int32), 1, 0, True,
                                     (0.0, 1.0, 0), 0)
            state, _ = self.prefill_memory(state, *args, echo=False)
        state, _ = self.sample_step(self.params, state)
        state = self.release_slot(state, np.int32(0))
        jax.block_until_ready(state)

    def prefill_args(self, tokens, targets, length, slot, reset, settings, seed):
        """Host values for one prefill chunk, as the arrays `prefill_memory` takes."""
        temperature, nucleus_p, top_k = settings
        return (np.asarray(tokens, np.int32)[None], np.asarray(targets, np.int32)[None],
                np.int32(length), np.int32(slot), np.bool_(reset),
                np.asarray([temperature, nucleus_p, top_k], np.float32), np.uint32(seed))

    def prefill_memory(self, state: DecodeState, *args, echo: bool):
        """Runs one prompt chunk into a slot's cache; see `_prefill_fn`. Returns (state, out)."""
        return self.prefill_jit[echo](self.params, state, *args)

    def _prefill_fn(self, params, state: DecodeState, tokens, targets, length, slot, reset,
                    settings_row, seed, *, echo: bool):
        """tokens/targets [1, T]: a chunk of one prompt (right-padded) and each position's next
        prompt token; length: valid tokens in the chunk; reset: first chunk (empty the slot).

        Samples the slot's first token from the last valid position (used only after the last
        chunk) and arms the slot. Returns (state, {"sample": [1, 2+2A], "echo": [T]}).
        """
        mem = state.memory
        take = lambda a, axis: jax.lax.dynamic_slice_in_dim(a, slot, 1, axis=axis)
        row = Memory(take(mem.k, 1), take(mem.v, 1), jnp.where(reset, 0, take(mem.step, 0)),
                     take(mem.valid, 0))
        lengths = length[None]
        logits, row = self.runner.forward(params, tokens, row, lengths,
                                          None if echo else (length - 1)[None])
        put = lambda a, r, axis: jax.lax.dynamic_update_slice_in_dim(a, r, slot, axis=axis)
        memory = Memory(put(mem.k, row.k, 1), put(mem.v, row.v, 1), put(mem.step, row.step, 0),
                        put(mem.valid, row.valid, 0))

        last = logits[:, length - 1] if echo else logits[:, 0]                  # [1, V]
        row_settings = SampleSettings(settings_row[0:1], settings_row[1:2],
                                      settings_row[2:3].astype(jnp.int32), jnp.ones((1,), bool))
        key, sub = jax.random.split(jax.random.PRNGKey(seed))
        out = sample_token(last, row_settings, sub[None])
        settings = jax.tree.map(lambda a, r: put(a, r.astype(a.dtype), 0), state.settings, row_settings)
        state = DecodeState(memory, settings, put(state.rngs, key[None], 0),
                            put(state.last_tokens, out.token_id, 0))
        result = {"sample": pack_output(out)}
        if echo:
            result["echo"] = token_logprobs(logits, targets)[0]
        return state, result

    def _sample_step_fn(self, params, state: DecodeState):
        """One decode step for every slot; inactive slots are left exactly as they were."""
        active = state.settings.active
        b = active.shape[0]
        logits, memory = self.runner.forward(params, state.last_tokens[:, None], state.memory,
                                             active.astype(jnp.int32), jnp.zeros((b,), jnp.int32))
        keys = jax.vmap(jax.random.split)(state.rngs)                           # [B, 2, 2]
        out = sample_token(logits[:, 0], state.settings, keys[:, 1])
        rngs = jnp.where(active[:, None], keys[:, 0], state.rngs)
        tokens = jnp.where(active, out.token_id, state.last_tokens)
        return DecodeState(memory, state.settings, rngs, tokens), pack_output(out)

    @staticmethod
    def _release_fn(state: DecodeState, slot):
        settings = state.settings._replace(active=state.settings.active.at[slot].set(False))
        return state._replace(settings=settings)

    # ---- serving --------------------------------------------------------------------------
    def run(self):
        """The request generator (reference protocol); see grok.serving.scheduler.serve.

        In a multi-process job this is process 0's (grok.parallel.multihost.serve_multihost): it
        broadcasts every admitted request; the other processes run grok.parallel.multihost.follow.
        """
        if jax.process_count() > 1:
            from grok.parallel.multihost import serve_multihost

            return serve_multihost(self)
        from grok.serving.scheduler import serve

        return serve(self)


def sample_from_model(server, prompt, max_len, temperature):
    """The reference's helper: one request through a generator from `InferenceRunner.run()`.

    Returns that request's Completion (a str: its text). Results of other requests still in
    flight on the same generator, if any, are passed over (the reference's callers have none).
    """
    from grok.serving.requests import Completion, Request

    next(server)
    request_id = f"sample_from_model-{next(_sample_ids)}"
    request = Request(prompt=prompt, temperature=temperature, nucleus_p=1.0, rng_seed=42,
                      max_len=max_len, request_id=request_id)
    out = server.send(request)
    while not (isinstance(out, Completion) and out.request_id == request_id):
        if out is None:
            raise RuntimeError("sample_from_model: the generator went idle without the result")
        logger.warning("sample_from_model: passing over a result for %s", out.request_id)
        out = next(server)
    return out


_sample_ids = itertools.count()
