"""Numerical checks of a model against onnxruntime: the reference for every standard-ONNX rewrite."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from bitc.ir.feeds import random_feeds


def run_onnxruntime(model: ir.Model, feeds: Mapping[str, np.ndarray], threads: int = 0) -> list[np.ndarray]:
    """Run the model with onnxruntime's CPU provider and all graph optimizations (what users would deploy)."""
    return _session(ir.to_proto(model), threads).run(None, dict(feeds))


MIN_IR_VERSION = 4  # before it, every initializer also had to be a graph input


def _session(proto: Any, threads: int = 0) -> Any:
    """An onnxruntime session for `proto`. An IR-3 model (onnx's classic CNNs) is run as IR 4: the passes add
    initializers (folded constants) that IR 3 would also need as graph inputs, and onnxruntime refuses those
    models, which turned the exact check off for them."""
    import onnxruntime as ort

    if proto.ir_version < MIN_IR_VERSION:
        upgraded = type(proto)()
        upgraded.CopyFrom(proto)
        upgraded.ir_version = MIN_IR_VERSION
        proto = upgraded
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_with_outputs(proto: Any, names: list[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run a ModelProto with onnxruntime, returning the intermediate values called `names` (made graph outputs
    for this run only): per-layer errors and activation statistics read them."""
    return session_with_outputs(proto, names).run(names, dict(feeds))


def session_with_outputs(proto: Any, names: list[str]) -> Any:
    """An onnxruntime session on the ModelProto with `names` as extra outputs, for running it on many feeds."""
    return _session(_with_outputs(proto, names))


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
    """Each rewritten layer's output vs the model before the pass, relative (‖Δ‖/‖y‖) on seeded random inputs —
    cumulative: it includes what the rewritten layers before it changed. `before` is that model's ModelProto,
    `outputs` maps a layer to (its output's name there, its output value now). onnxruntime runs standard ONNX,
    and the rewritten model too while its only bitc ops are LowBitMatMul (through their float twin); onnx's
    reference evaluator runs a model with other bitc ops (e.g. blocks an earlier pass made). Returns the errors,
    or a note saying why none were measured."""
    from bitc import ops
    from bitc.ops.lowbit_matmul import float_twin

    try:
        feeds = random_feeds(model)
        reference = _run_with_outputs_anywhere(before, [old for old, _ in outputs.values()], feeds)
        names = [new.name for _, new in outputs.values()]
        if {node.op_type for node in model.graph if ops.is_bitc(node)} <= {"LowBitMatMul"}:
            got = run_with_outputs(float_twin(model), names, feeds)
        else:
            got = _run_with_outputs_anywhere(ir.to_proto(model), names, feeds)
    except Exception as exc:  # a model that cannot run here: the weight errors are still reported
        return {}, f"output errors not measured: {str(exc).splitlines()[0][:160]}"
    errors = {}
    for name, expected, actual in zip(outputs, reference, got, strict=True):
        norm = float(np.linalg.norm(expected)) or 1.0
        errors[name] = round(float(np.linalg.norm(actual - expected)) / norm, 6)
    return errors, None


def _run_with_outputs_anywhere(proto: Any, names: list[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """`run_with_outputs` for standard ONNX; onnx's reference evaluator with bitc's numpy references when the
    model holds bitc ops (onnxruntime does not know them)."""
    from bitc import ops

    if not any(node.domain == ops.DOMAIN for node in proto.graph.node):
        return run_with_outputs(proto, names, feeds)
    with_outputs = ir.from_proto(_with_outputs(proto, names))
    return list(ops.reference_evaluator(with_outputs).run(names, dict(feeds)))


def run_reference(model: ir.Model, feeds: Mapping[str, np.ndarray], proto: Any = None) -> list[np.ndarray]:
    """onnxruntime for standard ONNX; onnx's reference evaluator with our numpy references once bitc ops appear.
    `proto`: the model's ModelProto if the caller already has it (saves converting a big model twice)."""
    from bitc import ops

    if any(ops.is_bitc(node) for node in model.graph):
        return list(ops.reference_evaluator(model).run(None, dict(feeds)))
    if proto is not None:
        return _session(proto).run(None, dict(feeds))
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


# The compile-time check of the exact passes: the outputs before and after each run of them, on one seeded batch.
EXACT_RTOL = 1e-4  # of the output's largest magnitude: float rounding of reassociated sums stays far below it
EXACT_MISMATCH = 0.01  # integer / bool outputs: the share of elements allowed to differ (argmax near-ties)
CHECK_MAX_MACS = 4_000_000_000  # per run under onnxruntime (~1 s on one core); more is skipped, with a note
CHECK_MAX_MACS_REFERENCE = 200_000_000  # per run under onnx's Python reference evaluator (models with bitc ops)
CHECK_MAX_PARAM_BYTES = 1 << 30  # the check holds two copies of the weights
CHECK_MAX_VALUE_BYTES = 1 << 30  # inputs, outputs and intermediates of one run (a 4 GiB ConstantOfShape output)


def check_cost(model: ir.Model) -> str | None:
    """Why the exact check would be too costly for this model (None: affordable): it must stay a small part of a
    compile, so huge models are skipped (with a note in the pass log) rather than made slow."""
    from bitc import ops
    from bitc.layers import layer_table, summarize_layers

    weights = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    if weights > CHECK_MAX_PARAM_BYTES:
        return f"exact check skipped: {weights / 2**30:.1f} GiB of weights (the check's limit is 1 GiB)"
    values = _value_bytes(model)
    if values > CHECK_MAX_VALUE_BYTES:
        return f"exact check skipped: {values / 2**30:.1f} GiB of tensors per run (the check's limit is 1 GiB)"
    macs = int(summarize_layers(layer_table(model))["macs"])
    evaluator = any(ops.is_bitc(node) for node in model.graph)
    limit = CHECK_MAX_MACS_REFERENCE if evaluator else CHECK_MAX_MACS
    if macs > limit:
        runner = "onnx's reference evaluator" if evaluator else "onnxruntime"
        return f"exact check skipped: {macs / 1e6:.0f} M MACs per run (the limit under {runner} is {limit / 1e6:.0f} M)"
    return None


def _value_bytes(model: ir.Model) -> int:
    """Bytes of every tensor one reference run computes (graph inputs and node outputs with known shapes)."""
    total = 0
    values = [*model.graph.inputs, *(out for node in model.graph for out in node.outputs)]
    for value in values:
        shape, dtype = value.shape, value.dtype
        if shape is None or dtype is None or not shape.is_static():
            continue
        size = 1
        for dim in shape:
            size *= int(dim)
        total += int(size * max(dtype.itemsize, 1))
    return total


def exact_violation(names: list[str], reference: list, actual: list) -> str | None:
    """How `actual` breaks exactness against `reference` (None: equal up to float rounding): a shape or dtype
    change, a different NaN/±Inf pattern, a float error above EXACT_RTOL of the output's largest magnitude, or
    more than EXACT_MISMATCH of an integer output's elements changed."""
    for name, ref, out in zip(names, reference, actual, strict=True):
        ref, out = np.asarray(ref), np.asarray(out)
        if ref.shape != out.shape or ref.dtype != out.dtype:
            return f"output '{name}' became {out.dtype}{list(out.shape)} (was {ref.dtype}{list(ref.shape)})"
        if ref.size == 0:
            continue
        if ref.dtype.kind != "f":
            changed = float(np.mean(ref != out))
            if changed > EXACT_MISMATCH:
                return f"output '{name}': {changed:.0%} of its elements changed"
            continue
        for test, what in ((np.isnan, "NaN"), (np.isposinf, "+Inf"), (np.isneginf, "-Inf")):
            if not np.array_equal(test(ref), test(out)):
                return f"output '{name}': its {what} entries changed"
        finite = np.isfinite(ref)
        ref64, out64 = ref[finite].astype(np.float64), out[finite].astype(np.float64)
        if ref64.size == 0:
            continue
        scale = float(np.max(np.abs(ref64)))
        error = float(np.max(np.abs(ref64 - out64)))
        if error > EXACT_RTOL * scale + np.finfo(ref.dtype).tiny:
            return f"output '{name}': max error {error:.3g} is {error / max(scale, 1e-30):.2g} of its largest value"
    return None


def first_difference(before: Any, after: ir.Model, feeds: Mapping[str, np.ndarray]) -> str | None:
    """The first value (in the model's order before) that exists under one name in both models and differs
    beyond float rounding: where a broken rewrite starts. None if it cannot be found cheaply."""
    old = ir.from_proto(before)
    new_values = {out.name: out for node in after.graph for out in node.outputs}
    candidates, producers = [], {}
    for node in old.graph:
        for out in node.outputs:
            new = new_values.get(out.name)
            if out.name and new is not None and (out.shape is None or new.shape is None or out.shape == new.shape):
                candidates.append(out.name)
                producers[out.name] = node
    if not candidates:
        return None
    try:
        expected = _values_with_outputs(before, candidates, feeds)
        got = _values_with_outputs(ir.to_proto(after), candidates, feeds)
    except Exception:
        return None
    for name, ref, out in zip(candidates, expected, got, strict=True):
        if exact_violation([name], [ref], [out]) is not None and not _same_channels(ref, out):
            node = producers[name]
            return f"value '{name}' ({node.op_type} '{node.name}')"
    return None


def _same_channels(ref: Any, out: Any) -> bool:
    """Equal up to an order of axis 1's channels (what `reorder` does to every value inside the model)."""
    ref, out = np.asarray(ref, dtype=np.float64), np.asarray(out, dtype=np.float64)
    if ref.ndim < 2 or ref.shape != out.shape or not (np.all(np.isfinite(ref)) and np.all(np.isfinite(out))):
        return False

    def signature(x: np.ndarray) -> np.ndarray:
        rows = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
        stats = np.stack([rows.sum(axis=1), np.square(rows).sum(axis=1)], axis=1)
        return stats[np.lexsort((stats[:, 1], stats[:, 0]))]

    a, b = signature(ref), signature(out)
    return bool(np.allclose(a, b, rtol=1e-3, atol=1e-3 * max(float(np.abs(a).max()), 1e-30)))


def _values_with_outputs(proto: Any, names: list[str], feeds: Mapping[str, np.ndarray]) -> list:
    from bitc import ops

    model = ir.from_proto(_with_outputs(proto, names))
    if any(ops.is_bitc(node) for node in model.graph):
        return list(ops.reference_evaluator(model).run(names, dict(feeds)))
    return run_with_outputs(proto, names, feeds)
