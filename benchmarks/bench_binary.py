"""Binary networks: bitc's packed kernels vs onnxruntime fp32, vs bitc's own fp32, vs Larq Compute Engine.

    python benchmarks/bench_binary.py [--models bireal18,cnv] [--kernels] [--runs 30] [--threads 1,2]

End to end (each engine and thread count in its own process, median latency):
- Bi-Real-Net-18 224×224 (binary 3×3 convs, float stem/shortcuts/classifier; seeded random weights): bitc binary
  vs onnxruntime fp32 and bitc fp32 on the float twin (same network without binarization), and vs onnxruntime on
  the binary network's own ONNX (Where-sign + ±α convs evaluated in float);
- CNV W1A1 (Brevitas BNN-PYNQ, QONNX export, random weights): bitc vs onnxruntime on the dequantized graph.
Larq Compute Engine's best x86 path on larq-zoo's BiRealNet joins as a column when BITC_LCE_PYTHON names a
Python with LCE installed (see benchmarks/lce_bireal.py). Artifact sizes are compared with the fp32 ONNX.

--kernels: per-layer binary conv / dense vs bitc's fp32 conv / matmul of the same shape (single-layer models),
timed kernel by kernel with the VM's profiler (the layer's kernel alone, not the packing or layout changes
around it), in binary MAC/s vs fp32 MAC/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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
from bitc.passes import DEFAULT_PIPELINE

sys.path.append(str(Path(__file__).resolve().parents[1]))  # bitc_zoo: the repository's reference models
from bitc_zoo.bnn import bireal_net18, sign
from bitc_zoo.export import export_onnx

console = Console(width=200)


def _export_bireal(folder: Path) -> dict[str, Path]:
    x = torch.randn(1, 3, 224, 224)
    return {
        "binary": export_onnx(bireal_net18(binary=True), (x,), folder / "bireal18.onnx", input_names=["image"]),
        "float": export_onnx(bireal_net18(binary=False), (x,), folder / "bireal18_float.onnx", input_names=["image"]),
    }


def _export_cnv(name: str, folder: Path) -> dict[str, Path]:
    from bitc_zoo import qonnx_models

    model, example = qonnx_models.bnn_pynq(name)
    qonnx = qonnx_models.export_qonnx(model, example, folder / f"{name}.onnx")
    dequantized = normalize(load_onnx(qonnx), source=str(qonnx))  # QONNX quantizers as standard ops
    ir.save(dequantized, folder / f"{name}_float.onnx")
    return {"binary": qonnx, "float": folder / f"{name}_float.onnx"}


# The float twin is compiled without the binary lowering (a dequantized QONNX graph would be lowered again).
FLOAT_PIPELINE = [name for name in DEFAULT_PIPELINE if name not in ("lower_binary", "fuse_binary")]


def _lce(threads: list[int], runs: int) -> dict[int, float]:
    python = os.environ.get("BITC_LCE_PYTHON")
    if not python:
        return {}
    script = Path(__file__).with_name("lce_bireal.py")
    done = subprocess.run(
        [python, str(script), "--runs", str(runs), "--threads", ",".join(map(str, threads))],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        console.print(f"LCE run failed: {done.stderr.strip().splitlines()[-1:]}", style="red")
        return {}
    report = json.loads(done.stdout)
    best: dict[int, float] = {}
    for row in report["results"]:
        best[row["threads"]] = min(best.get(row["threads"], float("inf")), row["median_ms"])
    console.print(f"LCE {report.get('lce_version')}: {report['results']}", style="dim")
    return best


def end_to_end(models: list[str], threads: list[int], runs: int, folder: Path) -> None:
    table = Table(
        "model", "threads", "ort fp32 twin ms", "ort binary-graph ms", "bitc fp32 twin ms", "bitc binary ms",
        "× ort fp32", "× bitc fp32", "LCE ms", "× LCE", "max |err|",
        title="binary networks end to end (median latency, each in its own process)",
    )  # fmt: skip
    sizes = Table("model", "fp32 ONNX MB", "bitc binary artifact MB", "ratio", title="model size")
    for name in models:
        paths = _export_bireal(folder) if name == "bireal18" else _export_cnv(name, folder)
        binary = bitc.compile(paths["binary"], folder / f"{name}.bitc")
        twin = bitc.compile(paths["float"], folder / f"{name}_float.bitc", passes=FLOAT_PIPELINE)
        error = _max_error(binary.path, paths["binary"] if name == "bireal18" else paths["float"])
        lce = _lce(threads, runs) if name == "bireal18" else {}
        rows = bench_artifact(str(binary.path), threads=threads, runs=runs, onnx_path=str(paths["float"]))
        own_graph = (
            bench_artifact(str(binary.path), threads=threads, runs=runs, onnx_path=str(paths["binary"]))
            if name == "bireal18"
            else [{}] * len(rows)
        )
        ours_fp32 = bench_artifact(str(twin.path), threads=threads, runs=runs)
        for row, own, fp32 in zip(rows, own_graph, ours_fp32, strict=True):
            ms = row["bitc"]["median_ms"]
            lce_ms = lce.get(row["threads"])
            table.add_row(
                name,
                str(row["threads"]),
                f"{row['onnxruntime']['median_ms']:.2f}",
                f"{own['onnxruntime']['median_ms']:.2f}" if own else "-",
                f"{fp32['bitc']['median_ms']:.2f}",
                f"{ms:.2f}",
                f"{row['onnxruntime']['median_ms'] / ms:.2f}",
                f"{fp32['bitc']['median_ms'] / ms:.2f}",
                f"{lce_ms:.2f}" if lce_ms else "n/a",
                f"{lce_ms / ms:.2f}" if lce_ms else "n/a",
                f"{error:.1e}",
            )
        fp32_bytes = Path(paths["float"]).stat().st_size
        artifact_bytes = Path(binary.path).stat().st_size
        sizes.add_row(
            name, f"{fp32_bytes / 1e6:.1f}", f"{artifact_bytes / 1e6:.2f}", f"{fp32_bytes / artifact_bytes:.1f}×"
        )
    console.print(table)
    console.print(sizes)


def _max_error(artifact: Path, reference_onnx: Path) -> float:
    """bitc binary vs onnxruntime evaluating the same binary function in float, on the manifest's seeded inputs."""
    from bitc.bench import onnxruntime_session

    compiled = bitc.load(artifact)
    inputs = compiled.random_inputs(seed=0)
    if "cnv" in artifact.name:  # CNV takes images in [0, 1]
        inputs = {k: np.abs(v) / (np.abs(v).max() + 1e-6) for k, v in inputs.items()}
    got = list(compiled.run(inputs).values())
    expected = onnxruntime_session(str(reference_onnx), 1).run(None, inputs)
    return max(float(np.abs(a - b).max()) for a, b in zip(got, expected, strict=True))


