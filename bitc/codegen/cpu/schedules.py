"""Default CPU schedules for fused TIR functions: fast code without tuning.

The untuned pipeline compiles TIR as naive serial loops (no vectors, no threads: 20-300× slower than
onnxruntime). This pass gives every fused function a schedule that is right for its shape of work, as dlight
schedule rules tried in order:
- a bitc kernel gets its own schedule (`cpu.binary_schedules`, found through `registry`);
- a lane-wise max / min reduction (`nan_semantics.lanewise_reduce`) keeps a vector of partial results in registers;
- an *anchor* (exactly one reduction block: conv, matmul, dense) gets a register-tiled, vectorised, parallel
  schedule with its epilogue (bias, residual add, activation) fused into the accumulator write-back;
- purely elementwise functions are fused into one loop, vectorised and split across cores;
- softmax / layer-norm stages over a single row (a classifier's [1, 1000]) run stage by stage, vectorised;
- the rest (softmax, layer norm, pooling) goes to dlight's CPU rules, then has its outer loop parallelised.
Functions already scheduled (e.g. from a tuning database) are left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bitc.codegen import registry
from bitc.codegen.cpu.nchwc import CONV_BLOCK, DEPTHWISE_BLOCK, GROUPED_SUFFIX
from bitc.codegen.relax.nan_semantics import LANE_PARTIAL, LANE_TAIL

if TYPE_CHECKING:
    import tvm
    from tvm import s_tir, tirx
    from tvm.s_tir import dlight
    from tvm.s_tir.schedule import LoopRV, SBlockRV

    from bitc.codegen.target import CpuTarget


def default_schedule_pass(target: CpuTarget) -> tvm.transform.Pass:
    """A module pass that schedules every unscheduled PrimFunc (dlight's `ApplyDefaultSchedule` over the rules
    below, first match wins), then parallelises the outer loops of functions that have no parallel loop yet."""
    import tvm
    from tvm.s_tir import dlight

    cores, lanes = target.num_cores, target.vector_lanes
    rules = [
        _rule("BitcKernel", lambda func: _bitc_kernel(func, target), declining=False),
        _rule("BitcLanewiseReduction", lambda func: schedule_lanewise_reduction(func, cores, lanes)),
        _rule("BitcAnchor", lambda func: schedule_anchor(func, cores, lanes)),
        _rule("BitcElementwise", lambda func: schedule_elementwise(func, cores, lanes)),
        _rule("BitcSingleRowReduction", lambda func: schedule_single_row_reduction(func, lanes)),
        _rule("BitcRowReduction", lambda func: schedule_row_reduction(func, cores, lanes)),
        *(_declining_on_error(rule) for rule in (dlight.cpu.GEMV(), dlight.cpu.Reduction())),
    ]

    @tvm.transform.module_pass(opt_level=0, name="BitcParallelizeOuterLoops")
    def parallelize(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gvar, func in mod.functions.items():
            if _is_primfunc(func) and (parallel := _try(parallelize_outer_loops, func, cores)) is not None:
                updates[gvar] = parallel
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    return tvm.transform.Sequential([dlight.ApplyDefaultSchedule(*rules), parallelize])


def _bitc_kernel(func: tirx.PrimFunc, target: CpuTarget) -> s_tir.Schedule | None:
    """A bitc kernel's own schedule (`registry.schedule`); None for any other function."""
    name = registry.kernel_name(func)
    schedule = registry.find_schedule(name, target.kind) if name is not None else None
    return schedule(func, target) if schedule is not None else None


def _rule(
    name: str, schedule: Callable[[tirx.PrimFunc], s_tir.Schedule | None], *, declining: bool = True
) -> dlight.ScheduleRule:
    """`schedule(func)` as a dlight rule. `declining`: an exception declines the function (a schedule primitive
    refusing means "not this rule"); otherwise it fails the build."""
    from tvm.s_tir import dlight

    def apply(func: tirx.PrimFunc, _target: tvm.target.Target, _tunable: bool) -> s_tir.Schedule | None:
        return _try(schedule, func) if declining else schedule(func)

    return dlight.ScheduleRule.from_callable(name)(apply)


