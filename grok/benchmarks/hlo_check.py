"""Reads an optimised HLO module (text) and reports what the layer loop of a decode step does.

    python -m grok.benchmarks.hlo_check DUMP.txt [--require-fused-int8]

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
  with no dot in it, that converts an s8 operand to a float type. On a GPU each one is a
  float copy of a weight (the matmul should read the int8 bytes itself); on CPU they are
  expected (XLA:CPU's matmuls take same-typed buffers).

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
    p.add_argument("--require-fused-int8", action="store_true",
                   help="fail on any int8 -> float convert outside a matmul (use on GPU)")
    args = p.parse_args(argv)
    results, failed = {}, False
    for path in args.files:
        with open(path) as f:
            report = analyse(f.read())
        problems = []
        if len(report.collectives) > args.max_collectives:
            problems.append(f"{len(report.collectives)} collectives per layer")
        if report.conditionals:
            problems.append(f"{report.conditionals} conditionals in the layer loop")
        if args.require_fused_int8 and report.int8_float_copies:
            problems.append(f"float copies of int8 weights: {report.int8_float_copies[:5]}")
        failed |= bool(problems)
        results[path] = {**report.as_dict(), "problems": problems}
        print(f"{path}: {len(report.collectives)} collectives {report.collectives}, "
              f"{report.conditionals} conditionals, largest int8 buffer "
              f"{report.largest_int8_buffer} elements, {len(report.int8_float_copies)} int8->float "
              f"copies outside a matmul: {'; '.join(problems) or 'ok'}")
    if failed:
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
