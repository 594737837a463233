"""Numerical checks of a model against onnxruntime: the reference for every standard-ONNX rewrite."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from bitc.errors import BadInputError
from bitc.runtime.model import random_array


def random_feeds(model: ir.Model, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs for every graph input: normal floats, small non-negative integers, random bools."""
    rng = np.random.default_rng(seed)
    return {v.name: random_array(rng, static_shape(v), v.dtype.numpy()) for v in model.graph.inputs}


def static_shape(value: ir.Value) -> tuple[int, ...]:
    if value.shape is None or not all(isinstance(d, int) for d in value.shape):
        raise BadInputError(
            f"input '{value.name}' has dynamic shape {value.shape}; fix it with --input-shape {value.name}=d0,d1,..."
        )
    return tuple(int(d) for d in value.shape)


def run_onnxruntime(model: ir.Model, feeds: Mapping[str, np.ndarray], threads: int = 0) -> list[np.ndarray]:
    """Run the model with onnxruntime's CPU provider and all graph optimizations (what users would deploy)."""
    return _session(ir.to_proto(model).SerializeToString(), threads).run(None, dict(feeds))


def _session(model_bytes: bytes, threads: int = 0) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def run_with_outputs(proto: Any, names: list[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run a ModelProto with onnxruntime, returning the intermediate values called `names` (made graph outputs
    for this run only): per-layer errors and activation statistics read them."""
    return session_with_outputs(proto, names).run(names, dict(feeds))


def session_with_outputs(proto: Any, names: list[str]) -> Any:
    """An onnxruntime session on the ModelProto with `names` as extra outputs, for running it on many feeds."""
    return _session(_with_outputs(proto, names).SerializeToString())


def _with_outputs(proto: Any, names: list[str]) -> Any:
    """A copy of the ModelProto with the values called `names` as extra graph outputs."""
    import onnx

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    known = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names if name not in known)
    return proto


def measure_output_errors(
    before: Any, model: ir.Model, outputs: dict[str, tuple[str, ir.Value]]
) -> tuple[dict[str, float], str | None]:
    """Each rewritten layer's output vs the float model's, relative (‖Δ‖/‖y‖) on seeded random inputs —
    cumulative: it includes what the rewritten layers before it changed. `before` is the float model's
    ModelProto, `outputs` maps a layer to (its output's name there, its output value now). onnxruntime runs the
    float model, and the rewritten one too while its only bitc ops are LowBitMatMul (through their float twin);
    onnx's reference evaluator runs other bitc ops. Returns the errors, or a note saying why none were measured."""
    from bitc import ops
    from bitc.ops.lowbit_matmul import float_twin

    try:
        feeds = random_feeds(model)
        reference = run_with_outputs(before, [old for old, _ in outputs.values()], feeds)
        names = [new.name for _, new in outputs.values()]
        if {node.op_type for node in model.graph if ops.is_bitc(node)} <= {"LowBitMatMul"}:
            got = run_with_outputs(float_twin(model), names, feeds)
        else:
            with_outputs = ir.from_proto(_with_outputs(ir.to_proto(model), names))
            got = list(ops.reference_evaluator(with_outputs).run(names, feeds))
    except Exception as exc:  # a model that cannot run here: the weight errors are still reported
        return {}, f"output errors not measured: {str(exc).splitlines()[0][:160]}"
    errors = {}
    for name, expected, actual in zip(outputs, reference, got, strict=True):
        norm = float(np.linalg.norm(expected)) or 1.0
        errors[name] = round(float(np.linalg.norm(actual - expected)) / norm, 6)
    return errors, None


def run_reference(model: ir.Model, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """onnxruntime for standard ONNX; onnx's reference evaluator with our numpy references once bitc ops appear."""
    from bitc import ops

    if any(ops.is_bitc(node) for node in model.graph):
        return list(ops.reference_evaluator(model).run(None, dict(feeds)))
    return run_onnxruntime(model, feeds)


def max_errors(reference: list[np.ndarray], actual: list[np.ndarray]) -> tuple[float, float]:
    """Largest absolute error, and largest error relative to the reference's largest magnitude, over outputs."""
    worst_abs, worst_rel = 0.0, 0.0
    for ref, out in zip(reference, actual, strict=True):
        ref = np.asarray(ref, dtype=np.float64)
        out = np.asarray(out, dtype=np.float64)
        if ref.shape != out.shape:
            return float("inf"), float("inf")
        if ref.size == 0:
            continue
        abs_err = float(np.max(np.abs(ref - out)))
        worst_abs = max(worst_abs, abs_err)
        worst_rel = max(worst_rel, abs_err / max(float(np.max(np.abs(ref))), 1e-12))
    return worst_abs, worst_rel