def _declining_on_error(rule: dlight.ScheduleRule) -> dlight.ScheduleRule:
    """`rule` as one that declines (None) a function it fails on: dlight's GEMV analysis asserts on some
    reductions (ReduceLogSumExp in float64), which would fail the whole compile instead of leaving that one
    function to the next rule or to plain loops."""
    from tvm.s_tir import dlight

    class Declining(dlight.ScheduleRule):
        def apply(
            self, func: tirx.PrimFunc, target: tvm.target.Target, tunable: bool
        ) -> s_tir.Schedule | list[s_tir.Schedule] | None:
            try:
                return rule.apply(func, target, tunable)
            except Exception:  # a rule's own analysis failing means it does not apply
                return None

    return Declining()


def schedule_anchor(func: tirx.PrimFunc, num_cores: int, vector_lanes: int) -> s_tir.Schedule | None:
    """Conv / matmul / depthwise conv: tile spatial loops (register tile × vector), reduce in registers."""
    from tvm import tirx
    from tvm.s_tir import Schedule

    sch = Schedule(_module(func))
    reductions = [b for b in _blocks(sch) if _has_reduction(sch.get(b))]
    if len(reductions) != 1:
        return None
    block = reductions[0]
    _inline_epilogue(sch, block)
    iter_vars = sch.get(block).iter_vars
    loops = sch.get_loops(block)
    if len(loops) != len(iter_vars):
        return None
    spatial = [lp for lp, iv in zip(loops, iter_vars, strict=True) if iv.iter_type == tirx.IterVar.DataPar]
    reduce = [lp for lp, iv in zip(loops, iter_vars, strict=True) if iv.iter_type == tirx.IterVar.CommReduce]
    extents = [int(sch.get(lp).extent) for lp in spatial]
    name = sch.get(block).name_hint  # conv2d_nchwc's block: fusion keeps block names, not function attributes
    is_conv = name.startswith(CONV_BLOCK)
    is_depthwise = name.startswith(DEPTHWISE_BLOCK)
    odd_block = (is_conv or is_depthwise) and extents[-1] % 8 != 0 and 5 <= extents[-1] <= vector_lanes
    if len(spatial) < 2 or not reduce or (extents[-1] % 8 and not odd_block):
        return None
    lanes = extents[-1] if odd_block else vector_lanes if extents[-1] % vector_lanes == 0 else 8
    if (is_conv or is_depthwise) and extents[-2] < 4 and len(spatial) >= 4:
        # a 1-D conv run as 2-D (W = 1) or a very narrow image: tile rows over OH·OW together, or the register
        # tile is one pixel and its single accumulator chain waits on FMA latency
        spatial = [*spatial[:-3], sch.fuse(spatial[-3], spatial[-2]), spatial[-1]]
        extents = [*extents[:-3], extents[-3] * extents[-2], extents[-1]]
    is_gemv = not (is_conv or is_depthwise) and extents[-2] == 1
    if is_gemv:  # M = 1: a wide strip of accumulators in L1, so B streams row by row (not in strided columns)
        vectors = _gemv_vectors(extents[-1] // lanes, num_cores)
    else:
        vectors = 1 if is_conv or is_depthwise else matmul_tile_vectors(extents[-1] // lanes, vector_lanes >= 16)
    vec_outer, vec_inner = sch.split(spatial[-1], [None, lanes * vectors])
    channel_tile: list[LoopRV] = []
    if is_conv and len(spatial) >= 4 and extents[-1] == lanes:
        # a register tile of several output-channel blocks × rows: each broadcast input value feeds one FMA per
        # channel block, each weight vector one per row (one block × 14 rows loads once per FMA)
        # AVX2 too: with 16 ymm registers a 2-4 block tile holds only 8-12 accumulators, but one block × 14 rows
        # loads a broadcast per FMA, which on a Zen 3 ran the convs at half the FMA peak (ResNet-50's 3×3 and 1×1
        # convs 1.6-1.9× faster with multi-block tiles there)
        registers = 32 if vector_lanes >= 16 else 16
        # a grouped conv tiles blocks of one group: they share its broadcast input values
        tileable = int(name.rpartition(GROUPED_SUFFIX)[2]) if GROUPED_SUFFIX in name else extents[1]
        # a stem's plain NCHW input (reduced over channels, not channel blocks) ran 70 % slower with a row tail
        blocks_tiled, rows = _conv_register_tile(tileable, extents[-2], registers, tail=len(reduce) == 4)
    else:
        blocks_tiled = 1
        register_cap = 7 if is_depthwise else 14 if vectors == 1 else 6 if vectors == 2 else 4
        rows = _largest_divisor(extents[-2], register_cap)
        if rows < 4 < extents[-2]:
            rows = _largest_divisor(extents[-2], 16)
    if blocks_tiled > 1:
        channel_outer, channel_inner = sch.split(spatial[1], [None, blocks_tiled])
        spatial = [spatial[0], channel_outer, *spatial[2:]]
        channel_tile = [channel_inner]
    row_outer, row_inner = sch.split(spatial[-2], [None, rows])
    outer = spatial[:-2]
    # matmul: column tiles outside row tiles, so a K × (vector tile) panel of B stays in L2 while all rows pass
    # (B re-read per row tile would move cols/rows = 16× more data; that limited two-thread scaling)
    tiles = [row_outer, vec_outer] if is_conv or is_depthwise else [vec_outer, row_outer]
    # rows outside channel blocks: a row's broadcast input stays in one register while the blocks' weights
    # (kept in registers across rows) multiply it
    sch.reorder(*outer, *tiles, *reduce, row_inner, *channel_tile, vec_inner)
    if is_depthwise and outer:  # serial column tiles keep the padding conditions simple for LLVM
        parallel, tile = sch.fuse(*outer), tiles[-1]
    else:  # column tiles in parallel too: a GEMV (M = 1) has a single row tile
        parallel = tile = sch.fuse(*outer, *tiles)

    accumulator = sch.cache_write(block, 0, "local")
    consumers = sch.get_consumers(accumulator)
    while (
        len(consumers) == 1
        and _same_domain(sch, accumulator, consumers[0])
        and _try(sch.reverse_compute_inline, consumers[0], ok=True)
    ):
        consumers = sch.get_consumers(accumulator)
    sch.reverse_compute_at(accumulator, tile)
    for producer in sch.get_producers(block):
        if is_depthwise:  # 9 loads per FMA-tap: a padded copy costs more memory traffic than the branches
            _try(sch.compute_inline, producer, ok=True)
        else:  # padding: its own parallel loop (inlining puts branches in the inner loop)
            _try(_parallel_vectorized, sch, producer, lanes)
    sch.parallel(parallel)
    for loop in channel_tile:
        sch.unroll(loop)
    sch.unroll(row_inner)
    lane_outer, lane_inner = sch.split(vec_inner, [None, lanes])
    if not is_gemv:
        sch.unroll(lane_outer)
    sch.vectorize(lane_inner)
    init = sch.decompose_reduction(block, reduce[0])
    init_loops = sch.get_loops(init)
    if sch.get(init_loops[-1]).kind != tirx.ForKind.VECTORIZED:
        sch.vectorize(init_loops[-1])
    write_loops = sch.get_loops(accumulator)
    _, write_inner = sch.split(write_loops[-1], [None, lanes])
    sch.vectorize(write_inner)
    for epilogue in sch.get_consumers(accumulator):  # one the write-back could not take in (reads it twice)
        if _same_domain(sch, accumulator, epilogue) and _try(sch.reverse_compute_at, epilogue, tile, ok=True):
            _, epilogue_inner = sch.split(sch.get_loops(epilogue)[-1], [None, lanes])
            sch.vectorize(epilogue_inner)
        elif len(sch.get_loops(epilogue)) > 1:  # over another domain (an SE gate times the activation): its own
            _try(_parallel_vectorized, sch, epilogue, lanes)  # parallel, vectorised loop, not a serial one
    if is_depthwise:
        for loop in reduce:
            sch.unroll(loop)
    return sch


def _inline_epilogue(sch: s_tir.Schedule, anchor: SBlockRV) -> None:
    """Elementwise stages after the anchor that read its result more than once (HardSwish, SiLU: joined by
    `epilogue_fusion`) inlined into the last one, so the epilogue is a single consumer that the accumulator
    write-back can take in (bounded by `_inlined_producers`: no exponential copies)."""
    import math

    from tvm import tirx

    blocks = _blocks(sch)
    position = next((i for i, b in enumerate(blocks) if sch.get(b).same_as(sch.get(anchor))), None)
    after = blocks[position + 1 :] if position is not None else []
    if len(after) < 2 or any(_has_reduction(sch.get(b)) for b in after):
        return
    outputs = math.prod(int(iv.dom.extent) for iv in sch.get(anchor).iter_vars if iv.iter_type == tirx.IterVar.DataPar)
    if any(_points(sch, b) != outputs for b in after):  # a broadcast (SE gate × activation): left as is
        return
    for stage in _inlined_producers(sch, after):
        _try(sch.compute_inline, stage, ok=True)


def schedule_single_row_reduction(func: tirx.PrimFunc, vector_lanes: int) -> s_tir.Schedule | None:
    """Reductions and elementwise stages over one row (softmax or layer norm of [1, N]): each stage its own loop
    over the row, elementwise stages vectorised. dlight's CPU rule takes the row's elements for rows and computes
    every reduction once per element (a [1, 1000] softmax took 3.7 ms instead of microseconds)."""
    import math

    from tvm import tirx
    from tvm.s_tir import Schedule

    sch = Schedule(_module(func))
    blocks = _blocks(sch)
    reductions = [b for b in blocks if _has_reduction(sch.get(b))]
    if len(blocks) < 2 or not reductions or _has_reduction(sch.get(blocks[-1])):
        return None
    for block in reductions:  # one row: every value a reduction keeps (its spatial extents) is a single one
        spatial = [iv for iv in sch.get(block).iter_vars if iv.iter_type == tirx.IterVar.DataPar]
        if math.prod(int(iv.dom.extent) for iv in spatial) != 1:
            return None
    for block in blocks:
        if _has_reduction(sch.get(block)):
            continue
        loops = sch.get_loops(block)
        if not loops:
            continue
        inner = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        if int(sch.get(inner).extent) >= vector_lanes:
            _, lanes = sch.split(inner, [None, vector_lanes])
            sch.vectorize(lanes)
    return sch


def schedule_row_reduction(func: tirx.PrimFunc, num_cores: int, vector_lanes: int) -> s_tir.Schedule | None:
    """Row-wise reductions and elementwise stages (softmax, layer norm over the last axis): rows in parallel, each
    stage its own loop over the row, elementwise stages vectorised over whole vectors (a row length no vector
    divides gets a scalar remainder loop) and sums over the row kept as a vector of partial sums. dlight's rule
    sums a row one element at a time, an add's latency per element (a [12, 256, 256] softmax 2.6 ms against
    onnxruntime's 0.66 ms), and predicates every vector on a ragged row length, which LLVM turns into scalar
    code (a [40, 6625] softmax took 1.1 ms)."""
    import math

    from tvm import tirx
    from tvm.s_tir import Schedule

    sch = Schedule(_module(func))
    blocks = _blocks(sch)
    reductions = [b for b in blocks if _has_reduction(sch.get(b))]
    if len(blocks) < 2 or not reductions or _has_reduction(sch.get(blocks[-1])):
        return None
    loops = sch.get_loops(blocks[-1])
    if len(loops) < 2 or len(loops) != len(sch.get(blocks[-1]).iter_vars):
        return None
    length = int(sch.get(loops[-1]).extent)
    if length < vector_lanes:
        return None
    rows = math.prod(int(sch.get(lp).extent) for lp in loops[:-1])
    for block in reductions:  # one value per row: the reduction runs along the row and nothing else
        spatial = [iv for iv in sch.get(block).iter_vars if iv.iter_type == tirx.IterVar.DataPar]
        if math.prod(int(iv.dom.extent) for iv in spatial) != rows:
            return None
    for block in blocks[:-1]:  # elementwise stages into their elementwise consumers: one pass over the row
        consumers = sch.get_consumers(block)
        if not _has_reduction(sch.get(block)) and all(
            not _has_reduction(sch.get(c)) and _same_domain(sch, block, c) for c in consumers
        ):
            _try(sch.compute_inline, block, ok=True)
    partials = [p for b in reductions if (p := _try(_sum_in_lanes, sch, b, vector_lanes)) is not None]
    blocks = _blocks(sch)
    loops = sch.get_loops(blocks[-1])
    row = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    for block in reversed(blocks[:-1]):
        sch.compute_at(block, row, preserve_unit_loops=True)
    if num_cores > 1 and rows >= 2:
        sch.parallel(row)
    for partial in partials:
        _vectorize_partial_sums(sch, partial)
    for block in blocks:
        if _has_reduction(sch.get(block)):
            continue
        inner = sch.get_loops(block)[-1]
        extent = int(sch.get(inner).extent)
        whole = extent // vector_lanes * vector_lanes
        if whole == 0:
            continue
        if whole != extent:
            inner = sch.loop_partition(inner, [whole, None])[0]
        _, lanes = sch.split(inner, [None, vector_lanes])
        sch.vectorize(lanes)
    return sch


def _sum_in_lanes(sch: s_tir.Schedule, block: SBlockRV, vector_lanes: int) -> SBlockRV | None:
    """A sum along a row of whole vectors split into `vector_lanes` partial sums (rfactor) and a sum of those;
    returns the partial sums' block. Other reducers (the NaN-keeping max) are left as they are."""
    from tvm import tirx

    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    if kinds.count(tirx.IterVar.CommReduce) != 1 or kinds[-1] != tirx.IterVar.CommReduce:
        return None
    reduce = sch.get_loops(block)[-1]
    extent = int(sch.get(reduce).extent)
    if extent % vector_lanes or extent < 2 * vector_lanes:
        return None
    init, update = sch.get(block).init, sch.get(block).body
    if not (isinstance(init, tirx.BufferStore) and isinstance(init.value, tirx.FloatImm) and init.value.value == 0):
        return None
    if not (isinstance(update, tirx.BufferStore) and isinstance(update.value, tirx.Add)):
        return None
    _, lane = sch.split(reduce, [None, vector_lanes])
    return sch.rfactor(lane, factor_axis=len(sch.get(block).iter_vars) - 1)


def _vectorize_partial_sums(sch: s_tir.Schedule, partial: SBlockRV) -> None:
    """The partial sums' chunk loop outside, their lane loop inside and vectorised: one vector add per chunk
    (called after compute_at, which gives the partial block's row loops extent 1)."""
    from tvm import tirx

    kinds = [iv.iter_type for iv in sch.get(partial).iter_vars]
    loops = sch.get_loops(partial)[-len(kinds) :]
    spatial = [lp for lp, kind in zip(loops, kinds, strict=True) if kind == tirx.IterVar.DataPar]
    lane = max(spatial, key=lambda lp: int(sch.get(lp).extent))  # the row's own loops are unit ones by now
    chunk = next(lp for lp, kind in zip(loops, kinds, strict=True) if kind == tirx.IterVar.CommReduce)
    sch.reorder(chunk, lane)
    sch.vectorize(lane)
    sch.vectorize(sch.get_loops(sch.decompose_reduction(partial, chunk))[-1])


def schedule_lanewise_reduction(func: tirx.PrimFunc, num_cores: int, vector_lanes: int) -> s_tir.Schedule | None:
    """A lane-wise max / min (`nan_semantics.lanewise_reduce`): output rows in parallel; in each row a vector of
    partial results stays in registers while the chunk loop runs (the lane loop innermost and vectorised), then
    its lanes and the row's tail are reduced under the same row loop."""
    from tvm.s_tir import Schedule

    sch = Schedule(_module(func))
    named = {sch.get(b).name_hint: b for b in _blocks(sch)}
    partial = named.get(LANE_PARTIAL)
    if partial is None:
        return None
    for producer in sch.get_producers(partial):
        _try(sch.compute_inline, producer, ok=True)
    (final,) = sch.get_consumers(partial)
    row = _row_loop(sch, final)
    if row is not None:
        for block in (named.get(LANE_TAIL), partial):
            if block is not None:
                sch.compute_at(block, row, preserve_unit_loops=True)
        for epilogue in sch.get_consumers(final):  # fused elementwise consumers of the result
            _try(sch.reverse_compute_at, epilogue, row, ok=True)
        if num_cores > 1 and int(sch.get(row).extent) >= 2:
            sch.parallel(row)
    first_reduce = _vectorize_lanes(sch, partial, vector_lanes)
    init = sch.decompose_reduction(partial, first_reduce)
    _vectorize_innermost(sch, init, vector_lanes)
    return sch


def _row_loop(sch: s_tir.Schedule, block: SBlockRV) -> LoopRV | None:
    """The block's spatial loops fused into one (None for a single output value)."""
    from tvm import tirx

    iter_vars = sch.get(block).iter_vars
    loops = sch.get_loops(block)
    spatial = [lp for lp, iv in zip(loops, iter_vars, strict=True) if iv.iter_type == tirx.IterVar.DataPar]
    return sch.fuse(*spatial) if len(spatial) > 1 else spatial[0] if spatial else None


def _vectorize_lanes(sch: s_tir.Schedule, partial: SBlockRV, vector_lanes: int) -> LoopRV:
    """Reduction loops outside, the lane loop inside and vectorised; returns the outermost reduction loop."""
    from tvm import tirx

    kinds = [iv.iter_type for iv in sch.get(partial).iter_vars]
    loops = sch.get_loops(partial)[-len(kinds) :]  # one per block variable, row dims included (unit after compute_at)
    reduce = [lp for lp, kind in zip(loops, kinds, strict=True) if kind == tirx.IterVar.CommReduce]
    lane = [lp for lp, kind in zip(loops, kinds, strict=True) if kind == tirx.IterVar.DataPar][-1]
    sch.reorder(*reduce, lane)
    _vectorize_loop(sch, lane, vector_lanes)
    return reduce[0]


def _vectorize_innermost(sch: s_tir.Schedule, block: SBlockRV, vector_lanes: int) -> None:
    _vectorize_loop(sch, sch.get_loops(block)[-1], vector_lanes)


def _vectorize_loop(sch: s_tir.Schedule, loop: LoopRV, vector_lanes: int) -> None:
    """Vectorise `loop`; one longer than a vector register as unrolled register-sized vectors."""
    extent = int(sch.get(loop).extent)
    if extent > vector_lanes and extent % vector_lanes == 0:
        outer, loop = sch.split(loop, [None, vector_lanes])
        sch.unroll(outer)
    sch.vectorize(loop)


def schedule_elementwise(func: tirx.PrimFunc, num_cores: int, lanes: int) -> s_tir.Schedule | None:
    """Injective-only functions: inline producers, one fused loop, vectors of 16, chunks per core."""
    from tvm import tirx
    from tvm.s_tir import Schedule

    sch = Schedule(_module(func))
    blocks = _blocks(sch)
    if not blocks or any(iv.iter_type != tirx.IterVar.DataPar for b in blocks for iv in sch.get(b).iter_vars):
        return None
    for block in _inlined_producers(sch, blocks):
        _try(sch.compute_inline, block, ok=True)
    for block in _blocks(sch):
        loops = sch.get_loops(block)
        if not loops:
            continue
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        extent = int(sch.get(fused).extent)
        if extent >= 1024 and extent % lanes == 0:
            outer, inner = sch.split(fused, [None, lanes])
            sch.vectorize(inner)
            if extent >= 16384 and num_cores > 1:
                chunks, _ = sch.split(outer, [num_cores, None])
                sch.parallel(chunks)
    return sch


_MAX_COPIES = 16


def _inlined_producers(sch: s_tir.Schedule, blocks: list[SBlockRV]) -> list[SBlockRV]:
    """All blocks but the last, less those whose expression inlining would copy more than `_MAX_COPIES` times.

    A NaN-keeping ReLU (`x < 0 ? 0 : x`) reads its input twice, so inlining a chain of k of them copies the first
    producer 2^k times, and TVM's simplifier (each select branch simplified under its condition) then takes time
    exponential in k: 7 ReLUs in one fused function took 13 s, a 20,000-node Add/Mul/ReLU chain never finished.
    Such a block is computed into its buffer instead; below the bound every block is inlined, as before."""
    nodes = [sch.get(block) for block in blocks]
    index_of = {node.writes[0].source: i for i, node in enumerate(nodes) if len(node.writes) == 1}
    reads = [_load_counts(node.body, index_of) for node in nodes]
    copies = [1] * len(nodes)  # how often each block's expression appears once its consumers are inlined
    inlined = []
    for i in reversed(range(len(nodes) - 1)):
        total = sum(copies[j] * reads[j].get(i, 0) for j in range(i + 1, len(nodes)))
        if total <= _MAX_COPIES:
            copies[i] = max(total, 1)
            inlined.append(blocks[i])
    return inlined[::-1]


def _load_counts(stmt: tirx.Stmt, index_of: dict[tirx.Var, int]) -> dict[int, int]:
    """How many times `stmt` (one block's store, before inlining: small) loads each block's buffer."""
    from tvm.ir.expr import TensorLoad

    counts: dict[int, int] = {}
    stack = [stmt]
    while stack:
        node = stack.pop()
        if isinstance(node, TensorLoad) and (i := index_of.get(node.source)) is not None:
            counts[i] = counts.get(i, 0) + 1
        for name in ("a", "b", "condition", "true_value", "false_value", "value", "args", "body", "indices"):
            child = getattr(node, name, None)
            if child is None:
                continue
            stack.extend(child if isinstance(child, list | tuple) or type(child).__name__ == "Array" else [child])
    return counts


def parallelize_outer_loops(func: tirx.PrimFunc, num_cores: int) -> tirx.PrimFunc | None:
    """Mark the outermost data-parallel loop of each top-level block parallel where nothing already is
    (dlight's CPU rules vectorise softmax/layer-norm rows but run them on one core)."""
    from tvm import tirx
    from tvm.s_tir import Schedule

    if num_cores < 2 or _has_parallel_loop(func):
        return None
    sch = Schedule(_module(func))
    changed = False
    seen: set[LoopRV] = set()
    for block in _blocks(sch):
        loops = sch.get_loops(block)
        if not loops or loops[0] in seen:
            continue
        seen.add(loops[0])
        loop = sch.get(loops[0])
        if loop.kind == tirx.ForKind.SERIAL and int(loop.extent) >= 2 and _try(sch.parallel, loops[0], ok=True):
            changed = True
    return sch.mod["main"] if changed else None


def _has_parallel_loop(func: tirx.PrimFunc) -> bool:
    import tvm_ffi
    from tvm import tirx

    def parallel(loop: tirx.For) -> tvm_ffi.VisitInterrupt | None:
        return tvm_ffi.VisitInterrupt(True) if loop.kind == tirx.ForKind.PARALLEL else None

    return tvm_ffi.structural_walk(func.body, (tirx.For, parallel)) is not None


def _parallel_vectorized(sch: s_tir.Schedule, block: SBlockRV, lanes: int) -> None:
    """All loops but the innermost in parallel (an image's 3 channels alone would split 2:1 over 2 cores)."""
    loops = sch.get_loops(block)
    sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])
    if len(loops) > 2 and int(sch.get(loops[-1]).extent) % lanes == 0:
        sch.vectorize(loops[-1])


