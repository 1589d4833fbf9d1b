"""What the fused MoE kernels (grok.kernels) read and compute, counted from their grids
(and the attention's layer_matmul and decode_attention, `count_attention_kernels`).

XLA's cost model cannot see inside a Triton custom call: read naively, each kernel reads its
operands whole (every layer's [L, E, K, N] stack) and computes nothing. The kernels' memory
traffic is instead set by their grids: program (b, n) of a [BM, K] x [K, N] kernel loads the
weight tiles `w[layer, block_expert[b], k-tile, n-tile]` (every k-tile of its expert, its one
n-tile, and the G scale vectors of that n-tile) and block b's rows, and only where block b has
an expert (grok.kernels.fused_moe). This module enumerates those programs for a routing, with
the kernels' own block layout and tiles (grok.kernels.block_layout: `tiling_for`,
`sort_into_blocks`, `matmul_tiles`), and reports per layer:
- weight bytes the programs load (tile loads), beside the distinct tiles among them and the
  routing's selected experts' bytes: equal when no tile is loaded twice (decode: BM >= M, one
  block per expert); the ratio is the re-read factor of a weight tile over row blocks;
- activation bytes: each row element once (x rows read, h written and read back, y written),
  and the row tiles the programs load (each block's rows are loaded again for every output
  tile: L2 traffic, as a [BM, K] block is small beside L2);
- matmul FLOPs: 2*BM*K*BN per used program per matmul, padding rows included.
The kernels' shapes (per device, under model parallelism) come from the compiled HLO's custom
calls, and the grid XLA launches (grid_x, grid_y) is checked against the one enumerated here.

Glossary: M tokens, k selected experts, P pairs (M*k), E experts, D emb_size, F ffn_size (per
device), G scale groups, L layers, BM rows per block, NB blocks, BN/BK tiles.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional

import jax.numpy as jnp
import numpy as np

from grok.benchmarks.hlo_bytes import ELEMENT_BYTES, Kernel, Module, Traffic
from grok.kernels.block_layout import matmul_tiles, side_by_side_tiles, sort_into_blocks, tiling_for
from grok.kernels.decode_attention import DECODE_ATTENTION
from grok.kernels.layer_matmul import LAYER_MATMUL

KERNEL_NAMES = ("moe_up", "moe_down")
_CONSTRAINTS = re.compile(r"operand_layout_constraints=\{(.*?)\}, api_version")
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_GRID = re.compile(r"grid_x = (\d+) : i32, grid_y = (\d+) : i32")


@dataclasses.dataclass(frozen=True)
class KernelCall:
    """One MoE kernel's custom call in the optimised HLO: operand and result (dtype, shape)."""

    kernel: str                                  # "moe_up" or "moe_down"
    operands: tuple[tuple[str, tuple[int, ...]], ...]
    result: tuple[str, tuple[int, ...]]
    grid: tuple[int, int]
    outputs: tuple[tuple[str, tuple[int, ...]], ...] = ()   # every result array (a tuple's too)


def _arrays(text: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(t, tuple(int(d) for d in dims.split(",") if d)) for t, dims in _ARRAY.findall(text)]


def _named_calls(module: Module, comp: str, kernels: list[Kernel],
                 names: tuple[str, ...]) -> list[tuple[Kernel, KernelCall]]:
    """The custom calls among `kernels` (launched by computation `comp`) of a kernel in `names`."""
    insts = {i.name: i for i in module.computations[comp]}
    calls = []
    for k in kernels:
        name = next((n for n in names if f"/{n}/" in k.op_name), None)
        if k.opcode != "custom-call" or name is None:
            continue
        inst = insts[k.name]
        grid = _GRID.search(inst.rest)
        calls.append((k, KernelCall(name, tuple(_arrays(_CONSTRAINTS.search(inst.rest).group(1))),
                                    _arrays(inst.result)[0],
                                    (int(grid.group(1)), int(grid.group(2))) if grid else (0, 0),
                                    tuple(_arrays(inst.result)))))
    return calls


def kernel_calls(module: Module, comp: str, kernels: list[Kernel]) -> dict[str, KernelCall]:
    """The MoE kernels among `kernels` (launched by computation `comp`), by kernel name."""
    return {call.kernel: call for _, call in _named_calls(module, comp, kernels, KERNEL_NAMES)}


