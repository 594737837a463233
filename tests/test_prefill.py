"""Batched prefill: a decoder exported with a dynamic token count compiles into one artifact holding a one-token
decode step and an S-token prefill step (weights shared); the chunk attention kernel matches its numpy reference;
prefill through chunks then decoding gives what one-token steps give."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest
import torch

import bitc
from bitc import ops
from bitc.bench import onnxruntime_session
from bitc.frontend import decoder_export
from bitc.frontend.onnx_loader import load_onnx
from bitc.ops.kv_attention import KVAttention, layout_attributes
from bitc.passes.cleanup import FoldConstants, RemoveUnused
from bitc.passes.kv_compress import KVCompress
from bitc.runtime import kv_cache
from bitc.runtime.artifact import LIBRARY_NAME, read_artifact
from bitc.runtime.kv_cache import KVCacheLayout, KVCacheState

CONTEXT = 100
VOCAB = 64


@pytest.fixture(scope="module")
def chunk_decoder(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """test_kv_cache's tiny random decoder (2 layers, 4 query / 2 kv heads, head dim 16), exported as one step
    over a dynamic number of tokens and a 100-slot cache; also the torch model."""
    dims = decoder_export.LlamaDims(
        vocab=VOCAB, hidden=32, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=48, rope_theta=1e4, eps=1e-5
    )
    torch.manual_seed(0)
    model = decoder_export.CompactLlama(dims, max_positions=128).eval()
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    past_keys, past_values = model.empty_cache(1, CONTEXT)
    example = (torch.zeros(1, 2, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), past_keys, past_values)
    path = tmp_path_factory.mktemp("prefill") / "chunk_decoder.onnx"
    decoder_export.export_module(
        model,
        example,
        path,
        decoder_export.DECODER_INPUTS,
        decoder_export.DECODER_OUTPUTS,
        dynamic_shapes=decoder_export.decoder_token_dim(),
    )
    return path, model


def _ids(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, count)


def test_a_step_over_several_tokens_matches_the_full_sequence_in_onnxruntime(chunk_decoder):
    """The export's semantics: chunks of 5, 1 and 6 tokens through the cache = the whole sequence at once."""
    path, model = chunk_decoder
    ids = _ids(12)[None]
    with torch.no_grad():
        full = model.full(torch.from_numpy(ids)).numpy()
    session = onnxruntime_session(path)
    keys = values = np.zeros((2, 1, 2, CONTEXT, 16), np.float32)
    logits = []
    for start, count in ((0, 5), (5, 1), (6, 6)):
        feeds = {"input_ids": ids[:, start : start + count], "position": np.array([start])}
        out, keys, values = session.run(None, feeds | {"past_keys": keys, "past_values": values})
        logits.append(out)
    np.testing.assert_allclose(np.concatenate(logits, axis=1), full, atol=1e-5)


def _compressed_at(path, tokens: int, **options):
    model = load_onnx(path, {"input_ids": [1, tokens]})
    FoldConstants()(model)
    RemoveUnused()(model)
    KVCompress(**options)(model)
    return model


def test_kv_compress_matches_a_several_token_step_and_returns_every_new_key(chunk_decoder):
    path, _ = chunk_decoder
    model = _compressed_at(path, 4, bits=None)
    attention = [node for node in model.graph if node.op_type == "KVAttention"]
    assert len(attention) == 2
    assert [int(d) for d in attention[0].inputs[0].shape] == [1, 2, 2 * 4, 16]  # groups · tokens query rows
    outputs = {value.name: [int(d) for d in value.shape] for value in model.graph.outputs}
    assert outputs == {"logits": [1, 1, VOCAB], "new_keys": [2, 1, 2, 4, 16], "new_values": [2, 1, 2, 4, 16]}
    assert model.graph.inputs[-1].name == "logits_row"  # the one row whose logits come back


