"""A corpus of broken models and artifacts: each must end in the right BitcError with one line naming the culprit
(file, node, value or op), never a traceback, a crash, a hang, a huge allocation or a partial output file."""

from __future__ import annotations

import ctypes.util
import dataclasses
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_conv_bn_model
from onnx import TensorProto, helper, numpy_helper

import bitc
from bitc.errors import BadInputError, BitcError
from bitc.frontend import load_onnx
from bitc.runtime.artifact import FORMAT, FORMAT_VERSION, LIBRARY_NAME, MANIFEST_NAME, write_artifact

# --- building broken models -------------------------------------------------------------------------------------


def value(name: str, shape, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def model(nodes=None, inputs=None, outputs=None, initializers=(), opsets=(("", 17),)) -> onnx.ModelProto:
    """x[2,3] → Relu → y[2,3] unless told otherwise."""
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")] if nodes is None else nodes
    inputs = [value("x", [2, 3])] if inputs is None else inputs
    outputs = [value("y", [2, 3])] if outputs is None else outputs
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def save(folder: Path, content: onnx.ModelProto | bytes, name: str = "bad.onnx") -> Path:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.SerializeToString())
    return path


def relu_chain(first: str = "relu", middle: str = "mid") -> onnx.ModelProto:
    """x → Relu(first) → middle → Relu → y: names to corrupt in the serialized bytes."""
    nodes = [helper.make_node("Relu", ["x"], [middle], name=first), helper.make_node("Relu", [middle], ["y"])]
    return model(nodes)


def with_bytes_replaced(proto: onnx.ModelProto, old: bytes, new: bytes) -> bytes:
    """ONNX strings are bytes on the wire: swap a name's bytes (same length) for ones that are not UTF-8."""
    assert len(old) == len(new)
    data = proto.SerializeToString()
    assert old in data
    return data.replace(old, new)


def huge(dims: list[int], op: str) -> onnx.ModelProto:
    """A Reshape / Expand / ConstantOfShape to `dims`, given as an int64 initializer."""
    shape = numpy_helper.from_array(np.array(dims, np.int64), "shape")
    out = [value("y", ["a", "b"])]
    if op == "ConstantOfShape":
        return model([helper.make_node(op, ["shape"], ["y"], name="make")], [], out, [shape])
    x = value("x", [1, 1] if op == "Expand" else [2, 3])
    return model([helper.make_node(op, ["x", "shape"], ["y"], name="make")], [x], out, [shape])


def external(folder: Path, **entries: str) -> onnx.ModelProto:
    """conv_bn with its first initializer ('w', 864 bytes) moved to external data described by `entries`."""
    proto = onnx.load(make_conv_bn_model(folder / "source.onnx"))
    tensor = proto.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, text in entries.items():
        tensor.external_data.add(key=key, value=text)
    return proto


def short_initializer(field: str) -> onnx.ModelProto:
    """x + w where w is declared [2,3] float but holds less data than that."""
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    if field == "raw_data":
        w.raw_data = w.raw_data[:5]
    else:
        w.ClearField("raw_data")
        w.float_data.extend([1.0, 2.0])
    return model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], initializers=[w])


CYCLE = [helper.make_node("Add", ["x", "b"], ["a"], name="first"), helper.make_node("Relu", ["a"], ["b"], name="loop")]
DANGLING = [helper.make_node("Add", ["x", "w"], ["y"], name="add")]
NOT_SSA = [helper.make_node("Relu", ["x"], ["y"], name="one"), helper.make_node("Relu", ["x"], ["y"], name="two")]
CUSTOM_OP = [helper.make_node("NoSuchOp", ["x"], ["y"], name="mystery", domain="acme")]
MISMATCHED = [helper.make_node("Add", ["x", "z"], ["y"], name="add")]
PAD = helper.make_node("Pad", ["x", "pads"], ["y"], name="pad", mode="reflect")
PADS = numpy_helper.from_array(np.zeros(4, np.int64), "pads")


