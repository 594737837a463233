"""bitc ops: numpy references against independent float math, and compiled kernels against the references."""

from __future__ import annotations

import zipfile

import numpy as np
import onnx
import pytest
import torch
from binary_models import binary_conv_model, binary_dense_model, packed_pool_model, pm1

import bitc
from bitc import ops
from bitc.ops.binary_conv import binary_conv_dots
from bitc.ops.packing import pack_activations, pack_conv_weights, pack_signs, unpack_signs
from bitc.runtime.artifact import LIBRARY_NAME
from bitc.runtime.hostcpu import host_cpu_flags


@pytest.mark.parametrize("channels", [1, 31, 32, 33, 64, 100])
def test_packing_round_trips_odd_channel_counts(channels):
    rng = np.random.default_rng(channels)
    negative = rng.random((3, 5, channels)) < 0.5
    packed = pack_signs(negative)
    assert packed.dtype == np.uint32 and packed.shape == (3, 5, -(-channels // 32))
    assert np.array_equal(unpack_signs(packed, channels), negative)
    assert np.all(unpack_signs(packed, packed.shape[-1] * 32)[..., channels:] == 0)  # unused bits stay 0


def test_bitpack_thermometer_planes_encode_a_ternary_quantizer():
    """Two planes at −0.5 and just above +0.5: ½·(S₁ + S₂) = round-half-even(clip(x, −1, 1))."""
    x = np.array([[-2.0, -0.6, -0.5, -0.2, 0.0, 0.3, 0.5, 0.50001, 1.7]], np.float32)
    thresholds = [-0.5, float(np.nextafter(np.float32(0.5), np.float32(np.inf)))]
    planes = unpack_signs(pack_activations(x, thresholds), 2 * x.shape[1]).reshape(2, -1)
    value = 0.5 * np.where(planes, -1, 1).sum(axis=0)
    assert np.array_equal(value, np.round(np.clip(x[0], -1, 1)))


def test_bitpack_maps_zero_to_plus_one():
    x = np.array([[-1.0, -0.0, 0.0, 1e-30, -1e-30]], np.float32)
    assert np.array_equal(unpack_signs(pack_activations(x), 5), [[True, False, False, False, True]])


@pytest.mark.parametrize("pad_value", [0, 1])
@pytest.mark.parametrize(("stride", "pad", "kernel"), [(1, 1, 3), (2, 1, 3), (1, 0, 3), (2, 0, 1), (1, 2, 3)])
def test_binary_conv_reference_matches_float_convolution(pad_value, stride, pad, kernel):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 37, 9, 11)).astype(np.float32)
    w = pm1(rng, (1, 20, 37, kernel, kernel))
    dots = binary_conv_dots(pack_activations(x), pack_conv_weights(w), 37, [stride] * 2, [pad] * 4, pad_value)
    signs = torch.tensor(np.where(x >= 0, 1.0, -1.0).astype(np.float32))
    padded = torch.nn.functional.pad(signs, [pad] * 4, value=float(pad_value))
    expected = torch.nn.functional.conv2d(padded, torch.tensor(w[0], dtype=torch.float32), stride=stride)
    assert np.array_equal(dots[0].transpose(0, 3, 1, 2), expected.numpy())


def test_binary_dense_reference_matches_matmul():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 77)).astype(np.float32)
    w = pm1(rng, (2, 9, 77))
    scale = rng.standard_normal((2, 9)).astype(np.float32)
    bias = rng.standard_normal(9).astype(np.float32)
    (out,) = ops.get("BinaryDense").reference(
        pack_activations(x), pack_signs(w < 0), scale, bias, in_features=77, output_format="float"
    )
    signs = np.where(x >= 0, 1.0, -1.0)
    expected = sum(scale[p] * (signs @ w[p].T) for p in range(2)) + bias
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-5)


