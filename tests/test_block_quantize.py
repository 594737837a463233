"""block_quantize: least-squares block fits (vs GGUF's own reference quantizers), the pass on Linear layers, a
tied embedding and head, and a GGUF file's Q8_0 table fitted again; the compiled model vs onnxruntime."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import bitc
from bitc.passes import registry
from bitc.passes.block_fit import BlockFormat, fit_blocks

FORMATS = {"q4_0": BlockFormat(4, False), "q4_1": BlockFormat(4, True), "q8_0": BlockFormat(8, False)}


def _heavy_tailed(rng, shape) -> np.ndarray:
    """Weights with outliers, as LLM layers have (where rounding between the extremes wastes levels)."""
    return (rng.standard_normal(shape) * rng.gamma(1.0, 1.0, shape)).astype(np.float32)


def _rel_error(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.linalg.norm(approx - exact) / np.linalg.norm(exact))


@pytest.mark.parametrize("name", list(FORMATS))
def test_fit_is_closer_than_ggufs_reference_quantizer(name):
    from gguf import GGMLQuantizationType, quants

    rng = np.random.default_rng(3)
    weights = _heavy_tailed(rng, (96, 256))
    fmt = FORMATS[name]
    fitted = fit_blocks(weights, fmt)
    kind = getattr(GGMLQuantizationType, name.upper())
    reference = quants.dequantize(quants.quantize(weights, kind), kind)
    ours, theirs = _rel_error(fitted.dequantize(fmt), weights), _rel_error(reference, weights)
    assert ours < theirs
    assert fitted.nbytes * 8 / weights.size == fmt.bits_per_weight()  # GGUF's size: 4.5 / 5.0 / 8.5 bits
    assert fitted.scales.dtype == np.float16


@pytest.mark.parametrize("name", list(FORMATS))
def test_fit_keeps_flat_zero_and_tiny_blocks(name):
    fmt = FORMATS[name]
    rows = np.zeros((4, 64), np.float32)
    rows[1] = 0.75  # flat block: exact with a minimum, or with scale 0.75/(-8) symmetric
    rows[2, :32] = np.linspace(-1e-6, 1e-6, 32)  # float16 keeps scales this small only as subnormals
    rows[3, 5] = -3.0  # one value in a zero block: exact with symmetric codes, within float16 with a minimum
    dense = fit_blocks(rows, fmt).dequantize(fmt)
    assert np.array_equal(dense[0], rows[0])
    assert np.abs(dense[3] - rows[3]).max() <= (1e-3 if fmt.offset else 0.0)
    np.testing.assert_allclose(dense[1], rows[1], rtol=1e-3)
    assert np.abs(dense[2] - rows[2]).max() <= 1e-6 and np.isfinite(dense).all()


def test_fit_refuses_a_scale_float16_cannot_hold():
    with pytest.raises(OverflowError, match="float16"):
        fit_blocks(np.full((1, 32), 1e9, np.float32), FORMATS["q4_0"])


def _tied_lm(rng, vocab=200, width=64, hidden=96) -> onnx.ModelProto:
    """ids → embedding Gather → MatMul → Relu → MatMul → head MatMul by the table's transpose (tied), plus a
    layer of 200 inputs (not whole blocks of 32)."""
    table = rng.standard_normal((vocab, width)).astype(np.float32)
    initializers = {
        "table": table,
        "w_up": rng.standard_normal((width, hidden)).astype(np.float32),
        "w_down": rng.standard_normal((hidden, width)).astype(np.float32),
        "w_odd": rng.standard_normal((vocab, 40)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "w_up"], ["h"], name="up"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w_down"], ["d"], name="down"),
        helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["d", "table_t"], ["logits"], name="head"),
        helper.make_node("MatMul", ["logits", "w_odd"], ["odd"], name="odd"),
    ]
    graph = helper.make_graph(
        nodes,
        "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
        [helper.make_tensor_value_info("odd", TensorProto.FLOAT, [1, 3, 40])],
        [numpy_helper.from_array(array, name) for name, array in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _float_twin(model: ir.Model) -> onnx.ModelProto:
    """The rewritten model with every block op replaced by its float equivalent on the dequantized tables: what
    the compiled artifact must compute, up to float rounding."""
    from bitc import ops
    from bitc.ops.block_matmul import dequantize

    proto = ir.to_proto(model)
    initializers = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.domain != ops.DOMAIN:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        tables = [initializers[name] for name in node.input[1:]]
        dense = dequantize(*tables[:2], tables[2] if len(tables) > 2 else None, attrs["bits"], 32, attrs["signed"])
        name = f"{node.name}__dense"
        proto.graph.initializer.append(
            numpy_helper.from_array(dense if node.op_type.endswith("Gather") else dense.T.copy(), name)
        )
        if node.op_type == "BlockQuantGather":
            node.op_type, node.domain, node.input[:] = "Gather", "", [name, node.input[0]]
        else:
            node.op_type, node.domain, node.input[:] = "MatMul", "", [node.input[0], name]
        node.ClearField("attribute")
    return proto


def test_pass_fits_linear_layers_and_a_tied_embedding_once(tmp_path):
    """Every MatMul and the embedding become 4-bit blocks (the tied head on the same codes as the table); the
    layer of 200 inputs stays float, named; the artifact equals onnxruntime on the dequantized model, and the
    output error against the float model is reported."""
    import onnxruntime as ort

    rng = np.random.default_rng(11)
    proto = _tied_lm(rng)
    onnx.save(proto, tmp_path / "m.onnx")
    result = bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc", block_quantize="q4_1")
    log = {record["name"]: record for record in result.manifest["passes"]}["block_quantize"]["details"]
    assert set(log["layers"]) == {"embed", "up", "down", "head"}
    assert log["kept"] == {"odd": "200 inputs are not whole blocks of 32"}
    assert log["layers"]["embed"]["weight_rel_error"] == log["layers"]["head"]["weight_rel_error"]
    assert all(0 < layer["output_rel_error"] < 0.5 for layer in log["layers"].values())
    assert log["weight_bytes_after"] * 6 < log["weight_bytes_before"]

    model = ir.from_proto(proto)
    registry.create("fold_constants")(model)  # the head's Transpose of the table, as the compile folds it
    registry.create("block_quantize", {"bits": 4, "offset": True, "measure_error": False})(model)
    by_name = {v.name: v.const_value.numpy() for v in model.graph.initializers.values()}
    assert np.array_equal(by_name["embed__q4_1_codes"], by_name["head__q4_1_codes"])  # one fit, stored once
    ids = np.array([[1, 199, 57]], np.int64)
    expected = ort.InferenceSession(_float_twin(model).SerializeToString()).run(None, {"ids": ids})[0]
    got = bitc.load(tmp_path / "m.bitc")(ids=ids)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    original = ort.InferenceSession(proto.SerializeToString()).run(None, {"ids": ids})[0]
    assert 0 < _rel_error(got, original) < 0.5  # lossy, as reported


def test_requantize_fits_a_gguf_files_q8_0_table_to_4_bits(tmp_path):
    """gguf_weights keeps the file's Q8_0 embedding; block_quantize leaves it unless `requantize`, then fits its
    stored values to 4-bit blocks."""
    from test_block_matmul import _embedding_model, _write_gguf

    rng = np.random.default_rng(2)
    dense = _write_gguf(tmp_path / "e.gguf", {"token_embd": ("Q8_0", rng.standard_normal((50, 64)).astype(np.float32))})
    onnx.save(_embedding_model(dense["token_embd"], (1, 4)), tmp_path / "e.onnx")
    gguf = {"path": str(tmp_path / "e.gguf")}
    for requantize in (False, True):
        out = tmp_path / f"e{requantize}.bitc"
        options = {"bits": 4, "requantize": requantize}
        result = bitc.compile(tmp_path / "e.onnx", out, gguf_weights=gguf, block_quantize=options)
        log = {record["name"]: record for record in result.manifest["passes"]}["block_quantize"]
        layers = log.get("details", {}).get("layers", {})
        assert bool(layers) == requantize
    details = log["details"]  # measured against the Q8_0 blocks: the reference evaluator runs them
    assert 0 < layers["embed__q8_0"]["output_rel_error"] < 0.2 and "note" not in details
    assert details["weight_bytes_after"] * 17 == details["weight_bytes_before"] * 9  # 4.5 of 8.5 bits
    ids = np.array([[0, 49, -1, 17]], np.int64)
    got = bitc.load(tmp_path / "eTrue.bitc")(ids=ids)
    expected = fit_blocks(dense["token_embd"], FORMATS["q4_0"]).dequantize(FORMATS["q4_0"])[ids]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_cli_refuses_unknown_formats_and_a_lone_requantize(tmp_path):
    onnx.save(_tied_lm(np.random.default_rng(0)), tmp_path / "m.onnx")
    for flags, message in (
        (["--block-weights", "q5_0"], "block weights must be one of q4_0, q4_1, q8_0"),
        (["--block-requantize"], "--block-requantize needs --block-weights"),
    ):
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "bitc.cli",
                "compile",
                str(tmp_path / "m.onnx"),
                "-o",
                str(tmp_path / "m.bitc"),
                *flags,
            ],
            capture_output=True,
            text=True,
        )
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr
        assert not (tmp_path / "m.bitc").exists()


def test_block_layers_on_cuda_are_refused_in_one_line(tmp_path):
    """The block kernels are CPU only: --target cuda refuses, naming the node, before any code is built (no
    half-built function left for TVM to warn about)."""
    onnx.save(_tied_lm(np.random.default_rng(0)), tmp_path / "m.onnx")
    flags = ["--target", "cuda", "--block-weights", "q4_1"]
    run = subprocess.run(
        [sys.executable, "-m", "bitc.cli", "compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.bitc"), *flags],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and not (tmp_path / "m.bitc").exists()
    assert run.stderr.strip().splitlines() == [
        "bitc: error: node 'embed__q4_1': BlockQuantGather has no CUDA kernel (it runs on --target cpu)"
    ]
