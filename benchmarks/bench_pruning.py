"""Structured pruning: bitc's `prune` (on the ONNX) vs Torch-Pruning (on the nn.Module), and what it buys.

    python benchmarks/bench_pruning.py [--ratios 0.3,0.5] [--runs 30] [--threads 1,2]

ResNet-18 (torch, seeded weights, 224×224). Both prune each coupled group's channels by the L1 norm of its weights
(bitc: `prune` with criterion l1, scope layer; Torch-Pruning: MagnitudePruner, MagnitudeImportance(p=1), the
classifier kept), with kept channel counts unrounded and rounded to multiples of 8. The table gives the
remaining params/MACs (counted the same way, on the BN-folded ONNX), the
output change vs the unpruned model on the same seeded images (relative L2 of the logits; no fine-tuning, so it
is large for both — what matters is that both remove the same structure), and the compiled latency, next to the
original, a reordered model and a reordered + binarized one (`binarize`: all convs but the first and last).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch
from rich.console import Console
from rich.table import Table

import bitc
from bitc.bench import bench_artifact
from bitc.frontend import load_onnx, normalize
from bitc.layers import layer_table, summarize_layers
from bitc.passes import run_pipeline
from bitc.passes.verify import run_onnxruntime

sys.path.append(str(Path(__file__).resolve().parents[1]))  # bitc_zoo: the repository's reference models
from bitc_zoo import cnn
from bitc_zoo.export import export_onnx

console = Console(width=200)
CLEAN = ["fold_constants", "simplify", "eliminate_identity", "fold_batchnorm", "cse", "remove_unused"]


def _counted(path: Path) -> tuple[ir.Model, dict]:
    model, _ = run_pipeline(normalize(load_onnx(path), source=str(path)), CLEAN)
    return model, summarize_layers(layer_table(model))


def _bitc_variant(source: Path, folder: Path, name: str, passes: list) -> Path:
    model, _ = run_pipeline(normalize(load_onnx(source), source=str(source)), [*CLEAN, *passes])
    path = folder / f"{name}.onnx"
    ir.save(model, path)
    return path


def _torch_pruning(ratio: float, example: torch.Tensor, folder: Path, round_to: int | None) -> tuple[Path, int]:
    import torch_pruning as tp

    module = cnn.resnet18()
    pruner = tp.pruner.MagnitudePruner(
        module, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
        ignored_layers=[module.fc], round_to=round_to,
    )  # fmt: skip
    groups = len(
        list(pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types))
    )
    pruner.step()
    path = folder / f"torch_pruning_{ratio}_{round_to}.onnx"
    return export_onnx(module.eval(), (example,), path, input_names=["image"]), groups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", default="0.3,0.5")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    example = torch.randn(1, 3, 224, 224)
    rng = np.random.default_rng(0)
    images = [{"image": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(4)]
    with tempfile.TemporaryDirectory(prefix="bitc-bench-prune-") as tmp:
        folder = Path(tmp)
        source = export_onnx(cnn.resnet18(), (example,), folder / "resnet18.onnx", input_names=["image"])
        variants: dict[str, Path] = {"original": source}
        notes: dict[str, str] = {}
        for ratio in (float(r) for r in args.ratios.split(",")):
            for round_to in (1, 8):
                variant = f"bitc prune {ratio:.0%} round_to {round_to}"
                spec = ("prune", {"ratio": ratio, "round_to": round_to})
                variants[variant] = _bitc_variant(source, folder, f"bitc_{ratio}_{round_to}", [spec])
                path, groups = _torch_pruning(ratio, example, folder, round_to if round_to > 1 else None)
                variants[f"Torch-Pruning {ratio:.0%} round_to {round_to}"] = path
                notes[f"Torch-Pruning {ratio:.0%} round_to {round_to}"] = f"{groups} groups"
        variants["bitc reorder"] = _bitc_variant(source, folder, "reordered", ["reorder"])
        variants["bitc reorder + binarize"] = _bitc_variant(source, folder, "reordered_binary", ["reorder", "binarize"])

        table = Table(
            "model", "params", "MACs (M)", "Δ logits (rel L2)", *[f"bitc ms ({t} thr)" for t in threads], "note",
            title="ResNet-18 224×224: pruning and reordering (compiled with bitc; median latency)",
        )  # fmt: skip
        reference = None
        for name, path in variants.items():
            model, size = _counted(path)
            logits = np.concatenate([run_onnxruntime(model, feeds)[0] for feeds in images])
            if reference is None:
                reference = logits
            delta = f"{np.linalg.norm(logits - reference) / np.linalg.norm(reference):.3f}"
            result = bitc.compile(path, folder / f"{path.stem}.bitc")
            timings = bench_artifact(str(result.path), threads=threads, runs=args.runs)
            if name == "bitc reorder + binarize":
                passes = {p["name"]: p for p in result.manifest["passes"]}
                notes[name] = f"{passes['lower_binary']['details']['lowered']} binary convs"
            if name.startswith("bitc prune"):
                notes[name] = "groups fixed: " + str(_fixed_groups(source, float(name.split()[2][:-1]) / 100))
            table.add_row(
                name, f"{size['params']:,}", f"{size['macs'] / 1e6:,.0f}", delta,
                *[f"{row['bitc']['median_ms']:.2f}" for row in timings], notes.get(name, ""),
            )  # fmt: skip
        console.print(table)
    return 0


def _fixed_groups(source: Path, ratio: float) -> dict:
    model = normalize(load_onnx(source), source=str(source))
    _, records = run_pipeline(model, [*CLEAN, ("prune", {"ratio": ratio})])
    return records[-1].details["fixed_groups"]


if __name__ == "__main__":
    sys.exit(main())
