"""Narrow types (bfloat16, float8, float4, int4, int2) on carriers: the rounding kernel bit for bit against
ml_dtypes, whole models against onnx's reference evaluator, and the refusals."""

from __future__ import annotations

import json
import zipfile

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import bitc
from bitc.codegen.kernels.narrow_kernels import round_to_format
from bitc.errors import BadInputError
from bitc.ops.round_to_format import FORMATS, RoundToFormat

SPECIALS = [0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1e30, -1e30, 448, 449, 464, 465, 480, 240, 248, 57344,
            61440, 61441, 6, 6.5, 7, 0.25, 0.75, 1e-10, -1e-10, 3.3895313892515355e38, 3.4e38, 2**-7, 2**-9,
            2**-17]  # fmt: skip


def _kernel_inputs(dtype: str) -> np.ndarray:
    if dtype == "float16":
        return np.arange(65536, dtype=np.uint16).view(np.float16)  # every float16
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 50_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    near_ties = (rng.integers(-400, 400, 20_000) / 16.0) * np.exp2(rng.integers(-30, 30, 20_000))
    return np.concatenate([np.array(SPECIALS), bits, near_ties]).astype(dtype)


def _same(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("name", sorted(FORMATS))
def test_round_to_format_kernel_matches_ml_dtypes_bit_for_bit(name: str, dtype: str) -> None:
    import tvm
    from tvm import te

    x = _kernel_inputs(dtype)
    for saturate in (0, 1):
        placeholder = te.placeholder(x.shape, dtype)
        rounded = round_to_format(placeholder, FORMATS[name], bool(saturate))
        func = tvm.compile(te.create_prim_func([placeholder, rounded]))
        out = tvm.runtime.empty(x.shape, "float32")
        func(tvm.runtime.tensor(x), out)
        want = RoundToFormat.reference(x, format=name, saturate=saturate)[0]
        wrong = np.flatnonzero(~_same(out.numpy(), want))
        got = out.numpy()
        assert wrong.size == 0, f"saturate={saturate}: {x[wrong[:3]]} -> {got[wrong[:3]]}, want {want[wrong[:3]]}"


def _compile_and_compare(tmp_path, model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    result = bitc.compile(str(path), tmp_path / "model.bitc")
    got = bitc.load(result.path).run(feeds)
    want = dict(zip([o.name for o in model.graph.output], ReferenceEvaluator(model).run(None, feeds), strict=True))
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype, name
        np.testing.assert_array_equal(got[name].astype(np.float32), expected.astype(np.float32), err_msg=name)
    return result.manifest


def test_casts_to_and_from_every_narrow_type_match_the_reference(tmp_path) -> None:
    narrow = {
        "bf16": TensorProto.BFLOAT16, "e4m3fn": TensorProto.FLOAT8E4M3FN, "e4m3fnuz": TensorProto.FLOAT8E4M3FNUZ,
        "e5m2": TensorProto.FLOAT8E5M2, "e5m2fnuz": TensorProto.FLOAT8E5M2FNUZ, "f4": TensorProto.FLOAT4E2M1,
        "i4": TensorProto.INT4, "u4": TensorProto.UINT4, "i2": TensorProto.INT2, "u2": TensorProto.UINT2,
    }  # fmt: skip
    nodes, outputs = [], []
    for name, dtype in narrow.items():
        nodes += [
            helper.make_node("Cast", ["x"], [f"{name}"], to=dtype),
            helper.make_node("Cast", ["x"], [f"{name}_nosat"], to=dtype, saturate=0) if name[0] in "e" else None,
            helper.make_node("Cast", [f"{name}"], [f"{name}_back"], to=TensorProto.FLOAT16),
        ]
        outputs += [helper.make_tensor_value_info(f"{name}", dtype, [4, 16])]
        outputs += [helper.make_tensor_value_info(f"{name}_back", TensorProto.FLOAT16, [4, 16])]
        if name[0] == "e":
            outputs += [helper.make_tensor_value_info(f"{name}_nosat", dtype, [4, 16])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])]
    graph = helper.make_graph([n for n in nodes if n is not None], "casts", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])
    x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32) * 3
    x.flat[:6] = [np.nan, np.inf, -np.inf, 1e6, -0.0, 7.5]
    manifest = _compile_and_compare(tmp_path, model, {"x": x})
    specs = {spec["name"]: spec for spec in manifest["outputs"]}
    assert specs["e4m3fn"] == {"name": "e4m3fn", "shape": [4, 16], "dtype": "float8_e4m3fn", "carrier": "float32"}
    assert specs["i4"]["dtype"] == "int4" and specs["i4"]["carrier"] == "int8"


def test_narrow_inputs_are_converted_at_the_edge_and_checked(tmp_path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT), helper.make_node("Transpose", ["w"], ["t"])],
        "inputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT8E5M2, [3, 5]),
         helper.make_tensor_value_info("w", TensorProto.INT4, [3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5]),
         helper.make_tensor_value_info("t", TensorProto.INT4, [5, 3])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((3, 5)) * 100).astype(ml_dtypes.float8_e5m2)
    w = rng.integers(-8, 8, (3, 5)).astype(ml_dtypes.int4)
    _compile_and_compare(tmp_path, model, {"x": x, "w": w})
    loaded = bitc.load(tmp_path / "model.bitc")
    with pytest.raises(BadInputError, match="input 'x': dtype float32, expected float8_e5m2"):
        loaded.run({"x": x.astype(np.float32), "w": w})
    assert loaded.random_inputs()["x"].dtype == np.dtype(ml_dtypes.float8_e5m2)


