"""Property-based fuzzing of the frontend and the pass pipeline: mutated valid models must load and pass cleanly
or fail with a one-line BitcError, never another exception.

Deterministic (derandomize=True, no example database) so CI sees the same cases every run. The run summary prints
how many cases each fuzzer ran and how they ended.
"""

from __future__ import annotations

import collections
import copy
import functools
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import SUMMARY_LINES, make_conv_bn_model
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import bitc
from bitc.errors import BitcError
from bitc.frontend import load_onnx
from bitc.passes import run_pipeline

# Cases per fuzzer, sized for CI: the two load+passes fuzzers take ~60 s together on 2 shared cores. Longer runs:
# BITC_FUZZ_SCALE=10 python3 -m pytest tests/test_fuzz.py (every count times 10).
SCALE = float(os.environ.get("BITC_FUZZ_SCALE", "1"))
BYTE_CASES = round(2500 * SCALE)
STRUCTURAL_CASES = round(3000 * SCALE)
COMPILE_CASES = round(25 * SCALE)
FUZZ_SETTINGS = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}
EXTERNAL_DATA = "weights.bin"


# --- valid base models ------------------------------------------------------------------------------------------


def _mlp() -> onnx.ModelProto:
    """x[2,4] → MatMul → Add → Relu → Reshape → Softmax: shape-carrying initializers and an int64 constant."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([2, 2, 3], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"], name="matmul"),
        helper.make_node("Add", ["mm", "b"], ["add"], name="add"),
        helper.make_node("Relu", ["add"], ["relu"], name="relu"),
        helper.make_node("Reshape", ["relu", "shape"], ["reshaped"], name="reshape"),
        helper.make_node("Softmax", ["reshaped"], ["y"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2, 3])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _cleanups() -> onnx.ModelProto:
    """Everything the clean-up passes rewrite: Identity, Dropout, x·1, x+0, Transpose pairs, a Constant, a
    duplicated subexpression and an unused branch."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [
        helper.make_node("Identity", ["x"], ["ident"], name="identity"),
        helper.make_node("Dropout", ["ident"], ["drop"], name="dropout"),
        helper.make_node("Constant", [], ["zero"], name="const_zero", value_float=0.0),
        helper.make_node("Mul", ["drop", "one"], ["mul"], name="mul_one"),
        helper.make_node("Add", ["mul", "zero"], ["plus"], name="add_zero"),
        helper.make_node("Transpose", ["plus"], ["t1"], name="t1", perm=[1, 0, 2]),
        helper.make_node("Transpose", ["t1"], ["t2"], name="t2", perm=[1, 0, 2]),
        helper.make_node("Sigmoid", ["t2"], ["s1"], name="sig_a"),
        helper.make_node("Sigmoid", ["t2"], ["s2"], name="sig_b"),
        helper.make_node("Add", ["s1", "s2"], ["sum"], name="sum"),
        helper.make_node("Neg", ["x"], ["unused"], name="unused"),
        helper.make_node("Concat", ["sum", "t2"], ["y"], name="concat", axis=2),
    ]
    graph = helper.make_graph(
        nodes,
        "cleanups",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 8])],
        [one],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _with_if() -> onnx.ModelProto:
    """An If with two subgraphs that read an outer-scope value: passes must handle nested graphs."""

    def branch(name: str, op: str) -> onnx.GraphProto:
        node = helper.make_node(op, ["x"], [f"{name}_out"], name=f"{name}_node")
        return helper.make_graph(
            [node], name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [3])]
        )

    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], name="sum", keepdims=0),
        helper.make_node("Constant", [], ["zero"], name="zero", value_float=0.0),
        helper.make_node("Greater", ["total", "zero"], ["cond"], name="greater"),
        helper.make_node(
            "If", ["cond"], ["y"], name="if", then_branch=branch("then", "Relu"), else_branch=branch("else", "Neg")
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "with_if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@functools.cache
def _bases() -> dict[str, bytes]:
    """Serialized valid models; `conv_bn_external` keeps its weights in EXTERNAL_DATA beside the model."""
    models = {"mlp": _mlp(), "cleanups": _cleanups(), "with_if": _with_if()}
    with tempfile.TemporaryDirectory() as tmp:
        models["conv_bn"] = onnx.load(make_conv_bn_model(Path(tmp) / "m.onnx"))
        models["conv_bn_constants"] = onnx.load(make_conv_bn_model(Path(tmp) / "c.onnx", with_constant_weights=True))
    serialized = {name: model.SerializeToString() for name, model in models.items()}
    serialized["conv_bn_external"] = _conv_bn_external()[0]
    return dict(sorted(serialized.items()))


@functools.cache
def _conv_bn_external() -> tuple[bytes, bytes]:
    """conv_bn with every initializer in EXTERNAL_DATA: the model's bytes and the weight file's bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = make_conv_bn_model(Path(tmp) / "m.onnx")
        onnx.save(onnx.load(path), path, save_as_external_data=True, location=EXTERNAL_DATA, size_threshold=0)
        return path.read_bytes(), (Path(tmp) / EXTERNAL_DATA).read_bytes()


# --- mutations --------------------------------------------------------------------------------------------------

odd_ints = st.one_of(
    st.integers(-3, 8),
    st.sampled_from([0, -1, 2**31 - 1, 2**31, 2**40, 2**62, 2**63 - 1, -(2**63)]),
)
odd_names = st.one_of(
    st.sampled_from(["", "x", "y", "w", "b", "shape", "conv", "logits", "one", "zero", "cond", "../x", "a\nb"]),
    st.text(max_size=6),
)


def _pick(draw, items):
    """One element of a protobuf repeated field, or None when it is empty."""
    return items[draw(st.integers(0, len(items) - 1))] if len(items) else None


def drop_node(draw, proto: onnx.ModelProto) -> None:
    if len(proto.graph.node):
        del proto.graph.node[draw(st.integers(0, len(proto.graph.node) - 1))]


def duplicate_or_swap_node(draw, proto: onnx.ModelProto) -> None:
    nodes = proto.graph.node
    if len(nodes) < 2:
        return
    i, j = draw(st.integers(0, len(nodes) - 1)), draw(st.integers(0, len(nodes) - 1))
    if draw(st.booleans()):
        nodes.add().CopyFrom(nodes[i])
    else:
        first, second = onnx.NodeProto(), onnx.NodeProto()
        first.CopyFrom(nodes[i])
        second.CopyFrom(nodes[j])
        nodes[i].CopyFrom(second)
        nodes[j].CopyFrom(first)


def rename_value(draw, proto: onnx.ModelProto) -> None:
    """Rename a node input or output, a graph input or output, or an initializer."""
    graph = proto.graph
    node = _pick(draw, graph.node)
    choices = [(node.input if node else []), (node.output if node else []), graph.input, graph.output]
    choices.append(graph.initializer)
    target = choices[draw(st.integers(0, len(choices) - 1))]
    if not len(target):
        return
    index = draw(st.integers(0, len(target) - 1))
    if isinstance(target[index], str):
        target[index] = draw(odd_names)
    else:
        target[index].name = draw(odd_names)


def change_attribute(draw, proto: onnx.ModelProto) -> None:
    """Give an attribute a new value of its own type, or of another type, or add an attribute."""
    node = _pick(draw, proto.graph.node)
    if node is None:
        return
    attr = _pick(draw, node.attribute)
    if attr is None or draw(st.integers(0, 4)) == 0:
        attr = node.attribute.add()
        attr.name = draw(st.sampled_from(["axis", "perm", "pads", "alpha", "mode", "bogus"]))
    kind = draw(st.sampled_from(["i", "f", "ints", "s", "t", "keep"]))
    if kind == "keep":
        kind = {1: "f", 2: "i", 3: "s", 4: "t", 7: "ints"}.get(attr.type, "i")
    for field in ("i", "f", "s", "t", "g", "ints", "floats", "strings", "tensors", "graphs"):
        attr.ClearField(field)
    if kind == "i":
        attr.i, attr.type = draw(odd_ints), onnx.AttributeProto.INT
    elif kind == "f":
        attr.f, attr.type = draw(st.floats(width=32)), onnx.AttributeProto.FLOAT
    elif kind == "ints":
        attr.ints.extend(draw(st.lists(odd_ints, max_size=5)))
        attr.type = onnx.AttributeProto.INTS
    elif kind == "s":
        attr.s, attr.type = draw(st.binary(max_size=6)), onnx.AttributeProto.STRING
    else:
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        attr.t.CopyFrom(numpy_helper.from_array(np.ones(shape, np.float32), "t"))
        attr.type = onnx.AttributeProto.TENSOR


def change_dim(draw, proto: onnx.ModelProto) -> None:
    """Change one dimension of a graph input/output or an initializer; symbolic names and removals too."""
    graph = proto.graph
    if draw(st.booleans()) and len(graph.initializer):
        tensor = _pick(draw, graph.initializer)
        if len(tensor.dims):
            tensor.dims[draw(st.integers(0, len(tensor.dims) - 1))] = draw(odd_ints)
        return
    value = _pick(draw, [*graph.input, *graph.output])
    dims = value.type.tensor_type.shape.dim if value is not None else []
    if not len(dims):
        return
    dim = dims[draw(st.integers(0, len(dims) - 1))]
    action = draw(st.sampled_from(["value", "param", "remove", "add"]))
    if action == "value":
        dim.dim_value = draw(odd_ints)
    elif action == "param":
        dim.dim_param = draw(odd_names)
    elif action == "remove":
        del dims[len(dims) - 1]
    else:
        dims.add().dim_value = draw(st.integers(1, 4))


def change_dtype(draw, proto: onnx.ModelProto) -> None:
    graph = proto.graph
    dtype = draw(st.integers(0, 27))
    if draw(st.booleans()) and len(graph.initializer):
        _pick(draw, graph.initializer).data_type = dtype
    else:
        value = _pick(draw, [*graph.input, *graph.output])
        if value is not None:
            value.type.tensor_type.elem_type = dtype


def delete_initializer(draw, proto: onnx.ModelProto) -> None:
    if len(proto.graph.initializer):
        del proto.graph.initializer[draw(st.integers(0, len(proto.graph.initializer) - 1))]


def damage_initializer_data(draw, proto: onnx.ModelProto) -> None:
    """Cut raw_data short or point external data elsewhere (offset, length, location)."""
    tensor = _pick(draw, proto.graph.initializer)
    if tensor is None:
        return
    if tensor.data_location == TensorProto.EXTERNAL and len(tensor.external_data):
        entry = _pick(draw, tensor.external_data)
        entry.value = draw(st.one_of(st.sampled_from(["../x.bin", "/etc/passwd", "-1", "abc", "99999"]), odd_names))
    elif tensor.raw_data:
        tensor.raw_data = tensor.raw_data[: draw(st.integers(0, len(tensor.raw_data)))]


def change_op(draw, proto: onnx.ModelProto) -> None:
    """Another op type or domain for a node, or another opset version for the model."""
    node = _pick(draw, proto.graph.node)
    choice = draw(st.integers(0, 2))
    if choice == 0 and node is not None:
        node.op_type = draw(st.sampled_from(["Relu", "Conv", "Add", "Reshape", "Gemm", "NoSuchOp", "If", ""]))
    elif choice == 1 and node is not None:
        node.domain = draw(st.sampled_from(["", "ai.onnx", "acme", "com.microsoft", "ai.onnx.ml"]))
    else:
        proto.opset_import[0].version = draw(st.integers(0, 30))


def change_node_arity(draw, proto: onnx.ModelProto) -> None:
    """Drop a node's last input or output, or add an extra one."""
    node = _pick(draw, proto.graph.node)
    if node is None:
        return
    field = node.input if draw(st.booleans()) else node.output
    if draw(st.booleans()) and len(field):
        del field[len(field) - 1]
    else:
        field.append(draw(odd_names))


STRUCTURAL: list[Callable] = [
    drop_node,
    duplicate_or_swap_node,
    rename_value,
    change_attribute,
    change_dim,
    change_dtype,
    delete_initializer,
    damage_initializer_data,
    change_op,
    change_node_arity,
]


@st.composite
def structurally_mutated(draw, max_mutations: int = 3) -> tuple[str, bytes]:
    """A base model with one to `max_mutations` structural mutations, serialized."""
    name = draw(st.sampled_from(sorted(_bases())))
    proto = onnx.load_from_string(_bases()[name])
    for mutate in draw(st.lists(st.sampled_from(STRUCTURAL), min_size=1, max_size=max_mutations)):
        mutate(draw, proto)
    return name, proto.SerializeToString()


@st.composite
def byte_mutated(draw) -> tuple[str, bytes]:
    """A serialized base model with one to three byte-level mutations: flips, cuts, insertions, deletions."""
    name = draw(st.sampled_from(sorted(_bases())))
    data = bytearray(_bases()[name])
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        action = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        if action == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at : at + draw(st.integers(1, 16))]
    return name, bytes(data)


