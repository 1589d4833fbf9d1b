"""HBM bytes, kernels and FLOPs of an optimised (GPU) HLO module, per layer-loop iteration.

Reads the text of a compiled module (`jit(...).lower(...).compile().as_text()`) and counts,
for every kernel the layer loop's body launches (a fusion, custom call, copy, collective, or
any other instruction that makes a buffer), the bytes it reads and writes in device memory:
- an operand is read whole, except where the kernel only slices it (dynamic-slice, slice,
  gather of a fusion parameter: the slices' bytes) or updates it in place (the buffer operand
  of a dynamic-update-slice or scatter: nothing read);
- a result is written whole, except an in-place update (dynamic-update-slice, scatter), which
  writes its update window, and an async collective's start, whose tuple holds its operands
  (aliased, not written) before its results;
- bitcasts, tuples, parameters, constants and get-tuple-element move nothing.
Kernels are split by the model module they compute (the `op_name` metadata JAX writes: a
`/moe/` kernel belongs to the MoE), so MoE bytes and the rest can be compared with their ideals
separately. Nested loops count their trip count times; a conditional counts its largest branch.

Work XLA hoists out of the layer loop is the loop's too: a kernel outside the loop that JAX
names as the loop's (`transformer/while`) or that reads a layer stack as it enters or leaves
the loop (a parameter or loop result of rank >= 3, >= 1 MiB, whose leading axis is the loop's
trip count: a weight stack, the KV cache),
e.g. a layout transpose of a whole stack before the loop, counts per layer as 1/L of its
bytes (`Traffic.hoisted`).

Glossary: L layers, E experts, D emb_size, F ffn_size.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional

from grok.benchmarks.hlo_check import (COLLECTIVES, LAYER_LOOP_OP_NAME, NO_BUFFER_OPS,
                                       Instruction, layer_loop, parse_module)

ELEMENT_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                 "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
NOTHING_MOVED = NO_BUFFER_OPS + ("after-all", "partition-id", "replica-id", "add-dependency",
                                 "opt-barrier")
SLICING = ("dynamic-slice", "slice", "gather")
IN_PLACE = ("dynamic-update-slice", "scatter")
MOE_OP_NAME = "/moe/"
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_OPERAND = re.compile(r"%([\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_ARRAY = re.compile(r"\b(pred|s8|u8|s16|u16|s32|u32|s64|u64|f16|bf16|f32|f64)\[([\d,]*)\]")


def _is_stack(type_text: str, stack_len: Optional[int]) -> bool:
    """Whether an array type is a layer stack: rank >= 3, >= 1 MiB, leading axis stack_len."""
    if not stack_len:
        return False
    for t, dims in _ARRAY.findall(type_text):
        shape = [int(d) for d in dims.split(",") if d]
        if (len(shape) >= 3 and shape[0] == stack_len
                and ELEMENT_BYTES[t] * math.prod(shape) >= 2 ** 20):
            return True
    return False


def type_bytes(text: str) -> int:
    """Bytes of every array in a type text (a tuple's elements summed)."""
    return sum(ELEMENT_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d)
               for t, dims in _ARRAY.findall(text))


