"""Reads an optimised HLO module (text) and reports what the layer loop of a decode step does.

    python -m grok.benchmarks.hlo_check DUMP.txt [--gpu]

`python -m grok.bench decode --dump-hlo DIR` writes each configuration's compiled
`sample_step` as DIR/<run>.sample_step.txt; this module finds the layer loop in it (the
`while` whose metadata names `transformer/while`, the `hk.layer_stack` scan) and counts, in
that loop body and every computation it calls:
- collectives (all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute; an
  async pair counts once): the tensor-parallel layout needs two per layer;
- `conditional`s (on a GPU each is a device -> host round trip);
- int8 buffers (instructions outside fusions whose result is s8): their largest element count,
  to compare with one layer's expert stack (a copy of the whole stack is the defect);
- int8 -> float converts outside a matmul: an instruction outside any fusion, or a fusion
  with no dot in it, that converts an s8 operand to a float type (on CPU these are expected:
  XLA:CPU's matmuls take same-typed buffers; informational);
- with --gpu, on a module XLA:GPU compiled (grok.benchmarks.gpu_hlo --dump-hlo), the copies
  a GPU step must not make (`gpu_copies`): a loop-body kernel that writes an s8 buffer (a
  weight copied out of its stack), a float buffer of at least one weight matrix's elements (a
  dequantized or transposed weight, a copied cache window), or concatenates int8 weights (a
  merged GEMM's new weight). A reduction whose output is at most 1/8 of its largest s8 input
  (a GEMV done as a reduction, reading the weight in place) is exempt, and so is a kernel
  updating a buffer in place (the cache write).

Glossary: L layers, E experts, D emb_size, F ffn_size.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
from typing import Optional, Sequence

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
FLOAT_TYPES = ("f32", "bf16", "f16", "f64")
LAYER_LOOP_OP_NAME = "transformer/while"   # hk.layer_stack's lax.scan, as JAX names it
NO_BUFFER_OPS = ("parameter", "get-tuple-element", "tuple", "bitcast", "constant")

_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$")
_CALLED = re.compile(r"\b(?:calls|to_apply|body|condition)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_OPERAND_NAME = re.compile(r"%([\w.\-]+)")
_ARRAY = re.compile(r"\b(pred|s8|u8|s16|u16|s32|u32|s64|u64|f16|bf16|f32|f64)\[([\d,]*)\]")


@dataclasses.dataclass
class Instruction:
    name: str
    result: str        # the result type text, e.g. "s8[8,64,16]{2,1,0}" or a tuple
    opcode: str
    rest: str          # operands and attributes

    @property
    def called(self) -> list[str]:
        names = _CALLED.findall(self.rest)
        for group in _BRANCHES.findall(self.rest):
            names += [n.strip().lstrip("%") for n in group.split(",") if n.strip()]
        return names

    def arrays(self, text: Optional[str] = None) -> list[tuple[str, int]]:
        """(element type, element count) of every array type in the result (or `text`)."""
        return [(t, math.prod(int(d) for d in dims.split(",") if d))
                for t, dims in _ARRAY.findall(self.result if text is None else text)]


def parse_module(text: str) -> dict[str, list[Instruction]]:
    """{computation name: its instructions} of an HLO module's text."""
    computations: dict[str, list[Instruction]] = {}
    current: Optional[list[Instruction]] = None
    for line in text.splitlines():
        if current is None:
            m = _COMPUTATION.match(line)
            if m:
                current = computations.setdefault(m.group(1), [])
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTRUCTION.match(line)
        if m:
            current.append(Instruction(*m.groups()))
    return computations


def _reachable(computations: dict, root: str) -> list[str]:
    seen, todo = [], [root]
    while todo:
        name = todo.pop()
        if name in seen or name not in computations:
            continue
        seen.append(name)
        for inst in computations[name]:
            todo += inst.called
    return seen


def _fusion_bodies(computations: dict) -> set[str]:
    return {name for insts in computations.values() for inst in insts if inst.opcode == "fusion"
            for name in _CALLED.findall(inst.rest)}


