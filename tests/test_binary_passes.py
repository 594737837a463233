"""Binary passes: what they rewrite (op counts) and that the numbers stay those of the reference."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import pytest
from binary_models import as_ir, sign_conv_model

from bitc import ops
from bitc.passes import run_pipeline
from bitc.passes.binarize import residual_planes
from bitc.passes.binary_fusion import integer_thresholds
from bitc.passes.verify import run_onnxruntime

PIPELINE = ["fold_constants", "fold_batchnorm", "lower_binary", "fuse_binary", "remove_unused"]


def _counts(model: ir.Model) -> Counter:
    return Counter(node.op_type for node in model.graph)


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    return ops.reference_evaluator(model).run(None, {model.graph.inputs[0].name: x})[0]


def _lowered(proto, pipeline=PIPELINE) -> tuple[ir.Model, ir.Model, list]:
    original = as_ir(proto)
    lowered, records = run_pipeline(as_ir(proto), pipeline)
    return original, lowered, records


def _inputs(model: ir.Model, seed: int = 0) -> np.ndarray:
    shape = [int(d) for d in model.graph.inputs[0].shape]
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_lower_binary_turns_sign_conv_into_packed_ops_with_the_same_output():
    original, lowered, records = _lowered(sign_conv_model())
    counts = _counts(lowered)
    assert counts["BinaryConv"] == 2 and counts["Conv"] == 0 and counts["Where"] == 0
    # BN + sign between the two convs became thresholds: one BitPack (the input's) remains
    assert counts["BitPack"] == 1 and counts["BatchNormalization"] == 0
    assert ops.get("BinaryConv").attrs(lowered.graph.node(1))["output_format"] == "packed"
    details = {r.name: r.details for r in records if r.details}
    assert details["lower_binary"]["lowered"] == 2 and details["fuse_binary"]["fused"] == 1
    x = _inputs(original)
    np.testing.assert_allclose(_run(lowered, x), run_onnxruntime(original, {"x": x})[0], rtol=1e-5, atol=1e-4)


def test_threshold_handles_negative_and_zero_gamma():
    """BN left after the binary conv (not folded into its weights): a negative scale flips the filter, a zero
    scale makes a constant channel; the result is still the float model's."""
    gamma = np.array([1.0, -0.7, 0.0, 0.0, -2.0, 0.5] * 4, np.float32)
    original, fused, records = _lowered(
        sign_conv_model(bn_gamma=gamma), ["fold_constants", "lower_binary", "fuse_binary", "remove_unused"]
    )
    report = next(r.details for r in records if r.name == "fuse_binary")
    assert report["folded_epilogues"] == 1 and report["fused"] == 1
    assert report["flipped_channels"] == 8 and report["constant_channels"] == 8
    for seed in range(3):
        x = _inputs(original, seed)
        np.testing.assert_allclose(_run(fused, x), run_onnxruntime(original, {"x": x})[0], rtol=1e-5, atol=1e-4)


def test_integer_thresholds_agree_with_the_float_epilogue_on_every_dot():
    rng = np.random.default_rng(0)
    scale = np.abs(rng.standard_normal(50)).astype(np.float32)
    scale[:5] = 0
    bias = (rng.standard_normal(50) * 10).astype(np.float32)
    bias[10:15] = scale[10:15] * 3  # boundaries exactly on an integer dot
    thresholds = integer_thresholds(scale, bias, reach=40)
    dots = np.arange(-40, 41)
    negative = dots[None, :].astype(np.float32) * scale[:, None] + bias[:, None] < 0
    assert np.array_equal(negative, dots[None, :] < thresholds[:, None].astype(np.int64))


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_explicit_pad_becomes_the_ops_padding(value):
    original, lowered, _ = _lowered(sign_conv_model(explicit_pad=value, then_sign_conv=False))
    (conv,) = [n for n in lowered.graph if n.op_type == "BinaryConv"]
    assert ops.get("BinaryConv").attrs(conv)["pad_value"] == int(value) and _counts(lowered)["Pad"] == 0
    x = _inputs(original)
    np.testing.assert_allclose(_run(lowered, x), run_onnxruntime(original, {"x": x})[0], rtol=1e-5, atol=1e-4)


