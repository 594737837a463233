"""Block-quantized weights (GGUF Q4_0 / Q4_1 / Q8_0 style): the BlockQuantMatMul op, its CPU kernels, GGUF block
decoding and the pass that imports a GGUF file's blocks into a model's MatMuls."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from binary_models import compiled_and_reference
from onnx import TensorProto, helper, numpy_helper

import bitc
from bitc import ops
from bitc.codegen.kernels import block_kernels
from bitc.ops.block_matmul import dequantize, pack_codes, unpack_codes


def _random_format(rng, n, k, bits, block, offsets, scale_dtype=np.float16, signed=None):
    signed = bits == 8 if signed is None else signed
    low = -(1 << (bits - 1)) if signed else 0
    q = rng.integers(low, low + (1 << bits), (n, k))
    codes = pack_codes(q, bits, signed=signed)
    scales = rng.uniform(0.001, 0.05, (n, k // block)).astype(scale_dtype)
    offs = rng.uniform(-0.3, 0.1, (n, k // block)).astype(scale_dtype) if offsets else None
    return q, codes, scales, offs


def _block_model(
    shape, n, bits=4, block=32, offsets=True, scale_dtype=np.float16, seed=0, signed=None
) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    k = shape[-1]
    signed = bits == 8 if signed is None else signed
    _q, codes, scales, offs = _random_format(rng, n, k, bits, block, offsets, scale_dtype, signed)
    initializers = [numpy_helper.from_array(codes, "codes"), numpy_helper.from_array(scales, "scales")]
    inputs = ["x", "codes", "scales"]
    if offs is not None:
        initializers.append(numpy_helper.from_array(offs, "offsets"))
        inputs.append("offsets")
    node = helper.make_node(
        "BlockQuantMatMul", inputs, ["y"], domain="bitc", in_features=k, block_size=block, bits=bits, signed=int(signed)
    )
    graph = helper.make_graph(
        [node],
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*shape[:-1], n])],
        initializers,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("bitc", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def test_codes_round_trip_and_dequantize_is_scale_q_plus_offset():
    rng = np.random.default_rng(0)
    q, codes, scales, offs = _random_format(rng, 5, 64, 4, 32, True)
    assert codes.shape == (5, 32) and codes.dtype == np.uint8
    assert np.array_equal(unpack_codes(codes, 4), q)
    dense = dequantize(codes, scales, offs, 4, 32)
    expected = np.repeat(scales.astype(np.float32), 32, 1) * q + np.repeat(offs.astype(np.float32), 32, 1)
    assert np.array_equal(dense, expected.astype(np.float32))
    q8, codes8, _, _ = _random_format(rng, 3, 64, 8, 32, False)
    assert codes8.dtype == np.int8 and np.array_equal(unpack_codes(codes8, 8), q8)
    q4, codes4, _, _ = _random_format(rng, 3, 64, 4, 32, False, signed=True)
    assert q4.min() == -8 and np.array_equal(unpack_codes(codes4, 4, signed=True), q4)


def test_blocking_puts_a_tiles_words_side_by_side():
    rng = np.random.default_rng(1)
    q = rng.integers(0, 16, (40, 64))
    words = block_kernels.block_codes(pack_codes(q, 4), 4, 32)
    assert words.shape == (2, 8, 32) and words.dtype == np.uint32
    # word (group 3, column 33) holds column 33's codes for inputs 24..31, input 24 in the lowest nibble
    assert [(int(words[1, 3, 1]) >> (4 * i)) & 15 for i in range(8)] == list(q[33, 24:32])
    assert not words[1, :, 8:].any()  # columns past 40 are code 0
    q8 = rng.integers(-128, 128, (3, 8))
    words8 = block_kernels.block_codes(pack_codes(q8, 8, signed=True), 8, 32, signed=True)
    assert words8.shape == (1, 2, 32) and words8[0, 1, 2] & 0xFF == q8[2, 4] + 128  # stored plus the bias


def test_shape_rule_refuses_blocks_that_do_not_tile_the_rows():
    op = ops.get("BlockQuantMatMul")
    with pytest.raises(ValueError, match="block_size"):
        op.output_types([(1, 48), (4, 24), (4, 2)], in_features=48, block_size=32, bits=4)
    with pytest.raises(ValueError, match="bits"):
        op.output_types([(1, 64), (4, 64), (4, 2)], in_features=64, block_size=32, bits=3)
    assert op.output_types([(2, 64), (4, 32), (4, 2), (4, 2)], in_features=64, block_size=32, bits=4)[0][1] == (2, 4)


BLOCK_CASES = {
    "q4_1_gemv": {"shape": (1, 576), "n": 200},
    "q4_0_signed_gemv": {"shape": (1, 64), "n": 40, "signed": True, "offsets": False},
    "q4_0_signed_gemm": {"shape": (3, 64), "n": 40, "signed": True, "offsets": False},
    "q4_0_gemv_wide": {"shape": (1, 1, 1536), "n": 576, "seed": 3},
    "q8_0_gemv": {"shape": (1, 256), "n": 70, "bits": 8, "offsets": False},
    "q4_gemm_odd_rows": {"shape": (1, 5, 128), "n": 100},
    "q8_gemm": {"shape": (4, 64), "n": 33, "bits": 8, "offsets": False, "scale_dtype": np.float32},
    "q4_block_16_fp32": {"shape": (3, 96), "n": 40, "block": 16, "scale_dtype": np.float32},
}


@pytest.mark.parametrize("target", ["cpu", "cpu:x86-64-v3"])
@pytest.mark.parametrize("case", list(BLOCK_CASES))
def test_block_kernel_matches_reference(tmp_path, case, target):
    options = BLOCK_CASES[case]
    x = np.random.default_rng(1).standard_normal(options["shape"]).astype(np.float32)
    got, reference = compiled_and_reference(tmp_path, _block_model(**options), x, target)
    assert got.shape == reference.shape
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=2e-5 * np.abs(reference).max())


# ------------------------------------------------------------------------------------ GGUF blocks and the pass


def _write_gguf(path, tensors: dict[str, tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """A GGUF file of `name: (kind, float weight [N, K])`, quantized by gguf's own code; returns each tensor
    dequantized by gguf's own code (what transformers would load)."""
    gguf = pytest.importorskip("gguf")
    from gguf.quants import dequantize, quantize

    writer = gguf.GGUFWriter(str(path), "llama")
    dense = {}
    for name, (kind, weight) in tensors.items():
        qtype = getattr(gguf.GGMLQuantizationType, kind)
        data = quantize(weight, qtype)
        writer.add_tensor(name, data, raw_dtype=qtype)
        dense[name] = dequantize(data, qtype).astype(np.float32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dense


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0"])
def test_gguf_blocks_dequantize_like_gguf(tmp_path, kind):
    from bitc.ops.gguf_blocks import read_block_tensors

    weight = np.random.default_rng(2).standard_normal((24, 96)).astype(np.float32)
    dense = _write_gguf(tmp_path / "w.gguf", {"w": (kind, weight)})
    (tensor,) = read_block_tensors(tmp_path / "w.gguf").values()
    assert tensor.kind == kind and tensor.shape == (24, 96)
    assert np.array_equal(tensor.dequantize(), dense["w"])  # bit for bit


def _linear_chain(weights: list[np.ndarray], rows: int) -> onnx.ModelProto:
    """x [rows, K0] → MatMul → Relu → MatMul ... with weights [K, N] as initializers."""
    nodes, initializers, current = [], [], "x"
    for index, weight in enumerate(weights):
        initializers.append(numpy_helper.from_array(weight, f"w{index}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{index}"], [f"m{index}"], name=f"linear{index}"))
        nodes.append(helper.make_node("Relu", [f"m{index}"], [f"r{index}"]))
        current = f"r{index}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, weights[0].shape[0]])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, [rows, weights[-1].shape[1]])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("rows", [1, 3])