# --- the properties ---------------------------------------------------------------------------------------------


def _write_case(folder: Path, data: bytes) -> Path:
    path = folder / "model.onnx"
    path.write_bytes(data)
    return path


def load_and_run_passes(path: Path) -> str:
    """The outcome of loading `path` and running the default pipeline: 'ok' or the BitcError's class name."""
    try:
        model = load_onnx(path)
        run_pipeline(model)
    except BitcError as exc:
        assert "\n" not in str(exc), f"multi-line error: {exc!r}"
        return type(exc).__name__
    return "ok"


def _report(name: str, outcomes: collections.Counter, expected: int) -> None:
    total = sum(outcomes.values())
    SUMMARY_LINES.append(f"{name}: {total} cases: {dict(outcomes)}")
    assert total >= expected, f"{name} ran only {total} cases: {dict(outcomes)}"


@pytest.fixture
def fuzz_dir(tmp_path) -> Path:
    """A folder for the mutated model, with the external weights `conv_bn_external` refers to."""
    (tmp_path / EXTERNAL_DATA).write_bytes(_conv_bn_external()[1])
    return tmp_path


def test_byte_mutations_load_cleanly(fuzz_dir):
    _fuzz_loading(fuzz_dir, byte_mutated(), BYTE_CASES, "byte mutations")