@pytest.mark.parametrize(
    ("tokens", "options"),
    [
        (4, {"bits": None}),
        (5, {"bits": 4, "residual": 8}),
        (3, {"bits": 2, "residual": 8, "pre_rope": True}),
        (6, {"bits": 1, "residual": 0, "key_group": 32}),
        (7, {"bits": 8, "residual": 8, "pre_rope": True, "value_group": 16}),
    ],
)
def test_compiled_chunk_attention_matches_the_reference_through_quantized_groups(
    chunk_decoder, tmp_path, tokens, options
):
    """Steps of `tokens` tokens through the compiled step and the reference evaluator on the same cache, for
    ~70 tokens: groups of 32 are quantized on the way (except with the float cache); logits of a varying row."""
    path, _ = chunk_decoder
    result = bitc.compile(path, tmp_path / "chunk.bitc", input_shapes={"input_ids": [1, tokens]}, kv_compress=options)
    compiled = bitc.load(result.path)
    reference = ops.reference_evaluator(_compressed_at(path, tokens, **options))
    layout = KVCacheLayout.from_json(result.manifest["kv_cache"])
    state = KVCacheState(layout)
    ids = _ids(72, seed=tokens)[None]
    worst = 0.0
    for start in range(0, 72 - tokens + 1, tokens):
        feeds = {"input_ids": ids[:, start : start + tokens], "position": np.array([start])} | state.arrays
        feeds["logits_row"] = np.array([start % tokens])
        got = compiled.run(feeds)
        expected, new_keys, new_values = reference.run(None, feeds)
        worst = max(worst, float(np.abs(got["logits"] - expected).max() / np.abs(expected).max()))
        for index in range(tokens):
            state.append(new_keys[:, 0, :, index, :], new_values[:, 0, :, index, :])
    assert (state.quantized > 0) == (options["bits"] is not None)
    assert worst < 1e-5


def test_the_chunk_kernel_matches_its_numpy_reference_directly():
    """The kernel alone (no graph around it), 2 kv heads of 64 channels, 3 query heads each, 5 new tokens over a
    cache of 171 tokens (quantized groups and a window)."""
    import tvm

    from bitc.codegen.kernels import kv_chunk_kernels
    from bitc.codegen.target import parse_target

    layout = KVCacheLayout(layers=2, kv_heads=2, head_dim=64, max_context=400, key_bits=4, value_bits=2, residual=64)
    state = KVCacheState(layout)
    rng = np.random.default_rng(0)
    for _ in range(171):
        state.append(*(rng.standard_normal((2, 2, 64)).astype(np.float32) for _ in range(2)))
    tokens, groups = 5, 3
    q = rng.standard_normal((1, 2, groups * tokens, 64)).astype(np.float32)
    k, v = rng.standard_normal((2, 1, 2, tokens, 64)).astype(np.float32)
    attrs = dict(KVAttention.attributes) | layout_attributes(layout) | {"layer": 1, "scale": 0.125}
    (expected,) = KVAttention.reference(q, k, v, *state.arrays.values(), **attrs)
    kernel = kv_chunk_kernels.kv_chunk_attention(layout, groups, tokens, 1, 0.125)
    library = tvm.compile(tvm.IRModule({"main": kernel.with_attr("global_symbol", "main")}), parse_target("cpu").tvm())
    device = tvm.cpu()
    tables = [np.zeros((64, 1), np.float32)] * 2
    args = [tvm.runtime.tensor(a, device) for a in [q, k, v, *state.arrays.values(), *tables]]
    out = tvm.runtime.tensor(np.zeros_like(q), device)
    library["main"](*args, out)
    np.testing.assert_allclose(out.numpy(), expected, atol=2e-5)


@pytest.fixture(scope="module")
def decoder_with_prefill(chunk_decoder, tmp_path_factory) -> tuple:
    """The tiny decoder compiled with a 4-bit cache (window of 8 + 32 tokens) twice: with 8-token prefill chunks
    (the default sizes of a decoder whose token count is dynamic) and with one-token steps only."""
    path, _ = chunk_decoder
    folder = tmp_path_factory.mktemp("prefill_artifacts")
    options = {"bits": 4, "residual": 8}
    chunked = bitc.compile(path, folder / "chunked.bitc", kv_compress=options, prefill_chunk=8)
    stepwise = bitc.compile(path, folder / "stepwise.bitc", kv_compress=options, prefill_chunk=1)
    return chunked, stepwise


