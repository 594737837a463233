"""Shapes no vector width divides: a MatMul by constant weights runs padded to whole vectors and sliced back
(nothing written past the real columns), row-wise softmax / layer norm run whole vectors plus a scalar
remainder; all match onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compile_matching_onnxruntime, save_graph, save_matmul_model
from onnx import helper, numpy_helper


@pytest.mark.parametrize(("rows", "depth", "columns"), [(4, 32, 100), (40, 96, 1001), (1, 64, 203)])
def test_padded_matmul_matches_onnxruntime(tmp_path, rows, depth, columns):
    rng = np.random.default_rng(columns)
    path = save_matmul_model(tmp_path / "mm.onnx", [1, rows, depth], columns, rng)
    x = rng.standard_normal((1, rows, depth)).astype(np.float32)
    compile_matching_onnxruntime(path, {"x": x}, rtol=1e-4, atol=1e-4)


def test_padded_matmul_then_softmax_matches_onnxruntime(tmp_path):
    """The classifier head of a text recognizer: the padded columns must not reach the softmax."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((48, 661)).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Softmax", ["m"], ["y"], axis=-1)]
    path = save_graph(tmp_path / "head.onnx", nodes, {"x": [1, 8, 48]}, {"y": [1, 8, 661]}, [weights])
    x = rng.standard_normal((1, 8, 48)).astype(np.float32)
    compile_matching_onnxruntime(path, {"x": x}, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("rows", "length"), [(3, 37), (40, 661), (1, 1001)])
def test_softmax_over_rows_no_vector_divides(tmp_path, rows, length):
    nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=-1)]
    path = save_graph(tmp_path / "sm.onnx", nodes, {"x": [2, rows, length]}, {"y": [2, rows, length]})
    x = np.random.default_rng(length).standard_normal((2, rows, length)).astype(np.float32) * 4
    compile_matching_onnxruntime(path, {"x": x}, rtol=1e-5, atol=1e-7)


def test_layer_norm_and_mean_over_rows_no_vector_divides(tmp_path):
    rng = np.random.default_rng(1)
    scale = numpy_helper.from_array(rng.standard_normal(1001).astype(np.float32), "g")
    shift = numpy_helper.from_array(rng.standard_normal(1001).astype(np.float32), "b")
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], axis=-1),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    path = save_graph(tmp_path / "ln.onnx", nodes, {"x": [2, 50, 1001]}, {"y": [2, 50, 1001]}, [scale, shift])
    x = rng.standard_normal((2, 50, 1001)).astype(np.float32)
    compile_matching_onnxruntime(path, {"x": x}, rtol=1e-4, atol=1e-5)