def test_packed_max_pool_reference_is_max_pool_of_signs():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 70, 9, 10)).astype(np.float32)
    (out,) = ops.get("PackedMaxPool").reference(pack_activations(x), kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    signs = torch.tensor(np.where(x >= 0, 1.0, -1.0).astype(np.float32))
    expected = torch.nn.functional.max_pool2d(signs, 3, 2, 1).numpy()
    assert np.array_equal(out, pack_activations(expected))


def _compile_and_run(tmp_path, proto: onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    path = tmp_path / "model.onnx"
    onnx.save(proto, path)
    import onnx_ir as ir

    from bitc.frontend import normalize

    reference = ops.reference_evaluator(normalize(ir.load(path), source="t")).run(None, {"x": x})[0]
    bitc.compile(path, tmp_path / "model.bitc", passes=[])
    return reference, bitc.load(tmp_path / "model.bitc")(x=x)


CONV_CASES = {
    "zero_pad": {},
    "stride2": {"stride": 2},
    "no_pad": {"pad": 0},
    "one_pad": {"pad_value": 1},
    "wide_pad_tiny_input": {"h": 3, "w": 3, "pad": 2},
    "pointwise_stride2": {"k": 1, "pad": 0, "stride": 2},
    "aligned_64": {"c": 64, "o": 64, "h": 8, "w": 8},
    "two_planes": {"planes": 2},
    "packed_output": {"output_format": "packed"},
    "packed_output_stride2_odd": {"output_format": "packed", "stride": 2, "c": 100, "o": 33},
    "packed_output_two_planes": {"output_format": "packed", "planes": 2, "threshold_planes": 2},
    "thermometer_input": {"input_thresholds": [-0.5, 0.5000001]},
    "one_output_channel": {"o": 1},  # one lane read per row: compute_at shrinks the lane loop to a unit loop
    "one_output_channel_packed": {"o": 1, "output_format": "packed"},
    "one_output_channel_pointwise_1x1": {"n": 1, "o": 1, "h": 1, "w": 1, "k": 1, "pad": 0},
}


@pytest.mark.parametrize("case", CONV_CASES)
def test_compiled_binary_conv_matches_reference(tmp_path, case):
    proto = binary_conv_model(**CONV_CASES[case])
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    reference, compiled = _compile_and_run(tmp_path, proto, x)
    if reference.dtype == np.uint32:
        assert np.array_equal(compiled, reference)  # integer path: bit-exact
    else:  # float epilogue: one rounding step (FMA) apart at most
        np.testing.assert_allclose(compiled, reference, rtol=1e-6, atol=1e-5 * np.abs(reference).max())


@pytest.mark.parametrize(
    "case",
    [
        {},
        {"k": 64},
        {"k": 784, "n": 10},
        {"planes": 3},
        {"output_format": "packed"},
        {"m": 1, "k": 33},
        {"output_format": "packed", "planes": 2, "threshold_planes": 3},
    ],
)
def test_compiled_binary_dense_matches_reference(tmp_path, case):
    proto = binary_dense_model(**case)
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    reference, compiled = _compile_and_run(tmp_path, proto, x)
    if reference.dtype == np.uint32:
        assert np.array_equal(compiled, reference)
    else:
        np.testing.assert_allclose(compiled, reference, rtol=1e-6, atol=1e-5 * np.abs(reference).max())


@pytest.mark.parametrize("case", [{}, {"pad": 0, "stride": 1}, {"c": 32, "h": 8, "w": 8}])
def test_compiled_packed_max_pool_matches_reference(tmp_path, case):
    x = np.random.default_rng(5).standard_normal((2, case.get("c", 70), case.get("h", 9), case.get("w", 10)))
    reference, compiled = _compile_and_run(tmp_path, packed_pool_model(**case), x.astype(np.float32))
    assert np.array_equal(compiled, reference)


@pytest.mark.skipif("avx512_vpopcntdq" not in host_cpu_flags(), reason="needs AVX-512 VPOPCNTDQ")
def test_binary_conv_uses_the_vector_popcount_instruction(tmp_path):
    import shutil
    import subprocess

    if shutil.which("objdump") is None:
        pytest.skip("objdump not installed")
    onnx.save(binary_conv_model(c=64, o=64), tmp_path / "m.onnx")
    bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc", passes=[])
    with zipfile.ZipFile(tmp_path / "m.bitc") as artifact:
        (tmp_path / "m.so").write_bytes(artifact.read(LIBRARY_NAME))
    assembly = subprocess.run(["objdump", "-d", str(tmp_path / "m.so")], capture_output=True, text=True).stdout
    assert "vpopcntd" in assembly and "zmm" in assembly


def _rank4_weights(proto: onnx.ModelProto) -> None:
    weights = onnx.numpy_helper.to_array(proto.graph.initializer[0])
    proto.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(weights[0], "w"))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda proto: setattr(proto.graph.node[1], "op_type", "BinaryConvolution"),
            "unknown bitc op BinaryConvolution",
        ),
        (_rank4_weights, "node 'bconv' \\(BinaryConv\\)"),
    ],
)
def test_broken_bitc_nodes_are_bad_input_naming_the_node(tmp_path, mutate, message):
    from bitc.errors import BadInputError

    proto = binary_conv_model()
    mutate(proto)
    onnx.save(proto, tmp_path / "m.onnx")
    with pytest.raises(BadInputError, match=message):
        bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc", passes=[])
    assert not (tmp_path / "m.bitc").exists()
