"""Default CPU schedules of the bitc kernels (`kernels.binary_kernels`, `kernels.lowbit_kernels`), registered by
kernel name for the "llvm" target kind (`registry.schedule`); `cpu.schedules` applies them.

CPU binary conv: one output row per task across cores; within it a register tile of `ow` pixels × `block`
vectors of output channels, each step one broadcast input word xor'ed with a vector of weight words, then a vector
popcount (vpopcntd on AVX-512 VPOPCNTDQ) into the accumulators. The epilogue reads the row back from L1.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bitc.codegen import registry

if TYPE_CHECKING:
    import tvm
    from tvm import s_tir, tirx
    from tvm.s_tir.schedule import LoopRV, SBlockRV

    from bitc.codegen.target import CpuTarget

# xor+popcount lanes (words × output channels) below which a kernel runs on one core: waking the thread pool
# costs more (~10-20 µs) than it saves on the small late layers of CNV-sized networks.
PARALLEL_MIN_WORK = 1 << 20


@registry.schedule("binary_conv", "llvm")
def _binary_conv_cpu(func: tirx.PrimFunc, target: CpuTarget) -> s_tir.Schedule:
    from tvm.s_tir import Schedule

    sch = Schedule(_module(func))
    popc = sch.get_sblock("popc")
    names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
    if "pad" in names:
        sch.compute_inline(sch.get_sblock("pad"))
    extents = [int(sch.get(loop).extent) for loop in sch.get_loops(popc)]
    if "epilogue" in names:
        out = sch.get_sblock("epilogue")
        out_loops = sch.get_loops(out)
        if len(out_loops) == 5:  # blocked NCHW{b}c output: whole vectors of channels per pixel
            n, o, oh, ow, lanes = out_loops
            sch.reorder(n, oh, o, ow, lanes)
            sch.vectorize(lanes)
        else:
            n, o, oh, ow = out_loops
            sch.reorder(n, oh, o, ow)
    else:
        out = sch.get_sblock("threshold")
        n, oh = sch.get_loops(out)[:2]
    row = sch.fuse(n, oh)
    loops = _compute_popc_at(sch, popc, row)
    if target.num_cores > 1 and math.prod(extents) >= PARALLEL_MIN_WORK:
        sch.parallel(row)
    reduce = [loops[r] for r in ("kh", "kw", "cw") if r in loops]
    pixel_tile = block_tile = 1
    if "block" in loops:
        block_tile = 2 if extents[3] % 2 == 0 else 1
    if "ow" in loops:
        pixel_tile = _pixel_tile(extents[2], 16 // block_tile)
    order = []
    inner = []
    if "block" in loops:
        block_outer, block_inner = sch.split(loops["block"], [None, block_tile])
        order.append(block_outer)
        inner.append(block_inner)
    if "ow" in loops:
        ow_outer, ow_inner = sch.split(loops["ow"], [None, pixel_tile])
        order.append(ow_outer)
        inner.insert(0, ow_inner)
    lane = [loops["lane"]] if "lane" in loops else []
    if len(ordered := [*order, *reduce, *inner, *lane]) > 1:
        sch.reorder(*ordered)
    for loop in lane:
        sch.vectorize(loop)
    for loop in inner:
        sch.unroll(loop)
    if reduce:
        sch.decompose_reduction(popc, reduce[0])
    return sch


def _compute_popc_at(sch: s_tir.Schedule, popc: SBlockRV, row: LoopRV) -> dict[str, LoopRV]:
    """compute_at(popc, row); returns popc's loops under the row by role, those of extent > 1 only.

    compute_at shrinks each loop to the region one output row reads and drops the unit ones, so a loop can vanish
    that had a larger extent before (the lane loop of a conv with one output channel reads lane 0 only). Which
    ones survive is read off a copy that keeps the unit loops, not guessed from the extents before."""
    roles = ("ow", "block", "lane", "kh", "kw", "cw")
    probe = sch.copy()
    probe.compute_at(popc, row, preserve_unit_loops=True)
    kept = [
        role for role, loop in zip(roles, probe.get_loops(popc)[-len(roles) :], strict=True) if _extent(probe, loop) > 1
    ]
    sch.compute_at(popc, row)
    return dict(zip(kept, sch.get_loops(popc)[1:], strict=True))


def _extent(sch: s_tir.Schedule, loop: LoopRV) -> int:
    return int(sch.get(loop).extent)


def _pixel_tile(width: int, cap: int) -> int:
    """Pixels per register tile: a divisor of the row (no tail predicate), 4-8 preferred."""
    for tile in (8, 7, 6, 5, 4):
        if tile <= cap and width % tile == 0:
            return tile
    return next(t for t in range(min(cap, width), 0, -1) if width % t == 0)


@registry.schedule("binary_dense", "llvm")
def _binary_dense_cpu(func: tirx.PrimFunc, target: CpuTarget) -> s_tir.Schedule:
    from tvm.s_tir import Schedule

    sch = Schedule(_module(func))
    popc = sch.get_sblock("popc")
    m, block, lane, k = sch.get_loops(popc)
    blocks = int(sch.get(block).extent)
    tile = next(t for t in (4, 2, 1) if blocks % t == 0)
    block_outer, block_inner = sch.split(block, [None, tile])
    sch.reorder(m, block_outer, k, block_inner, lane)
    rows = sch.fuse(m, block_outer)
    work = math.prod(int(sch.get(loop).extent) for loop in sch.get_loops(popc))
    if target.num_cores > 1 and work >= PARALLEL_MIN_WORK:
        sch.parallel(rows)
    sch.vectorize(lane)
    sch.unroll(block_inner)
    sch.decompose_reduction(popc, k)
    return sch


@registry.schedule("bitpack", "llvm")
def _bitpack_cpu(func: tirx.PrimFunc, target: CpuTarget) -> s_tir.Schedule:
    from tvm.s_tir import Schedule

    sch = Schedule(_module(func))
    block = sch.get_sblock("bitpack")
    loops = sch.get_loops(block)
    if len(loops) == 4 and len(func.params[0].shape) == 4:
        n, h, w, word = loops
        width = int(sch.get(w).extent)
        sch.reorder(n, h, word, w)
        sch.parallel(sch.fuse(n, h))
        lanes = next((v for v in (16, 8) if width % v == 0), 0)
        if lanes:
            _, w_inner = sch.split(w, [None, lanes])
            sch.vectorize(w_inner)
    return sch


@registry.schedule("packed_max_pool", "llvm")
def _packed_max_pool_cpu(func: tirx.PrimFunc, target: CpuTarget) -> s_tir.Schedule:
    from tvm.s_tir import Schedule

    sch = Schedule(_module(func))
    loops = sch.get_loops(sch.get_sblock("packed_max_pool"))
    sch.parallel(sch.fuse(loops[0], loops[1]))
    return sch


@registry.schedule("lowbit_tables", "llvm")
def _lowbit_tables_cpu(func: tirx.PrimFunc, target: CpuTarget) -> s_tir.Schedule:
    from tvm.s_tir import Schedule

    sch = Schedule(_module(func))
    block = sch.get_sblock("tables")
    m, group, lane = sch.get_loops(block)
    sch.vectorize(lane)
    if target.num_cores > 1 and math.prod(int(sch.get(loop).extent) for loop in (m, group)) >= 1 << 14:
        sch.parallel(sch.fuse(m, group))
    return sch


@registry.schedule("lowbit_generic", "llvm")
def _lowbit_generic_cpu(func: tirx.PrimFunc, target: CpuTarget) -> s_tir.Schedule:
    from tvm.s_tir import Schedule

    sch = Schedule(_module(func))
    block = sch.get_sblock("lowbit_matmul")
    m, n, p, _k = sch.get_loops(block)
    if target.num_cores > 1:
        sch.parallel(sch.fuse(m, n))
    sch.decompose_reduction(block, p)
    return sch


def _module(func: tirx.PrimFunc) -> tvm.IRModule:
    import tvm

    return tvm.IRModule({"main": func})