def test_onnx_sign_is_lowered_with_a_note_about_zero():
    _, lowered, records = _lowered(sign_conv_model(onnx_sign=True, then_sign_conv=False))
    assert _counts(lowered)["BinaryConv"] == 1
    assert any("sign(0) = +1" in note for note in next(r.details for r in records if r.name == "lower_binary")["notes"])


def test_non_binary_weights_are_left_in_float_with_a_reason():
    proto = sign_conv_model(then_sign_conv=False)
    weights = next(t for t in proto.graph.initializer if t.name == "w1")
    import onnx

    w = onnx.numpy_helper.to_array(weights).copy()
    w[0, 0, 0, 0] *= 1.5
    weights.CopyFrom(onnx.numpy_helper.from_array(w, "w1"))
    _, lowered, records = _lowered(proto)
    assert _counts(lowered)["Conv"] == 1
    skipped = next(r.details for r in records if r.name == "lower_binary")["skipped"]
    assert list(skipped.values()) == ["weights are not ±α (or ternary 0/±α) per output channel"]


@pytest.mark.parametrize("planes", [1, 2, 3])
def test_binarize_then_lowering_keeps_the_binarized_function(planes, tmp_path):
    import onnx
    from conftest import make_conv_bn_model

    model = as_ir(onnx.load(make_conv_bn_model(tmp_path / "m.onnx", channels=16)))
    policy = {"planes": planes, "keep_first_last": False}  # the model has only two layers
    model, records = run_pipeline(model, ["fold_constants", "fold_batchnorm", ("binarize", policy)])
    report = next(r.details for r in records if r.name == "binarize")
    assert report["binarized"] == 2 and all(layer["planes"] == planes for layer in report["layers"].values())
    x = _inputs(model)
    binarized_output = run_onnxruntime(model, {"x": x})[0]
    model, _ = run_pipeline(model, ["lower_binary", "fuse_binary", "remove_unused"])
    counts = _counts(model)
    assert counts["BinaryConv"] == 1 and counts["BinaryDense"] == 1 and counts["Conv"] == counts["Gemm"] == 0
    assert all(int(n.inputs[1].shape[0]) == planes for n in model.graph if n.op_type.startswith("Binary"))
    np.testing.assert_allclose(_run(model, x), binarized_output, rtol=1e-5, atol=1e-4)


def test_residual_planes_reduce_the_weight_error():
    w = np.random.default_rng(0).standard_normal((8, 5, 3, 3))
    errors = []
    for planes in (1, 2, 3, 4):
        signs, scales = residual_planes(w, planes)
        approx = np.einsum("po,po...->o...", scales, signs)
        errors.append(np.linalg.norm(approx - w) / np.linalg.norm(w))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.5 * errors[0]


def test_binarize_reports_output_error_that_shrinks_with_more_planes(tmp_path):
    import onnx
    from conftest import make_conv_bn_model

    path = make_conv_bn_model(tmp_path / "m.onnx", channels=32)
    errors = []
    for planes in (1, 2, 3):
        model = as_ir(onnx.load(path))
        policy = {"planes": planes, "keep_first_last": False, "activations": "float"}
        _, records = run_pipeline(model, ["fold_constants", "fold_batchnorm", ("binarize", policy)])
        layers = next(r.details for r in records if r.name == "binarize")["layers"]
        errors.append([layer["output_rel_error"] for layer in layers.values()])
    for layer in range(len(errors[0])):
        assert errors[0][layer] > errors[1][layer] > errors[2][layer] > 0


def test_sign_graph_compiles_in_float_when_not_lowered(tmp_path):
    """Without the binary passes the comparisons go through the blocked layout as bool tensors (TVM's own
    layout-transform lowering fails on those)."""
    import onnx

    import bitc
    from bitc.passes import DEFAULT_PIPELINE

    proto = sign_conv_model(c=32, o=32)
    onnx.save(proto, tmp_path / "m.onnx")
    float_pipeline = [p for p in DEFAULT_PIPELINE if p not in ("lower_binary", "fuse_binary")]
    compiled = bitc.load(bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc", passes=float_pipeline).path)
    x = _inputs(as_ir(proto))
    expected = run_onnxruntime(as_ir(proto), {"x": x})[0]
    np.testing.assert_allclose(compiled(x), expected, rtol=1e-5, atol=1e-4 * np.abs(expected).max())