def test_a_decoder_with_a_dynamic_token_count_gets_a_prefill_entry_in_the_same_library(decoder_with_prefill):
    chunked, stepwise = decoder_with_prefill
    variants = chunked.manifest["variants"]
    assert [v["inputs"][0]["shape"] for v in variants] == [[1, 1], [1, 8]]
    assert [v.get("entry", "main") for v in variants] == ["main", "size1"]
    assert set(read_artifact(chunked.path).members) == {LIBRARY_NAME}
    assert "variants" not in stepwise.manifest
    assert bitc.load(chunked.path).session().prefill_chunk == 8
    assert bitc.load(stepwise.path).session().prefill_chunk == 1


def test_prefill_in_chunks_then_decoding_equals_one_token_steps(decoder_with_prefill):
    """75 prompt tokens (two groups quantized on the way) then greedy decoding: the chunked session's logits,
    cache and tokens are the stepwise session's."""
    chunked, stepwise = (bitc.load(result.path).session() for result in decoder_with_prefill)
    ids = _ids(85, seed=3)
    got, expected = chunked.prefill(ids[:75]), stepwise.prefill(ids[:75])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert chunked.cache.quantized == stepwise.cache.quantized == 64
    for name, array in chunked.cache.arrays.items():
        np.testing.assert_allclose(
            array.astype(np.float64), stepwise.cache.arrays[name].astype(np.float64), atol=1e-4, err_msg=name
        )
    assert list(chunked.generate(ids[75:], 12)) == list(stepwise.generate(ids[75:], 12))


def test_chunks_stop_where_the_window_is_quantized(decoder_with_prefill, monkeypatch):
    """With a window of 8 + 32 tokens, chunks of 8 fill it to 40 (then the oldest 32 are quantized); a 3-token
    tail runs as one padded chunk; the next prompt's chunks stop at the window's next quantization (5 of the 29
    tokens of room left), and a 1-token prompt is a decode step."""
    session = bitc.load(decoder_with_prefill[0].path).session()
    calls: list[int] = []
    chunk, step = session._chunk, session._step
    monkeypatch.setattr(session, "_chunk", lambda ids: calls.append(len(ids)) or chunk(ids))
    monkeypatch.setattr(session, "_step", lambda token: calls.append(1) or step(token))
    session.prefill(_ids(43))
    assert calls == [8, 8, 8, 8, 8, 3]
    calls.clear()
    session.prefill(_ids(33, seed=1))
    assert calls == [8, 8, 8, 5, 4]
    calls.clear()
    session.prefill(_ids(1, seed=2))
    assert calls == [1] and session.tokens == 77


def test_prefill_metadata_layout_is_the_decode_steps(decoder_with_prefill, chunk_decoder):
    chunked, _ = decoder_with_prefill
    model = _compressed_at(chunk_decoder[0], 1, bits=4, residual=8)
    assert chunked.manifest["kv_cache"] == json.loads(model.metadata_props[kv_cache.METADATA_KEY])


def test_prefill_chunk_where_it_cannot_apply_is_refused_not_ignored(chunk_decoder, tmp_path):
    from bitc.errors import BadInputError

    path, _ = chunk_decoder
    with pytest.raises(BadInputError, match="--prefill-chunk applies to a decoder"):
        bitc.compile(path, tmp_path / "a.bitc", input_shapes={"input_ids": [1, 1]}, prefill_chunk=8)
    with pytest.raises(BadInputError, match=r"--prefill-chunk must be 1\.\.64"):
        bitc.compile(path, tmp_path / "a.bitc", kv_compress=4, prefill_chunk=65)
    static = tmp_path / "static.onnx"
    ir.save(load_onnx(path, {"input_ids": [1, 1]}), static)
    with pytest.raises(BadInputError, match="the decoder's token input has a fixed size"):
        bitc.compile(static, tmp_path / "a.bitc", kv_compress=4, prefill_chunk=8)
    assert not list(tmp_path.glob("*.bitc"))
