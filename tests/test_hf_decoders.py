"""Decoders as Hugging Face tooling exports them (per-layer past_key_values inputs grown by Concat, a dynamic past,
attention_mask and position_ids): kv_compress turns them into the runtime-owned cache, the artifact holds the
decode and prefill steps, and greedy decoding matches onnxruntime on the uncompressed export."""

from __future__ import annotations

import numpy as np
import pytest

import bitc
from bitc.bench import onnxruntime_session
from bitc.errors import CompileError

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from bitc_zoo.hf_export import export_decoder_with_past, input_names  # noqa: E402

VOCAB = 96
LAYERS = 2


def _config(kind: str):
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    if kind == "llama":
        return transformers.LlamaConfig(head_dim=16, **common)
    return transformers.Qwen2Config(**common)  # q/k/v projections with biases


@pytest.fixture(scope="module", params=[("llama", "eager"), ("qwen2", "eager"), ("llama", "sdpa")])
def hf_decoder(request, tmp_path_factory):
    """A random 2-layer GQA decoder (4 query / 2 key-value heads, head dim 16) exported with a dynamic past; with
    transformers' default attention (SDPA) the export scales q and Kᵀ by √scale each, transposes K through a
    3-D reshape and guards the softmax against NaN rows."""
    kind, attention = request.param
    config = _config(kind)
    config._attn_implementation = attention
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    path = export_decoder_with_past(model, tmp_path_factory.mktemp(f"{kind}_{attention}") / "decoder.onnx", 256)
    return path


class _OnnxruntimeDecoder:
    """Greedy decoding through the uncompressed export: the cache an input and an output of every step."""

    def __init__(self, path):
        self.session = onnxruntime_session(path)
        self.past = {name: np.zeros((1, 2, 0, 16), np.float32) for name in input_names(LAYERS)[3:]}
        self.tokens = 0

    def step(self, ids) -> np.ndarray:
        count = len(ids)
        feeds = {
            "input_ids": np.asarray([ids], np.int64),
            "attention_mask": np.ones((1, self.tokens + count), np.int64),
            "position_ids": np.arange(self.tokens, self.tokens + count)[None],
        }
        logits, *present = self.session.run(None, feeds | self.past)
        self.past = dict(zip(self.past, present, strict=True))
        self.tokens += count
        return logits[0, -1]

    def greedy(self, prompt, count: int) -> list[int]:
        logits, out = self.step(list(prompt)), []
        for _ in range(count):
            out.append(int(np.argmax(logits)))
            logits = self.step([out[-1]])
        return out


def test_a_hugging_face_style_export_decodes_like_onnxruntime(hf_decoder, tmp_path):
    """Float cache: 40 prompt tokens through 8-token prefill steps, then 32 greedy tokens, = onnxruntime."""
    result = bitc.compile(
        hf_decoder, tmp_path / "d.bitc", kv_compress={"bits": None, "max_context": 128}, prefill_chunk=8
    )
    inputs = [spec["name"] for spec in result.manifest["inputs"]]
    assert inputs[:2] == ["input_ids", "position_ids"] and "attention_mask" not in inputs
    assert [v["inputs"][0]["shape"] for v in result.manifest["variants"]] == [[1, 1], [1, 8]]
    assert result.manifest["kv_cache"]["position_ids"] is True
    prompt = np.random.default_rng(0).integers(0, VOCAB, 40)
    reference = _OnnxruntimeDecoder(hf_decoder)
    expected_logits = reference.step(list(prompt))
    session = bitc.load(result.path).session()
    got_logits = session.prefill(prompt)
    np.testing.assert_allclose(got_logits, expected_logits, rtol=1e-4, atol=1e-4)
    fresh = bitc.load(result.path).session()
    assert list(fresh.generate(prompt, 32)) == _OnnxruntimeDecoder(hf_decoder).greedy(prompt, 32)


def test_a_four_bit_cache_on_a_hugging_face_export_stays_close(hf_decoder, tmp_path):
    """4-bit KIVI cache (window of 16 + 32): logits after 70 prompt tokens (one group quantized) within a few
    percent of onnxruntime's on the float cache."""
    result = bitc.compile(hf_decoder, tmp_path / "d4.bitc", kv_compress={"bits": 4, "residual": 16, "max_context": 128})
    prompt = np.random.default_rng(1).integers(0, VOCAB, 70)
    session = bitc.load(result.path).session()
    got = session.prefill(prompt)
    assert session.cache.quantized == 32
    expected = _OnnxruntimeDecoder(hf_decoder).step(list(prompt))
    assert np.abs(got - expected).max() / np.abs(expected).max() < 0.05


def test_pre_rope_keys_are_refused_where_the_rotary_tables_are_computed_at_run_time(hf_decoder, tmp_path):
    with pytest.raises(CompileError, match="pre_rope needs the rotary tables as constants"):
        bitc.compile(hf_decoder, tmp_path / "p.bitc", kv_compress={"bits": 2, "pre_rope": True})


def test_an_onnxruntime_int4_export_decodes_like_onnxruntime(hf_decoder, tmp_path):
    """The export quantized by onnxruntime's own int4 tool (MatMulNBits, what onnxruntime-genai ships): its blocks
    run on bitc's block kernels inside the cache session, and greedy decoding equals onnxruntime's on that file."""
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    config = nbits.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=False, bits=4)
    quantizer = nbits.MatMulNBitsQuantizer(onnx.load(hf_decoder), algo_config=config)
    quantizer.process()
    quantized = tmp_path / "int4.onnx"
    onnx.save(quantizer.model.model, quantized)
    result = bitc.compile(quantized, tmp_path / "q.bitc", kv_compress={"bits": None, "max_context": 128})
    blocks = [layer for layer in result.manifest["layers"] if layer["precision"] == "4-bit blocks"]
    assert len(blocks) == 7 * LAYERS + 1  # every projection and the vocabulary head
    prompt = np.random.default_rng(2).integers(0, VOCAB, 24)
    session = bitc.load(result.path).session()
    assert list(session.generate(prompt, 24)) == _OnnxruntimeDecoder(quantized).greedy(prompt, 24)