def test_gguf_weights_pass_runs_layers_on_the_files_blocks(tmp_path, rows):
    """Layers equal to a GGUF tensor (one with its rows permuted, as transformers does to q/k projections) run on
    its blocks; a layer the file does not hold stays float; outputs match onnxruntime on the float model."""
    import onnxruntime as ort

    rng = np.random.default_rng(5)
    shapes = {"a": ("Q4_1", (64, 96)), "b": ("Q4_0", (32, 64)), "c": ("Q8_0", (40, 32))}
    dense = _write_gguf(
        tmp_path / "m.gguf",
        {name: (kind, rng.standard_normal(shape).astype(np.float32)) for name, (kind, shape) in shapes.items()},
    )
    permuted = dense["b"][rng.permutation(32)]
    other = rng.standard_normal((16, 40)).astype(np.float32)
    proto = _linear_chain([dense["a"].T.copy(), permuted.T.copy(), dense["c"].T.copy(), other.T.copy()], rows)
    onnx.save(proto, tmp_path / "m.onnx")
    result = bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc", gguf_weights={"path": str(tmp_path / "m.gguf")})
    log = {record["name"]: record for record in result.manifest["passes"]}["gguf_weights"]["details"]
    assert log["layers"]["linear0"]["format"] == "Q4_1" and log["layers"]["linear1"]["rows_reordered"]
    assert log["layers"]["linear2"]["format"] == "Q8_0" and "linear3" in log["kept_in_float"]
    assert log["weight_bytes_after"] < log["weight_bytes_before"] / 3
    x = rng.standard_normal((rows, 96)).astype(np.float32)
    expected = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
    got = bitc.load(tmp_path / "m.bitc")(x=x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def _embedding_model(table: np.ndarray, shape: tuple[int, ...], dtype=TensorProto.INT64) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"], name="embed")],
        "embedding",
        [helper.make_tensor_value_info("ids", dtype, list(shape))],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [*shape, table.shape[1]])],
        [numpy_helper.from_array(table, "table")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1"])
def test_gguf_embedding_gather_reads_blocks_exactly_and_checks_indices(tmp_path, kind):
    """The token embedding on the file's blocks: the same float rows bit for bit (negative ids count from the
    end, as ONNX Gather), and an id past the table is refused before anything reads it."""
    rng = np.random.default_rng(7)
    table = rng.standard_normal((50, 64)).astype(np.float32)
    table[10:20] = table[30]  # equal rows (unused tokens) must not make the table look reordered
    dense = _write_gguf(tmp_path / "e.gguf", {"token_embd": (kind, table)})
    onnx.save(_embedding_model(dense["token_embd"], (1, 4)), tmp_path / "e.onnx")
    result = bitc.compile(tmp_path / "e.onnx", tmp_path / "e.bitc", gguf_weights={"path": str(tmp_path / "e.gguf")})
    log = {record["name"]: record for record in result.manifest["passes"]}["gguf_weights"]["details"]
    assert log["layers"]["embed"]["format"] == kind
    model = bitc.load(tmp_path / "e.bitc")
    ids = np.array([[0, 49, -1, 17]], np.int64)
    assert np.array_equal(model(ids=ids), dense["token_embd"][ids])
    with pytest.raises(Exception, match="index out of range in Gather 'embed"):
        model(ids=np.array([[0, 50, 1, 2]], np.int64))


def test_gguf_weights_refuses_a_file_that_is_not_gguf(tmp_path):
    onnx.save(_linear_chain([np.ones((32, 8), np.float32)], 1), tmp_path / "m.onnx")
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(bitc.BadInputError, match="GGUF"):
        bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc", gguf_weights={"path": str(tmp_path / "bad.gguf")})
    assert not (tmp_path / "m.bitc").exists()