def operands(inst: Instruction) -> list[str]:
    """The instruction's operand names (the text before its closing parenthesis)."""
    depth, end = 1, len(inst.rest)
    for i, ch in enumerate(inst.rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            end = i
            break
    return _OPERAND.findall(inst.rest[:end])


def op_name(inst: Instruction) -> str:
    m = _OP_NAME.search(inst.rest)
    return m.group(1) if m else ""


@dataclasses.dataclass
class Kernel:
    """One launch in a loop iteration and the device memory it moves."""

    name: str
    opcode: str
    read: int
    written: int
    in_moe: bool
    op_name: str
    times: int = 1          # launches per iteration (a nested loop's trip count)
    stacked: bool = False   # reads or writes a layer stack (see `Module.kernels`)

    @property
    def moved(self) -> int:
        return (self.read + self.written) * self.times


class Module:
    """An optimised HLO module's computations, and the bytes their kernels move."""

    def __init__(self, text: str):
        self.computations = parse_module(text)
        self._by_name = {n: {i.name: i for i in insts} for n, insts in self.computations.items()}

    # ---- fusions ---------------------------------------------------------------------------
    def _called(self, inst: Instruction) -> list[str]:
        return [n for n in inst.called if n in self.computations]

    def _fused_op_name(self, inst: Instruction) -> str:
        """The op_name of the instruction, or of the first fused instruction that has one."""
        name = op_name(inst)
        todo = self._called(inst)
        while not name and todo:
            comp = todo.pop(0)
            for i in self.computations[comp]:
                name = name or op_name(i)
                todo += self._called(i)
        return name

    def _users(self, comp: str, name: str) -> list[Instruction]:
        return [i for i in self.computations[comp] if name in operands(i)]

    def _param_read(self, comp: str, param: Instruction, whole: int) -> int:
        """Bytes a fused computation reads of its parameter: slices only, or nothing when the
        parameter is the buffer of an in-place update, else the whole operand."""
        frontier, read = [param], 0
        while frontier:
            node = frontier.pop()
            for user in self._users(comp, node.name):
                first = operands(user)[0] == node.name
                if user.opcode == "bitcast":
                    frontier.append(user)
                elif user.opcode in SLICING and first:
                    read += type_bytes(user.result)
                elif user.opcode in IN_PLACE and first:
                    continue
                elif user.opcode == "fusion":        # a nested fusion (Triton GEMMs)
                    index = operands(user).index(node.name)
                    inner = self._called(user)[0]
                    inner_param = self._parameter(inner, index)
                    read += self._param_read(inner, inner_param, whole) if inner_param else whole
                else:
                    return whole
        return min(read, whole)

    def _parameter(self, comp: str, index: int) -> Optional[Instruction]:
        for i in self.computations[comp]:
            if i.opcode == "parameter" and int(i.rest.split(")")[0]) == index:
                return i
        return None

    def _root_written(self, comp: str) -> int:
        """Bytes a fused computation writes: its root's, an in-place update's window only."""
        insts = self.computations[comp]
        names = self._by_name[comp]
        root = insts[-1]
        roots = [names[n] for n in operands(root)] if root.opcode == "tuple" else [root]
        written = 0
        for r in roots:
            while r.opcode == "bitcast" and operands(r)[0] in names:
                r = names[operands(r)[0]]
            if r.opcode == "dynamic-update-slice":
                written += type_bytes(names[operands(r)[1]].result)
            elif r.opcode == "scatter":
                written += type_bytes(names[operands(r)[-1]].result)
            else:
                written += type_bytes(r.result)
        return written

    # ---- kernels ---------------------------------------------------------------------------
    def kernels(self, comp: str, times: int = 1, skip: Optional[str] = None,
                stack_len: Optional[int] = None) -> list[Kernel]:
        """Every kernel `comp` launches (nested loops and conditionals expanded; not the loop
        whose body is `skip`); `stacked` marks those named as the layer loop's or reading a
        parameter or loop result that is a layer stack (leading axis `stack_len`)."""
        types = {i.name: i.result for i in self.computations[comp]}
        by_name = self._by_name[comp]
        out = []
        for inst in self.computations[comp]:
            op = inst.opcode
            if op in NOTHING_MOVED or op.endswith("-done"):
                continue
            if op == "while":
                trip = _TRIP.search(inst.rest)
                body = re.search(r"\bbody=%?([\w.\-]+)", inst.rest).group(1)
                if body != skip:
                    out += self.kernels(body, times * (int(trip.group(1)) if trip else 1), skip,
                                        stack_len)
                continue
            if op == "conditional":
                branches = [self.kernels(b, times, None, stack_len) for b in self._called(inst)]
                out += max(branches, key=lambda ks: sum(k.moved for k in ks), default=[])
                continue
            args = [types.get(n, "") for n in operands(inst)]
            if op == "fusion":
                fused = self._called(inst)[0]
                read = sum(self._param_read(fused, self._parameter(fused, i), type_bytes(a))
                           if self._parameter(fused, i) else type_bytes(a)
                           for i, a in enumerate(args))
                written = self._root_written(fused)
            elif op in SLICING:
                read = written = type_bytes(inst.result)
            elif op == "dynamic-update-slice":
                read = written = type_bytes(args[1])
            elif op == "scatter":
                read = written = type_bytes(args[-1])
            else:
                read, written = sum(type_bytes(a) for a in args), type_bytes(inst.result)
                if op.endswith("-start") and inst.result.startswith("("):
                    written -= read     # an async start's tuple: its operands, then its results
            name = self._fused_op_name(inst)
            stacked = op_name(inst).endswith(LAYER_LOOP_OP_NAME) or any(
                _is_stack(by_name[n].result, stack_len) for n in operands(inst)
                if n in by_name and by_name[n].opcode in ("parameter", "get-tuple-element"))
            out.append(Kernel(inst.name, op, read, written, MOE_OP_NAME in name, name, times,
                              stacked))
        return out

    def layer_loop_body(self) -> tuple[str, Optional[int]]:
        """(name of the layer loop's body, its trip count)."""
        loop, body = layer_loop(self.computations)
        trip = _TRIP.search(loop.rest)
        return body, int(trip.group(1)) if trip else None

    def entry(self) -> str:
        return list(self.computations)[-1]


@dataclasses.dataclass
class Traffic:
    """One layer-loop iteration's kernels, and the step's kernels outside the loop."""

    layer: list[Kernel]
    outside: list[Kernel]       # kernels of the step outside the layer loop
    trip_count: Optional[int]

    @property
    def hoisted(self) -> list[Kernel]:
        """Kernels outside the loop doing the loop's work (layer stacks, the loop's names)."""
        return [k for k in self.outside if k.stacked and not self.collectives([k])]

    def moved(self, moe: Optional[bool] = None) -> float:
        """Bytes per layer: the loop body's, plus 1/L of the hoisted kernels'."""
        def mine(k):
            return moe is None or k.in_moe == moe
        hoisted = sum(k.moved for k in self.hoisted if mine(k)) / (self.trip_count or 1)
        return sum(k.moved for k in self.layer if mine(k)) + hoisted

    def step_moved(self) -> int:
        """Bytes of the step's kernels outside the loop that are not hoisted loop work."""
        hoisted = {k.name for k in self.hoisted}
        return sum(k.moved for k in self.outside if k.name not in hoisted)

    def collectives(self, kernels: list[Kernel]) -> list[Kernel]:
        return [k for k in kernels if k.opcode.removesuffix("-start") in COLLECTIVES]

    def conditionals(self, module: "Module") -> int:
        return sum(i.opcode == "conditional" for insts in module.computations.values()
                   for i in insts)


def traffic(text: str) -> tuple[Traffic, Module]:
    """The Traffic of a module holding one layer loop."""
    module = Module(text)
    body, trip = module.layer_loop_body()
    layer = module.kernels(body, stack_len=trip)
    outside = module.kernels(module.entry(), skip=body, stack_len=trip)
    return Traffic(layer, outside, trip), module


def dot_flops(module: Module, comp: str, times: int = 1, moe_only: bool = True) -> float:
    """Multiply-add FLOPs (2 per MAC) of every dot and ragged dot `comp` runs (fusions,
    nested loops included), optionally only the MoE's."""
    flops = 0.0
    names = {i.name: i for i in module.computations[comp]}
    for inst in module.computations[comp]:
        if inst.opcode == "while":
            trip = _TRIP.search(inst.rest)
            body = re.search(r"\bbody=%?([\w.\-]+)", inst.rest).group(1)
            flops += dot_flops(module, body, times * (int(trip.group(1)) if trip else 1), moe_only)
            continue
        for called in module._called(inst):
            if inst.opcode in ("fusion", "call", "conditional", "custom-call"):
                flops += dot_flops(module, called, times, moe_only)
        if inst.opcode in ("dot", "ragged-dot") and (not moe_only or MOE_OP_NAME in op_name(inst)):
            lhs = names[operands(inst)[0]].result
            dims = [int(d) for d in _ARRAY.search(lhs).group(2).split(",") if d]
            contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", inst.rest)
            k = math.prod(dims[int(i)] for i in contracting.group(1).split(",") if i) if contracting else 1
            out = sum(math.prod(int(d) for d in ds.split(",") if d) for _, ds in _ARRAY.findall(inst.result))
            flops += 2.0 * out * k * times
    return flops
