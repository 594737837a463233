"""QONNX from Brevitas: bitc's compiled output against qonnx's own executor (the independent reference)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import SUMMARY_LINES

import bitc

pytest.importorskip("brevitas")
pytest.importorskip("qonnx")

from bitc_zoo import qonnx_models


def _qonnx_execute(path, x: np.ndarray) -> np.ndarray:
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    model = ModelWrapper(str(path))
    name = model.graph.input[0].name
    return execute_onnx(model, {name: x})[model.graph.output[0].name]


def _details(manifest: dict, name: str) -> dict:
    return next(p["details"] for p in manifest["passes"] if p["name"] == name)


@pytest.mark.parametrize(
    ("name", "binary_layers"),
    [("tfc_1w1a", 4), ("tfc_1w2a", 4), ("tfc_2w2a", 4), ("cnv_1w1a", 8), ("cnv_1w2a", 8), ("cnv_2w2a", 8)],
)
def test_brevitas_bnn_compiles_to_packed_kernels_matching_qonnx(tmp_path, name, binary_layers):
    """W1A1, W1A2 (ternary activations as two thermometer planes) and W2A2 (ternary weights as two ±1 planes):
    every layer but CNV's 8-bit-input first conv runs on xor/popcount kernels, activations stay packed."""
    model, example = qonnx_models.bnn_pynq(name)
    path = qonnx_models.export_qonnx(model, example, tmp_path / f"{name}.onnx")
    result = bitc.compile(path, tmp_path / f"{name}.bitc")
    lowered = _details(result.manifest, "lower_binary")
    assert lowered["lowered"] == binary_layers and not lowered["skipped"]
    fused = _details(result.manifest, "fuse_binary")
    assert fused["fused"] == binary_layers - 1  # every binary layer but the last emits packed bits
    compiled = bitc.load(result.path)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.random(tuple(example.shape)).astype(np.float32)
        expected = _qonnx_execute(path, x)
        got = compiled(x)
        # the integer path is exact; only the float head (TensorNorm) can differ by rounding
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_digits_bnn_keeps_its_accuracy_exactly_after_compilation(tmp_path):
    import torch

    model, data = qonnx_models.digits_bnn(epochs=30)
    x_test, y_test = data["x_test"], data["y_test"]
    assert data["accuracy"] > 0.85
    path = qonnx_models.export_qonnx(model, torch.tensor(x_test[:1]), tmp_path / "digits.onnx")
    input_name = onnx.load(path).graph.input[0].name
    result = bitc.compile(path, tmp_path / "digits.bitc", input_shapes={input_name: list(x_test.shape)})
    assert _details(result.manifest, "lower_binary")["lowered"] == 3
    logits = bitc.load(result.path)(x_test)
    with torch.no_grad():
        reference = model(torch.tensor(x_test)).numpy()
    assert np.array_equal(logits.argmax(1), reference.argmax(1))
    accuracy = float((logits.argmax(1) == y_test).mean())
    assert accuracy == data["accuracy"]
    SUMMARY_LINES.append(
        f"digits W1A1 BNN ({len(y_test)} held-out images): accuracy torch {data['accuracy']:.4f}, bitc {accuracy:.4f}"
    )