@dataclasses.dataclass
class LoopReport:
    """What one iteration of the layer loop does (see the module docstring)."""

    trip_count: Optional[int]
    collectives: list[str]            # opcodes, one per collective
    conditionals: int
    largest_int8_buffer: int          # elements of the largest s8 result outside fusions
    int8_float_copies: list[str]      # instruction names converting s8 to float outside a dot

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def layer_loop(computations: dict) -> tuple[Instruction, str]:
    """The layer loop's `while` instruction and its body's name."""
    loops = [inst for insts in computations.values() for inst in insts
             if inst.opcode == "while"
             and re.search(r'op_name="[^"]*/' + LAYER_LOOP_OP_NAME + '"', inst.rest)]
    if len(loops) != 1:
        raise ValueError(f"expected one while named {LAYER_LOOP_OP_NAME!r} (the layer loop), "
                         f"found {len(loops)}")
    body = re.search(r"\bbody=%?([\w.\-]+)", loops[0].rest).group(1)
    return loops[0], body


def _converts_int8(inst: Instruction, computations: dict, types: dict[str, str]) -> bool:
    """inst turns an s8 array into a float one without a dot consuming it in the same kernel."""
    if not any(t in FLOAT_TYPES for t, _ in inst.arrays()):
        return False
    if inst.opcode == "convert":
        operand = inst.rest.split(")")[0].strip().lstrip("%")
        return types.get(operand, "").startswith("s8")
    if inst.opcode != "fusion":
        return False
    body = []
    for name in _CALLED.findall(inst.rest):
        body += [computations[n] for n in _reachable(computations, name)]
    fused = [i for insts in body for i in insts]
    if any(i.opcode in ("dot", "custom-call", "ragged-dot") for i in fused):
        return False          # a matmul kernel that reads the int8 operand itself
    fused_types = {i.name: i.result for i in fused}
    return any(i.opcode == "convert" and fused_types.get(i.rest.split(")")[0].strip().lstrip("%"),
                                                          "").startswith("s8") for i in fused)


def analyse(text: str) -> LoopReport:
    """The LoopReport of the layer loop in an optimised HLO module's text."""
    computations = parse_module(text)
    loop, body = layer_loop(computations)
    trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', loop.rest)
    fusions = _fusion_bodies(computations)
    reachable = _reachable(computations, body)
    collectives, conditionals, largest, copies = [], 0, 0, []
    for name in reachable:
        insts = computations[name]
        types = {i.name: i.result for i in insts}
        for inst in insts:
            base = inst.opcode.removesuffix("-start")
            if base in COLLECTIVES and not inst.opcode.endswith("-done"):
                collectives.append(base)
            conditionals += inst.opcode == "conditional"
            if name in fusions:
                continue
            if inst.opcode not in NO_BUFFER_OPS:
                largest = max([largest] + [n for t, n in inst.arrays() if t == "s8"])
            if _converts_int8(inst, computations, types):
                copies.append(inst.name)
    return LoopReport(int(trip.group(1)) if trip else None, collectives, conditionals, largest,
                      copies)


def _fused_instructions(computations: dict, inst: Instruction) -> list[Instruction]:
    return [i for name in _CALLED.findall(inst.rest) for n in _reachable(computations, name)
            for i in computations[n]]


def _fusion_roots(computations: dict, inst: Instruction) -> list[Instruction]:
    """The instructions a fusion's results come from (a tuple root's operands, bitcasts
    looked through)."""
    name = _CALLED.findall(inst.rest)[0]
    insts = computations[name]
    by_name = {i.name: i for i in insts}
    root = insts[-1]
    names = (_OPERAND_NAME.findall(root.rest.split("),")[0]) if root.opcode == "tuple"
             else [root.name])
    roots = []
    for n in names:
        r = by_name.get(n)
        while r is not None and r.opcode == "bitcast":
            r = by_name.get(_OPERAND_NAME.findall(r.rest)[0])
        if r is not None:
            roots.append(r)
    return roots


def _weight_elements(computations: dict, body: str) -> int:
    """Elements of the smallest weight matrix the loop carries: the last two axes of its
    smallest int8 stack (rank >= 3: [L, K, N] or [L, E, K, N])."""
    params = [i for i in computations[body] if i.opcode == "parameter"]
    sizes = [math.prod(int(d) for d in dims.split(",")[-2:])
             for p in params for t, dims in _ARRAY.findall(p.result)
             if t == "s8" and dims.count(",") >= 2]
    return min(sizes, default=0)