def layer_matmul_bytes(call: KernelCall) -> tuple[int, int]:
    """(read, written) bytes of one grok.kernels.layer_matmul(s) call, from its grid: each row
    block's programs load each weight's [K, N_i] tiles of the layer and G_i scale rows once
    (not the [L, K, N_i] stack operands whole), and the rows and the output (in the
    activation type) once. Operands: (layer, expert, x [R, K], then w [1, L, K, N_i] and
    scales [1, L, G_i, N_i] per weight); the grid's output tiles run over the weights side
    by side."""
    x_type, (r, k_size) = call.operands[2]
    pairs = list(zip(call.operands[3::2], call.operands[4::2]))
    widths = [w_shape[-1] for (_, w_shape), _ in pairs]
    tiling, tiles = side_by_side_tiles(r, k_size, widths, [s_shape[-2] for _, (_, s_shape) in pairs])
    blocks = r // tiling.block_rows
    grid = (blocks, sum(t.n_tiles for t in tiles))
    if call.grid != grid:
        raise AssertionError(f"layer_matmul's compiled grid {call.grid} differs from its "
                             f"tiles' {grid}")
    weights = sum(k_size * n * ELEMENT_BYTES[w_type] + s_shape[-2] * n * ELEMENT_BYTES[s_type]
                  for n, ((w_type, _), (s_type, s_shape)) in zip(widths, pairs))
    read = blocks * weights + r * k_size * ELEMENT_BYTES[x_type] + 2 * 4   # + layer, expert
    return read, r * sum(widths) * ELEMENT_BYTES[call.result[0]]


def decode_attention_bytes(call: KernelCall) -> tuple[int, int]:
    """(read, written) bytes of one grok.kernels.decode_attention call, from its grid
    (B, K, NS): the NS programs of (b, k) load its G query rows each and, between them, its
    row's key and value windows [S', d] of this layer's caches once (not the [L, B, K, S, d]
    cache operands whole; at most: a row stops at its live extent), its row's S' validity
    bytes and length; they write the G output rows, or with NS > 1 each its float32 partial
    rows and log-sum-exps (merged by a second small kernel whose operands are exactly what it
    reads: counted from the HLO as it is).
    Operands: (layer, lengths [B], valid [B, S'], q [B, K, G, d], k_cache, v_cache)."""
    (l_type, _), (v_type, (_, window)), (q_type, (b, kv, heads, d)) = call.operands[1:4]
    (k_type, _), (c_type, _) = call.operands[4:6]
    if call.grid != (b, kv):
        raise AssertionError(f"decode_attention's compiled grid {call.grid} is not (B, K) = {(b, kv)}")
    splits = call.outputs[1][1][2] if len(call.outputs) == 2 else 1      # lse [B, K, NS, GP]
    per_row = (splits * (heads * d * ELEMENT_BYTES[q_type] + ELEMENT_BYTES[l_type])
               + window * ELEMENT_BYTES[v_type]
               + window * d * (ELEMENT_BYTES[k_type] + ELEMENT_BYTES[c_type]))
    written = sum(ELEMENT_BYTES[t] * math.prod(shape) for t, shape in call.outputs)
    return b * kv * per_row + 4, written


# the in-place kernels outside the MoE, and what each call moves
_COUNTED = {LAYER_MATMUL: layer_matmul_bytes, DECODE_ATTENTION: decode_attention_bytes}


def count_attention_kernels(t: Traffic, module: Module, comp: str) -> dict[str, int]:
    """Replaces, in t.layer (the loop body `comp`'s kernels), each layer_matmul and
    decode_attention call's bytes by what its grid reads and writes; returns their counts."""
    calls = {k.name: call for k, call in _named_calls(module, comp, t.layer, tuple(_COUNTED))}
    for i, k in enumerate(t.layer):
        if k.name in calls:
            read, written = _COUNTED[calls[k.name].kernel](calls[k.name])
            t.layer[i] = dataclasses.replace(k, read=read, written=written)
    return {name: sum(c.kernel == name for c in calls.values()) for name in _COUNTED}


