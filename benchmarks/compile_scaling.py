"""Compile time vs graph size: chains of N nodes, each compiled in its own process, per-stage seconds and peak RSS.

A stage whose time grows ~10x from N to 10N is linear; ~100x is quadratic. The stages: frontend (load and
normalize), each pass (from the pass log), the exact check (the passes stage less the passes themselves), and with
`--profile` the build's own steps (to_relax, lower_to_fused_tir, tuning.apply, default schedule, tvm.compile,
export_library) and TVM's passes inside lower_to_fused_tir; without it, build is one number.

    python3 benchmarks/compile_scaling.py --nodes 2000,20000,200000 --kinds conv,elementwise --profile
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

KINDS = ("conv", "elementwise", "matmul")


def build_chain(kind: str, nodes: int) -> onnx.ModelProto:
    """A chain of about `nodes` nodes of one kind; weights are shared so the file stays small at 200k nodes (and
    the shared weight is a hub with one use per layer, the case an O(uses) scan per node makes quadratic)."""
    rng = np.random.default_rng(0)
    if kind == "conv":  # Conv 3x3 8->8 + Relu
        shape, pair = [1, 8, 16, 16], ("Conv", "Relu")
        weights = {"w": rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.1, "b": np.zeros(8, np.float32)}
    elif kind == "elementwise":  # Add, Mul, Relu
        shape, pair = [1, 64], ("Add", "Mul", "Relu")
        weights = {"a": rng.standard_normal(64).astype(np.float32), "m": np.full(64, 0.5, np.float32)}
    elif kind == "matmul":  # MatMul 64x64 + Add
        shape, pair = [1, 64], ("MatMul", "Add")
        weights = {"w": rng.standard_normal((64, 64)).astype(np.float32) * 0.1, "a": np.zeros(64, np.float32)}
    else:
        raise ValueError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    graph_nodes, current = [], "x"
    for index in range(nodes):
        op = pair[index % len(pair)]
        out = f"v{index}"
        graph_nodes.append(_node(op, current, out, index))
        current = out
    graph = helper.make_graph(
        graph_nodes,
        f"{kind}_chain_{nodes}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, shape)],  # every kind keeps the shape
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _node(op: str, source: str, out: str, index: int) -> onnx.NodeProto:
    """One chain node reading `source`, with the shared weights as its other inputs."""
    extra = {"Conv": ["w", "b"], "Add": ["a"], "Mul": ["m"], "MatMul": ["w"], "Relu": []}[op]
    attrs = {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]} if op == "Conv" else {}
    return helper.make_node(op, [source, *extra], [out], name=f"n{index}", **attrs)


def _timed(name: str, sink: dict[str, float], function: Callable) -> Callable:
    """`function`, adding its wall time to sink[name] on every call."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            sink[name] = sink.get(name, 0.0) + time.perf_counter() - start

    return wrapper


def _install_build_timers(sink: dict[str, float]) -> None:
    """Wrap the build's steps (module-level names in bitc.codegen.cpu.build and bitc.codegen.build) and time every
    TVM pass they run."""
    import tvm

    from bitc.codegen import build
    from bitc.codegen.cpu import build as cpu_build
    from bitc.codegen.cpu import tuning

    cpu_build.to_relax = _timed("build.to_relax", sink, cpu_build.to_relax)
    build.export_library = _timed("build.export_library", sink, build.export_library)
    cpu_build.lower_to_fused_tir = _timed(
        "build.lower_to_fused_tir", sink, _with_pass_timer(cpu_build.lower_to_fused_tir, sink)
    )
    cpu_build.tuning = type("tuning", (), {"apply": staticmethod(_timed("build.tuning.apply", sink, tuning.apply))})
    schedule = cpu_build.default_schedule_pass
    cpu_build.default_schedule_pass = lambda *a, **k: _timed("build.default_schedule", sink, schedule(*a, **k))
    tvm.compile = _timed("build.tvm.compile", sink, tvm.compile)  # build imports tvm in the function