def test_structural_mutations_load_cleanly(fuzz_dir):
    _fuzz_loading(fuzz_dir, structurally_mutated(), STRUCTURAL_CASES, "structural mutations")


def _fuzz_loading(fuzz_dir: Path, mutations, cases: int, label: str) -> None:
    """Load + run the passes on `cases` mutated models; every one must end in success or a BitcError."""
    outcomes: collections.Counter = collections.Counter()

    @settings(max_examples=cases, **FUZZ_SETTINGS)
    @given(mutations)
    def case(mutated: tuple[str, bytes]) -> None:
        outcomes[load_and_run_passes(_write_case(fuzz_dir, mutated[1]))] += 1

    case()
    _report(label, outcomes, cases)


def test_structural_mutations_compile_cleanly(fuzz_dir):
    """A small sample through the whole compiler, TVM build included (up to a second each), drawn from the mutated
    models that load and pass (the others are the fuzzers' above): success, or a BitcError and no file left."""
    outcomes: collections.Counter = collections.Counter()

    @settings(max_examples=COMPILE_CASES, **FUZZ_SETTINGS)
    @given(structurally_mutated(max_mutations=1))
    def case(mutated: tuple[str, bytes]) -> None:
        path = _write_case(fuzz_dir, mutated[1])
        assume(load_and_run_passes(path) == "ok")
        output = fuzz_dir / "model.bitc"
        output.unlink(missing_ok=True)
        try:
            bitc.compile(path, output)
        except BitcError as exc:
            assert "\n" not in str(exc), f"multi-line error: {exc!r}"
            assert not output.exists() and not list(fuzz_dir.glob(".model.bitc.*")), "partial output left behind"
            outcomes[type(exc).__name__] += 1
            return
        outcomes["ok"] += 1

    case()
    _report("compiled mutations", outcomes, COMPILE_CASES)


