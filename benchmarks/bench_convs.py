"""One convolution at a time: bitc's conv kernel vs onnxruntime's Conv, for tuning register tiles and layouts.

Each case is a Conv + bias + Relu model (seeded random weights) compiled by bitc; the bitc figure is the conv
kernel alone (`bitc.runtime.profile.profile_kernels`, so the layout transforms at the model's edges, which a real
model only pays once, are left out), onnxruntime's the whole one-node session. Both run in this process at 1
thread (TVM starts no worker threads then, so nothing spins beside onnxruntime), interleaved in rounds; medians.
GFLOP/s count the grouped conv's own multiply-adds (2 per MAC), not the zeros a merged or banded form adds.

    python3 benchmarks/bench_convs.py [--cases resnet,odd,grouped] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import bitc
from bitc.runtime.profile import profile_kernels

# (inputs, outputs, height = width, kernel, groups)
CASES = {
    "resnet": [
        (64, 256, 56, 1, 1), (64, 64, 56, 3, 1), (256, 64, 56, 1, 1), (128, 128, 28, 3, 1), (512, 128, 28, 1, 1),
        (256, 256, 14, 3, 1), (1024, 256, 14, 1, 1), (256, 1024, 14, 1, 1), (512, 512, 7, 3, 1),
        (2048, 512, 7, 1, 1), (512, 2048, 7, 1, 1),
    ],
    "odd": [(64, 256, 13, 3, 1), (128, 128, 27, 3, 1), (512, 1000, 13, 1, 1)],  # SqueezeNet's widths
    "grouped": [
        (128, 128, 56, 3, 32), (256, 256, 28, 3, 32), (512, 512, 14, 3, 32), (1024, 1024, 7, 3, 32),  # ResNeXt-50
        (240, 240, 28, 3, 8), (136, 136, 28, 1, 4), (272, 272, 14, 1, 4),  # ShuffleNet-style group widths
    ],
}  # fmt: skip


def conv_model(inputs: int, outputs: int, size: int, kernel: int, groups: int) -> onnx.ModelProto:
    rng = np.random.default_rng(inputs * outputs + size)
    weight = rng.standard_normal((outputs, inputs // groups, kernel, kernel)).astype(np.float32) * 0.05
    bias = rng.standard_normal(outputs).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[kernel // 2] * 4, group=groups),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, inputs, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, outputs, size, size])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _median_call(run, calls: int = 10) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(case: tuple[int, ...], folder: Path, rounds: int) -> dict[str, float]:
    inputs, outputs, size, kernel, groups = case
    path = folder / "conv.onnx"
    onnx.save(conv_model(*case), path)
    bitc.compile(path, folder / "conv.bitc", check_exact=False)
    model = bitc.load(folder / "conv.bitc", num_threads=1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, inputs, size, size)).astype(np.float32)
    expected = session.run(None, {"x": x})[0]
    got = next(iter(model.run({"x": x}).values()))
    error = float(np.abs(got - expected).max() / np.abs(expected).max())
    kernel_ms, ort_ms = [], []
    for _ in range(rounds):
        rows = profile_kernels(model, {"x": x}, runs=10)
        kernel_ms.append(sum(r["ms"] for r in rows if "conv" in r["kernel"]))
        ort_ms.append(1e3 * _median_call(lambda: session.run(None, {"x": x})))
    flop = 2 * inputs // groups * outputs * size * size * kernel * kernel
    bitc_ms, onnxruntime_ms = statistics.median(kernel_ms), statistics.median(ort_ms)
    return {"bitc_ms": bitc_ms, "ort_ms": onnxruntime_ms, "gflops": flop / bitc_ms / 1e6, "error": error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="resnet,odd,grouped", help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"{'in':>5} {'out':>5} {'size':>4} {'k':>2} {'groups':>6} | bitc kernel ms  GFLOP/s | onnxruntime ms | ratio")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.cases.split(","):
            for case in CASES[name]:
                row = measure(case, Path(folder), args.rounds)
                print(
                    f"{case[0]:5d} {case[1]:5d} {case[2]:4d} {case[3]:2d} {case[4]:6d} | {row['bitc_ms']:14.3f} "
                    f"{row['gflops']:8.1f} | {row['ort_ms']:14.3f} | {row['ort_ms'] / row['bitc_ms']:.2f}  "
                    f"(max rel err {row['error']:.1e})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
