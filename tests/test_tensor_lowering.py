"""Rewrites in bitc.frontend.tensor_lowering beyond what onnx's node tests cover: DFT with a dft_length that pads
or truncates the signal (against numpy's FFT), one-sided inverse of odd lengths, and CumProd's multiply order."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import bitc


def _compile_and_run(tmp_path, graph: onnx.GraphProto, feeds: dict[str, np.ndarray], opset: int = 20) -> dict:
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    return bitc.load(bitc.compile(str(path), tmp_path / "model.bitc").path).run(feeds)


@pytest.mark.parametrize(("length", "inverse", "onesided"), [(12, 0, 0), (6, 0, 1), (7, 1, 0), (9, 1, 1), (8, 1, 1)])
def test_dft_with_a_length_matches_numpy(tmp_path, length: int, inverse: int, onesided: int) -> None:
    """A [2, 8, 3] signal along axis 1 (real for the one-sided forward DFT, else complex): dft_length pads (12,
    9) or truncates (6, 7)."""
    rng = np.random.default_rng(0)
    signal = rng.standard_normal((2, 8, 3)) + 1j * rng.standard_normal((2, 8, 3))
    x = np.stack([signal.real, signal.imag], axis=-1).astype(np.float32)
    if onesided and not inverse:
        x = x[..., :1]
    if inverse and onesided:
        want = np.fft.irfft(x[..., 0] + 1j * x[..., 1], n=length, axis=1)[..., None]
    elif inverse:
        want = np.fft.ifft(x[..., 0] + 1j * x[..., 1], n=length, axis=1)
    else:
        want = np.fft.fft(x[..., 0] + (1j * x[..., 1] if x.shape[-1] == 2 else 0), n=length, axis=1)
        want = want[:, : length // 2 + 1] if onesided else want
    if want.dtype.kind == "c":
        want = np.stack([want.real, want.imag], axis=-1)
    graph = helper.make_graph(
        [helper.make_node("DFT", ["x", "length", "axis"], ["y"], inverse=inverse, onesided=onesided)],
        "dft",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(want.shape))],
        initializer=[
            helper.make_tensor("length", TensorProto.INT64, [], [length]),
            helper.make_tensor("axis", TensorProto.INT64, [], [1]),
        ],
    )
    got = _compile_and_run(tmp_path, graph, {"x": x})["y"]
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-5, atol=1e-5)


def test_cumprod_matches_numpy(tmp_path) -> None:
    """Each position is the previous product times the next value, numpy's order (LLVM may reassociate within a
    fused kernel, as for every float kernel bitc builds: rounding-level differences only)."""
    x = np.random.default_rng(1).uniform(0.5, 1.5, (3, 50)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("CumProd", ["x", "axis"], ["y"], reverse=1)],
        "cumprod",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 50])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 50])],
        initializer=[helper.make_tensor("axis", TensorProto.INT64, [], [1])],
    )
    got = _compile_and_run(tmp_path, graph, {"x": x}, opset=26)["y"]
    want = np.cumprod(x[:, ::-1], axis=1)[:, ::-1]
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("count", [1, 2, 4])
def test_variadic_sum_adds_in_input_order_with_broadcasting(tmp_path, count: int) -> None:
    """Sum of 1, 2 or 4 inputs of broadcasting shapes, as a chain of Adds in input order (onnxruntime's order)."""
    from conftest import run_onnxruntime

    shapes = [[2, 3, 4], [3, 1], [1, 4], [2, 3, 4]][:count]
    rng = np.random.default_rng(2)
    feeds = {f"x{i}": rng.standard_normal(shape).astype(np.float32) for i, shape in enumerate(shapes)}
    out_shape = list(np.broadcast_shapes(*map(tuple, shapes)))
    graph = helper.make_graph(
        [helper.make_node("Sum", list(feeds), ["y"])],
        "sum",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(v.shape)) for name, v in feeds.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
    )
    got = _compile_and_run(tmp_path, graph, feeds, opset=17)["y"]
    np.testing.assert_array_equal(got, run_onnxruntime(tmp_path / "model.onnx", feeds)[0])
