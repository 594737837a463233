"""KV-cache compression: the cache format, the kv_compress pass on a tiny random decoder, the KVAttention kernel
against its numpy reference, and the stateful decoder session (compiled and reference)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import onnx_ir as ir
import pytest
import torch

import bitc
from bitc import ops
from bitc.bench import onnxruntime_session
from bitc.errors import CompileError
from bitc.frontend import decoder_export
from bitc.ops.kv_attention import KVAttention, layout_attributes
from bitc.passes.kv_compress import KVCompress
from bitc.runtime import kv_cache
from bitc.runtime.kv_cache import KVCacheLayout, KVCacheState
from bitc.runtime.session import ContextFullError, DecoderSession, choose

CONTEXT = 100
VOCAB = 64


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A 2-layer GQA decoder (4 query / 2 kv heads, head dim 16) with random weights, exported as one decode step
    over a 100-slot cache; also its full-sequence logits on 90 random tokens (torch)."""
    dims = decoder_export.LlamaDims(
        vocab=VOCAB, hidden=32, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=48, rope_theta=1e4, eps=1e-5
    )
    torch.manual_seed(0)
    model = decoder_export.CompactLlama(dims, max_positions=128).eval()
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    past_keys, past_values = model.empty_cache(1, CONTEXT)
    example = (torch.zeros(1, 1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), past_keys, past_values)
    path = tmp_path_factory.mktemp("kv") / "tiny_decoder.onnx"
    decoder_export.export_module(model, example, path, decoder_export.DECODER_INPUTS, decoder_export.DECODER_OUTPUTS)
    ids = np.random.default_rng(0).integers(0, VOCAB, 90)
    with torch.no_grad():
        full = model.full(torch.from_numpy(ids)[None])[0].numpy()
    return path, ids, full


def _compressed(path, **options) -> tuple[ir.Model, KVCompress]:
    model = ir.load(path)
    compress = KVCompress(**options)
    compress(model)
    return model, compress


def _reference_session(model: ir.Model) -> DecoderSession:
    evaluator = ops.reference_evaluator(model)
    layout = KVCacheLayout.from_json(json.loads(model.metadata_props[kv_cache.METADATA_KEY]))
    return DecoderSession(layout, lambda feeds: lambda: evaluator.run(None, dict(feeds)))


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


