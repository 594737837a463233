"""Latency of an artifact, optionally beside onnxruntime on the same inputs and thread counts.

Each measurement runs in its own process: TVM sizes its thread pool once per process, and its idle workers
spin after a call, which slows an onnxruntime session sharing the process by 2-3×.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from bitc.errors import BadInputError, BitcError
from bitc.runtime.hostcpu import physical_cores
from bitc.runtime.timing import time_calls


def summarize(latencies: Sequence[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "median_ms": statistics.median(ordered) * 1e3,
        "p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1e3,
        "min_ms": ordered[0] * 1e3,
        "mean_ms": statistics.fmean(ordered) * 1e3,
    }


def bench_artifact(
    artifact: str,
    *,
    threads: Sequence[int | None] = (None,),
    runs: int = 50,
    warmup: int = 5,
    onnx_path: str | None = None,
    sizes: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """One row per thread count (and per compiled input size: every one, or those listed in `sizes`): bitc's
    latency, and onnxruntime's and the speed ratio when `onnx_path` is set."""
    if onnx_path is not None:
        check_onnx_file(onnx_path, "--onnx")
    shapes = compiled_sizes(artifact)
    chosen = list(range(len(shapes))) if sizes is None else list(sizes)
    for index in chosen:
        if type(index) is not int or not 0 <= index < len(shapes):
            raise BadInputError(f"--size must be 0..{len(shapes) - 1} (the artifact's input sizes), got {index}")
    rows = []
    for index in chosen:
        for count in threads:
            n = count or physical_cores()
            if n < 1:
                raise BadInputError(f"thread counts must be >= 1, got {count}")
            row: dict[str, Any] = {"threads": n, "runs": runs}
            if len(shapes) > 1:
                row["size"], row["input_shapes"] = index, shapes[index]
            row["bitc"] = measure_in_subprocess("bitc", artifact, artifact, n, runs, warmup, size=index)
            if onnx_path:
                row["onnxruntime"] = measure_in_subprocess(
                    "onnxruntime", onnx_path, artifact, n, runs, warmup, size=index
                )
                row["speedup_vs_onnxruntime"] = row["onnxruntime"]["median_ms"] / row["bitc"]["median_ms"]
            rows.append(row)
    return rows


def compiled_sizes(artifact: str) -> list[str]:
    """Each compiled input size of the artifact as 'x[1,3,48,320]' (one entry for a single-size artifact)."""
    from bitc.runtime.artifact import read_manifest

    variants = read_manifest(artifact).get("variants")
    if not isinstance(variants, list) or len(variants) < 2:
        return ["(its one size)"]
    described = []
    for variant in variants:
        inputs = variant.get("inputs") if isinstance(variant, dict) else None
        specs = inputs if isinstance(inputs, list) else []
        described.append(" ".join(f"{t.get('name')}{t.get('shape')}" for t in specs if isinstance(t, dict)))
    return described


def measure_in_subprocess(
    engine: str, model: str, artifact: str, threads: int, runs: int, warmup: int, size: int = 0
) -> dict:
    """Time `model` with `engine` in a fresh process on inputs made from `artifact`'s manifest (seed 0), at its
    `size`-th compiled input size."""
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    args = [sys.executable, "-m", "bitc.bench", engine, model, artifact, str(threads), str(runs), str(warmup)]
    args.append(str(size))
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    if done.returncode == BadInputError.exit_code and done.stderr.strip():
        raise BadInputError(done.stderr.strip().splitlines()[-1])  # the worker's own one-line refusal
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        raise BitcError(f"{engine} measurement of {model} failed: {lines[-1]}")
    return json.loads(done.stdout)


def check_onnx_file(path: str | os.PathLike, option: str) -> None:
    """An ONNX path given on the command line must be a regular file (checked before anything is measured)."""
    if not os.path.exists(path):
        raise BadInputError(f"{option} {path}: no such file")
    if not os.path.isfile(path):
        raise BadInputError(f"{option} {path}: not a regular file")


def _measure(
    engine: str, model: str, artifact: str, threads: int, runs: int, warmup: int, size: int = 0
) -> dict[str, float]:
    from bitc.runtime import load

    compiled = load(artifact, num_threads=threads)
    inputs = compiled.random_inputs(seed=0, size=size)
    if engine == "bitc":
        return summarize(compiled.benchmark(inputs, runs=runs, warmup=warmup))
    session = onnxruntime_session(model, threads)
    return summarize(time_calls(lambda: session.run(None, inputs), runs=runs, warmup=warmup))


def onnxruntime_session(onnx_path: str | os.PathLike, threads: int = 0) -> Any:
    """A CPU onnxruntime session on `threads` intra-op threads (0: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BadInputError(f"{onnx_path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from None


def _worker_main() -> int:
    parser = argparse.ArgumentParser(description="one latency measurement (used by `bitc bench`)")
    parser.add_argument("engine", choices=["bitc", "onnxruntime"])
    parser.add_argument("model")
    parser.add_argument("artifact")
    parser.add_argument("threads", type=int)
    parser.add_argument("runs", type=int)
    parser.add_argument("warmup", type=int)
    parser.add_argument("size", type=int, nargs="?", default=0)
    a = parser.parse_args()
    try:
        print(json.dumps(_measure(a.engine, a.model, a.artifact, a.threads, a.runs, a.warmup, a.size)))
    except BitcError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