QUANT_RANGES = {TensorProto.INT4: (-8, 8), TensorProto.UINT4: (0, 16), TensorProto.INT8: (-128, 128),
                TensorProto.UINT2: (0, 4)}  # fmt: skip


@pytest.mark.parametrize(("zero_type", "block"), [(TensorProto.INT4, 0), (TensorProto.UINT4, 0), (TensorProto.INT8, 2),
                                                   (TensorProto.UINT2, 0)])  # fmt: skip
def test_quantize_dequantize_per_axis_and_blocked(tmp_path, zero_type: int, block: int) -> None:
    """QuantizeLinear → DequantizeLinear with per-channel (or per-block) scales and zero points."""
    shape, axis = [2, 6, 4], 1
    params = [2, 6 // block, 4] if block else [6]
    zero_np = helper.tensor_dtype_to_np_dtype(zero_type)
    rng = np.random.default_rng(3)
    low, high = QUANT_RANGES[zero_type]
    scales = rng.uniform(0.05, 0.5, params).astype(np.float32).ravel()
    scale = helper.make_tensor("scale", TensorProto.FLOAT, params, scales)
    zero = onnx.numpy_helper.from_array(rng.integers(low, high, params).astype(zero_np), "zero")
    attrs = {"axis": axis, **({"block_size": block} if block else {})}
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], **attrs),
         helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"], **attrs)],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("q", zero_type, shape),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        initializer=[scale, zero],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    _compile_and_compare(tmp_path, model, {"x": x})


def test_quantize_to_float8_and_back(tmp_path) -> None:
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.02])
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "scale"], ["q"], output_dtype=TensorProto.FLOAT8E4M3FN),
         helper.make_node("DequantizeLinear", ["q", "scale"], ["y"])],
        "fp8",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])],
        initializer=[scale],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    x = (np.random.default_rng(4).standard_normal(64) * 5).astype(np.float32)
    _compile_and_compare(tmp_path, model, {"x": x})


def test_arithmetic_in_a_narrow_type_is_refused_naming_the_node(tmp_path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"], name="twice")],
        "bf16",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [4])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [4])],
    )
    path = tmp_path / "add.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), path)
    with pytest.raises(BadInputError, match=r"node 'twice' \(Add\) computes in bfloat16"):
        bitc.compile(str(path), tmp_path / "add.bitc")
    assert not (tmp_path / "add.bitc").exists()


def _save_cast(path, source: int, target: int, shape: list[int], opset: int) -> None:
    """A model `y = Cast(x)` from `source` to `target` ONNX types, saved at `path`."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=target)],
        "cast",
        [helper.make_tensor_value_info("x", source, shape)],
        [helper.make_tensor_value_info("y", target, shape)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)


def test_a_manifest_with_a_wrong_carrier_is_refused(tmp_path) -> None:
    path = tmp_path / "cast.onnx"
    _save_cast(path, TensorProto.FLOAT, TensorProto.BFLOAT16, [4], 23)
    artifact = bitc.compile(str(path), tmp_path / "cast.bitc").path
    forged = tmp_path / "forged.bitc"
    with zipfile.ZipFile(artifact) as source, zipfile.ZipFile(forged, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "manifest.json":
                manifest = json.loads(data)
                manifest["outputs"][0]["carrier"] = "float64"
                data = json.dumps(manifest).encode()
            target.writestr(item, data)
    with pytest.raises(BadInputError, match="no narrow dtype bfloat16 carried as float64"):
        bitc.load(forged)


def test_narrow_outputs_saved_by_bitc_run_feed_back_as_inputs(tmp_path) -> None:
    """np.save stores an ml_dtypes array as raw bytes (void dtype): `bitc run --input` reads those back."""
    import subprocess
    import sys

    _save_cast(tmp_path / "save.onnx", TensorProto.FLOAT, TensorProto.FLOAT8E5M2, [2, 3], 21)
    _save_cast(tmp_path / "load.onnx", TensorProto.FLOAT8E5M2, TensorProto.FLOAT, [2, 3], 21)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bitc", *args], capture_output=True, text=True, cwd=tmp_path)

    x = np.array([[0.1, -2.0, 300.0], [1e-6, 7.0, -0.3]], np.float32)
    np.save(tmp_path / "x.npy", x)
    for name in ("save", "load"):
        assert cli("compile", f"{name}.onnx", "-o", f"{name}.bitc").returncode == 0
    assert cli("run", "save.bitc", "--input", "x=x.npy", "--output-dir", "out").returncode == 0
    done = cli("run", "load.bitc", "--input", "x=out/y.npy", "--output-dir", "back")
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(
        np.load(tmp_path / "back" / "y.npy"), x.astype(ml_dtypes.float8_e5m2).astype(np.float32)
    )
