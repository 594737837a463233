"""Indices that come from data are bounds-checked at run time: in range (negatives included) the compiled ops match
onnxruntime; out of range (dim, -dim-1, 10**7, INT32_MIN) the call fails with one line naming the node, on CPU and
in a CUDA build's kernels; constants out of range are refused at compile time."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import run_onnxruntime
from onnx import TensorProto, helper, numpy_helper

import bitc
from bitc.codegen.relax import index_checks
from bitc.codegen.relax_import import to_relax
from bitc.errors import BadInputError, BitcError

INT32_MIN = -(2**31)
RNG = np.random.default_rng(0)
TABLE = RNG.standard_normal((10, 4)).astype(np.float32)  # an embedding: 10 rows

# input name → (ONNX node, dtype, shape, in-range value, extent of the indexed axis)
INDEX_INPUTS = {
    "ids": ("embedding", np.int64, (4,), [1, -1, 9, -10], 10),  # Gather axis 0 on the table initializer
    "cols": ("gather_cols", np.int32, (2,), [4, -5], 5),  # Gather axis 1, int32 indices
    "elements": ("gather_elements", np.int64, (2, 3), [[0, 3, -1], [-4, 2, 1]], 4),
    "nd": ("gather_nd", np.int64, (2, 2), [[2, 3], [-1, -4]], 4),  # coordinates over (3, 4): the last one's
    "scatter_idx": ("scatter_elements", np.int64, (1, 2), [[2, -3]], 3),
    "scatter_nd_idx": ("scatter_nd", np.int64, (2, 1), [[3], [0]], 4),
}


def _index_model() -> onnx.ModelProto:
    """One model with a node of each index op, each reading its own index input (float data inputs besides)."""
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["embedded"], name="embedding", axis=0),
        helper.make_node("Gather", ["x35", "cols"], ["picked"], name="gather_cols", axis=1),
        helper.make_node("GatherElements", ["x24", "elements"], ["elems"], name="gather_elements", axis=1),
        helper.make_node("GatherND", ["x34", "nd"], ["points"], name="gather_nd"),
        helper.make_node("ScatterElements", ["x32", "scatter_idx", "upd12"], ["scattered"], name="scatter_elements"),
        helper.make_node("ScatterND", ["x43", "scatter_nd_idx", "upd23"], ["rows"], name="scatter_nd"),
    ]
    types = {np.int64: TensorProto.INT64, np.int32: TensorProto.INT32}
    index_inputs = [helper.make_tensor_value_info(n, types[d], s) for n, (_, d, s, _, _) in INDEX_INPUTS.items()]
    data = {"x35": [3, 5], "x24": [2, 4], "x34": [3, 4], "x32": [3, 2], "upd12": [1, 2], "x43": [4, 3], "upd23": [2, 3]}
    data_inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in data.items()]
    outputs = {"embedded": [4, 4], "picked": [3, 2], "elems": [2, 3], "points": [2], "scattered": [3, 2]}
    graph = helper.make_graph(
        nodes,
        "indices",
        index_inputs + data_inputs,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in (outputs | {"rows": [4, 3]}).items()],
        [numpy_helper.from_array(TABLE, "table")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _feeds(**replace: np.ndarray) -> dict[str, np.ndarray]:
    feeds = {n: np.asarray(v, d) for n, (_, d, _, v, _) in INDEX_INPUTS.items()}
    rng = np.random.default_rng(1)
    for value in _index_model().graph.input:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds | replace


@pytest.fixture(scope="module")
def index_model(tmp_path_factory) -> tuple:
    folder = tmp_path_factory.mktemp("index")
    onnx.save(_index_model(), folder / "indices.onnx")
    bitc.compile(folder / "indices.onnx", folder / "indices.bitc", passes=[])
    return folder / "indices.onnx", folder / "indices.bitc"


def test_index_ops_in_range_with_negative_indices_match_onnxruntime(index_model):
    path, artifact = index_model
    model = bitc.load(artifact)
    got = model.run(_feeds())
    names = [o.name for o in _index_model().graph.output]
    for name, expected in zip(names, run_onnxruntime(path, _feeds()), strict=True):
        np.testing.assert_allclose(got[name], expected, rtol=1e-6, atol=1e-6, err_msg=name)


def _bad_values(extent: int, dtype: type) -> list[int]:
    return [extent, -extent - 1, 10**7, INT32_MIN] + ([2**40] if dtype == np.int64 else [])


@pytest.mark.parametrize(
    ("name", "bad"), [(name, bad) for name, spec in INDEX_INPUTS.items() for bad in _bad_values(spec[4], spec[1])]
)
def test_out_of_range_index_fails_the_call_naming_the_node(index_model, name, bad):
    node, dtype, _, good, extent = INDEX_INPUTS[name]
    values = np.array(good, dtype)
    values.reshape(-1)[-1] = bad
    model = bitc.load(index_model[1])
    with pytest.raises(BitcError, match=rf"index out of range in \w+ '{node}'.*\[-{extent}, {extent}\)") as caught:
        model.run(_feeds(**{name: values}))
    assert "\n" not in str(caught.value)
    np.testing.assert_array_equal(model.run(_feeds())["embedded"], TABLE[[1, -1, 9, -10]])  # the model still works


def test_inputs_that_index_a_gather_carry_their_range_and_are_checked_before_any_kernel(index_model):
    model = bitc.load(index_model[1])
    ranges = {spec.name: spec.index_range for spec in model.inputs if spec.index_range is not None}
    assert {name: (r.low, r.high) for name, r in ranges.items()} == {
        "ids": (-10, 10),
        "cols": (-5, 5),
        "elements": (-4, 4),
    }
    assert ranges["ids"].node == "Gather 'embedding' on axis 0"


def test_the_compiled_check_still_guards_an_input_the_host_does_not_check(index_model):
    """Without the manifest's range (an older artifact, or a path the host check does not follow), the kernel's
    own check refuses the index."""
    model = bitc.load(index_model[1])
    model.inputs = [dataclasses.replace(spec, index_range=None) for spec in model.inputs]
    with pytest.raises(BitcError, match=r"index out of range in Gather 'embedding' on axis 0: valid \[-10, 10\)"):
        model.run(_feeds(ids=np.array([1, 2, 3, 10], np.int64)))


def test_every_index_from_data_gets_one_check_and_constant_shape_gathers_none():
    """Six index ops → six checks; the importer's own shape lookups (take in wrap mode) are left alone."""
    mod = to_relax(ir.from_proto(_index_model()))
    text = mod.script()
    assert text.count("R.call_tir_inplace(cls.bitc_index_check") == len(INDEX_INPUTS)
    checks = [f for f in mod.functions.values() if f.attrs is not None and index_checks.CHECK_ATTR in f.attrs]
    messages = sorted(index_checks.CheckSpec.from_json(str(f.attrs[index_checks.CHECK_ATTR])).message for f in checks)
    assert "index out of range in GatherND 'gather_nd': coordinates [-3, 3), [-4, 4)" in messages
    assert "index out of range in Gather 'embedding' on axis 0: valid [-10, 10)" in messages


