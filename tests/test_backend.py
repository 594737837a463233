"""bitc as an ONNX backend: onnx's own BackendTest runner drives it on a fast subset of the node tests (the full
suite is `benchmarks/node_conformance.py`), and the backend API behaves as onnx.backend.base describes."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnx.backend.test
import pytest
from onnx import TensorProto, helper

import bitc
import bitc.backend
from bitc.errors import BitcError

# Node tests covering the op families bitc compiles (elementwise, broadcasting, conv, pooling, normalization,
# reductions, shape ops, gather, matmul, softmax, casts incl. narrow types), each a few hundred ms to compile.
FAST_SUBSET = (
    "abs|add_bcast|argmax_default_axis_example|averagepool_2d_pads|batchnorm_epsilon|cast_FLOAT_to_DOUBLE|"
    "clip_default_min|concat_2d_axis_0|conv_with_strides_padding|cumsum_1d|depthtospace_crd_mode_example|"
    "div_bcast|einsum_batch_matmul|elu_default|expand_dim_unchanged|flatten_axis1|gather_1|gemm_all_attributes|"
    "globalaveragepool|hardsigmoid_default|layer_normalization_2d_axis0|leakyrelu_default|matmul_3d|"
    "maxpool_2d_ceil|mod_mixed_sign_int32|pow_bcast_array|reduce_sum_keepdims_example|relu|reshape_reordered_all_dims|"
    "resize_upsample_scales_nearest|slice_neg_steps|softmax_axis_1|spacetodepth_example|split_equal_parts_1d_opset18|"
    "tile_precomputed|transpose_all_permutations_0|where_example|"
    "cast_FLOAT_to_FLOAT8E4M3FN|cast_BFLOAT16_to_FLOAT|cast_FLOAT_to_INT4|dequantizelinear_e4m3fn|"
    "quantizelinear_blocked_asymmetric"
)


def _node_test_class() -> type:
    """onnx's node-test TestCase for bitc, with only the FAST_SUBSET methods (the rest would show as skipped)."""
    runner = onnx.backend.test.BackendTest(bitc.backend, __name__)
    pattern = re.compile(rf"^test_({FAST_SUBSET})_cpu$")
    runner.include(pattern.pattern)
    case_class = runner.test_cases["OnnxBackendNodeModelTest"]
    for name in [name for name in vars(case_class) if name.startswith("test_")]:
        if not pattern.match(name):
            delattr(case_class, name)
    return case_class


OnnxBackendNodeModelTest = _node_test_class()


def test_fast_subset_names_real_node_tests():
    """Every FAST_SUBSET name is an onnx node test (a typo would silently shrink the subset)."""
    selected = [name for name in vars(OnnxBackendNodeModelTest) if name.startswith("test_")]
    assert len(selected) == len(FAST_SUBSET.split("|"))


def _relu_model(shape: list[int | str]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_prepare_compiles_a_static_model_and_run_takes_lists_dicts_and_arrays():
    rep = bitc.backend.prepare(_relu_model([2, 3]))
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    expected = np.maximum(x, 0)
    for inputs in ([x], {"x": x}, x):
        outputs = rep.run(inputs)
        np.testing.assert_array_equal(outputs[0], expected)
        np.testing.assert_array_equal(outputs.y, expected)


def test_a_dynamic_model_compiles_once_per_input_shape():
    rep = bitc.backend.prepare(_relu_model(["n", 3]))
    for rows in (1, 4, 1):
        x = np.random.default_rng(rows).standard_normal((rows, 3)).astype(np.float32)
        np.testing.assert_array_equal(rep.run([x])[0], np.maximum(x, 0))
    assert len(rep._compiled) == 2


def test_a_refused_model_raises_bitc_error_in_prepare():
    graph = helper.make_graph(
        [helper.make_node("Dropout", ["x", "ratio", "training"], ["y"], seed=0)],
        "dropout",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        initializer=[
            onnx.numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
            onnx.numpy_helper.from_array(np.array(True), "training"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(BitcError, match="Dropout"):
        bitc.backend.prepare(model)


def test_run_node_and_devices():
    node = helper.make_node("Add", ["a", "b"], ["c"])
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float32)
    np.testing.assert_array_equal(bitc.backend.run_node(node, [a, b])[0], a + b)
    assert bitc.backend.supports_device("CPU") and not bitc.backend.supports_device("TPU")
    with pytest.raises(BitcError, match="device"):
        bitc.backend.prepare(_relu_model([2]), device="TPU")


def _reshape_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_shape_inputs_are_specialised_per_value_or_refused_when_asked():
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    rep = bitc.backend.prepare(_reshape_model())
    for shape in ([3, 4], [4, 3], [3, 4]):
        np.testing.assert_array_equal(rep.run([x, np.array(shape, np.int64)])[0], x.reshape(shape))
    assert len(rep._compiled) == 2
    with pytest.raises(BitcError, match="Reshape"):  # compiled in prepare: every input shape is static
        bitc.backend.prepare(_reshape_model(), specialize_shape_inputs=False)
