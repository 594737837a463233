"""One artifact compiled for several input sizes of a model with dynamic dims: --input-shape given again, or a
named dim with several sizes (--dim). Each size matches onnxruntime; a call at a size not compiled is refused
before native code; flags that cannot apply are refused, never ignored."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_onnxruntime
from onnx import TensorProto, helper, numpy_helper

import bitc
from bitc.errors import BadInputError
from bitc.frontend.shape_variants import MAX_VARIANTS, variants
from bitc.runtime.artifact import LIBRARY_NAME, read_artifact, write_artifact

DECLARED = {"x": ["batch", 3, "h", "w"], "mask": ["batch", "w"], "fixed": [4]}


def test_each_repeated_input_shape_is_one_size():
    sizes = variants(DECLARED, {"x": [[1, 3, 8, 8], [1, 3, 8, 16]], "mask": [[1, 8], [1, 16]]})
    assert sizes == [{"x": [1, 3, 8, 8], "mask": [1, 8]}, {"x": [1, 3, 8, 16], "mask": [1, 16]}]


def test_an_input_given_once_keeps_its_shape_in_every_size():
    sizes = variants(DECLARED, {"x": [[2, 3, 8, 8], [2, 3, 8, 16]], "mask": [[2, 8]]})
    assert [s["mask"] for s in sizes] == [[2, 8], [2, 8]]


def test_named_dims_set_every_input_that_has_them_one_size_per_combination():
    sizes = variants(DECLARED, None, {"batch": [1, 2], "h": 8, "w": [8, 16]})
    assert len(sizes) == 4
    assert sizes[1] == {"x": [1, 3, 8, 16], "mask": [1, 16]}
    assert sizes[2] == {"x": [2, 3, 8, 8], "mask": [2, 8]}


def test_a_named_dim_leaves_the_other_dynamic_dims_for_the_compile_to_name():
    assert variants(DECLARED, None, {"batch": 1}) == [{"x": [1, 3, "h", "w"], "mask": [1, "w"]}]


@pytest.mark.parametrize(
    ("shapes", "dims", "fragment"),
    [
        ({"y": [1, 2]}, None, "--input-shape names 'y', the model's inputs are ['x', 'mask', 'fixed']"),
        (None, {"seq": 4}, "--dim seq: the model has no dimension named 'seq' (its named dims: batch, h, w)"),
        (None, {"batch": [0]}, "--dim batch: sizes must be positive integers"),
        ({"x": [[1, 3, 8, 8]]}, {"h": 8}, "--dim h and --input-shape x both set dimension 'h' of 'x'"),
        (
            {"x": [[1, 3, 8, 8], [1, 3, 8, 9]], "mask": [[1, 8], [1, 9], [1, 10]]},
            None,
            "--input-shape given a different number of times per input (x 2x, mask 3x)",
        ),
        (None, {"batch": [1, 2, 3, 4], "w": [1, 2, 3, 4, 5]}, f"20 input sizes requested; at most {MAX_VARIANTS}"),
        ({"x": [1, 3, -8, 8]}, None, "dimensions must be positive integers"),
    ],
)  # fmt: skip
def test_requests_that_cannot_apply_are_refused(shapes, dims, fragment):
    with pytest.raises(BadInputError) as info:
        variants(DECLARED, shapes, dims)
    assert fragment in str(info.value)


def _dynamic_model(path):
    """Conv → Relu → (global pool → MatMul) and an elementwise output, batch/h/w dynamic."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B"),
        numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "W2"], ["y"]),
        helper.make_node("Add", ["r", "r"], ["fm"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("fm", TensorProto.FLOAT, ["batch", 8, "h", "w"]),
        ],
        weights,
    )
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def three_sizes(tmp_path_factory):
    root = tmp_path_factory.mktemp("sizes")
    source = _dynamic_model(root / "dyn.onnx")
    result = bitc.compile(source, root / "dyn.bitc", input_shapes={"x": [[1, 3, 16, 16], [1, 3, 16, 24]]})
    return source, result


