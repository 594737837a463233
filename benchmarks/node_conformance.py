"""Run onnx's backend node tests through `bitc.backend` and classify each: PASS, WRONG, REFUSED or CRASH.

Each case is prepared and run the way onnx's BackendTest runner does (inputs in graph order, every data set);
`--engine onnxruntime` runs the same cases through onnxruntime's backend for the side-by-side count, and
`--strict` makes bitc compile one artifact that takes shape-like inputs at run time (see `bitc.backend`).

PASS: every output matches onnx's expected data the way onnx's own backend runner compares them (count, shape,
dtype, values within rtol/atol, NaN at the same places). REFUSED: bitc raised its own one-line error (compile or
run). WRONG: it ran and the numbers differ, the worst outcome. CRASH: any other exception, a signal or a timeout.
Each case runs in a forked child so a segfault or a hang is one CRASH, not the end of the run.

    python3 benchmarks/node_conformance.py --filter 'layer_norm|space_to_depth' --jobs 1 [-v]
    python3 benchmarks/node_conformance.py --jobs 2 > bitc.txt; ... --engine onnxruntime > onnxruntime.txt
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import multiprocessing
import os
import re
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper

STATUSES = ("PASS", "WRONG", "REFUSED", "CRASH")


@dataclass
class Outcome:
    name: str
    status: str
    detail: str = ""
    seconds: float = 0.0


def load_cases(pattern: str | None = None, exclude: str | None = None, constant_variants: bool = True) -> list[Any]:
    """onnx's node test cases (built in memory by onnx) whose name matches `pattern` and not `exclude`, each
    followed by its constant-input variant where it has one (see `with_constant_inputs`)."""
    from onnx.backend.test.loader import load_node_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = load_node_model_tests()
    regex = re.compile(pattern) if pattern else None
    skip = re.compile(exclude) if exclude else None
    chosen = [
        case
        for case in cases
        if (regex is None or regex.search(case.name)) and (skip is None or not skip.search(case.name))
    ]
    if not constant_variants:
        return chosen
    return [variant for case in chosen for variant in (case, with_constant_inputs(case)) if variant is not None]


# Inputs that carry shapes, sizes, indices or thresholds: in a deployed model they are constants, which bitc
# folds into the compiled code, so each case whose graph has one also runs with them as initializers.
CONSTANT_INPUTS = {
    "shape", "scales", "sizes", "roi", "axes", "max_output_boxes_per_class", "iou_threshold", "score_threshold",
    "repeats", "pads", "k", "starts", "ends", "steps", "split", "depth", "ratio", "training_mode", "new_shape",
    "sequence_lens",
}  # fmt: skip


def with_constant_inputs(case: Any) -> Any | None:
    """The case with its CONSTANT_INPUTS made initializers (named '<test>[const]'), or None if it has none or
    its data sets disagree on their values."""
    names = [value.name for value in case.model.graph.input]
    frozen = [i for i, name in enumerate(names) if name in CONSTANT_INPUTS and i > 0]
    if not frozen or not case.data_sets:
        return None
    first = case.data_sets[0][0]
    if not all(isinstance(first[i], np.ndarray) for i in frozen):
        return None
    for inputs, _ in case.data_sets[1:]:
        if not all(np.array_equal(inputs[i], first[i]) for i in frozen):
            return None
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    kept = [value for i, value in enumerate(case.model.graph.input) if i not in frozen]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.graph.initializer.extend(onnx.numpy_helper.from_array(first[i], names[i]) for i in frozen)
    data_sets = [([a for i, a in enumerate(inputs) if i not in frozen], outputs) for inputs, outputs in case.data_sets]
    return dataclasses.replace(case, name=f"{case.name}[const]", model=model, data_sets=data_sets)


def op_of(case: Any) -> str:
    """The op a node test is about: the longest ONNX op name the test's name starts with (underscores dropped),
    else its last node's op type; function-expanded cases are counted apart."""
    squashed = case.name.removeprefix("test_").removesuffix("[const]").replace("_", "").lower()
    names = [schema.name for schema in onnx.defs.get_all_schemas()]
    matches = [name for name in names if squashed.startswith(name.lower())]
    nodes = case.model.graph.node
    op = max(matches, key=len) if matches else (nodes[-1].op_type if nodes else "?")
    return f"{op} (expanded)" if "_expanded" in case.name else op