@dataclasses.dataclass(frozen=True)
class MoEShapes:
    """The kernels' problem on one device: M rows, k, E, D, F, G of each weight, L layers,
    and the activation element type."""

    rows: int
    selected: int
    experts: int
    emb: int
    ffn: int
    up_groups: int
    down_groups: int
    layers: int
    act_bytes: int

    @classmethod
    def from_calls(cls, up: KernelCall, down: KernelCall) -> "MoEShapes":
        # up:   (layer, block_expert, row_pair, x [M, D], wg [L, E, D, F], sg [L, E, G, F], wv, sv)
        # down: (layer, block_expert, row_pair, h [P+1, F], wd [L, E, F, D], sd [L, E, G, D], gates [P])
        (x_type, (m, d)), (_, (layers, e, _, f)) = up.operands[3], up.operands[4]
        pairs = down.operands[6][1][0]
        return cls(m, pairs // m, e, d, f, up.operands[5][1][2], down.operands[5][1][2], layers,
                   ELEMENT_BYTES[x_type])


@dataclasses.dataclass(frozen=True)
class GridCount:
    """What both kernels' grids load, touch once and compute for one routing, one layer."""

    block_rows: int
    blocks: int                  # NB, the grid's first axis
    used_blocks: int             # blocks with an expert (the others load nothing)
    distinct_experts: int
    grids: dict                  # kernel -> (NB, N/BN)
    weight_loads: int            # bytes of weight + scale tiles the used programs load
    weight_unique: int           # bytes of the distinct tiles among them
    selected_bytes: int          # the routing's distinct experts' weight + scale bytes
    activation_loads: int        # bytes of row tiles (x, h, gates) the used programs load
    activation_bytes: int        # x rows read, h written and read, y written: each once
    flops: float                 # matmul FLOPs of the used programs (padding rows included)

    @property
    def reread_factor(self) -> float:
        return self.weight_loads / self.weight_unique if self.weight_unique else 0.0


def count_grid(shapes: MoEShapes, experts: np.ndarray) -> GridCount:
    """Enumerate the programs of both kernels for `experts` [M, k] (each token's experts)."""
    s = shapes
    m, k = experts.shape
    tiling = tiling_for(m, k, s.experts)
    layout = sort_into_blocks(jnp.asarray(experts, jnp.int32), s.experts, tiling.block_rows)
    block_expert = np.asarray(layout.block_expert)                                # [NB]
    row_pair = np.asarray(layout.row_pair).reshape(layout.num_blocks, -1)         # [NB, BM]
    used = np.flatnonzero(block_expert >= 0)
    valid_rows = (row_pair[used] < m * k).sum(axis=1)                             # [used]
    # (kernel, weights it reads, K, N, G): rows and outputs are in the activation type
    matmuls = (("moe_up", 2, s.emb, s.ffn, s.up_groups), ("moe_down", 1, s.ffn, s.emb, s.down_groups))
    loads = unique = act_loads = flops = 0
    grids = {}
    for name, weights, k_size, n_size, groups in matmuls:
        tiles = matmul_tiles(tiling, k_size, n_size, groups)
        grids[name] = tiles.grid(layout.num_blocks)
        bk, bn = tiles.block_k, tiles.block_n
        per_group = k_size // groups
        k_starts = np.array([g * per_group + i * bk for g in range(groups)
                             for i in range(tiles.k_steps_per_group)])            # the kernel's kk
        # every (expert, k-tile, n-tile) a used program (b, n) loads, per weight
        keys = (block_expert[used][:, None, None] * k_size + k_starts[None, :, None]) * n_size \
            + (np.arange(tiles.n_tiles) * bn)[None, None, :]
        tile_bytes = bk * bn + 2 * bn * groups / k_starts.size      # int8 tile + its share of scales
        loads += weights * keys.size * tile_bytes
        unique += weights * np.unique(keys).size * tile_bytes
        act_loads += int(valid_rows.sum()) * tiles.n_tiles * k_size * s.act_bytes  # once per k-step
        flops += weights * used.size * tiles.n_tiles * 2 * tiles.block_rows * k_size * bn
    act_loads += int(valid_rows.sum()) * tiles.n_tiles * 4                       # down: the gates
    distinct = np.unique(experts).size
    per_expert = 2 * (s.emb * s.ffn + 2 * s.up_groups * s.ffn) + s.ffn * s.emb + 2 * s.down_groups * s.emb
    p = m * k
    activation = s.act_bytes * (p * s.emb            # up: x rows of each pair
                                + 2 * p * s.ffn      # h written, read back
                                + p * s.emb)         # y written
    return GridCount(tiling.block_rows, layout.num_blocks, used.size, distinct, grids,
                     int(round(loads)), int(round(unique)), distinct * per_expert,
                     int(act_loads), activation, float(flops))


