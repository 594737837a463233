"""GPU schedules of the bitc TE kernels: popcount GEMMs over shared-memory tiles, thread-bound elementwise blocks.

The binary dense and conv computes (`binary_kernels`, with one output channel per "lane") are GEMMs whose
multiply-add is `popc(a ^ w)`: a block of threads computes a tile of pixels × output channels, staging a
`chunk`-word slice of the packed inputs and weights in shared memory per step, and each thread keeps a
`inner × inner` tile of int32 sums in registers. Every transformation is a TVM schedule primitive, so the
scheduled kernel computes exactly what the (CPU-tested) compute definition says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tvm import s_tir

THREADS = 16  # threads per tile side: 256 per block
INNER = 4  # outputs per thread per side: a 64 × 64 tile per block
CHUNK = 8  # packed words (256 bits) of the reduction staged in shared memory per step
ELEMENTWISE_THREADS = 256


def _split_sizes(extent: int) -> tuple[int, int]:
    """(threads, outputs per thread) along one side of the tile, shrunk for small extents."""
    inner = INNER if extent >= THREADS * INNER else max(1, extent // THREADS) if extent >= THREADS else 1
    threads = THREADS if extent >= THREADS else 1 << max(0, (extent - 1).bit_length())
    return threads, inner


def schedule_popcount_gemm(
    sch: s_tir.Schedule, block_name: str = "popc", shared: tuple[str, ...] = ("data", "weights")
) -> None:
    """Tile the popcount reduction `block_name` (spatial: pixel axes…, channel, lane; reduction: the window, then
    the packed words) and stage the `shared` operands' word chunks in shared memory; padding producers are inlined.

    A conv stages only its weights (every pixel of the tile reuses them; the input words a tile reads are
    scattered over image rows, and threads of one channel row read the same word, which the cache broadcasts)."""
    from tvm import tirx

    block = sch.get_sblock(block_name)
    for producer in sch.get_producers(block):
        sch.compute_inline(producer)
    iter_types = [iv.iter_type for iv in sch.get(block).iter_vars]
    reductions = sum(t == tirx.IterVar.CommReduce for t in iter_types)
    loops = sch.get_loops(block)
    spatial, reduction = loops[: len(loops) - reductions], loops[len(loops) - reductions :]
    pixel = sch.fuse(*spatial[:-2]) if len(spatial) > 3 else spatial[0]
    channel = sch.fuse(*spatial[-2:])
    pixels, channels, words = (int(sch.get(loop).extent) for loop in (pixel, channel, reduction[-1]))
    (p_threads, p_inner), (c_threads, c_inner) = _split_sizes(pixels), _split_sizes(channels)

    local = sch.cache_write(block, 0, "local")
    bp, tp, ip = sch.split(pixel, [None, p_threads, p_inner])
    bc, tc, ic = sch.split(channel, [None, c_threads, c_inner])
    ko, ki = sch.split(reduction[-1], [None, min(CHUNK, words)])
    sch.reorder(bp, bc, tp, tc, *reduction[:-1], ko, ki, ip, ic)
    sch.bind(sch.fuse(bp, bc), "blockIdx.x")
    sch.bind(tp, "threadIdx.y")
    sch.bind(tc, "threadIdx.x")
    sch.reverse_compute_at(local, tc)

    depth = 1 + next(i for i, loop in enumerate(sch.get_loops(block)) if sch.get(loop).same_as(sch.get(ko)))
    reads = read_names(sch, block)
    for name in shared:
        cache = sch.cache_read(block, reads.index(name), "shared")
        sch.compute_at(cache, ko)
        fused = sch.fuse(*sch.get_loops(cache)[depth:])
        _, ty, tx = sch.split(fused, [None, p_threads, c_threads])
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
    sch.decompose_reduction(block, reduction[0] if len(reduction) > 1 else ko)


def read_names(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> list[str]:
    """Names of the buffers `block` reads, in its read-region order (what `cache_read` indexes)."""
    return [region.source.name for region in sch.get(block).reads]


def schedule_elementwise(sch: s_tir.Schedule, skip: set[str]) -> None:
    """One thread per output element for every block not named in `skip` (a reduction, such as a row's bit
    count, runs serially inside its thread)."""
    from tvm import tirx

    names = [sch.get(block).name_hint for block in sch.get_child_blocks(sch.get_sblock("root"))]
    for name in names:
        if name in skip:
            continue
        block = sch.get_sblock(name)
        spatial = sum(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)
        loops = sch.get_loops(block)[:spatial]
        if not loops:
            continue
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        bx, tx = sch.split(fused, [None, ELEMENTWISE_THREADS])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