def compare(expected: Sequence[np.ndarray], actual: Sequence[np.ndarray], rtol: float, atol: float) -> str:
    """'' when `actual` matches like onnx's assert_similar_outputs, else the first difference in one line."""
    if len(actual) != len(expected):
        return f"{len(actual)} outputs, expected {len(expected)}"
    for index, (ref, out) in enumerate(zip(expected, actual, strict=True)):
        if isinstance(ref, list | tuple):
            return f"output {index}: a sequence output came back as {type(out).__name__}"
        out = np.asarray(out)
        if out.shape != ref.shape:
            return f"output {index}: shape {out.shape}, expected {ref.shape}"
        if out.dtype != ref.dtype:
            return f"output {index}: dtype {out.dtype}, expected {ref.dtype}"
        if ref.dtype == object or ref.dtype.kind in "biuSU":
            if not np.array_equal(out, ref):
                return f"output {index}: values differ ({_first_mismatch(out, ref)})"
            continue
        ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
        if not np.array_equal(np.isnan(ref64), np.isnan(out64)):
            return f"output {index}: NaN at different places"
        if not np.allclose(out64, ref64, rtol=rtol, atol=atol, equal_nan=True):
            return f"output {index}: values differ ({_first_mismatch(out64, ref64)})"
    return ""


def _first_mismatch(out: np.ndarray, ref: np.ndarray) -> str:
    if out.size == 0:
        return "empty"
    bad = ~np.isclose(out, ref, rtol=1e-3, atol=1e-7, equal_nan=True) if ref.dtype.kind == "f" else out != ref
    where = np.argwhere(bad)
    if not len(where):
        return "?"
    at = tuple(int(i) for i in where[0])
    return f"{int(bad.sum())}/{out.size} elements, first at {at}: got {out[at]!r}, expected {ref[at]!r}"


def run_case(case: Any, engine: str = "bitc", strict: bool = False) -> Outcome:
    """Prepare the case's model with the engine's ONNX backend (`bitc.backend`, or onnxruntime's for the side
    by side count) and run every data set, the way onnx's BackendTest runner does. `strict`: bitc compiles one
    artifact that takes every input at run time (no per-value specialisation of shape-like inputs)."""
    from bitc.errors import BitcError

    start = time.perf_counter()
    stage = "compile"
    try:
        if engine == "onnxruntime":
            import onnxruntime.backend as backend

            refusals: tuple[type[BaseException], ...] = (Exception,)
            rep = backend.prepare(case.model, "CPU")
        else:
            import bitc.backend as backend

            refusals = (BitcError,)
            rep = backend.prepare(case.model, "CPU", specialize_shape_inputs=not strict)
        stage = "run"
        for feeds, expected in case.data_sets:
            feeds, expected = [_array(v) for v in feeds], [_array(v) for v in expected]
            actual = list(rep.run(feeds))
            diff = compare(expected, actual, case.rtol, case.atol)
            if diff:
                return Outcome(case.name, "WRONG", diff, time.perf_counter() - start)
    except refusals as exc:  # bitc's own one-line errors; any error onnxruntime raises for its count
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return Outcome(case.name, "REFUSED", f"{stage}: {type(exc).__name__}: {detail}", time.perf_counter() - start)
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        detail = f"{stage}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        return Outcome(case.name, "CRASH", f"{detail} [{Path(where.filename).name}:{where.lineno}]")
    return Outcome(case.name, "PASS", "", time.perf_counter() - start)


def _array(value: Any) -> Any:
    """Test data as onnx's runner hands it over: TensorProtos (used for the exotic dtypes) as numpy arrays."""
    return onnx.numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value