def test_a_model_without_index_ops_gets_no_check(conv_bn_onnx):
    assert "bitc_index_check" not in to_relax(ir.load(conv_bn_onnx)).script()


def test_constant_indices_out_of_range_are_refused_at_compile_time(tmp_path):
    indices = numpy_helper.from_array(np.array([0, 5], np.int64), "idx")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["x", "idx"], ["y"], name="pick_rows")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        [indices],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    with pytest.raises(BadInputError, match=r"constant index out of range in Gather 'pick_rows'.*\[-3, 3\)"):
        bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc", passes=[])
    assert not (tmp_path / "m.bitc").exists()


def test_bitc_run_exits_with_a_one_line_error_not_a_crash(index_model, tmp_path):
    feeds = _feeds(ids=np.array([1, 2, 3, 10**7], np.int64))
    args = []
    for name, value in feeds.items():
        np.save(tmp_path / f"{name}.npy", value)
        args += ["--input", f"{name}={tmp_path / f'{name}.npy'}"]
    done = subprocess.run(
        [sys.executable, "-m", "bitc", "run", str(index_model[1]), *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode in (1, 2), (done.returncode, done.stderr[-500:])  # negative: killed by a signal
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "index out of range in Gather 'embedding'" in lines[0], done.stderr[-500:]


def test_compiling_gathers_prints_no_segfault_warning(index_model, tmp_path):
    """The checked gathers are lowered in TVM's "clip" mode: TVM's "fast" mode printed, at every compile, a
    warning that it segfaults on out-of-range indices (which the checks refuse before it runs)."""
    done = subprocess.run(
        [sys.executable, "-m", "bitc", "compile", str(index_model[0]), "-o", str(tmp_path / "m.bitc")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-500:]
    assert "segfault" not in done.stderr.lower(), done.stderr[-500:]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not installed")
def test_cuda_build_checks_indices_on_the_device_before_the_gather(tmp_path):
    """No GPU here: the build must succeed and its PTX carry the check kernel, which prints the message and traps."""
    onnx.save(_index_model(), tmp_path / "indices.onnx")
    bitc.compile(tmp_path / "indices.onnx", tmp_path / "indices.bitc", target="cuda:sm_80", passes=[])
    ptx = zipfile.ZipFile(tmp_path / "indices.bitc").read("kernels.ptx").decode()
    assert ptx.count(".entry bitc_index_check") == len(INDEX_INPUTS)
    assert "trap;" in ptx and "vprintf" in ptx
    message = b"index out of range in Gather 'embedding' on axis 0: valid [-10, 10)"
    assert ", ".join(str(b) for b in message) in ptx  # the string constant the device printf prints


def test_device_message_is_a_safe_c_string():
    spec = index_checks.CheckSpec((2,), "int64", (3,), False, "index out of range in Gather 'a\"b\\%n\u00e9'")
    text = index_checks.cuda_check_func(spec).script()
    assert "a?b?%n?" in text and "bitc: %s" in text


# ------------------------------------------------------------------------------------------- decoder and session


@pytest.fixture(scope="module")
def tiny_decoder_artifact(tmp_path_factory) -> tuple:
    """test_kv_cache's tiny random decoder (vocabulary 64, RoPE tables of 128 positions), compiled with a 4-bit
    cache; also the step's feeds as a session makes them."""
    import torch

    from bitc.frontend import decoder_export

    dims = decoder_export.LlamaDims(
        vocab=64, hidden=32, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=48, rope_theta=1e4, eps=1e-5
    )
    torch.manual_seed(0)
    decoder = decoder_export.CompactLlama(dims, max_positions=128).eval()
    past_keys, past_values = decoder.empty_cache(1, 100)
    example = (torch.zeros(1, 1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), past_keys, past_values)
    folder = tmp_path_factory.mktemp("decoder")
    inputs, outputs = decoder_export.DECODER_INPUTS, decoder_export.DECODER_OUTPUTS
    decoder_export.export_module(decoder, example, folder / "d.onnx", inputs, outputs)
    bitc.compile(folder / "d.onnx", folder / "d.bitc", kv_compress={"bits": 4, "residual": 16})
    model = bitc.load(folder / "d.bitc")
    session = model.session()
    session.step(3)
    return folder / "d.bitc", model, {name: array.copy() for name, array in session.feeds().items()}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("input_ids", 64, r"index out of range in Gather '\w*embedding\w*' on axis 0: valid \[-64, 64\)"),
        ("input_ids", -65, r"index out of range in Gather '\w*embedding\w*'"),
        ("input_ids", INT32_MIN, r"index out of range in Gather '\w*embedding\w*'"),
        ("position", 10**7, r"index out of range in Gather(ND)? '\w+'.*: valid \[-128, 128\)"),  # RoPE tables
        ("kv_lengths", [10**6, 0], r"kv_lengths\[0\] \(quantized tokens\) must be a multiple of 32 in \[0, 96\]"),
        ("kv_lengths", [-32, 0], r"kv_lengths\[0\]"),
        ("kv_lengths", [0, 49], r"kv_lengths\[1\] \(window\) must be in \[0, 48\]"),
    ],
)
def test_decoder_step_with_forged_inputs_fails_in_the_kernel(tiny_decoder_artifact, name, value, message):
    """The run itself, past the session's host checks: the compiled checks are the guard of last resort."""
    _, model, feeds = tiny_decoder_artifact
    forged = {key: array.copy() for key, array in feeds.items()}
    forged[name][...] = value
    with pytest.raises(BitcError, match=message):
        model.run(forged)
    assert np.isfinite(model.run(feeds)["logits"]).all()


@pytest.mark.slow
def test_session_and_generate_refuse_a_token_past_the_vocabulary(tiny_decoder_artifact):
    path, model, _ = tiny_decoder_artifact
    with pytest.raises(BitcError, match="64"):
        model.session().step(64)
    done = subprocess.run(
        [sys.executable, "-m", "bitc", "generate", str(path), "--ids", "1,64", "--max-new-tokens", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (1, 2) and len(done.stderr.strip().splitlines()) == 1, (done.returncode, done.stderr)