def _with_pass_timer(function: Callable, sink: dict[str, float]) -> Callable:
    """`function` run under a PassContext that times its TVM passes (the outermost of those named in
    _LOWER_PASSES, so a pass another one runs is not counted twice)."""
    import tvm

    @tvm.instrument.pass_instrument
    class Timer:
        def __init__(self) -> None:
            self.stack: list[tuple[str, float]] = []

        def run_before_pass(self, mod: Any, info: Any) -> None:
            self.stack.append((info.name, time.perf_counter()))

        def run_after_pass(self, mod: Any, info: Any) -> None:
            name, start = self.stack.pop()
            if name in _LOWER_PASSES and not any(outer in _LOWER_PASSES for outer, _ in self.stack):
                sink[f"tvm.{name}"] = sink.get(f"tvm.{name}", 0.0) + time.perf_counter() - start

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with tvm.transform.PassContext(instruments=[Timer()]):
            return function(*args, **kwargs)

    return wrapper


_LOWER_PASSES = {
    "ConvertLayout", "DecomposeOpsForInference", "CanonicalizeBindings", "LegalizeOps", "AnnotateTIROpPattern",
    "FoldConstantCallTIR", "FoldConstant", "FuseOps", "FuseTIR",
}  # fmt: skip


def compile_one(model_path: str, out_path: str, profile: bool) -> dict[str, Any]:
    """Compile in this process; per-stage seconds and peak RSS as a dict (what the child prints)."""
    import bitc

    build_steps: dict[str, float] = {}
    if profile:
        _install_build_timers(build_steps)
    start = time.perf_counter()
    result = bitc.compile(model_path, out_path)
    total = time.perf_counter() - start
    passes = {f"pass.{r.name}": r.seconds for r in result.pass_log}
    stages = {"frontend": result.seconds["frontend"], **passes}
    stages["exact_check"] = result.seconds["passes"] - sum(passes.values())
    stages["build"] = result.seconds["build"]
    stages.update(build_steps)
    stages["write"] = result.seconds["write"]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"stages": stages, "total": total, "peak_rss_mib": rss, "nodes_compiled": result.manifest["stats"]["nodes"]}


def run_child(kind: str, nodes: int, profile: bool, timeout: float, workdir: Path) -> dict[str, Any]:
    """Build the chain, then compile it in a fresh process (a TVM process keeps state that would skew the next)."""
    model_path = workdir / f"{kind}_{nodes}.onnx"
    onnx.save(build_chain(kind, nodes), model_path)
    command = [sys.executable, __file__, "--child", str(model_path), str(workdir / f"{kind}_{nodes}.bitc")]
    command += ["--profile"] if profile else []
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"kind": kind, "nodes": nodes, "error": f"timeout after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"kind": kind, "nodes": nodes, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    record = json.loads(done.stdout.strip().splitlines()[-1])
    return {"kind": kind, "nodes": nodes, "wall": time.perf_counter() - start, **record}


def print_table(rows: list[dict[str, Any]]) -> None:
    """One column per N, one row per stage (markdown), then the 10x ratios between consecutive sizes."""
    for kind in dict.fromkeys(r["kind"] for r in rows):
        runs = [r for r in rows if r["kind"] == kind]
        print(f"\n### {kind} chain\n")
        print("| stage | " + " | ".join(f"N={r['nodes']:,}" for r in runs) + " |")
        print("|---|" + "---:|" * len(runs))
        names = list(dict.fromkeys(s for r in runs for s in r.get("stages", {})))
        for name in names:
            cells = [_cell(r.get("stages", {}).get(name)) if "error" not in r else "-" for r in runs]
            print(f"| {name} | " + " | ".join(cells) + " |")
        totals = [_cell(r.get("total")) if "error" not in r else str(r["error"]) for r in runs]
        print("| **total** | " + " | ".join(totals) + " |")
        rss = [f"{r['peak_rss_mib']:.0f}" if "error" not in r else "-" for r in runs]
        print("| peak RSS MiB | " + " | ".join(rss) + " |")


def _cell(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.2f}"


def cpu_model() -> str:
    """The CPU as /proc/cpuinfo names it, with the core count."""
    with open("/proc/cpuinfo") as handle:
        names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
    return f"{names[0] if names else platform.processor()} x {os.cpu_count()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="2000,20000", help="comma-separated chain lengths")
    parser.add_argument("--kinds", default="conv,elementwise", help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per compile")
    parser.add_argument("--profile", action="store_true", help="time the build's steps and TVM's lowering passes")
    parser.add_argument("--json", help="also write the raw records here")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(compile_one(*args.child, args.profile)))
        return
    print(f"CPU: {cpu_model()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bitc-scaling-") as tmp:
        for kind in args.kinds.split(","):
            for nodes in [int(n) for n in args.nodes.split(",")]:
                rows.append(run_child(kind, nodes, args.profile, args.timeout, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
