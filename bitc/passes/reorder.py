"""Channel reordering: permute channels, folded into every producer and consumer (no permute at run time)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from bitc.errors import BadInputError
from bitc.passes import channel_rewrite
from bitc.passes.channel_graph import build_channel_graph, output_axes
from bitc.passes.options import configure, option
from bitc.passes.registry import register

CRITERIA = ("l1", "l2", "bn_gamma", "activation")


@dataclass
class ReorderReport:
    reordered: int = 0
    channels_moved: int = 0
    fixed: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"groups_reordered": self.reordered, "channels_moved": self.channels_moved, "fixed_groups": self.fixed}


@register(
    "reorder",
    phase="channel",
    order=1,
    exact=True,
    switch=("--reorder", "sort channels by importance (exact; folded into weights)"),
)
class Reorder(ir.passes.InPlacePass):
    """Permute channels by importance (most salient first), folded into producers and consumers; exact.

    Every coupled group (a layer's output channels with everything that reads them: BN, residual branches,
    depthwise convs, Concat blocks, the next layer's input slices) is sorted by its channels' `criterion` norm, so
    salient channels form one contiguous leading block (partial binarization keeps it in higher precision without
    a gather) and channels of similar scale sit together (block-wise scales). `layers` limits it to the groups
    produced by those nodes. The function is unchanged up to float rounding.
    """

    @dataclass(frozen=True)
    class Options:
        criterion: str = option("l2", f"channel importance: {', '.join(CRITERIA)}")
        layers: list[str] | None = option(None, "reorder only the groups these nodes produce")

        def __post_init__(self) -> None:
            if self.criterion not in CRITERIA:
                raise BadInputError(f"reorder: criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")

    def __init__(self, **options: Any) -> None:
        super().__init__()
        o = self.options = configure(self, options)
        self.criterion = o.criterion
        self.layers = list(o.layers) if o.layers is not None else None
        self.report = ReorderReport()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.report = ReorderReport()
        cg = build_channel_graph(model)
        groups = cg.groups()
        wanted = output_axes(model, self.layers)
        scores = channel_rewrite.importance(model, cg, groups, self.criterion)
        ranks: dict[int, np.ndarray] = {}
        for g, group in enumerate(groups):
            if not group.permutable:
                for reason in group.fixed_because:
                    self.report.fixed[reason] = self.report.fixed.get(reason, 0) + 1
                continue
            if wanted is not None and not wanted & set(group.dims):
                continue
            order = np.argsort(-scores[g], kind="stable")
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order))
            if np.any(rank != np.arange(len(rank))):
                ranks[g] = rank
        channel_rewrite.apply_ranks(model, cg, groups, ranks, self.report.fixed)
        self.report.channels_moved = sum(int(np.sum(rank != np.arange(len(rank)))) for rank in ranks.values())
        self.report.reordered = len(ranks)
        return ir.passes.PassResult(model, bool(ranks))
