"""The CUDA target on an NVIDIA GPU: binary GEMM and binary-weight GEMV vs torch fp16 (cuBLAS) of the same shape,
Bi-Real-Net-18 at batch 1 and 64 vs torch fp16 and onnxruntime, and each bitc GPU artifact checked against its
CPU build in the same run.

    python benchmarks/bench_cuda.py [--arch sm_90] [--runs 50] [--build-only]

bitc timings are `Model.benchmark` (inputs on the GPU once, each call synchronised: what a caller waits for);
torch timings are CUDA-synchronised calls of the same shape in fp16 (cuBLAS). `--build-only` builds every
artifact (no GPU needed) and reports sizes and the instructions in the emitted PTX.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import torch
from rich.console import Console
from rich.table import Table

import bitc
from bitc.codegen.target import local_gpu_arch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.append(str(Path(__file__).resolve().parents[1]))  # bitc_zoo: the repository's reference models
from binary_models import binary_dense_model, lowbit_matmul_model

console = Console(width=200)
GEMM_SHAPES = [(64, 4096, 4096), (1024, 4096, 4096), (4096, 4096, 4096)]  # M, K, N
GEMV_SHAPES = [(4096, 4096), (8192, 8192), (4096, 11008)]  # K, N
BIREAL_BATCHES = [1, 64]


def _device_line() -> str:
    try:
        query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
        return subprocess.run(query, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "no nvidia-smi"


def _torch_ms(fn, runs: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def _bitc_ms(path: Path, runs: int) -> tuple[float, float]:
    """Median ms on the GPU, and the max |difference| from the CPU build of the same model on seeded inputs."""
    gpu = bitc.load(path)
    inputs = gpu.random_inputs(seed=0)
    ms = float(np.median(gpu.benchmark(inputs, warmup=3, runs=runs)) * 1e3)
    cpu = bitc.load(path.with_suffix(".cpu.bitc"))
    pairs = zip(gpu.run(inputs).values(), cpu.run(inputs).values(), strict=True)
    diff = max(float(np.abs(g - c).max()) for g, c in pairs)
    return ms, diff


def _compile_pair(onnx_path: Path, arch: str, **options) -> Path:
    """The CUDA artifact, and its CPU twin beside it (the correctness reference)."""
    gpu = bitc.compile(onnx_path, onnx_path.with_suffix(".bitc"), target=f"cuda:{arch}", **options).path
    bitc.compile(onnx_path, onnx_path.with_suffix(".cpu.bitc"), **options)
    return gpu


def _ptx_summary(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        ptx = archive.read("kernels.ptx").decode()
    counts = {
        "kernels": len(re.findall(r"\.entry ", ptx)),
        "mma.b1": ptx.count(".b1.b1.s32.and.popc"),
        "popc": ptx.count("popc.b32"),
        "shfl": ptx.count("shfl.sync"),
    }
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def kernels(folder: Path, arch: str, runs: int, build_only: bool) -> None:
    """Each case: a single-layer model and the M × K × N of the torch fp16 matmul it is compared with."""
    cases = [
        ("binary GEMM (BitPack + BinaryDense)", binary_dense_model(m=m, k=k, n=n), (m, k, n)) for m, k, n in GEMM_SHAPES
    ] + [
        ("binary-weight GEMV (LowBitMatMul, 1 plane)", lowbit_matmul_model(shape=(1, k), n=n), (1, k, n))
        for k, n in GEMV_SHAPES
    ]
    table = Table("kernel", "shape", "bitc ms", "torch fp16 ms", "× cuBLAS fp16", "max |Δ| vs CPU build", "PTX")
    for index, (label, proto, (m, k, n)) in enumerate(cases):
        shape = f"{m}×{k}×{n}"
        path = folder / f"kernel_{index}.onnx"
        onnx.save(proto, path)
        artifact = _compile_pair(path, arch, passes=[])
        if build_only:
            table.add_row(label, shape, "-", "-", "-", "-", _ptx_summary(artifact))
            continue
        ms, diff = _bitc_ms(artifact, runs)
        a = torch.randn(m, k, device="cuda", dtype=torch.float16)
        b = torch.randn(k, n, device="cuda", dtype=torch.float16)
        peer = _torch_ms(lambda a=a, b=b: a @ b, runs)
        table.add_row(
            label, shape, f"{ms:.3f}", f"{peer:.3f}", f"{peer / ms:.2f}", f"{diff:.1e}", _ptx_summary(artifact)
        )
    console.print(table)


def bireal(folder: Path, arch: str, runs: int, build_only: bool) -> None:
    from bitc.bench import onnxruntime_session
    from bitc_zoo.bnn import bireal_net18
    from bitc_zoo.export import export_onnx

    table = Table("batch", "bitc GPU ms", "torch fp16 ms", "onnxruntime fp32 ms", "× torch", "× ort", "max |Δ| vs CPU")
    for batch in BIREAL_BATCHES:
        x = torch.randn(batch, 3, 224, 224)
        path = export_onnx(bireal_net18(binary=True), (x,), folder / f"bireal18_b{batch}.onnx", input_names=["image"])
        artifact = _compile_pair(Path(path), arch)
        if build_only:
            table.add_row(str(batch), "-", "-", "-", "-", "-", _ptx_summary(artifact))
            continue
        ms, diff = _bitc_ms(artifact, runs)
        twin = bireal_net18(binary=False).half().cuda().eval()
        image = x.half().cuda()
        with torch.no_grad():
            peer = _torch_ms(lambda twin=twin, image=image: twin(image), runs)
        session, feed = onnxruntime_session(str(path)), {"image": x.numpy()}
        ort_ms = float(np.median([_timed(session.run, None, feed) for _ in range(max(3, runs // 10))]))
        table.add_row(
            str(batch),
            f"{ms:.2f}",
            f"{peer:.2f}",
            f"{ort_ms:.2f}",
            f"{peer / ms:.2f}",
            f"{ort_ms / ms:.2f}",
            f"{diff:.1e}",
        )
    console.print(table)


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=None, help="sm_XY (default: this machine's GPU, else sm_80)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--build-only", action="store_true", help="build the artifacts and report their PTX")
    args = parser.parse_args()
    arch = args.arch or local_gpu_arch() or "sm_80"
    if not args.build_only and (local_gpu_arch() is None or not torch.cuda.is_available()):
        console.print("needs an NVIDIA GPU and torch with CUDA (use --build-only to build the artifacts)", style="red")
        raise SystemExit(2)
    console.print(f"device: {_device_line()}; target cuda:{arch}; command: python {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory(prefix="bitc-bench-cuda-") as tmp:
        kernels(Path(tmp), arch, args.runs, args.build_only)
        bireal(Path(tmp), arch, args.runs, args.build_only)


if __name__ == "__main__":
    main()