class _SignConv(torch.nn.Module):
    def __init__(self, channels: int, binary: bool):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.binary = binary
        with torch.no_grad():
            if binary:
                self.conv.weight.copy_(self.conv.weight.abs().mean((1, 2, 3), keepdim=True) * sign(self.conv.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(sign(x) if self.binary else x)


class _SignDense(torch.nn.Module):
    def __init__(self, features: int, binary: bool):
        super().__init__()
        self.fc = torch.nn.Linear(features, features, bias=False)
        self.binary = binary
        with torch.no_grad():
            if binary:
                self.fc.weight.copy_(self.fc.weight.abs().mean(1, keepdim=True) * sign(self.fc.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(sign(x) if self.binary else x)


KERNEL_SHAPES: list[tuple[str, int, int, int]] = [
    # (kind, channels or features, spatial size or batch, MACs factor)
    ("conv", 64, 56, 9),
    ("conv", 128, 28, 9),
    ("conv", 256, 14, 9),
    ("conv", 512, 7, 9),
    ("dense", 4096, 1, 1),
    ("dense", 2048, 64, 1),
]


def kernels(threads: list[int], runs: int, folder: Path) -> None:
    table = Table(
        "layer", "threads", "bitc fp32 ms", "bitc binary ms", "fp32 GMAC/s", "binary GMAC/s", "× fp32",
        title="binary vs fp32 kernels of the same shape (bitc default schedules, the layer's kernel alone)",
    )  # fmt: skip
    for kind, width, size, factor in KERNEL_SHAPES:
        shape = (1, width, size, size) if kind == "conv" else (size, width)
        module = _SignConv if kind == "conv" else _SignDense
        x = torch.randn(*shape)
        artifacts = {}
        for binary in (False, True):
            torch.manual_seed(0)
            path = export_onnx(module(width, binary), (x,), folder / f"{kind}{width}_{size}_{binary}.onnx")
            artifacts[binary] = bitc.compile(path, path.with_suffix(".bitc")).path
        macs = (width * width * size * size * factor) if kind == "conv" else size * width * width
        label = f"conv3x3 {width}ch {size}x{size}" if kind == "conv" else f"dense {width}x{width} batch {size}"
        for count in threads:
            f_ms = _layer_kernel_ms(artifacts[False], count, runs, ("conv2d", "matmul", "dense"))
            b_ms = _layer_kernel_ms(artifacts[True], count, runs, ("bitc_binary",))
            table.add_row(
                label, str(count), f"{f_ms:.3f}", f"{b_ms:.3f}", f"{macs / f_ms / 1e6:.0f}",
                f"{macs / b_ms / 1e6:.0f}", f"{f_ms / b_ms:.1f}",
            )  # fmt: skip
    console.print(table)


def _layer_kernel_ms(artifact: Path, threads: int, runs: int, names: tuple[str, ...]) -> float:
    """Per-run time of the kernels whose names contain one of `names`, profiled in a fresh process."""
    env = dict(os.environ, TVM_NUM_THREADS=str(threads))
    done = subprocess.run(
        [sys.executable, __file__, "--kernel-profile", str(artifact), "--runs", str(runs)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])
    profile = json.loads(done.stdout)
    return sum(ms for kernel, ms in profile.items() if any(name in kernel for name in names))


def _kernel_profile_worker(artifact: str, runs: int) -> int:
    from bitc.runtime import profile

    model = bitc.load(artifact)
    rows = profile.profile_kernels(model, model.random_inputs(seed=0), runs=runs)
    print(json.dumps({row["kernel"]: row["ms"] for row in rows}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="bireal18,cnv_1w1a,cnv_1w2a,cnv_2w2a")
    parser.add_argument("--kernels", action="store_true", help="also the per-kernel comparison")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--kernel-profile", metavar="ARTIFACT", help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.kernel_profile:
        return _kernel_profile_worker(args.kernel_profile, args.runs)
    threads = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory(prefix="bitc-bench-binary-") as tmp:
        models = [m for m in args.models.split(",") if m]
        if models:
            end_to_end(models, threads, args.runs, Path(tmp))
        if args.kernels:
            kernels(threads, args.runs, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