def random_routing(rows: int, selected: int, experts: int, seed: int = 0) -> np.ndarray:
    """[M, k] distinct experts per token, uniformly at random (the ideal's routing)."""
    return np.argsort(np.random.default_rng(seed).random((rows, experts)), axis=1)[:, :selected]


def spread_routing(rows: int, selected: int, experts: int) -> np.ndarray:
    """[M, k] round-robin routing: the most distinct experts, min(E, P), rows spread evenly."""
    return (np.arange(rows * selected).reshape(rows, selected) % experts).astype(np.int32)


def _count_dict(c: GridCount) -> dict:
    return {f.name: getattr(c, f.name) for f in dataclasses.fields(c)} | {
        "reread_factor": c.reread_factor}


def layer_moe(t: Traffic, module: Module, comp: str, seed: int = 0) -> Optional[dict]:
    """One layer's MoE with the kernels, from its loop body `comp`: the MoE's bytes outside the
    kernels (every other MoE launch, from the HLO), the kernels' grid counts for a random and a
    round-robin routing of the kernel's M rows, and "moe_bytes": the bytes outside the kernels
    plus the random routing's distinct weight tiles and activations once. None without kernels
    (the XLA paths: their bytes are the HLO's)."""
    calls = kernel_calls(module, comp, t.layer)
    if set(calls) != set(KERNEL_NAMES):
        return None
    shapes = MoEShapes.from_calls(calls["moe_up"], calls["moe_down"])
    outside = [k for k in t.layer if k.in_moe and not (k.opcode == "custom-call"
                                                       and any(f"/{n}/" in k.op_name for n in KERNEL_NAMES))]
    routed = count_grid(shapes, random_routing(shapes.rows, shapes.selected, shapes.experts, seed))
    spread = count_grid(shapes, spread_routing(shapes.rows, shapes.selected, shapes.experts))
    hlo_grids = {name: call.grid for name, call in calls.items()}
    if hlo_grids != routed.grids:
        raise AssertionError(f"the compiled kernels' grids {hlo_grids} differ from the "
                             f"block layout's {routed.grids}")
    outside_bytes = sum(k.moved for k in outside)
    return {"shapes": dataclasses.asdict(shapes),
            "outside_kernel_bytes": outside_bytes,
            "outside_kernel": [{"name": k.name, "bytes": k.moved, "op_name": k.op_name[-80:]}
                               for k in sorted(outside, key=lambda k: -k.moved)[:5]],
            "random_routing": _count_dict(routed), "spread_routing": _count_dict(spread),
            "moe_bytes": outside_bytes + routed.weight_unique + routed.activation_bytes}


def grouped_ideal_flops(shapes: MoEShapes) -> float:
    """Each token through its k experts' three matmuls: 2*T*k*3*D*F."""
    return 2.0 * shapes.rows * shapes.selected * 3 * shapes.emb * shapes.ffn


def bound_flops(moe: dict) -> float:
    """FLOPs when every block of the grid is used: the bound over all routings."""
    c = moe["random_routing"]
    return c["flops"] * c["blocks"] / c["used_blocks"]


def describe(moe: dict, label: str) -> str:
    """One line of report for a layer's kernels (layer_moe's dict)."""
    mib = lambda b: f"{b / 2 ** 20:.1f}"
    r, w = moe["random_routing"], moe["spread_routing"]
    return (f"  MoE kernels, {label}: outside the kernels {mib(moe['outside_kernel_bytes'])} MiB; "
            f"weight tiles loaded {mib(r['weight_loads'])} MiB, selected experts "
            f"{mib(r['selected_bytes'])} MiB ({r['distinct_experts']} of a random routing; "
            f"BM {r['block_rows']}, {r['used_blocks']}/{r['blocks']} blocks used, "
            f"tile re-reads {r['reread_factor']:.2f}x); round-robin {w['distinct_experts']} experts: "
            f"{mib(w['weight_loads'])} vs {mib(w['selected_bytes'])} MiB; activations once "
            f"{mib(r['activation_bytes'])} MiB (row tiles loaded {mib(r['activation_loads'])} MiB, "
            f"mostly L2)")
