"""Router and top-k Mixture-of-Experts with gelu-gated experts.

Two implementations with the same numbers (tests/test_model.py checks they agree):
- `dense`: the readable one. Every expert runs on every token, then the selected outputs are
  combined. This is the reference's arithmetic and costs E/k times the needed work.
- `sparse`: a loop over experts; each runs only on the rows routed to it (gathered in blocks),
  and an expert no row selected is skipped, its int8 weights never read. At decode batch
  sizes only the selected experts' weights are read (2 of 8 for Grok-1 at batch 1), which is
  what bounds decode speed; prefill does about k/E of the dense FLOPs. On CPU this measured
  faster than a sorted grouped matmul (lax.ragged_dot) and than gathering each token's expert
  weights (see README, "Speed").

Glossary: M tokens (B*T flattened), D emb_size, F ffn_size, E experts, k selected experts.
"""

from __future__ import annotations

import functools

import haiku as hk
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from grok.config import TransformerConfig
from grok.runtime_config import RuntimeConfig
from grok.ops.layers import no_init
from grok.ops.quantization import QuantizedWeight8bit, qmatmul, qmatmul_experts
from grok.parallel.sharding import MODEL_AXIS


class Router(hk.Module):
    """Softmax router in float32: gates [M, k] (not renormalised) and expert ids [M, k]."""

    def __init__(self, config: TransformerConfig, name: str = "router"):
        super().__init__(name=name)
        self.config = config

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        c = self.config
        w = hk.get_parameter("w", [x.shape[-1], c.num_experts], jnp.float32, init=no_init)
        logits = jnp.einsum("md,de->me", x.astype(jnp.float32), w.astype(jnp.float32))
        probs = jax.nn.softmax(logits, axis=-1)                                  # [M, E]
        return jax.lax.top_k(probs, c.num_selected_experts)


def _expert_weight(module: hk.Module, name: str, shape) -> QuantizedWeight8bit:
    with hk.name_scope(name):
        w = hk.get_parameter("w", shape, jnp.int8, init=no_init)
    if not isinstance(w, QuantizedWeight8bit):
        raise TypeError(f"{module.module_name}/{name}/w must be a QuantizedWeight8bit")
    return w


class MoELayer(hk.Module):
    def __init__(self, config: TransformerConfig, runtime: RuntimeConfig, name: str = "moe"):
        super().__init__(name=name)
        self.config = config
        self.runtime = runtime   # moe_impl, moe_block_rows

    def __call__(self, x: jax.Array, gates: jax.Array, experts: jax.Array) -> jax.Array:
        """x [M, D], gates/experts [M, k] -> [M, D]."""
        c = self.config
        e, d, f = c.num_experts, c.emb_size, c.ffn_size
        w_gate = _expert_weight(self, "linear", [e, d, f])      # gelu branch   [E, D, F]
        w_value = _expert_weight(self, "linear_v", [e, d, f])   # linear branch [E, D, F]
        w_down = _expert_weight(self, "linear_1", [e, f, d])    # down proj     [E, F, D]
        # combine[m, e]: the gate of expert e for token m, 0 where e was not selected.
        combine = jnp.zeros((x.shape[0], e), jnp.float32)
        combine = combine.at[jnp.arange(x.shape[0])[:, None], experts].add(gates)
        combine = combine.astype(x.dtype)
        if self.runtime.moe_impl == "dense":
            return _dense(x, combine, w_gate, w_value, w_down)
        sparse = functools.partial(_sparse, block_rows=self.runtime.moe_block_rows)
        return _per_model_shard(sparse, x, combine, w_gate, w_value, w_down)


def _per_model_shard(moe_fn, x, combine, w_gate, w_value, w_down):
    """Runs moe_fn on each device's slice of the FFN axis, then one all-reduce.

    Under plain GSPMD every selected expert's down projection ends in its own all-reduce;
    here each device sums its partial outputs over all experts first. Needs the mesh in
    context (the runner traces under jax.sharding.use_abstract_mesh) and the FFN axis and
    down-projection scale groups divisible by the model axis; otherwise moe_fn runs as it
    is, with the same result.
    """
    mesh = jax.sharding.get_abstract_mesh()
    n = 1 if mesh.empty or MODEL_AXIS not in mesh.axis_names else mesh.shape[MODEL_AXIS]
    groups = w_down.scales.shape[-2]
    if n == 1 or w_gate.weight.shape[-1] % n or (groups > 1 and groups % n):
        return moe_fn(x, combine, w_gate, w_value, w_down)
    up = QuantizedWeight8bit(P(None, None, MODEL_AXIS), P(None, None, MODEL_AXIS))   # [E, D, F]
    down = QuantizedWeight8bit(P(None, MODEL_AXIS, None),                             # [E, F, D]
                               P(None, MODEL_AXIS if groups > 1 else None, None))
    local = lambda *args: jax.lax.psum(moe_fn(*args), MODEL_AXIS)
    return jax.shard_map(local, in_specs=(P(), P(), up, up, down), out_specs=P(),
                         check_vma=False)(x, combine, w_gate, w_value, w_down)


def _dense(x, combine, w_gate, w_value, w_down):
    h = jax.nn.gelu(qmatmul_experts(x, w_gate)) * qmatmul_experts(x, w_value)    # [E, M, F]
    y = jnp.stack([qmatmul(h[i], _select(w_down, i)) for i in range(h.shape[0])])  # [E, M, D]
    return jnp.einsum("emd,me->md", y, combine)


def _select(qw: QuantizedWeight8bit, expert) -> QuantizedWeight8bit:
    return QuantizedWeight8bit(qw.weight[expert], qw.scales[expert])


def _sparse(x, combine, w_gate, w_value, w_down, block_rows: int):
    """For each expert, only the rows routed to it, in blocks of `block_rows`.

    An expert no row chose is skipped by a lax.cond, and its weights are sliced only inside
    it (sliced outside, XLA would copy every expert's int8 weights on every call). When all
    rows fit one block (decode) the expert runs on them all and unrouted rows add gate 0;
    otherwise routed rows are moved to the front (a stable argsort) and ceil(count / block)
    blocks run, so prefill does about k/E of the dense path's FLOPs.
    """
    m = x.shape[0]
    block = min(m, block_rows)
    offsets = jnp.arange(block)

    def one_expert(out, xs):
        expert, gate = xs                                                        # [], [M]
        routed = gate != 0
        count = jnp.sum(routed)

        def run(out):
            wg, wv, wd = (_select(w, expert) for w in (w_gate, w_value, w_down))
            ffn = lambda rows_x: qmatmul(jax.nn.gelu(qmatmul(rows_x, wg)) * qmatmul(rows_x, wv), wd)
            if block == m:
                return out + ffn(x) * gate[:, None]                             # [M, D]
            order = jnp.argsort(~routed, stable=True)                            # routed first
            order = jnp.concatenate([order, jnp.zeros((block,), order.dtype)])  # [M + block]

            def run_block(b, out):
                rows = jax.lax.dynamic_slice_in_dim(order, b * block, block)     # [blk]
                weight = jnp.where(b * block + offsets < count, gate[rows], 0)  # [blk]
                return out.at[rows].add(ffn(x[rows]) * weight[:, None])

            return jax.lax.fori_loop(0, (count + block - 1) // block, run_block, out)

        return jax.lax.cond(count > 0, run, lambda out: out, out), None

    experts = jnp.arange(combine.shape[1])
    out, _ = jax.lax.scan(one_expert, jnp.zeros_like(x), (experts, combine.T))
    return out