def _copy_made(computations: dict, inst: Instruction, types: dict, weight: int) -> Optional[str]:
    """Why kernel `inst` is a copy a GPU step must not make, or None."""
    if inst.opcode in NO_BUFFER_OPS or inst.opcode in ("while", "conditional", "call"):
        return None
    fused = _fused_instructions(computations, inst) if inst.opcode == "fusion" else [inst]
    if inst.opcode == "fusion" and any(r.opcode in ("dynamic-update-slice", "scatter")
                                       for r in _fusion_roots(computations, inst)):
        return None                                       # an in-place update (the cache write)
    result = inst.result.split("{")[0]
    outputs = inst.arrays()
    if any(t == "s8" for t, _ in outputs):
        return f"writes int8 {result}"
    s8_in = max([n for op in _OPERAND_NAME.findall(inst.rest.split(")")[0])
                 for t, n in inst.arrays(types.get(op, "")) if t == "s8"], default=0)
    big = [n for t, n in outputs if t in FLOAT_TYPES and weight and n >= weight]
    reduces = any(i.opcode == "reduce" for i in fused)
    if big and not (reduces and s8_in and max(big) * 8 <= s8_in):
        return f"writes {result} (>= a weight's {weight} elements)"
    fused_types = {i.name: i.result for i in fused}
    for i in fused:
        if i.opcode == "concatenate" and any(
                fused_types.get(op, types.get(op, "")).startswith("s8")
                for op in _OPERAND_NAME.findall(i.rest.split(")")[0])):
            return f"concatenates int8 weights into {i.result.split('{')[0]}"
    return None


def gpu_copies(text: str) -> list[str]:
    """The copies a GPU decode step must not make, one line each (see the module docstring):
    in the layer loop's body, and hoisted before or after it (a kernel outside the loop whose
    result is a layer stack, leading axis L: e.g. a transposed copy of a whole weight stack or
    of the KV cache)."""
    computations = parse_module(text)
    loop, body = layer_loop(computations)
    trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', loop.rest)
    weight = _weight_elements(computations, body)
    fusions = _fusion_bodies(computations)
    found = []
    for name in _reachable(computations, body):
        if name in fusions:
            continue
        types = {i.name: i.result for i in computations[name]}
        for inst in computations[name]:
            why = _copy_made(computations, inst, types, weight)
            if why:
                found.append(f"{inst.name}: {why}")
    entry = list(computations)[-1]
    types = {i.name: i.result for i in computations[entry]}
    stack = r"\[" + (trip.group(1) if trip else "-") + ","
    for inst in computations[entry]:
        touched = [inst.result] + [types.get(op, "") for op in
                                   _OPERAND_NAME.findall(inst.rest.split(")")[0])]
        if inst.opcode != "while" and any(re.match(r"\(?\w+" + stack, t) for t in touched):
            why = _copy_made(computations, inst, types, weight)
            if why:
                found.append(f"{inst.name} (outside the loop): {why}")
    return found


def lowered_all_reduce_types(stablehlo_text: str) -> list[str]:
    """Element types of the all-reduces a program asks for (its lowered StableHLO text: the
    explicit psums; XLA:CPU later widens bf16 all-reduces to f32, GPUs keep them)."""
    return re.findall(r'"stablehlo\.all_reduce".*?\}\) : \(tensor<[\dx]*x(\w+)>\)',
                      stablehlo_text, flags=re.S)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m grok.benchmarks.hlo_check",
                                description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", help="optimised HLO text files (sample_step)")
    p.add_argument("--max-collectives", type=int, default=2, help="per layer loop iteration")
    p.add_argument("--gpu", action="store_true",
                   help="the module is XLA:GPU's: fail on any weight-sized copy in the layer loop")
    args = p.parse_args(argv)
    results, failed = {}, False
    for path in args.files:
        with open(path) as f:
            text = f.read()
        report = analyse(text)
        problems = []
        if len(report.collectives) > args.max_collectives:
            problems.append(f"{len(report.collectives)} collectives per layer")
        if report.conditionals:
            problems.append(f"{report.conditionals} conditionals in the layer loop")
        copies = gpu_copies(text) if args.gpu else []
        if copies:
            problems.append(f"{len(copies)} copies a GPU step must not make: {'; '.join(copies[:5])}")
        failed |= bool(problems)
        results[path] = {**report.as_dict(), "gpu_copies": copies, "problems": problems}
        print(f"{path}: {len(report.collectives)} collectives {report.collectives}, "
              f"{report.conditionals} conditionals, largest int8 buffer "
              f"{report.largest_int8_buffer} elements, {len(report.int8_float_copies)} int8->float "
              f"copies outside a matmul: {'; '.join(problems) or 'ok'}")
    if failed:
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
