"""Low-bit weights for Linear layers: the LowBitMatMul op, its kernels, the weight fitting and the pass."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from binary_models import compiled_and_reference, lowbit_matmul_model
from onnx import TensorProto, helper, numpy_helper

import bitc
from bitc import ops
from bitc.codegen.kernels import lowbit_kernels
from bitc.ops.lowbit_matmul import dequantize, float_twin, group_count
from bitc.ops.packing import pack_dense_weights, unpack_signs
from bitc.passes.lowbit_fit import WeightFormat, fit_weights
from bitc.passes.lowbit_linear import LowBitLinear


def _float_reference(x, signs, scales, group_size):
    """Independent float math: Σ_p Σ_k x·s·α with the scale looked up per weight."""
    k = signs.shape[-1]
    group = np.arange(k) // group_size if group_size else np.zeros(k, int)
    w = (signs * scales[:, :, group]).sum(axis=0)
    return x.astype(np.float64) @ w.T


@pytest.mark.parametrize(("k", "group_size", "planes"), [(1, 0, 1), (33, 0, 2), (100, 32, 3), (256, 64, 4)])
def test_lowbit_reference_matches_float_math(k, group_size, planes):
    rng = np.random.default_rng(k)
    signs = np.where(rng.random((planes, 7, k)) < 0.5, -1.0, 1.0)
    scales = rng.uniform(0.1, 1, (planes, 7, group_count(k, group_size))).astype(np.float32)
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    packed = pack_dense_weights(signs)
    assert np.array_equal(unpack_signs(packed, k), signs < 0)  # the packing round-trips
    (y,) = ops.get("LowBitMatMul").reference(x, packed, scales, in_features=k, group_size=group_size)
    assert y.shape == (2, 3, 7)
    np.testing.assert_allclose(y, _float_reference(x, signs, scales, group_size), rtol=1e-5, atol=1e-5)


def test_weight_blocking_puts_16_rows_side_by_side():
    packed = np.arange(2 * 20 * 3, dtype=np.uint32).reshape(2, 20, 3)
    assert lowbit_kernels.block_weights(packed, 8).shape == (2, 3, 3, 8)
    blocked = lowbit_kernels.block_weights(packed)
    assert blocked.shape == (2, 2, 3, 16)
    assert np.array_equal(blocked[1, 0, 2], packed[1, :16, 2])
    assert np.array_equal(blocked[1, 1, 2, :4], packed[1, 16:, 2]) and not blocked[1, 1, 2, 4:].any()


LOWBIT_CASES = {
    "tiny": {"shape": (3, 100), "n": 45},
    "odd_k_one_word": {"shape": (1, 1), "n": 5},
    "3d_groups": {"shape": (1, 2, 70), "n": 17, "planes": 2, "group_size": 32},
    "gemv_groups": {"shape": (1, 1024), "n": 300, "planes": 1, "group_size": 128},
    "batch_three_planes_half_scales": {
        "shape": (5, 576),
        "n": 64,
        "planes": 3,
        "group_size": 64,
        "scale_dtype": np.float16,
    },
}


@pytest.mark.parametrize("target", ["cpu", "cpu:x86-64-v3", "cpu:x86-64-v2"])
@pytest.mark.parametrize("case", list(LOWBIT_CASES))
def test_lowbit_kernel_matches_reference(tmp_path, case, target):
    """The table-lookup kernel on AVX-512 (cpu here) and AVX2 (x86-64-v3), and the portable compute (x86-64-v2,
    no AVX2), vs the numpy reference."""
    options = LOWBIT_CASES[case]
    x = np.random.default_rng(1).standard_normal(options["shape"]).astype(np.float32)
    got, reference = compiled_and_reference(tmp_path, lowbit_matmul_model(**options), x, target)
    assert got.shape == reference.shape
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())


@pytest.mark.parametrize(
    ("isa", "mcpu", "register", "per_nibble"), [("avx512", "znver4", "%zmm", 1), ("avx2", "haswell", "%ymm", 2)]
)
def test_lut_kernel_looks_up_a_vector_of_rows_per_instruction(isa, mcpu, register, per_nibble):
    import tvm

    func = lowbit_kernels.lut_matmul(rows=1, blocks=4, in_words=8, planes=1, groups=1, group_words=8, isa=isa)
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    asm = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    lines = asm.jit().inspect_source("asm").splitlines()
    # table lookups per nibble: vpermps, or vpermd (LLVM's integer-domain spelling of the same shuffle)
    lookups = sum(1 for line in lines if line.split()[:1] in (["vpermps"], ["vpermd"]) and register in line)
    assert lookups >= 8 * per_nibble


def _layer_error(fmt: WeightFormat, **options) -> float:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 256)) * rng.uniform(0.2, 2, (1, 256))
    x = rng.standard_normal((512, 256)) * rng.uniform(0.1, 3, (1, 256))
    fitted = fit_weights(w, fmt, **({"hessian": x.T @ x / 512} if options.pop("calibrated", False) else {}), **options)
    return float(np.linalg.norm(x @ (fitted.dequantize(fmt.group_size) - w).T) / np.linalg.norm(x @ w.T))


def test_more_planes_smaller_groups_and_calibration_each_reduce_the_error():
    one, two, three = (_layer_error(WeightFormat(p, False, 64)) for p in (1, 2, 3))
    assert one > two > three
    assert _layer_error(WeightFormat(2, False, 32)) < _layer_error(WeightFormat(2, False, 0))
    assert _layer_error(WeightFormat(2, False, 64), calibrated=True) < two  # GPTQ on the layer's activations
    assert _layer_error(WeightFormat(2, False, 64), calibrated=True, salient=26) < _layer_error(
        WeightFormat(2, False, 64), calibrated=True
    )


def test_one_plane_fit_is_the_optimal_scaled_sign():
    """For one plane without weighting, α = mean |w| and B = sign(w) is the least-squares optimum."""
    w = np.random.default_rng(3).standard_normal((8, 64))
    fitted = fit_weights(w, WeightFormat(1, False, 0))
    assert np.array_equal(fitted.negative[0], w < 0)
    np.testing.assert_allclose(fitted.scales[0, :, 0], np.abs(w).mean(axis=1), rtol=1e-3)  # stored as float16


def test_ternary_codes_are_minus_zero_plus():
    w = np.random.default_rng(4).standard_normal((6, 96))
    fitted = fit_weights(w, WeightFormat(2, True, 32))
    dense = fitted.dequantize(32)
    scale = np.repeat(fitted.scales[0] * 2, 32, axis=1)  # α per weight
    codes = dense / scale
    assert np.allclose(codes, np.round(codes), atol=1e-5) and set(np.unique(np.round(codes))) == {-1.0, 0.0, 1.0}


def test_salient_columns_are_exact_in_the_dequantized_weights():
    w = np.random.default_rng(5).standard_normal((16, 128))
    fitted = fit_weights(w, WeightFormat(1, False, 64), salient=10)
    dense = fitted.dequantize(64)
    np.testing.assert_allclose(dense[:, fitted.salient], w[:, fitted.salient], rtol=1e-5, atol=1e-6)
    assert fitted.salient.size == 10


def _mlp(tmp_path):
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((96, 200)) * 0.1).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal((64, 200)) * 0.1).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b2"),
        numpy_helper.from_array(rng.standard_normal((64, 10)).astype(np.float32), "w3"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu"),
        helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"], name="fc2", transB=1, alpha=0.5),
        helper.make_node("MatMul", ["h2", "w3"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 10])],
        inits,
    )
    path = tmp_path / "mlp.onnx"
    onnx.save(
        onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])), path
    )
    return path


@pytest.mark.parametrize(
    "options",
    [{"planes": 1, "group_size": 0}, {"planes": 2, "group_size": 64, "salient": 0.1}, {"ternary": True}],
    ids=["1plane", "2plane_salient", "ternary"],
)
def test_lowbit_linear_rewrites_and_compiles_to_the_reference(tmp_path, options):
    model = ir.load(_mlp(tmp_path))
    lowbit = LowBitLinear(**options)
    assert lowbit(model).modified
    report = lowbit.report.to_json()
    assert set(report["layers"]) == {"fc1", "fc2"} and report["kept_in_float"] == {"head": "last layer"}
    assert [n.op_type for n in model.graph].count("LowBitMatMul") == 2
    assert all(0 < layer["output_rel_error"] < 1 for layer in report["layers"].values())
    x = np.random.default_rng(1).standard_normal((4, 96)).astype(np.float32)
    reference = ops.reference_evaluator(model).run(None, {"x": x})[0]
    ir.save(model, tmp_path / "q.onnx")
    bitc.compile(tmp_path / "q.onnx", tmp_path / "q.bitc", passes=[])
    got = bitc.load(tmp_path / "q.bitc")(x=x)
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_lowbit_linear_dequantized_equals_the_op(tmp_path):
    """The rewrite computes exactly x·W_q + b with W_q the fitted weights (alpha and Gemm bias folded right)."""
    path = _mlp(tmp_path)
    model = ir.load(path)
    LowBitLinear(planes=2, group_size=32, layers=["fc2"], measure_error=False)(model)
    node = next(n for n in model.graph if n.op_type == "LowBitMatMul")
    w_q = dequantize(node.inputs[1].const_value.numpy(), node.inputs[2].const_value.numpy(), 200, 32)
    rng = np.random.default_rng(2)
    r1 = np.maximum(
        rng.standard_normal((4, 96)).astype(np.float32)
        @ onnx.numpy_helper.to_array(onnx.load(path).graph.initializer[0]),
        0,
    )
    (y,) = ops.get("LowBitMatMul").reference(
        r1, *(v.const_value.numpy() for v in node.inputs[1:]), in_features=200, group_size=32
    )
    np.testing.assert_allclose(y, r1 @ w_q.T, rtol=1e-5, atol=1e-5)


def test_calibration_runs_in_batches_and_must_fill_one(tmp_path):
    """A batch-4 model calibrates on 8 samples in two runs; 3 samples cannot fill its static batch."""
    from bitc.errors import BadInputError

    path = _mlp(tmp_path)
    x = np.random.default_rng(0).standard_normal((8, 96)).astype(np.float32)
    lowbit = LowBitLinear(planes=1, layers=["fc1"], calibration={"x": x}, measure_error=False)
    hessians = lowbit._hessians(ir.load(path), [n for n in ir.load(path).graph if n.name == "fc1"])
    np.testing.assert_allclose(hessians["x"], x.astype(np.float64).T @ x / 8, rtol=1e-6)
    with pytest.raises(BadInputError, match="3 calibration samples, fewer than the model's batch 4"):
        LowBitLinear(planes=1, calibration={"x": x[:3]})(ir.load(path))


def test_lowbit_linear_rejects_bad_options():
    from bitc.errors import BadInputError

    with pytest.raises(BadInputError, match="group_size"):
        LowBitLinear(group_size=48)
    with pytest.raises(BadInputError, match="planes"):
        LowBitLinear(planes=5)
    with pytest.raises(BadInputError, match="no MatMul/Gemm named nope"):
        LowBitLinear(layers=["nope"])(ir.from_proto(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))))


def test_cli_compiles_lowbit_weights_with_calibration(tmp_path, capsys):
    from bitc.cli import main

    path = _mlp(tmp_path)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((4, 96)).astype(np.float32))
    code = main(
        [
            "compile",
            str(path),
            "-o",
            str(tmp_path / "m.bitc"),
            "--lowbit-weights",
            "2",
            "--lowbit-group-size",
            "64",
            "--lowbit-salient",
            "0.05",
            "--calibration",
            str(tmp_path / "calib.npz"),
        ]
    )
    assert code == 0, capsys.readouterr()
    manifest = bitc.load(tmp_path / "m.bitc").manifest
    log = {record["name"]: record for record in manifest["passes"]}
    report = log["lowbit_linear"]["details"]
    assert report["layers_converted"] == 2 and report["layers"]["fc1"]["salient_columns"] == 5
    x = np.random.default_rng(1).standard_normal((4, 96)).astype(np.float32)
    assert bitc.load(tmp_path / "m.bitc")(x=x).shape == (4, 10)


def test_cli_rejects_a_bad_lowbit_format_and_a_missing_calibration_file(tmp_path, capsys):
    from bitc.cli import main

    path = _mlp(tmp_path)
    assert main(["compile", str(path), "--lowbit-weights", "five"]) != 0
    assert "plane count 1-4 or 'ternary'" in capsys.readouterr().err
    assert main(["compile", str(path), "--lowbit-weights", "1", "--calibration", str(tmp_path / "no.npz")]) != 0
    err = capsys.readouterr().err
    assert "no.npz" in err and "Traceback" not in err and not (tmp_path / "mlp.bitc").exists()


@pytest.mark.slow
def test_real_minilm_lowbit_compiles_to_what_its_dequantized_twin_computes(zoo, tmp_path):
    """all-MiniLM-L6-v2 with 3-plane Linear weights (GPTQ on real sentences): bitc's compiled embeddings equal the
    float model with the fitted weights, and stay close to the fp32 embeddings."""
    import onnxruntime as ort

    from bitc_zoo import real, text

    path = zoo.minilm(128)
    sentences, _ = text.sentences(12)
    calibration = real.minilm_tokenize(sentences[:8], 128)
    model = ir.load(path)
    lowbit = LowBitLinear(planes=3, calibration=calibration, keep_last=False, measure_error=False)
    lowbit(model)
    assert lowbit.report.to_json()["layers_converted"] == 36
    ir.save(model, tmp_path / "q.onnx")
    bitc.compile(tmp_path / "q.onnx", tmp_path / "q.bitc", passes=[])
    compiled = bitc.load(tmp_path / "q.bitc")
    float_session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    twin = ort.InferenceSession(float_twin(model).SerializeToString(), providers=["CPUExecutionProvider"])
    for sentence in sentences[8:]:
        feeds = real.minilm_tokenize([sentence], 128)
        got = compiled(**feeds)[0]
        fitted = twin.run(None, feeds)[0][0]
        fp32 = float_session.run(None, feeds)[0][0]
        assert np.dot(got, fitted) / (np.linalg.norm(got) * np.linalg.norm(fitted)) > 0.9999
        assert np.dot(got, fp32) / (np.linalg.norm(got) * np.linalg.norm(fp32)) > 0.85


def test_float_twin_computes_what_the_op_computes(tmp_path):
    import onnxruntime as ort

    model = ir.load(_mlp(tmp_path))
    LowBitLinear(planes=2, group_size=32, salient=0.05, measure_error=False)(model)
    x = np.random.default_rng(3).standard_normal((4, 96)).astype(np.float32)
    twin = ort.InferenceSession(float_twin(model).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(twin.run(None, {"x": x})[0], ops.reference_evaluator(model).run(None, {"x": x})[0],
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_python_api_takes_calibration_arrays_and_the_manifest_describes_them(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 96)).astype(np.float32)
    result = bitc.compile(_mlp(tmp_path), tmp_path / "m.bitc", lowbit_linear={"planes": 2, "calibration": {"x": x}})
    record = next(r for r in result.manifest["passes"] if r["name"] == "lowbit_linear")
    assert record["options"]["calibration"] == {"x": "array[4, 96] float32"}
    assert record["details"]["layers_converted"] == 2


def test_sequential_calibration_sees_the_converted_layers_before(tmp_path, monkeypatch):
    """fc2 is fitted on what the converted fc1 produces: its Hessian comes from a second run, on the float twin."""
    x = np.random.default_rng(0).standard_normal((4, 96)).astype(np.float32)
    seen: list[list[str]] = []
    original = LowBitLinear._hessians

    def spy(self, model, nodes):
        seen.append([n.name for n in nodes] + [n.op_type for n in model.graph if n.op_type == "LowBitMatMul"])
        return original(self, model, nodes)

    monkeypatch.setattr(LowBitLinear, "_hessians", spy)
    LowBitLinear(planes=1, calibration={"x": x}, sequential=True, measure_error=False)(ir.load(_mlp(tmp_path)))
    assert seen == [["fc1"], ["fc2", "LowBitMatMul"]]


def test_a_lowbit_node_with_inconsistent_shapes_is_a_one_line_error(tmp_path, capsys):
    from bitc.cli import main

    proto = lowbit_matmul_model(shape=(2, 100), n=8)
    in_features = next(a for a in proto.graph.node[0].attribute if a.name == "in_features")
    in_features.i = 130  # no longer matches x or the packed words
    onnx.save(proto, tmp_path / "bad.onnx")
    assert main(["compile", str(tmp_path / "bad.onnx"), "-o", str(tmp_path / "bad.bitc")]) != 0
    err = capsys.readouterr().err
    assert "node 'lowbit' (LowBitMatMul)" in err and "in_features=130" in err and "Traceback" not in err
    assert not (tmp_path / "bad.bitc").exists()


def test_config_table_gives_the_lowbit_options_with_the_calibration_path_next_to_it(tmp_path):
    from bitc.config import load_config
    from bitc.errors import BadInputError

    (tmp_path / "bitc.toml").write_text('[lowbit_linear]\nplanes = 3\ngroup_size = 64\ncalibration = "c.npz"\n')
    options = load_config(tmp_path / "bitc.toml")["lowbit_linear"]
    assert options == {"planes": 3, "group_size": 64, "calibration": str(tmp_path / "c.npz")}
    (tmp_path / "bad.toml").write_text('[lowbit_linear]\nplanes = "two"\n')
    with pytest.raises(BadInputError, match=r"\[lowbit_linear\] 'planes' must be an integer"):
        load_config(tmp_path / "bad.toml")