# ------------------------------------------------------------------------------------------------------ format


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_key_and_value_codes_round_trip_within_half_a_step(bits):
    rng = np.random.default_rng(bits)
    keys = rng.standard_normal((3, 64, 16)).astype(np.float32) * rng.uniform(0.1, 5, 16)  # channels differ in range
    codes, scales, zeros = kv_cache.quantize_keys(keys, bits)
    assert codes.shape == (3, 64 * bits // 32, 16) and codes.dtype == np.uint32 and scales.dtype == np.float16
    back = kv_cache.dequantize_keys(codes, scales[:, None], zeros[:, None], bits, 64)
    step = scales.astype(np.float32)[:, None, :]
    assert np.all(np.abs(back - keys) <= step / 2 + 1e-2 * np.abs(keys) + 1e-3)
    values = rng.standard_normal((5, 16)).astype(np.float32)
    codes, scales, zeros = kv_cache.quantize_values(values, bits, 0)
    assert codes.shape == (5, -(-16 * bits // 32))
    back = kv_cache.dequantize_values(codes, scales, zeros, bits, 0, 16)
    assert np.all(np.abs(back - values) <= scales.astype(np.float32) / 2 + 1e-2 * np.abs(values) + 1e-3)


def test_cache_state_quantizes_the_oldest_group_and_keeps_the_newest_tokens_exact():
    layout = KVCacheLayout(layers=2, kv_heads=1, head_dim=16, max_context=200, key_bits=4, value_bits=4, residual=8)
    state = KVCacheState(layout)
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((70, 2, 1, 16)).astype(np.float32)
    values = rng.standard_normal((70, 2, 1, 16)).astype(np.float32)
    for k, v in zip(keys, values, strict=True):
        state.append(k, v)
    assert (state.quantized, state.windowed) == layout.split(70) == (32 * ((70 - 8) // 32), 70 - 32 * ((70 - 8) // 32))
    got_keys, got_values = state.dequantized(layer=1)
    assert got_keys.shape == (1, 70, 16)
    recent = slice(state.quantized, 70)
    np.testing.assert_array_equal(got_keys[0, recent], keys[recent, 1, 0])  # the window is exact
    np.testing.assert_array_equal(got_values[0, recent], values[recent, 1, 0])
    assert 0 < np.abs(got_keys[0, : state.quantized] - keys[: state.quantized, 1, 0]).max() < 0.5
    assert state.nbytes_in_use() < layout.float_cache_bytes(70)


def test_cache_bytes_at_two_bits_are_over_four_times_smaller_than_float32():
    layout = KVCacheLayout(layers=30, kv_heads=3, head_dim=64, max_context=2048, key_bits=2, value_bits=2)
    assert layout.float_cache_bytes(2048) / layout.cache_bytes(2048) > 4


def test_layout_rejects_unsupported_bits_and_groups():
    with pytest.raises(ValueError, match="key_bits"):
        KVCacheLayout(layers=1, kv_heads=1, head_dim=16, max_context=8, key_bits=3, value_bits=2)
    with pytest.raises(ValueError, match="key_group"):
        KVCacheLayout(layers=1, kv_heads=1, head_dim=16, max_context=8, key_bits=2, value_bits=2, key_group=20)


# ------------------------------------------------------------------------------------------------------ the pass


def test_kv_compress_finds_every_layer_and_replaces_the_cache_inputs_and_outputs(tiny_decoder):
    path, _, _ = tiny_decoder
    model, compress = _compressed(path, bits=2, residual=16)
    ops_used = [node.op_type for node in model.graph]
    assert ops_used.count("KVAttention") == 2 and "Softmax" not in ops_used
    layout = KVCacheLayout.from_json(json.loads(model.metadata_props[kv_cache.METADATA_KEY]))
    inputs = {v.name: (tuple(v.shape), v.dtype.numpy().name) for v in model.graph.inputs}
    assert list(inputs)[:2] == ["input_ids", "position"]
    for name, (shape, dtype) in layout.state_specs().items():
        assert inputs[name] == (shape, dtype)
    outputs = {v.name: tuple(v.shape) for v in model.graph.outputs}
    assert outputs == {"logits": (1, 1, VOCAB), "new_keys": (2, 1, 2, 1, 16), "new_values": (2, 1, 2, 1, 16)}
    assert compress.report.to_json()["attention_layers"] == 2


def test_float_cache_session_matches_onnxruntime_on_the_uncompressed_decoder(tiny_decoder):
    path, ids, full = tiny_decoder
    session = onnxruntime_session(path)
    keys = values = np.zeros((2, 1, 2, CONTEXT, 16), np.float32)
    expected = []
    for step, token in enumerate(ids[:40]):
        feeds = {"input_ids": np.array([[token]]), "position": np.array([step]), "past_keys": keys}
        logits, keys, values = session.run(None, feeds | {"past_values": values})
        expected.append(logits.reshape(-1))
    model, _ = _compressed(path, bits=None)
    reference = _reference_session(model)
    got = np.stack([reference.step(int(t)) for t in ids[:40]])
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-4)
    np.testing.assert_allclose(got, full[:40], atol=1e-4)


def test_kv_error_shrinks_with_bits_and_the_window_and_stays_bounded_at_4_bits(tiny_decoder):
    path, ids, full = tiny_decoder
    errors = {}
    for name, options in {"4": {"bits": 4, "residual": 16}, "2": {"bits": 2, "residual": 16}}.items():
        model, _ = _compressed(path, **options)
        reference = _reference_session(model)
        errors[name] = _relative(np.stack([reference.step(int(t)) for t in ids]), full)
    assert errors["4"] < 0.05
    assert errors["4"] < errors["2"]


def test_pre_rope_keys_give_the_same_result_as_rotating_before_quantizing_when_nothing_is_quantized(tiny_decoder):
    path, ids, full = tiny_decoder
    model, _ = _compressed(path, bits=2, residual=CONTEXT, pre_rope=True)  # all in the window: exact
    assert "kv_rope_cos" in model.graph.initializers
    reference = _reference_session(model)
    np.testing.assert_allclose(np.stack([reference.step(int(t)) for t in ids[:30]]), full[:30], atol=1e-4)


def test_kv_compress_names_what_is_missing_in_a_model_without_a_cache(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    proto = helper.make_model(helper.make_graph([helper.make_node("Softmax", ["x"], ["y"])], "g", [x], [y]))
    with pytest.raises(CompileError, match="no attention over a KV cache"):
        KVCompress(bits=2)(ir.from_proto(proto))


# ------------------------------------------------------------------------------------------------------ kernel


def _filled_state(layout: KVCacheLayout, tokens: int, seed: int = 0) -> KVCacheState:
    rng = np.random.default_rng(seed)
    state = KVCacheState(layout)
    shape = (layout.layers, layout.kv_heads, layout.head_dim)
    for _ in range(tokens):
        state.append(rng.standard_normal(shape).astype(np.float32) + 0.5, rng.standard_normal(shape).astype(np.float32))
    return state


@pytest.mark.parametrize(
    ("key_bits", "value_bits", "value_group", "pre_rope", "tokens", "key_group"),
    [
        (2, 2, 0, False, 300, 32),
        (4, 4, 0, False, 171, 32),
        (1, 2, 0, False, 300, 32),
        (8, 8, 32, False, 95, 32),
        (2, 2, 0, True, 300, 32),
        (2, 2, 32, False, 0, 32),
        (2, 2, 32, True, 250, 16),
    ],
)
def test_compiled_kv_attention_matches_its_numpy_reference(
    key_bits, value_bits, value_group, pre_rope, tokens, key_group
):
    import tvm

    from bitc.codegen.kernels import kv_kernels
    from bitc.codegen.target import parse_target

    layout = KVCacheLayout(
        layers=2,
        kv_heads=2,
        head_dim=64,
        max_context=400,
        key_bits=key_bits,
        value_bits=value_bits,
        value_group=value_group,
        key_group=key_group,
        residual=64,
        pre_rope=pre_rope,
    )
    state = _filled_state(layout, tokens)
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 2, 3, 64)).astype(np.float32)
    k, v = rng.standard_normal((2, 1, 2, 1, 64)).astype(np.float32)
    positions = layout.quantized_capacity + layout.window_slots + kv_kernels.LANES
    angles = np.arange(positions)[:, None] / 1e4 ** (np.arange(0, 64, 2) / 64)
    cos, sin = np.cos(np.tile(angles, 2)).astype(np.float32), np.sin(np.tile(angles, 2)).astype(np.float32)
    attrs = dict(KVAttention.attributes) | layout_attributes(layout) | {"layer": 1, "scale": 0.125}
    (expected,) = KVAttention.reference(q, k, v, *state.arrays.values(), *((cos, sin) if pre_rope else ()), **attrs)
    kernel = kv_kernels.kv_attention(layout, 3, 1, 0.125, positions if pre_rope else 0)
    library = tvm.compile(tvm.IRModule({"main": kernel.with_attr("global_symbol", "main")}), parse_target("cpu").tvm())
    tables = kv_kernels.rope_tables_transposed(cos, sin, positions) if pre_rope else [np.zeros((64, 1), np.float32)] * 2
    device = tvm.cpu()
    args = [tvm.runtime.tensor(a, device) for a in [q, k, v, *state.arrays.values(), *tables]]
    out = tvm.runtime.tensor(np.zeros_like(q), device)
    library["main"](*args, out)
    np.testing.assert_allclose(out.numpy(), expected, atol=2e-5)


def test_kernel_reads_key_codes_with_vector_shifts():
    import tvm

    from bitc.codegen.kernels import kv_kernels
    from bitc.codegen.target import parse_target

    layout = KVCacheLayout(layers=1, kv_heads=1, head_dim=64, max_context=256, key_bits=2, value_bits=2)
    kernel = kv_kernels.kv_attention(layout, 3, 0, 0.125)
    target = parse_target("cpu:skylake-avx512").tvm()
    library = tvm.compile(tvm.IRModule({"main": kernel.with_attr("global_symbol", "main")}), target)
    asm = library.jit().inspect_source("asm")
    assert "vpsrlvd" in asm and "zmm" in asm  # codes unpacked 16 lanes at a time
    assert "expf" not in asm  # the polynomial exp, not a libm call per lane


# ------------------------------------------------------------------------------------------------------ runtime


@pytest.fixture(scope="module")
def compiled_4bit(tiny_decoder, tmp_path_factory):
    path, _, _ = tiny_decoder
    out = tmp_path_factory.mktemp("kv_artifact") / "tiny_kv4.bitc"
    bitc.compile(path, out, kv_compress={"bits": 4, "residual": 16})
    return out


def test_compiled_session_matches_the_reference_session(tiny_decoder, compiled_4bit):
    path, ids, _ = tiny_decoder
    model, _ = _compressed(path, bits=4, residual=16)
    reference = _reference_session(model)
    session = bitc.load(compiled_4bit).session()
    assert session.layout == reference.layout
    got = np.stack([session.step(int(t)) for t in ids])
    np.testing.assert_allclose(got, np.stack([reference.step(int(t)) for t in ids]), atol=1e-4)


def test_generate_is_greedy_continues_across_calls_and_stops_at_the_context(compiled_4bit):
    session = bitc.load(compiled_4bit).session()
    prompt = [3, 14, 15, 9, 26]
    first = session.generate(prompt, 6)
    more = session.generate([], 4)
    check = bitc.load(compiled_4bit).session()
    logits = check.prefill(prompt)
    expected = []
    for _ in range(10):
        expected.append(int(np.argmax(logits)))
        logits = check.step(expected[-1])
    assert [*first, *more] == expected
    with pytest.raises(ContextFullError, match=f"at most {CONTEXT}"):
        session.generate([1] * CONTEXT, 1)
    session.reset()
    assert session.tokens == 0 and len(session.generate([1, 2], 3)) == 3


def test_top_k_sampling_is_seeded_and_picks_among_the_k_largest():
    logits = np.array([0.0, 5.0, 4.0, -3.0, 4.5], np.float32)
    picks = {choose(logits, 2, 1.0, np.random.default_rng(seed)) for seed in range(40)}
    assert picks == {1, 4}
    assert choose(logits, 3, 0.5, np.random.default_rng(7)) == choose(logits, 3, 0.5, np.random.default_rng(7))
    assert choose(logits, None, 1.0, np.random.default_rng(0)) == 1


def test_cli_compiles_with_kv_bits_and_generates(tiny_decoder, tmp_path):
    path, _, _ = tiny_decoder
    out = tmp_path / "cli.bitc"
    compile_cmd = [sys.executable, "-m", "bitc", "compile", str(path), "-o", str(out), "--kv-bits", "2"]
    done = subprocess.run([*compile_cmd, "--kv-residual", "32"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert bitc.load(out).manifest["kv_cache"]["key_bits"] == 2
    done = subprocess.run(
        [sys.executable, "-m", "bitc", "generate", str(out), "--ids", "1,2,3", "--max-new-tokens", "5", "--json"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["new_ids"]) == 5
    shown = subprocess.run([sys.executable, "-m", "bitc", "inspect", str(out)], capture_output=True, text=True)
    assert "KV cache (runtime-owned): keys 2-bit, values 2-bit" in " ".join(shown.stdout.split())
    bad = subprocess.run([*compile_cmd[:-1], "3"], capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "--kv-bits" in bad.stderr


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not installed")
def test_decoder_with_lowbit_weights_builds_for_cuda_and_a_compressed_cache_is_refused(tiny_decoder, tmp_path):
    """A decode step with 1-bit Linear weights: its GEMVs become the warp-per-row CUDA kernel. The compressed
    KV-cache attention has no GPU kernel yet: a one-line error naming the op."""
    from bitc.passes.lowbit_linear import LowBitLinear

    path, _, _ = tiny_decoder
    model = ir.load(path)
    LowBitLinear(planes=1, measure_error=False, keep_last=False)(model)
    ir.save(model, tmp_path / "lowbit.onnx")
    bitc.compile(tmp_path / "lowbit.onnx", tmp_path / "lowbit.bitc", target="cuda:sm_90", passes=[])
    with zipfile.ZipFile(tmp_path / "lowbit.bitc") as artifact:
        ptx = artifact.read("kernels.ptx").decode()
    assert ".entry bitc_lowbit_gemv" in ptx and "shfl.sync" in ptx
    with pytest.raises(CompileError, match="KVAttention has no CUDA kernel"):
        bitc.compile(path, tmp_path / "kv.bitc", target="cuda", kv_compress=4)
    assert not (tmp_path / "kv.bitc").exists()
