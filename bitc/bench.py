"""Latency measurement of an artifact, optionally beside onnxruntime on the same inputs and thread counts."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from bitc.errors import BadInputError


def summarize(latencies: Sequence[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "median_ms": statistics.median(ordered) * 1e3,
        "p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1e3,
        "min_ms": ordered[0] * 1e3,
        "mean_ms": statistics.fmean(ordered) * 1e3,
    }


def time_calls(call: Callable[[], Any], *, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    latencies = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - start)
    return latencies


def bench_artifact(
    artifact: str,
    *,
    threads: Sequence[int | None] = (None,),
    runs: int = 50,
    warmup: int = 5,
    onnx_path: str | None = None,
) -> list[dict[str, Any]]:
    """One row per thread count: bitc's latency, and onnxruntime's and the speed ratio when `onnx_path` is set."""
    from bitc.runtime import load
    from bitc.runtime.tvm_loader import set_num_threads

    model = load(artifact)
    inputs = model.random_inputs()
    session_for = onnxruntime_sessions(onnx_path) if onnx_path else None
    rows = []
    for count in threads:
        n = count or os.cpu_count() or 1
        if n < 1:
            raise BadInputError(f"thread counts must be >= 1, got {count}")
        set_num_threads(n)
        row: dict[str, Any] = {
            "threads": n,
            "runs": runs,
            "bitc": summarize(model.benchmark(inputs, warmup=warmup, runs=runs)),
        }
        if session_for is not None:
            session = session_for(n)
            feeds = {k: v for k, v in inputs.items()}
            ort_lat = time_calls(lambda s=session, f=feeds: s.run(None, f), runs=runs, warmup=warmup)
            row["onnxruntime"] = summarize(ort_lat)
            row["speedup_vs_onnxruntime"] = row["onnxruntime"]["median_ms"] / row["bitc"]["median_ms"]
        rows.append(row)
    return rows


def onnxruntime_sessions(onnx_path: str) -> Callable[[int], Any]:
    import onnxruntime as ort

    def make(threads: int) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise BadInputError(f"{onnx_path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from None

    return make