def _module(func: tirx.PrimFunc) -> tvm.IRModule:
    import tvm

    return tvm.IRModule({"main": func})


def _blocks(sch: s_tir.Schedule) -> list[SBlockRV]:
    try:
        return list(sch.get_child_blocks(sch.get_sblock("root")))
    except Exception:
        return []


def _same_domain(sch: s_tir.Schedule, producer: SBlockRV, consumer: SBlockRV) -> bool:
    """Whether `consumer` iterates over as many points as `producer`. TVM's reverse_compute_inline accepts a
    consumer that reads only part of the producer (a slice of its first columns) and then writes the whole
    producer domain through the consumer's indices: out of bounds. An epilogue (bias, activation, reshape) covers
    the domain; a slice does not, and stays a block of its own."""
    size = _points(sch, producer)
    return size is not None and size == _points(sch, consumer)


def _points(sch: s_tir.Schedule, block: SBlockRV) -> int | None:
    """How many points `block` iterates over (None when an extent is not a constant)."""
    import math

    extents = [getattr(iv.dom.extent, "value", None) for iv in sch.get(block).iter_vars]
    return None if None in extents else math.prod(extents)


def _has_reduction(block: s_tir.SBlock) -> bool:
    from tvm import tirx

    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in block.iter_vars)


def _is_primfunc(func: tvm.ir.BaseFunc) -> bool:
    from tvm import tirx

    return isinstance(func, tirx.PrimFunc)


