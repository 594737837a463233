"""Time larq_zoo's BiRealNet under Larq Compute Engine (LCE), the baseline bitc's BNN benchmark compares against.

Why a separate script: LCE 0.16 needs tensorflow-cpu 2.16, tf-keras 2.16, larq 0.14 and numpy<2, which clash with
bitc's own environment (numpy>=2, torch). Run it with a dedicated virtual environment's python; bitc's benchmark
finds that interpreter through ``BITC_LCE_PYTHON=/path/to/venv/bin/python`` and reads the single JSON object this
script prints on stdout (all logging goes to stderr). Setting up that environment:

    python3.11 -m venv .venv-lce
    .venv-lce/bin/pip install tensorflow-cpu==2.16.2 tf-keras==2.16.0 larq==0.14.0 \\
        larq-compute-engine==0.16.0 larq-zoo==2.4.0 "numpy<2"
    .venv-lce/bin/python benchmarks/lce_bireal.py --runs 20 --threads 1,2

The model is randomly initialised (seeded, ``weights=None``): pretrained weights cannot be downloaded here, and
latency does not depend on weight values. The converter's default ``target="arm"`` is the only non-xcore target; its
LCE ops run on x86 too, but LCE's optimised kernels are written for ARM (aarch64), so on x86 the binary convolutions
use portable C++ code: the default BGEMM path is the slow generic one, ``use_indirect_bgemm`` the faster portable
one. ``use_xnnpack`` hands the float layers (stem convolution, shortcuts, classifier) to TFLite's XNNPack delegate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# Interpreter options timed: name -> keyword arguments of larq_compute_engine.testing.Interpreter.
OPTIONS: dict[str, dict[str, bool]] = {
    "default": {},
    "indirect_bgemm": {"use_indirect_bgemm": True},
    "xnnpack": {"use_xnnpack": True},
    "indirect_bgemm+xnnpack": {"use_indirect_bgemm": True, "use_xnnpack": True},
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_flatbuffer(seed: int) -> bytes:
    """Build a seeded, randomly initialised BiRealNet (224x224x3) and convert it with LCE."""
    import larq_compute_engine as lce
    import larq_zoo
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    model = larq_zoo.literature.BiRealNet(input_shape=(224, 224, 3), weights=None)
    return lce.convert_keras_model(model)


def time_interpreter(flatbuffer: bytes, threads: int, option: dict[str, bool], runs: int, warmup: int) -> float:
    """Median wall time (ms) of one single-image inference."""
    import larq_compute_engine as lce
    import numpy as np

    interp = lce.testing.Interpreter(flatbuffer, num_threads=threads, **option)
    x = [np.random.default_rng(0).standard_normal((1, 224, 224, 3), dtype=np.float32)]
    for _ in range(warmup):
        interp.interpreter.predict(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        interp.interpreter.predict(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="timed runs per configuration (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--options", default=",".join(OPTIONS), help="comma-separated subset of " + ",".join(OPTIONS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import larq_compute_engine as lce

    t0 = time.perf_counter()
    flatbuffer = build_flatbuffer(args.seed)
    log(f"converted BiRealNet: {len(flatbuffer)} bytes in {time.perf_counter() - t0:.1f} s")

    results = []
    for threads in (int(t) for t in args.threads.split(",")):
        for name in args.options.split(","):
            ms = time_interpreter(flatbuffer, threads, OPTIONS[name], args.runs, args.warmup)
            log(f"threads={threads} option={name}: {ms:.2f} ms")
            results.append({"threads": threads, "option": name, "median_ms": round(ms, 3)})

    report = {
        "model": "larq_zoo BiRealNet 224",
        "lce_version": lce.__version__,
        "results": results,
        "tflite_bytes": len(flatbuffer),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