def test_every_compiled_size_matches_onnxruntime(three_sizes):
    source, result = three_sizes
    model = bitc.load(result.path)
    assert model.sizes == [{"x": (1, 3, 16, 16)}, {"x": (1, 3, 16, 24)}]
    for index, size in enumerate(model.sizes):
        feeds = model.random_inputs(seed=index, size=index)
        assert feeds["x"].shape == size["x"]
        got = model.run(feeds)
        for value, expected in zip(got.values(), run_onnxruntime(source, feeds), strict=True):
            np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4)


def test_the_manifest_lists_each_size_as_an_entry_function_of_one_library(three_sizes):
    _, result = three_sizes
    variants_ = result.manifest["variants"]
    assert [v["library"] for v in variants_] == [LIBRARY_NAME, LIBRARY_NAME]
    assert [v.get("entry", "main") for v in variants_] == ["main", "size1"]
    assert set(read_artifact(result.path).members) == {LIBRARY_NAME}
    assert [v["outputs"][1]["shape"] for v in variants_] == [[1, 8, 16, 16], [1, 8, 16, 24]]
    assert result.manifest["inputs"] == variants_[0]["inputs"]


def test_sizes_share_one_copy_of_the_weights(tmp_path):
    """A 1 MiB weight matrix read by two sizes (3 and 5 rows: the same re-blocked constant) is stored once."""
    rng = np.random.default_rng(1)
    weights = rng.standard_normal((512, 512)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 512])],
        [numpy_helper.from_array(weights, "w")],
    )
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    one = bitc.compile(tmp_path / "m.onnx", tmp_path / "one.bitc", dims={"rows": 3})
    two = bitc.compile(tmp_path / "m.onnx", tmp_path / "two.bitc", dims={"rows": [3, 5]})
    assert two.path.stat().st_size < one.path.stat().st_size + weights.nbytes // 4
    model = bitc.load(two.path)
    for rows in (3, 5):
        x = rng.standard_normal((rows, 512)).astype(np.float32)
        np.testing.assert_allclose(model(x), x @ weights, rtol=1e-4, atol=1e-3)


def test_a_size_not_compiled_is_refused_before_native_code(three_sizes):
    model = bitc.load(three_sizes[1].path)

    def native_code_reached(*args):
        raise AssertionError("a call of a size not compiled reached native code")

    model._sizes = [dataclasses.replace(size, main=native_code_reached) for size in model._sizes]
    with pytest.raises(BadInputError) as info:
        model(np.zeros((1, 3, 16, 20), np.float32))
    assert "input shapes x[1, 3, 16, 20] match none of the sizes the artifact was compiled for: " in str(info.value)
    assert "x[1, 3, 16, 16]; x[1, 3, 16, 24]" in str(info.value)


def test_named_dims_compile_every_combination(tmp_path):
    source = _dynamic_model(tmp_path / "dyn.onnx")
    result = bitc.compile(source, tmp_path / "d.bitc", dims={"batch": [1, 2], "h": 8, "w": 8})
    model = bitc.load(result.path)
    assert model.sizes == [{"x": (1, 3, 8, 8)}, {"x": (2, 3, 8, 8)}]
    feeds = model.random_inputs(size=1)
    np.testing.assert_allclose(model.run(feeds)["y"], run_onnxruntime(source, feeds)[0], rtol=1e-4, atol=1e-4)


def test_a_named_dim_still_dynamic_is_named_with_its_flag(tmp_path):
    source = _dynamic_model(tmp_path / "dyn.onnx")
    with pytest.raises(BadInputError) as info:
        bitc.compile(source, tmp_path / "d.bitc", dims={"batch": 1})
    assert "1 input has a dynamic shape: 'x' [1,3,h,w]; fix them with --dim h=N --dim w=N" in str(info.value)
    assert not (tmp_path / "d.bitc").exists()