def matmul_tile_vectors(blocks: int, has_32_registers: bool = True) -> int:
    """Vectors per register-tile row for a matmul with `blocks` vectors along N: more columns per row halves the
    broadcasts per FMA; 5 covers N = 1000 (a classifier) in ymm vectors. With 16 registers (AVX2) the tile is at
    most 12 accumulators (2 vectors × 6 rows, 3 × 4): 4 × 4 took all 16 and spilled (MiniLM's matmuls ran at
    ~34 GFLOP/s on a Zen 3)."""
    choices = (4, 5, 3, 2, 1) if has_32_registers else (2, 3, 1)
    return next(v for v in choices if blocks % v == 0)


def _gemv_vectors(blocks: int, num_cores: int, cap: int = 256) -> int:
    """Vectors per GEMV strip: the row split into the fewest strips that give every core one and keep a strip's
    accumulators (a stack buffer) within `cap` vectors."""
    strips = next(d for d in range(min(num_cores, blocks), blocks + 1) if blocks % d == 0 and blocks // d <= cap)
    return blocks // strips


_MAX_CHANNEL_BLOCKS = 4


def _conv_register_tile(channel_blocks: int, row_extent: int, registers: int, tail: bool = True) -> tuple[int, int]:
    """(output-channel blocks, rows) of a conv register tile: the accumulators, one weight vector per block, one
    broadcast input and one spare must fit the vector registers; among the tiles that do, the fewest loads per
    FMA (1/blocks + 1/rows). ResNet-50's 1×1 convs went from ~60-75 % to ~90 % of the FMA peak. Without the
    spare, AVX2's 1 block × 14 rows (all 16 registers) spilled and ran at ~40 GF/s on a Zen 3, 1 × 7 at ~65."""
    usable = registers - 2  # one broadcast, one spare
    rows = _largest_divisor(row_extent, min(14, usable - 1))
    if rows < 4 < row_extent:
        rows = _largest_divisor(row_extent, min(16, usable - 1))
    best = (1.0 + 1.0 / rows, 1, rows)
    for blocks in range(2, min(_MAX_CHANNEL_BLOCKS, channel_blocks) + 1):
        if channel_blocks % blocks or (usable - blocks) // blocks < 2:
            continue
        rows = _largest_divisor(row_extent, min(14, (usable - blocks) // blocks))
        cost = 1.0 / blocks + 1.0 / rows
        if cost < best[0] - 1e-9:
            best = (cost, blocks, rows)
    tail_tile = _TAIL_TILE.get(registers) if tail else None
    if tail_tile is None:
        return best[1], best[2]
    tail_blocks, tail_rows = tail_tile
    # a one-block tile's rows each load a broadcast per FMA: past 8 rows it gained nothing on a Zen 3
    useful = best[1] * best[2] if best[1] > 1 else min(best[2], 8)
    if useful < tail_blocks * tail_rows and row_extent >= 2 * tail_rows and channel_blocks % tail_blocks == 0:
        return tail_blocks, tail_rows  # rows need not divide: the last tile is predicated
    return best[1], best[2]


# With 16 registers (AVX2) the 12-accumulator tile of MLAS's kernels, 2 blocks × 6 rows, even with a shorter,
# predicated last tile, beat the divisor tiles on a Zen 3: 13-wide 3×3 convs 35-42 → 75 GF/s (1 × 13),
# 14-wide 60-65 → 82-84 (4 × 2), 27- and 28-wide 62-88 → 81-95 (1 × 9, 2 × 4), 56-wide the same; 7-wide convs
# keep 1 × 7 (2 × 6 + 1 was slower)
_TAIL_TILE = {16: (2, 6)}


def _largest_divisor(n: int, cap: int) -> int:
    return next(d for d in range(min(n, cap), 0, -1) if n % d == 0)


def _try(fn: Callable[..., Any], *args: Any, ok: bool = False) -> Any:
    """Schedule primitives refuse what they cannot do by raising; a refusal means 'leave it as it was'."""
    try:
        result = fn(*args)
    except Exception:
        return False if ok else None
    return True if ok else result