# --- artifacts and manifests ------------------------------------------------------------------------------------

# Cases per artifact fuzzer: each loads (dlopen) and, when it loads, runs the tiny model; ~10 ms a case.
MANIFEST_CASES = round(200 * SCALE)
ZIP_CASES = round(200 * SCALE)
MAX_RUN_BYTES = 2**24  # random inputs are drawn only for mutated specs up to this size (the fuzzer's memory)

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    odd_ints,
    st.sampled_from([0.5, -0.0, float("nan"), float("inf"), float("-inf"), 1e308]),
    odd_names,
    st.sampled_from(["float32", "int64", "object", "complex64", ">f4", "llvm", "cuda", "main", "model.so", "\x1b[2J"]),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(odd_names, inner, max_size=4)),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def compiled_parts(tmp_path_factory) -> tuple[bytes, dict, bytes]:
    """conv_bn compiled once: its library, its manifest (without the members table) and the artifact's bytes."""
    from bitc.runtime.artifact import read_artifact

    root = tmp_path_factory.mktemp("artifact_fuzz")
    path = bitc.compile(make_conv_bn_model(root / "m.onnx"), root / "m.bitc").path
    artifact = read_artifact(path)
    manifest = {key: value for key, value in artifact.manifest.items() if key != "members"}
    return artifact.library, manifest, path.read_bytes()


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) into parsed JSON, the root included."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