def _corpus(tmp: Path) -> dict[str, tuple[onnx.ModelProto | bytes, bool, str]]:
    """name → (model or file bytes, run the ONNX checker, message fragment that names the culprit)."""
    conv_bn = make_conv_bn_model(tmp / "conv_bn.onnx").read_bytes()
    return {
        "random_bytes": (np.random.default_rng(0).bytes(4096), True, "not a valid ONNX protobuf"),
        "truncated": (conv_bn[: len(conv_bn) // 2], True, "not a valid ONNX protobuf"),
        "empty_graph": (model([], [], []), True, "the graph has no nodes"),
        "no_outputs": (model(outputs=[]), False, "the graph has no outputs"),
        "cycle": (model(CYCLE), True, "topologically sorted, however input 'b' of node: name: first OpType: Add"),
        "cycle_unchecked": (model(CYCLE), False, "node 'first' (Add) reads 'b', which no graph input"),
        "dangling": (model(DANGLING), True, "input 'w' of node: name: add OpType: Add"),
        "dangling_unchecked": (model(DANGLING), False, "node 'add' (Add) reads 'w'"),
        "unknown_op_default_domain": (
            model([helper.make_node("NoSuchOp", ["x"], ["y"], name="mystery")]),
            True,
            "No Op registered for NoSuchOp with domain_version of 17 ==> Context: Bad node spec for node. "
            "Name: mystery OpType: NoSuchOp",
        ),
        "custom_domain_not_imported": (model(CUSTOM_OP), True, "No opset import for domain 'acme' ==> Context: Bad "),
        "opset_too_old": (
            model([helper.make_node("Pad", ["x"], ["y"], name="pad", paddings=[0, 0, 1, 1])], opsets=(("", 1),)),
            False,
            "opset 1 is older than the oldest supported (7) and onnx's version converter could not upgrade it",
        ),
        "opset_too_new": (model(opsets=(("", 99),)), True, "opset 99 is newer than this onnx package supports"),
        "opset_zero": (model(opsets=(("", 0),)), True, "No Op registered for Relu with domain_version of 0"),
        "no_default_opset": (model(CUSTOM_OP, opsets=(("acme", 1),)), False, "imports no version of the default"),
        "mismatched_shapes": (
            model(MISMATCHED, [value("x", [2, 3]), value("z", [4, 5])]),
            True,
            "shape inference failed: [ShapeInferenceError] Inference error(s): (op_type:Add, node name: add)",
        ),
        "huge_input": (
            model(inputs=[value("x", [2**40, 2**40])], outputs=[value("y", ["m", "n"])]),
            True,
            "value 'x' of shape [1099511627776, 1099511627776] would take",
        ),
        "huge_reshape_overflow": (
            huge([2**40, 2**40], "Reshape"),
            True,
            "node name: make): [ShapeInferenceError] Dimension product overflow in Reshape",
        ),
        "huge_reshape": (huge([2**20, 2**20], "Reshape"), True, "value 'y' of shape [1048576, 1048576] would take"),
        "huge_expand": (huge([2**62, 2], "Expand"), True, "value 'y' of shape [4611686018427387904, 2] would take"),
        "huge_constant_of_shape": (huge([2**31, 2**31], "ConstantOfShape"), True, "value 'y' of shape [2147483648"),
        "non_utf8_value_name": (
            with_bytes_replaced(relu_chain(middle="midd"), b"midd", b"mi\xff\xfe"),
            True,
            "node 'relu'.output[0] is not valid UTF-8 (b'mi\\xff\\xfe')",
        ),
        "non_utf8_node_name": (
            with_bytes_replaced(relu_chain(first="bad_node"), b"bad_node", b"bad\xc3(ode"),
            True,
            "model.graph.node[0].name is not valid UTF-8",
        ),
        "non_utf8_string_attribute": (
            with_bytes_replaced(model([PAD], initializers=[PADS]), b"reflect", b"ref\xe9ect"),
            True,
            "node 'pad' attribute 'mode' is not valid UTF-8 (b'ref\\xe9ect')",
        ),
        "duplicate_value_names": (model(NOT_SSA), True, "single static assignment (SSA) form, however 'y' has been"),
        "duplicate_value_names_unchecked": (
            model(NOT_SSA),
            False,
            "Output 'y' is redeclared in the current graph "
            'scope. Original declaration %"y"<?,?>. New declaration: by operator '
            "'Relu' of node 'two'",
        ),
        "output_never_produced": (model(outputs=[value("z", [2, 3])]), True, "Graph output 'z' is not an output of"),
        "output_never_produced_unchecked": (
            model(outputs=[value("z", [2, 3])]),
            False,
            "graph output 'z' is not produced by any node",
        ),
        "raw_data_too_short": (
            short_initializer("raw_data"),
            True,
            "(tensor name: w) raw_data size (5 bytes) is too small for the declared shape and type (24 bytes required)",
        ),
        "float_data_too_short": (short_initializer("float_data"), True, "(tensor name: w) float_data size (2) is too"),
        "external_outside_folder": (
            external(tmp, location="../x.bin"),
            True,
            "initializer 'w' refers to '../x.bin' outside the model's folder (refused)",
        ),
        "external_absolute": (
            external(tmp, location=str(tmp / "x.bin")),
            True,
            f"initializer 'w' refers to absolute path '{tmp / 'x.bin'}' (refused)",
        ),
        "external_missing": (external(tmp, location="gone.bin"), True, "refers to missing external data file"),
        "external_past_end": (
            external(tmp, location="x.bin", offset="4000", length="864"),
            True,
            "initializer 'w': external data range goes past the end of 'x.bin'",
        ),
        "external_too_short": (
            external(tmp, location="x.bin", length="100"),
            True,
            "initializer 'w': external data holds 100 bytes, its shape [8, 3, 3, 3] needs 864",
        ),
        "external_bad_offset": (
            external(tmp, location="x.bin", offset="12abc"),
            True,
            "initializer 'w': external data offset '12abc' is not an integer",
        ),
        "external_negative_length": (
            external(tmp, location="x.bin", length="-5"),
            True,
            "initializer 'w': external data length -5 is negative",
        ),
        "external_nul_byte": (external(tmp, location="x\0.bin"), True, "with a NUL byte (refused)"),
        "external_no_location": (external(tmp, offset="0"), True, "initializer 'w' uses external data without a"),
        "external_unknown_key": (
            external(tmp, location="x.bin", lenght="864"),
            True,
            "initializer 'w': unknown external data key(s) ['lenght']",
        ),
    }


def _corpus_names() -> list[str]:
    """The corpus's case names, for parametrize (built once in a scratch folder at collection)."""
    with tempfile.TemporaryDirectory() as tmp:
        return sorted(_corpus(Path(tmp)))


@pytest.fixture
def corpus(tmp_path) -> tuple[Path, dict]:
    """The corpus written into `tmp_path/models`, beside a 4 KiB `x.bin` that the external data cases use."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "x.bin").write_bytes(b"\0" * 4096)
    (tmp_path / "x.bin").write_bytes(b"\0" * 4096)  # what '../x.bin' would reach
    return folder, _corpus(folder)


@pytest.mark.parametrize("case", _corpus_names())
def test_broken_model_is_refused_by_name(corpus, case):
    folder, cases = corpus
    content, check, fragment = cases[case]
    path = save(folder, content)
    with pytest.raises(BadInputError) as info:
        load_onnx(path, check=check)
    message = str(info.value)
    assert fragment in message
    assert message.startswith(f"{path}: ")
    assert "\n" not in message


def test_unknown_op_in_a_custom_domain_is_named_by_compile(tmp_path):
    """Valid ONNX (an op of a custom domain) that no backend implements: named with its domain and node."""
    path = save(tmp_path, model(CUSTOM_OP, opsets=(("", 17), ("acme", 1))))
    assert [n.op_type for n in load_onnx(path).graph] == ["NoSuchOp"]
    with pytest.raises(BadInputError, match=r"unsupported op NoSuchOp \(domain acme, node 'mystery'\)"):
        bitc.compile(path, tmp_path / "out.bitc")
    assert not (tmp_path / "out.bitc").exists()


@pytest.mark.parametrize(
    ("dims", "fragment"),
    [([2**40, 2**40], "value 'x' of shape [1099511627776, 1099511627776]"), ([2**31, 2**31, 8], "value 'x'")],
)
def test_absurd_dimensions_fail_fast_in_compile(tmp_path, dims, fragment):
    """Refused by the frontend (exit code 2), never sized, allocated or handed to TVM's int64 arithmetic."""
    path = save(tmp_path, model(inputs=[value("x", dims)], outputs=[value("y", ["a", "b", "c"][: len(dims)])]))
    with pytest.raises(BadInputError) as info:
        bitc.compile(path, tmp_path / "out.bitc")
    assert fragment in str(info.value) and "more than bitc supports" in str(info.value)
    assert not (tmp_path / "out.bitc").exists()


@pytest.mark.parametrize("op", ["ConstantOfShape", "Expand"])
def test_large_but_accepted_shapes_are_not_materialized(tmp_path, op):
    """A 4 GiB constant is within limits, but neither loading nor constant folding may allocate it."""
    import tracemalloc

    from bitc.passes import run_pipeline

    path = save(tmp_path, huge([2**15, 2**15], op))
    tracemalloc.start()
    try:
        folded, _ = run_pipeline(load_onnx(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert [node.op_type for node in folded.graph] == [op]


def test_odd_but_valid_names_load_and_errors_stay_one_line(tmp_path):
    """Names with spaces, slashes, non-ASCII and line breaks are valid ONNX; errors quoting them stay one line."""
    odd = "in put/π\n2"
    relu = helper.make_node("Relu", [odd], ["out/ü y"], name="node\r\nname")
    path = save(tmp_path, model([relu], [value(odd, [2, 3])], [value("out/ü y", [2, 3])]))
    assert [v.name for v in load_onnx(path).graph.inputs] == [odd]
    path = save(tmp_path, model([relu], [value(odd, [2**40, 2**40])], [value("out/ü y", ["a", "b"])]))
    with pytest.raises(BadInputError, match="value 'in put/π 2' of shape") as info:
        load_onnx(path)
    assert len(str(info.value).splitlines()) == 1


def test_in_memory_model_gets_the_same_checks(tmp_path):
    """An onnx_ir.Model skips the ONNX checker: dataflow and sizes are still checked by `normalize`."""
    import onnx_ir as ir

    with pytest.raises(BadInputError, match=r"<onnx_ir\.Model>: node 'first' \(Add\) reads 'b'"):
        bitc.compile(ir.from_proto(model(CYCLE)), tmp_path / "out.bitc")
    with pytest.raises(BadInputError, match="graph output 'z' is not produced by any node"):
        bitc.compile(ir.from_proto(model(outputs=[value("z", [2, 3])])), tmp_path / "out.bitc")
    assert not list(tmp_path.iterdir())


# --- the command line -------------------------------------------------------------------------------------------


def bitc_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bitc.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    "case", ["random_bytes", "cycle", "huge_input", "non_utf8_value_name", "external_outside_folder"]
)
def test_cli_refuses_broken_models_with_one_line(corpus, case):
    folder, cases = corpus
    content, _, fragment = cases[case]
    save(folder, content)
    out = bitc_cli("compile", "bad.onnx", "-o", "bad.bitc", cwd=folder)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("bitc: error: bad.onnx: ")
    assert fragment in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert not list(folder.glob("*.bitc*")) and not list(folder.glob(".bad.bitc*"))


def test_cli_names_the_unsupported_custom_op(tmp_path):
    save(tmp_path, model(CUSTOM_OP, opsets=(("", 17), ("acme", 1))))
    out = bitc_cli("compile", "bad.onnx", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "bad.onnx: unsupported op NoSuchOp (domain acme, node 'mystery')" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


# --- artifacts and the runtime ----------------------------------------------------------------------------------

GOOD_MANIFEST = {
    "format": FORMAT,
    "format_version": FORMAT_VERSION,
    "entry": "main",
    "inputs": [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32"}],
    "outputs": [{"name": "logits", "shape": [1, 10], "dtype": "float32"}],
    "target": {"kind": "llvm", "name": "llvm", "cpu_features": []},
}


def zip_artifact(path: Path, members: dict[str, bytes]) -> Path:
    """A zip written by hand, so that names and manifests can be anything."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def listed(manifest: dict, members: dict[str, bytes]) -> bytes:
    """`manifest` with a correct `members` table for `members`, as JSON bytes."""
    table = {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for name, data in members.items()}
    return json.dumps({**manifest, "members": table}).encode()


@pytest.mark.parametrize(
    ("members", "fragment"),
    [
        ({MANIFEST_NAME: b"{not json", LIBRARY_NAME: b"lib"}, "unreadable manifest"),
        ({MANIFEST_NAME: b"[1, 2]", LIBRARY_NAME: b"lib"}, "manifest format is not 'bitc-artifact'"),
        ({LIBRARY_NAME: b"lib"}, "not a bitc artifact (no manifest.json)"),
        (
            {MANIFEST_NAME: listed(GOOD_MANIFEST, {LIBRARY_NAME: b"lib", "weights.bin": b"w"}), LIBRARY_NAME: b"lib"},
            "members ['model.so'] do not match the manifest ['model.so', 'weights.bin']",
        ),
        ({MANIFEST_NAME: listed(GOOD_MANIFEST, {"other.so": b"lib"}), "other.so": b"lib"}, "lists no 'model.so'"),
        (
            {
                MANIFEST_NAME: listed(GOOD_MANIFEST, {LIBRARY_NAME: b"lib", "../../evil.so": b"x"}),
                LIBRARY_NAME: b"lib",
                "../../evil.so": b"x",
            },
            "member name '../../evil.so' is absolute or leaves the archive (refused)",
        ),
        (
            {MANIFEST_NAME: listed(GOOD_MANIFEST, {LIBRARY_NAME: b"lib"}), LIBRARY_NAME: b"lib", "/etc/evil": b"x"},
            "member name '/etc/evil' is absolute",
        ),
        (
            {MANIFEST_NAME: json.dumps({**GOOD_MANIFEST, "members": {LIBRARY_NAME: "0" * 64}}), LIBRARY_NAME: b"x"},
            "checksum of member 'model.so' does not match",
        ),
    ],
    ids=["not_json", "not_an_object", "no_manifest", "missing_member", "no_library", "dotdot", "absolute", "meta"],
)
def test_damaged_artifacts_are_refused(tmp_path, members, fragment):
    path = zip_artifact(tmp_path / "bad.bitc", members)
    with pytest.raises(BadInputError) as info:
        bitc.load(path)
    assert fragment in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"inputs": None}, "manifest 'inputs' is malformed (TypeError"),
        ({"outputs": [{"name": "y"}]}, "manifest 'outputs' is malformed (KeyError: 'shape')"),
        ({"inputs": [{"name": "x", "shape": "1x3", "dtype": "float32"}]}, "manifest 'inputs' is malformed (ValueE"),
        ({"inputs": [{"name": "x", "shape": [1], "dtype": "float77"}]}, "data type 'float77' not understood"),
        ({"inputs": [{"name": "x", "shape": [1], "dtype": "object"}]}, "unusable tensor spec x: object[1]"),
        ({"inputs": [{"name": "x", "shape": [-1], "dtype": "int8"}]}, "unusable tensor spec x: int8[-1]"),
        ({"target": "llvm"}, "manifest 'target' is malformed"),
        ({"target": {"kind": "rocm"}}, "artifact targets 'rocm'"),
        ({"target": {"kind": "cuda", "arch": "sm_80"}}, "CUDA artifact without its compiled kernels"),
    ],
)
def test_malformed_manifest_fields_are_refused(tmp_path, change, fragment):
    """A manifest whose checksums are right but whose fields are wrong: refused before the library is loaded."""
    path = write_artifact(tmp_path / "bad.bitc", {**GOOD_MANIFEST, **change}, {LIBRARY_NAME: b"not a library"})
    with pytest.raises(BadInputError, match="^" + str(path).replace(".", r"\.")) as info:
        bitc.load(path)
    assert fragment in str(info.value)


def test_library_that_is_not_a_bitc_model_is_refused(tmp_path):
    path = write_artifact(tmp_path / "junk.bitc", GOOD_MANIFEST, {LIBRARY_NAME: b"\x7fELF junk"})
    with pytest.raises(BadInputError, match=f"{path}: cannot load the compiled library"):
        bitc.load(path)
    libm = ctypes.util.find_library("m") or "-"
    found = [folder / libm for folder in map(Path, ("/lib/x86_64-linux-gnu", "/lib64", "/usr/lib")) if folder.is_dir()]
    found = [path for path in found if path.is_file()]
    if not found:
        pytest.skip("no libm on this machine to stand in for a foreign shared library")
    path = write_artifact(tmp_path / "libm.bitc", GOOD_MANIFEST, {LIBRARY_NAME: found[0].read_bytes()})
    with pytest.raises(BadInputError, match=f"{path}: the library is not a runnable bitc model"):
        bitc.load(path)


@pytest.fixture(scope="module")
def loaded_model(tmp_path_factory):
    """A compiled conv_bn whose native entry point fails the test if anything reaches it."""
    root = tmp_path_factory.mktemp("runtime")
    result = bitc.compile(make_conv_bn_model(root / "m.onnx"), root / "m.bitc")
    model = bitc.load(result.path)

    def native_code_reached(*args):
        raise AssertionError("bad inputs reached native code")

    model._sizes = [dataclasses.replace(size, main=native_code_reached) for size in model._sizes]
    return model


GOOD_X = np.zeros((1, 3, 16, 16), np.float32)


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda m: m.run({"y": GOOD_X}), "missing ['x'], unknown ['y']"),
        (lambda m: m.run({}), "missing ['x'], unknown []"),
        (lambda m: m.run({"x": GOOD_X, "extra": GOOD_X}), "missing [], unknown ['extra']"),
        (lambda m: m(GOOD_X[..., :8]), "input 'x': shape [1, 3, 16, 8], expected [1, 3, 16, 16]"),
        (lambda m: m(GOOD_X[0]), "input 'x': shape [3, 16, 16], expected"),
        (lambda m: m(GOOD_X.astype(np.float64)), "input 'x': dtype float64, expected float32"),
        (lambda m: m(GOOD_X.astype(np.int8)), "input 'x': dtype int8, expected float32"),
        (lambda m: m([[1.0], [1.0, 2.0]]), "input 'x': not an array"),
        (lambda m: m("a string"), "input 'x': dtype <U8, expected float32"),
        (lambda m: m(GOOD_X, GOOD_X), "model takes 1 input(s), got 2"),
        (lambda m: m(GOOD_X, x=GOOD_X), "either positionally or by name"),
        (lambda m: m.benchmark({"x": GOOD_X.astype(np.float16)}), "dtype float16"),
    ],
)
def test_bad_inputs_are_refused_before_native_code(loaded_model, call, fragment):
    with pytest.raises(BitcError) as info:
        call(loaded_model)
    assert isinstance(info.value, BadInputError)
    assert fragment in str(info.value)


def test_cli_run_refuses_a_damaged_artifact(tmp_path):
    zip_artifact(tmp_path / "bad.bitc", {MANIFEST_NAME: b"\xff\xfe not json", LIBRARY_NAME: b"lib"})
    out = bitc_cli("run", "bad.bitc", "--random", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("bitc: error: bad.bitc: unreadable manifest")
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
