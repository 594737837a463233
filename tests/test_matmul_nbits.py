"""com.microsoft MatMulNBits (onnxruntime's weight-only quantized MatMul) on bitc's block kernels: models from
onnxruntime's own quantizer vs onnxruntime, and the forms bitc refuses in one line."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import bitc


def _float_model(k: int, n: int, shape: tuple[int, ...], seed: int = 0) -> onnx.ModelProto:
    weight = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="linear")],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*shape, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*shape, n])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _quantized(k: int, n: int, shape: tuple[int, ...], bits: int, symmetric: bool, block: int = 32):
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    config = nbits.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=symmetric, bits=bits)
    quantizer = nbits.MatMulNBitsQuantizer(_float_model(k, n, shape), algo_config=config)
    quantizer.process()
    proto = quantizer.model.model
    assert [node.op_type for node in proto.graph.node] == ["MatMulNBits"]
    return proto


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("shape", [(1,), (1, 3)])
def test_matmul_nbits_matches_onnxruntime(tmp_path, bits, symmetric, shape):
    """Symmetric weights (zero point 2^(b−1)) run as signed codes, the same products bit for bit; asymmetric ones
    as an offset per block. One row runs the GEMV, three the GEMM."""
    import onnxruntime as ort

    proto = _quantized(96, 72, shape, bits, symmetric)
    onnx.save(proto, tmp_path / "q.onnx")
    result = bitc.compile(tmp_path / "q.onnx", tmp_path / "q.bitc")
    (layer,) = result.manifest["layers"]  # the accounting `bitc inspect` shows
    assert (layer["precision"], layer["params"]) == (f"{bits}-bit blocks", 96 * 72)
    assert layer["macs"] == int(np.prod(shape)) * 96 * 72
    x = np.random.default_rng(1).standard_normal((*shape, 96)).astype(np.float32)
    expected = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
    got = bitc.load(tmp_path / "q.bitc")(x=x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def _by_hand(inputs: list[str], initializers: dict[str, np.ndarray], k=64, n=16, bits=4, block=32):
    graph = helper.make_graph(
        [
            helper.make_node(
                "MatMulNBits",
                ["x", *inputs],
                ["y"],
                domain="com.microsoft",
                name="q",
                K=k,
                N=n,
                bits=bits,
                block_size=block,
            )
        ],
        "nbits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, n])],
        [numpy_helper.from_array(array, name) for name, array in initializers.items()],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def test_matmul_nbits_with_bias_and_packed_zero_points(tmp_path):
    """Odd block counts leave half a zero-point byte unused; the bias is added after the product."""
    import onnxruntime as ort

    rng = np.random.default_rng(4)
    k, n, block = 96, 16, 32  # 3 blocks per row: zero points in 2 bytes
    tables = {
        "B": rng.integers(0, 256, (n, k // block, block // 2), dtype=np.uint8),
        "scales": (rng.random((n, k // block)) * 0.1 + 0.01).astype(np.float32),
        "zp": rng.integers(0, 256, (n, 2), dtype=np.uint8),
        "bias": rng.standard_normal(n).astype(np.float32),
    }
    proto = _by_hand(["B", "scales", "zp", "", "bias"], tables, k=k, n=n, block=block)
    onnx.save(proto, tmp_path / "q.onnx")
    bitc.compile(tmp_path / "q.onnx", tmp_path / "q.bitc")
    x = rng.standard_normal((2, k)).astype(np.float32)
    expected = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(bitc.load(tmp_path / "q.bitc")(x=x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("inputs", "attributes", "message"),
    [
        (["B", "scales", "", "g_idx"], {}, "g_idx"),
        (["B", "scales"], {"bits": 2}, "2-bit weights"),
        (["B", "scales"], {"k": 80}, "K=80 is not whole blocks of block_size=32"),
    ],
)
def test_matmul_nbits_refuses_what_it_cannot_run_exactly(tmp_path, inputs, attributes, message):
    k = attributes.get("k", 64)
    tables = {
        "B": np.zeros((16, -(-k // 32), 16), np.uint8),
        "scales": np.ones((16, -(-k // 32)), np.float32),
        "g_idx": np.arange(k, dtype=np.int32) // 32,
    }
    proto = _by_hand(inputs, {name: tables[name] for name in inputs if name}, k=k, bits=attributes.get("bits", 4))
    onnx.save(proto, tmp_path / "q.onnx")
    with pytest.raises(bitc.BadInputError, match=f"node 'q' \\(com.microsoft MatMulNBits\\): .*{message}"):
        bitc.compile(tmp_path / "q.onnx", tmp_path / "q.bitc")
    assert not (tmp_path / "q.bitc").exists()


def _qdq_model(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, rows: int, **attributes):
    """x [rows, K] @ DequantizeLinear(q [K, N], scale, zero_point) at opset 21 (int4 and block_size)."""
    k, n = q.shape
    kind = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8, "int4": TensorProto.INT4, "uint4": TensorProto.UINT4}
    tensors = [helper.make_tensor("q", kind[attributes.pop("dtype")], q.shape, q.reshape(-1).tolist())]
    tensors.append(numpy_helper.from_array(scale, "scale"))
    inputs = ["q", "scale"]
    if zero_point is not None:
        tensors.append(
            helper.make_tensor("zp", tensors[0].data_type, zero_point.shape, zero_point.reshape(-1).tolist())
        )
        inputs.append("zp")
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", inputs, ["w"], name="dq", **attributes),
            helper.make_node("MatMul", ["x", "w"], ["y"], name="linear"),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])],
        tensors,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize(
    ("dtype", "layout", "zero"),
    [
        ("int4", "blocked", False),
        ("uint4", "blocked", True),
        ("uint4", "blocked", False),  # the default zero point 0: unsigned codes, no offset
        ("uint4", "midpoint", True),  # every zero point 8: signed codes, bit-exact
        ("uint8", "column", True),
        ("int8", "tensor", False),
    ],
)
@pytest.mark.parametrize("rows", [1, 3])
def test_matmul_by_dequantized_weights_runs_on_their_blocks(tmp_path, dtype, layout, zero, rows):
    """The QDQ form of weight-only quantization (DequantizeLinear of constant int4/uint4/int8/uint8 weights, in
    blocks along K, per output column or per tensor, then MatMul) keeps its codes: the layer runs on the block
    kernels and equals onnx's reference evaluator. (onnxruntime's own optimizer fuses the pair into int8-activation
    arithmetic, about 0.5 % off: the reference is the unfused graph.)"""
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(6)
    k, n, bits = 64, 24, 4 if dtype.endswith("4") else 8
    low, high = (0, 1 << bits) if dtype.startswith("u") else (-(1 << (bits - 1)), 1 << (bits - 1))
    q = rng.integers(low, high, (k, n))
    scale_shape, attributes = {
        "blocked": ((2, n), {"axis": 0, "block_size": 32}),
        "midpoint": ((2, n), {"axis": 0, "block_size": 32}),
        "column": ((n,), {"axis": 1}),
        "tensor": ((), {}),
    }[layout]
    scale = (rng.random(scale_shape) * 0.1 + 0.01).astype(np.float32)
    zero_point = None
    if zero:
        zero_point = np.full(scale_shape, 8) if layout == "midpoint" else rng.integers(low, high, scale_shape)
    proto = _qdq_model(q, scale, zero_point, rows, dtype=dtype, **attributes)
    onnx.save(proto, tmp_path / "qdq.onnx")
    result = bitc.compile(tmp_path / "qdq.onnx", tmp_path / "qdq.bitc")
    assert [layer["precision"] for layer in result.manifest["layers"]] == [f"{bits}-bit blocks"]
    x = rng.standard_normal((rows, k)).astype(np.float32)
    expected = ReferenceEvaluator(proto).run(None, {"x": x})[0]
    np.testing.assert_allclose(
        bitc.load(tmp_path / "qdq.bitc")(x=x), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max()
    )


def test_float16_dequantized_weights_stay_on_the_float_path(tmp_path):
    """Scales of float16 make the product float16 in ONNX: not the block kernels' float32 arithmetic, so the
    pair is left to fold into float weights (and still compiles)."""
    rng = np.random.default_rng(8)
    q = rng.integers(-8, 8, (64, 16))
    proto = _qdq_model(q, np.full((2, 16), 0.05, np.float16), None, 1, dtype="int4", axis=0, block_size=32)
    proto.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    proto.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.save(proto, tmp_path / "qdq.onnx")
    result = bitc.compile(tmp_path / "qdq.onnx", tmp_path / "qdq.bitc")
    assert all("blocks" not in layer["precision"] for layer in result.manifest["layers"])
