"""Constant matmul weights packed into register-tile column panels (`cpu.matmul_packing`): which matmuls are
packed, and that packed matmuls (with fused epilogues, batched inputs, 2- and 3-vector panels) match onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_onnxruntime, save_matmul_model

import bitc


def _matmul_model(path, x_shape, columns, *, gelu=False, seed=0):
    rng = np.random.default_rng(seed)
    return save_matmul_model(path, x_shape, columns, rng, activation="Gelu" if gelu else "Relu", weight_scale=0.2)


def _kernels(path) -> list[str]:
    from tvm import relax

    from bitc.codegen.cpu.build import lower_to_fused_tir
    from bitc.codegen.relax_import import to_relax
    from bitc.codegen.target import parse_target
    from bitc.frontend import load_onnx
    from bitc.passes import run_pipeline

    target = parse_target("cpu", None)
    model, _ = run_pipeline(load_onnx(path), None, check_exact=False)
    mod, _, _ = lower_to_fused_tir(to_relax(model, "m", target), target)
    called = []
    relax.analysis.post_order_visit(
        mod["main"].body,
        lambda e: (
            called.append(e.args[0].name_hint)
            if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.call_tir"
            else None
        ),
    )
    return called


@pytest.mark.parametrize(
    ("x_shape", "columns"),
    [((64, 96), 384), ((1, 37, 64), 96), ((2, 8, 48), 40), ((5, 32), 1536)],
)
def test_packed_matmuls_match_onnxruntime(tmp_path, x_shape, columns):
    path = _matmul_model(tmp_path / "m.onnx", x_shape, columns, seed=columns)
    assert any("matmul_packed" in name for name in _kernels(path))
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    bitc.compile(path, tmp_path / "m.bitc")
    for threads in (1, 2):
        got = bitc.load(tmp_path / "m.bitc", num_threads=threads)(x)
        np.testing.assert_allclose(got, run_onnxruntime(path, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_a_packed_matmul_keeps_its_gelu_epilogue_and_matches_onnxruntime(tmp_path):
    path = _matmul_model(tmp_path / "m.onnx", (1, 16, 64), 256, gelu=True)
    kernels = _kernels(path)
    assert [name for name in kernels if "matmul" in name] == [n for n in kernels if "matmul_packed" in n]
    assert len(kernels) == 1, kernels  # bias and GELU fused into the packed matmul's write-back
    x = np.random.default_rng(2).standard_normal((1, 16, 64)).astype(np.float32)
    bitc.compile(path, tmp_path / "m.bitc")
    np.testing.assert_allclose(
        bitc.load(tmp_path / "m.bitc")(x), run_onnxruntime(path, {"x": x})[0], rtol=1e-4, atol=1e-4
    )


def test_one_row_and_ragged_matmuls_keep_row_major_weights(tmp_path):
    """A GEMV streams W's rows as they are; a column count no vector divides is left to the padding rewrite."""
    assert not any("matmul_packed" in n for n in _kernels(_matmul_model(tmp_path / "gemv.onnx", (1, 64), 256)))
    assert not any("matmul_packed" in n for n in _kernels(_matmul_model(tmp_path / "odd.onnx", (8, 64), 20)))


def test_weights_over_the_size_cap_stay_row_major(tmp_path, monkeypatch):
    """A tied LM head would be stored twice (packed for the matmul, row-major for the embedding Gather)."""
    from bitc.codegen.cpu import matmul_packing

    path = _matmul_model(tmp_path / "m.onnx", (8, 64), 256)
    assert any("matmul_packed" in n for n in _kernels(path))
    monkeypatch.setattr(matmul_packing, "MAX_PACKED_BYTES", 64 * 256 * 4 - 1)
    assert not any("matmul_packed" in n for n in _kernels(path))
