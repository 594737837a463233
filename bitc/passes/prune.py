"""Structured pruning: remove whole channels (filters, features) with every coupled tensor kept consistent."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from bitc.errors import BadInputError
from bitc.layers import layer_table, summarize_layers
from bitc.passes import channel_rewrite
from bitc.passes.calibration import load_calibration
from bitc.passes.channel_graph import build_channel_graph, output_axes
from bitc.passes.options import configure, option
from bitc.passes.registry import register
from bitc.passes.reorder import CRITERIA


@dataclass
class PruneReport:
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    groups: dict[str, list[int]] = field(default_factory=dict)  # first axis of the group → [channels, kept]
    fixed: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "groups": self.groups, "fixed_groups": self.fixed}


@register("prune", phase="channel", needs_flag="--prune")
class Prune(ir.passes.InPlacePass):
    """Remove the least important channels of every coupled group (filters, features, residual streams).

    `ratio` of each group's channels go (`scope="layer"`), or of all channels ranked together after normalising
    each group's scores by its mean (`scope="global"`). Importance is the L1/L2 norm of everything the channel owns
    (the group criterion), |γ| of its BatchNorm/LayerNorm (`bn_gamma`), or `activation`: mean |output| on
    `calibration` inputs (a dict of arrays; seeded random inputs if omitted) × the weights' L2 norm. Kept counts
    are rounded up to `round_to`
    (default 8: convs keep a blocked vector layout — odd counts fall back to much slower NCHW code; 32 or 64 for
    packed binary kernels); groups produced by `protected` nodes are left alone, as are channels
    that reach a graph input/output or an op the channel graph cannot see through (reported as fixed).
    """

    @dataclass(frozen=True)
    class Options:
        ratio: float = option(
            0.3,
            "share of each group's channels to remove, in [0, 1)",
            flag="--prune",
            metavar="RATIO",
            flag_help="remove this share of each channel group (0-1)",
        )
        criterion: str = option("l1", f"channel importance: {', '.join(CRITERIA)}")
        scope: str = option("layer", "'layer': ratio per group; 'global': channels of all groups ranked together")
        round_to: int = option(
            8,
            "keep channel counts a multiple of this",
            flag="--prune-round-to",
            metavar="N",
            flag_help="keep channel counts a multiple of N (default 8)",
        )
        protected: list[str] | None = option(None, "nodes whose output channel groups are left alone")
        layers: list[str] | None = option(None, "prune only the groups these nodes produce")
        calibration: dict[str, Any] | str | os.PathLike | None = option(
            None, "inputs for the 'activation' criterion: arrays by input name, or an .npz file", path=True
        )

        def __post_init__(self) -> None:
            if not 0 <= float(self.ratio) < 1:
                raise BadInputError(f"prune: ratio must be in [0, 1), got {self.ratio}")
            if self.criterion not in CRITERIA:
                raise BadInputError(f"prune: criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")
            if self.scope not in ("layer", "global"):
                raise BadInputError(f"prune: scope must be 'layer' or 'global', got {self.scope!r}")
            if int(self.round_to) < 1:
                raise BadInputError(f"prune: round_to must be >= 1, got {self.round_to}")

        @staticmethod
        def shorthand(ratio: float) -> dict[str, Any]:
            """`bitc.compile(prune=0.3)`: a bare number is the ratio."""
            return {"ratio": ratio}

    def __init__(self, **options: Any) -> None:
        super().__init__()
        o = self.options = configure(self, options)
        self.ratio, self.criterion, self.scope = float(o.ratio), o.criterion, o.scope
        self.round_to = int(o.round_to)
        self.protected = list(o.protected or [])
        self.layers = list(o.layers) if o.layers is not None else None
        self.calibration = load_calibration(o.calibration) if o.calibration is not None else None
        self.report = PruneReport()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.report = PruneReport()
        self.report.before = _size(model)
        cg = build_channel_graph(model)
        groups = cg.groups()
        protected = output_axes(model, self.protected) or set()
        wanted = output_axes(model, self.layers)
        if wanted is not None:
            self._check_requested(model, groups, wanted)
        scores = channel_rewrite.importance(model, cg, groups, self.criterion, self.calibration)
        candidates = []
        for g, group in enumerate(groups):
            if not group.prunable:
                for reason in group.fixed_because or group.uncuttable_because:
                    self.report.fixed[reason] = self.report.fixed.get(reason, 0) + 1
            elif not protected & set(group.dims) and (wanted is None or wanted & set(group.dims)):
                candidates.append(g)
        heads = {g for g in candidates if cg.head_axes & set(groups[g].dims)}
        keep = self._kept_counts(candidates, scores, heads)
        ranks: dict[int, np.ndarray] = {}
        for g, count in keep.items():
            n = len(groups[g].channels)
            if count >= n:
                continue
            survivors = np.sort(np.argsort(-scores[g], kind="stable")[:count])  # kept, in their original order
            rank = np.full(n, -1, dtype=np.int64)
            rank[survivors] = np.arange(count)
            ranks[g] = rank
        channel_rewrite.apply_ranks(model, cg, groups, ranks, self.report.fixed)
        for g, rank in ranks.items():
            self.report.groups[f"{groups[g].dims[0][0]}"] = [len(rank), int(np.sum(rank >= 0))]
        self.report.after = _size(model)
        return ir.passes.PassResult(model, bool(ranks))

    def _check_requested(self, model: ir.Model, groups: list, wanted: set) -> None:
        """A layer named in `layers` whose channels cannot be cut is an error naming it and the reason."""
        names = {(node.outputs[0].name): node.name for node in model.graph if node.name in self.layers}
        for group in groups:
            for dim in wanted & set(group.dims):
                if not group.prunable:
                    why = "; ".join(group.fixed_because or group.uncuttable_because)
                    raise BadInputError(f"prune: cannot prune node '{names.get(dim[0], dim[0])}': {why}")

    def _kept_counts(self, candidates: list[int], scores: list[np.ndarray], heads: set[int]) -> dict[int, int]:
        """Channels to keep per group; attention heads are counted as heads (round_to does not apply)."""
        if self.scope == "layer":
            wanted = {g: len(scores[g]) * (1 - self.ratio) for g in candidates}
        else:
            normalised = {g: scores[g] / max(float(scores[g].mean()), 1e-30) for g in candidates}
            pooled = np.concatenate(list(normalised.values())) if normalised else np.zeros(0)
            cut = np.quantile(pooled, self.ratio) if pooled.size else 0.0
            wanted = {g: float(np.sum(normalised[g] > cut)) for g in candidates}
        counts = {}
        for g, target in wanted.items():
            n = len(scores[g])
            step = 1 if g in heads else self.round_to
            counts[g] = min(n, max(step, math.ceil(max(target, 1) / step) * step))
        return counts


def _size(model: ir.Model) -> dict[str, int]:
    summary = summarize_layers(layer_table(model))
    return {"params": int(summary["params"]), "macs": int(summary["macs"])}
