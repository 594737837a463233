"""Real and realistic models, compiled and compared with onnxruntime on the same inputs (slow: minutes)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_onnxruntime

import bitc
from bitc.frontend import load_onnx
from bitc.passes import run_pipeline
from bitc_zoo import real

pytestmark = pytest.mark.slow

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(p.name for p in LIGHT_DIR.glob("*.onnx"))
# Untuned TVM code for these is slow (seconds per run); run the small ones, compile all.
LIGHT_RUN = {"light_squeezenet.onnx", "light_shufflenet.onnx", "light_bvlc_alexnet.onnx", "light_inception_v1.onnx"}


def _compile_and_compare(path: Path, out: Path, inputs: dict[str, np.ndarray], **kwargs) -> list[np.ndarray]:
    result = bitc.compile(path, out, **kwargs)
    assert result.manifest["codegen"]["conv_layout"] == "blocked"  # the fast conv path, not the NCHW fallback
    return _compare(bitc.load(result.path), path, inputs)


def _compare(model: bitc.Model, path: Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    got = list(model.run(inputs).values())
    want = run_onnxruntime(path, inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        scale = max(float(np.abs(w).max()), 1.0)
        assert float(np.abs(g - w).max()) <= 1e-4 * scale, f"max error {np.abs(g - w).max()} (scale {scale})"
    return got


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torch_cnn_matches_onnxruntime(zoo, tmp_path, name):
    path = getattr(zoo, name)()
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    _compile_and_compare(path, tmp_path / f"{name}.bitc", {"image": image})
    model = load_onnx(path)
    _, records = run_pipeline(model)
    assert next(r for r in records if r.name == "fold_batchnorm").nodes_after <= len(model.graph)


def test_bireal_net18_runs_on_packed_kernels_and_matches_onnxruntime(tmp_path):
    """Bi-Real-Net-18 at 224×224: all 16 binary convs lowered, output equal to onnxruntime evaluating the same
    Where-sign network in float (a near-zero pre-activation could flip a sign: the bound is loose for that)."""
    import torch

    from bitc_zoo.bnn import bireal_net18
    from bitc_zoo.export import export_onnx

    path = export_onnx(bireal_net18(), (torch.randn(1, 3, 224, 224),), tmp_path / "bireal.onnx", input_names=["image"])
    result = bitc.compile(path, tmp_path / "bireal.bitc")
    lowered = next(p["details"] for p in result.manifest["passes"] if p["name"] == "lower_binary")
    assert lowered["lowered"] == 16 and not lowered["skipped"]
    assert sum(1 for row in result.manifest["layers"] if row["precision"] == "1-bit") == 16
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    _compare(bitc.load(result.path), path, {"image": image})


def _sentences(count: int) -> list[str]:
    """Real English sentences from Python's own documentation topics (pydoc_data ships with CPython)."""
    from pydoc_data.topics import topics

    text = " ".join(topics[k] for k in sorted(topics)[:40])
    sentences = [s.strip() for s in text.replace("\n", " ").split(". ") if 40 < len(s.strip()) < 300]
    return sentences[:count]


def test_minilm_embeddings_match_onnxruntime_and_torch(zoo, tmp_path):
    path = zoo.minilm(128)
    result = bitc.compile(path, tmp_path / "minilm.bitc")
    model = bitc.load(result.path)
    encoder = real.minilm_encoder()
    import torch

    for sentence in _sentences(6) + real.SAMPLE_SENTENCES[:2]:
        tokens = real.minilm_tokenize([sentence], 128)
        got = model.run(tokens)["embedding"]
        want = run_onnxruntime(path, tokens)[0]
        with torch.no_grad():
            want_torch = encoder(*(torch.from_numpy(tokens[k]) for k in ("input_ids", "attention_mask"))).numpy()
        assert np.abs(got - want).max() <= 1e-4
        assert np.abs(got - want_torch).max() <= 1e-4
        cosine = float((got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want)))
        assert cosine >= 0.9999


def test_rapidocr_classifier_matches_onnxruntime(tmp_path):
    path = real.rapidocr_classifier_path()
    image = np.random.default_rng(0).random(real.RAPIDOCR_CLASSIFIER_SHAPE).astype(np.float32)
    shapes = {"x": list(real.RAPIDOCR_CLASSIFIER_SHAPE)}
    out = _compile_and_compare(path, tmp_path / "cls.bitc", {"x": image}, input_shapes=shapes)
    np.testing.assert_allclose(out[0].sum(axis=-1), 1.0, rtol=1e-5)  # softmax over the two directions


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_onnx_light_graphs_compile(tmp_path, name):
    path = LIGHT_DIR / name
    model = load_onnx(path)
    model, records = run_pipeline(model)
    assert len(model.graph) <= records[0].nodes_before
    result = bitc.compile(path, tmp_path / "m.bitc")
    assert result.path.stat().st_size > 0
    if name in LIGHT_RUN or os.environ.get("BITC_RUN_ALL_LIGHT"):
        runtime = bitc.load(result.path)
        _compare(runtime, path, runtime.random_inputs())