def _child(case: Any, conn: Any, engine: str, strict: bool) -> None:
    conn.send(run_case(case, engine, strict))
    conn.close()


def run_isolated(case: Any, timeout: float, engine: str = "bitc", strict: bool = False) -> Outcome:
    """`run_case` in a forked child: a signal or a hang becomes a CRASH outcome."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    start = time.perf_counter()
    process = context.Process(target=_child, args=(case, send, engine, strict), daemon=True)
    process.start()
    send.close()
    outcome = None
    if receive.poll(timeout):
        try:
            outcome = receive.recv()
        except EOFError:
            outcome = None
    process.join(5 if outcome is not None else 0.1)
    if process.is_alive():
        process.kill()
        process.join()
    if outcome is not None:
        return outcome
    elapsed = time.perf_counter() - start
    if elapsed >= timeout:
        return Outcome(case.name, "CRASH", f"timed out after {timeout:.0f} s", elapsed)
    code = process.exitcode
    reason = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    return Outcome(case.name, "CRASH", reason, elapsed)


def run_all(
    cases: Sequence[Any], jobs: int = 1, timeout: float = 300, engine: str = "bitc", strict: bool = False
) -> Iterable[Outcome]:
    """Outcomes in completion order, `jobs` cases at a time."""
    if jobs <= 1:
        for case in cases:
            yield run_isolated(case, timeout, engine, strict)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(jobs) as pool:
        yield from pool.map(lambda case: run_isolated(case, timeout, engine, strict), cases)


def print_totals(outcomes: Sequence[Outcome], ops: dict[str, str]) -> None:
    per_op: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for outcome in outcomes:
        per_op[ops[outcome.name]][outcome.status] += 1
    print(f"\n{'op':<28}" + "".join(f"{s:>9}" for s in STATUSES))
    for op in sorted(per_op):
        print(f"{op:<28}" + "".join(f"{per_op[op][s]:>9}" for s in STATUSES))
    total = collections.Counter(outcome.status for outcome in outcomes)
    print(f"{'total':<28}" + "".join(f"{total[s]:>9}" for s in STATUSES))


def warm_up() -> None:
    """Import the compiler and build one tiny model here, so each forked case starts with TVM and LLVM loaded
    (a cold start costs more than most cases' compile). Nothing runs yet: no runtime threads exist at fork."""
    import bitc

    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "warm_up",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])],
    )
    with tempfile.TemporaryDirectory(prefix="bitc-node-") as tmp:
        path = Path(tmp) / "warm_up.onnx"
        onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
        bitc.compile(str(path), Path(tmp) / "warm_up.bitc", target="cpu")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", help="regular expression on the test name (re.search), e.g. 'test_mod_'")
    parser.add_argument("--exclude", help="regular expression on the test name of cases to leave out")
    parser.add_argument("--jobs", type=int, default=1, help="cases compiled at once (default 1)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per case before it counts as CRASH")
    parser.add_argument("--engine", choices=("bitc", "onnxruntime"), default="bitc", help="backend to run")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="bitc: one artifact taking every input at run time (no per-value specialisation of shape-like "
        "inputs), plus each case's variant with those inputs as initializers ('[const]')",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print PASS lines too")
    args = parser.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.engine == "bitc":
        warm_up()
    cases = load_cases(args.filter, args.exclude, constant_variants=args.strict)
    ops = {case.name: op_of(case) for case in cases}
    print(f"{len(cases)} cases", flush=True)
    outcomes = []
    for outcome in run_all(cases, args.jobs, args.timeout, args.engine, args.strict):
        outcomes.append(outcome)
        if args.verbose or outcome.status != "PASS":
            print(f"{outcome.status:<8} {outcome.name} ({outcome.seconds:.1f} s) {outcome.detail}", flush=True)
    print_totals(outcomes, ops)
    return 1 if any(o.status in ("WRONG", "CRASH") for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