def test_shapes_for_a_torch_module_are_refused_not_ignored(tmp_path):
    torch = pytest.importorskip("torch")
    with pytest.raises(BadInputError, match="a torch module is compiled at its example_inputs' shapes"):
        bitc.compile(
            torch.nn.ReLU(), tmp_path / "t.bitc", example_inputs=(torch.zeros(2),), input_shapes={"x": [[3], [4]]}
        )


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "bitc.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_the_cli_and_bitc_toml_give_the_same_multi_size_artifact(tmp_path):
    _dynamic_model(tmp_path / "dyn.onnx")
    flags = _cli(
        "compile", "dyn.onnx", "-o", "a.bitc", "--dim", "batch=1", "--dim", "h=8",
        "--dim", "w=8,12", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert flags.returncode == 0, flags.stderr
    assert [v["inputs"][0]["shape"] for v in json.loads(flags.stdout)["variants"]] == [[1, 3, 8, 8], [1, 3, 8, 12]]
    (tmp_path / "bitc.toml").write_text("[input_shapes]\nx = [[1, 3, 8, 8], [1, 3, 8, 12]]\n")
    config = _cli("compile", "dyn.onnx", "-o", "b.bitc", "--config", "bitc.toml", cwd=tmp_path)
    assert config.returncode == 0, config.stderr
    assert (tmp_path / "a.bitc").read_bytes() == (tmp_path / "b.bitc").read_bytes()
    shown = _cli("inspect", "a.bitc", cwd=tmp_path)
    assert "compiled for 2 input sizes (a call must match one): x[1,3,8,8]; x[1,3,8,12]" in shown.stdout


@pytest.mark.parametrize(
    ("flag", "fragment"),
    [
        ("--dim=batch", "--dim expects NAME=N or NAME=N1,N2,... with positive sizes, got 'batch'"),
        ("--dim=batch=0", "with positive sizes, got 'batch=0'"),
        ("--dim=seq=4", "--dim seq: the model has no dimension named 'seq'"),
    ],
)
def test_bad_dim_flags_exit_2_with_one_line(tmp_path, flag, fragment):
    _dynamic_model(tmp_path / "dyn.onnx")
    done = _cli("compile", "dyn.onnx", "-o", "a.bitc", flag, "--input-shape", "x=1,3,8,8", cwd=tmp_path)
    assert done.returncode == 2
    assert fragment in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "a.bitc").exists()


def test_a_size_naming_an_entry_the_library_lacks_is_refused_at_load(tmp_path, three_sizes):
    artifact = read_artifact(three_sizes[1].path)
    manifest = json.loads(json.dumps(artifact.manifest))
    manifest.pop("members")
    manifest["variants"][1]["entry"] = "size7"
    path = write_artifact(tmp_path / "forged.bitc", manifest, artifact.members)
    with pytest.raises(BadInputError, match=f"{path}: the library is not a runnable bitc model"):
        bitc.load(path)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda v: v.__setitem__(1, {**v[1], "library": "missing.so"}), "a size names a library the artifact"),
        (lambda v: v[1]["inputs"][0].__setitem__("dtype", "int64"), "do not share one signature"),
        (lambda v: v.reverse(), "the first size is not the artifact's main library and specs"),
        (lambda v: v.clear(), "not a list of 1 to 64 sizes"),
        (lambda v: v[1].__setitem__("entry", 7), "a size's entry function is not a name"),
    ],
)
def test_forged_size_tables_are_refused_at_load(tmp_path, three_sizes, change, fragment):
    artifact = read_artifact(three_sizes[1].path)
    manifest = json.loads(json.dumps(artifact.manifest))
    manifest.pop("members")
    change(manifest["variants"])
    path = write_artifact(tmp_path / "forged.bitc", manifest, artifact.members)
    with pytest.raises(BadInputError) as info:
        bitc.load(path)
    assert f"{path}: manifest 'variants' is malformed (" in str(info.value)
    assert fragment in str(info.value)
