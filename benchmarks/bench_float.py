"""bitc vs onnxruntime fp32 on float models, side by side in one run, at 1 and 2 threads.

    python benchmarks/bench_float.py [--models resnet18,mobilenet_v2,resnext50,minilm] [--runs 20] [--tune-trials N]

Models: ResNet-18, MobileNetV2 and ResNeXt-50 32x4d (grouped convs) (torch, seeded random weights, 1×3×224×224)
and the real all-MiniLM-L6-v2 sentence encoder (sequence length 128). Each is compiled with the default passes and
whatever tuned schedules the tuning database holds (plus N more trials with --tune-trials); the ratio is
onnxruntime latency / bitc latency (> 1 means bitc is faster). The same inputs (seeded, from the artifact's
manifest) go to both engines.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import bitc
from bitc.bench import bench_artifact, onnxruntime_session

sys.path.append(str(Path(__file__).resolve().parents[1]))  # bitc_zoo: the repository's reference models
from bitc_zoo import cnn, real
from bitc_zoo.export import export_onnx


def export(name: str, folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    path = folder / f"{name}.onnx"
    if name == "minilm":
        tokens = real.minilm_tokenize(real.SAMPLE_SENTENCES[:1], 128)
        example = tuple(torch.from_numpy(tokens[k]) for k in ("input_ids", "attention_mask"))
        export_onnx(real.minilm_encoder(), example, path, input_names=list(tokens), output_names=["embedding"])
        return path, tokens
    module = {"resnet18": cnn.resnet18, "mobilenet_v2": cnn.mobilenet_v2, "resnext50": cnn.resnext50}[name]()
    export_onnx(module, (torch.randn(1, 3, 224, 224),), path, input_names=["image"])
    return path, {"image": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,mobilenet_v2,resnext50,minilm")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--tune-trials", type=int, default=0)
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    console = Console()
    table = Table(
        "model", "threads", "onnxruntime ms", "bitc ms", "ratio ort/bitc", "max abs err", "compile s",
        title="bitc vs onnxruntime fp32 (median latency, each in its own process)",
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bitc-bench-") as tmp:
        folder = Path(tmp)
        for name in args.models.split(","):
            path, inputs = export(name, folder)
            result = bitc.compile(path, folder / f"{name}.bitc", tune_trials=args.tune_trials)
            got = bitc.load(result.path).run(inputs).values()
            reference = onnxruntime_session(str(path), 1).run(None, inputs)
            error = max(float(np.abs(a - b).max()) for a, b in zip(got, reference, strict=True))
            for row in bench_artifact(str(result.path), threads=threads, runs=args.runs, onnx_path=str(path)):
                table.add_row(
                    name,
                    str(row["threads"]),
                    f"{row['onnxruntime']['median_ms']:.2f}",
                    f"{row['bitc']['median_ms']:.2f}",
                    f"{row['speedup_vs_onnxruntime']:.2f}",
                    f"{error:.1e}",
                    f"{sum(result.seconds.values()):.1f}",
                )
            console.print(f"{name}: tuning {result.manifest['tuning']}", style="dim")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