@st.composite
def mutated_manifest(draw, base: dict) -> dict:
    """`base` with 1-3 values replaced by other JSON (any type, odd numbers, deep or empty), deleted, or turned into
    a container: the manifests a forged or damaged artifact can carry, with correct checksums."""
    manifest = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = [path for path in _paths(manifest) if path]
        path = paths[draw(st.integers(0, len(paths) - 1))]
        parent = functools.reduce(lambda node, key: node[key], path[:-1], manifest)
        action = draw(st.sampled_from(["replace", "replace", "delete", "wrap", "nest"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "wrap":
            parent[path[-1]] = [parent[path[-1]]]
        elif action == "nest":
            parent[path[-1]] = functools.reduce(lambda inner, _: [inner], range(draw(st.integers(60, 70))), 0)
        else:
            parent[path[-1]] = draw(json_values)
    return manifest


@st.composite
def zip_edits(draw, size: int) -> tuple[list[tuple[int, int]], int]:
    """Byte edits (offset, new value) of an artifact of `size` bytes, mostly in the zip's headers and central
    directory (its first and last few hundred bytes), and the length to truncate it to (often all of it)."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        region = draw(st.sampled_from(["head", "tail", "anywhere"]))
        low, high = {"head": (0, 120), "tail": (size - 300, size - 1), "anywhere": (0, size - 1)}[region]
        value = draw(st.one_of(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01]), st.integers(0, 255)))
        edits.append((draw(st.integers(max(low, 0), high)), value))
    return edits, size if draw(st.integers(0, 9)) else draw(st.integers(0, size))


def _edited(data: bytes, edits: list[tuple[int, int]], length: int) -> bytes:
    out = bytearray(data)
    for at, value in edits:
        out[at] = value
    return bytes(out[:length])


def load_run_inspect(path: Path) -> str:
    """The outcome of loading `path`, running it on random inputs when it loads, and `bitc inspect` (display and
    --json): 'ok', 'inspected' (load refused, inspect shown), or the BitcError's class name. Any other
    exception fails the fuzzer, as does an inspect that is neither a display nor a one-line exit 2."""
    import contextlib
    import io

    from bitc.cli import main as bitc_main

    for argv in (["inspect", str(path)], ["inspect", str(path), "--json"]):
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = bitc_main(argv)
        assert code in (0, 2) and len(err.getvalue().splitlines()) <= 1, f"inspect: {code} {err.getvalue()!r}"
    try:
        model = bitc.load(path)
        if sum(math.prod(spec.shape) * np.dtype(spec.dtype).itemsize for spec in model.inputs) <= MAX_RUN_BYTES:
            model.run(model.random_inputs())
    except BitcError as exc:
        assert "\n" not in str(exc), f"multi-line error: {exc!r}"
        return "inspected" if code == 0 else type(exc).__name__
    return "ok"


def test_mutated_manifests_load_run_and_inspect_cleanly(compiled_parts, tmp_path):
    from bitc.runtime.artifact import LIBRARY_NAME, write_artifact

    library, manifest, _ = compiled_parts
    outcomes: collections.Counter = collections.Counter()

    @settings(max_examples=MANIFEST_CASES, **FUZZ_SETTINGS)
    @given(mutated_manifest(manifest))
    def case(mutated: dict) -> None:
        path = write_artifact(tmp_path / "fuzz.bitc", mutated, {LIBRARY_NAME: library})
        outcomes[load_run_inspect(path)] += 1

    case()
    _report("manifest mutations", outcomes, MANIFEST_CASES)


def test_mutated_artifact_bytes_load_run_and_inspect_cleanly(compiled_parts, tmp_path):
    _, _, data = compiled_parts
    outcomes: collections.Counter = collections.Counter()

    @settings(max_examples=ZIP_CASES, **FUZZ_SETTINGS)
    @given(zip_edits(len(data)))
    def case(edits: tuple[list[tuple[int, int]], int]) -> None:
        path = tmp_path / "fuzz.bitc"
        path.write_bytes(_edited(data, *edits))
        outcomes[load_run_inspect(path)] += 1

    case()
    _report("artifact byte mutations", outcomes, ZIP_CASES)


# --- valid models the fuzzers found failing ---------------------------------------------------------------------


def test_omitted_trailing_input_is_dropped(tmp_path):
    """`Conv(x, w, "")` is valid ONNX; BatchNorm folding crashed on the omitted bias (None) before `normalize`
    trimmed it."""
    proto = onnx.load_from_string(_bases()["conv_bn"])
    proto.graph.node[0].input[2] = ""
    model, _ = run_pipeline(load_onnx(_write_case(tmp_path, proto.SerializeToString())))
    assert [node.op_type for node in model.graph][:2] == ["Conv", "Relu"]
    assert len(next(iter(model.graph)).inputs) == 3  # the folded BN supplies a bias


def test_upgraded_model_keeps_its_external_data(tmp_path):
    """Upgrading an old opset round-trips the model through protobuf, which forgot the external data folder."""
    proto = onnx.load(make_conv_bn_model(tmp_path / "source.onnx"))
    proto.opset_import[0].version = 11
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(proto, folder / "m.onnx", save_as_external_data=True, location=EXTERNAL_DATA, size_threshold=0)
    model = load_onnx(folder / "m.onnx")
    assert model.opset_imports[""] == 13
    model, _ = run_pipeline(model)
    assert "BatchNormalization" not in [node.op_type for node in model.graph]
    assert model.graph.initializers["fc_w"].const_value.numpy().shape == (10, 8)


def test_model_with_external_data_compiles(fuzz_dir):
    """Compiling from another working directory: external data is found beside the model, not in the cwd."""
    path = _write_case(fuzz_dir, _bases()["conv_bn_external"])
    assert bitc.compile(path, fuzz_dir / "model.bitc").path.stat().st_size > 0
