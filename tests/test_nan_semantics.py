"""NaN and ±inf through max / min / relu / clip, the fast exp / tanh / erf / sigmoid, softmax, max / min
reductions and max-pooling come out as IEEE and the ONNX reference say: NaN propagates, infinities stay infinite.

Elementwise ops and softmax are compared with onnxruntime. Its ReduceMax / ReduceMin and MaxPool skip a NaN
unless it comes first in the window (an artefact of its compare-and-keep loops), so those are compared with numpy,
whose max / min propagate NaN like the ONNX reference implementation."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import run_onnxruntime
from onnx import TensorProto, helper, numpy_helper

import bitc

NAN, INF = np.nan, np.inf
WIDTH = 64  # a multiple of 16: softmax's row max takes the lane-wise path

# Unary / binary / reduction ops over one [ROWS, WIDTH] input (and y of the same shape for Max / Min).
OPS = {
    "relu": ("Relu", ["x"], {}),
    "max": ("Max", ["x", "y"], {}),
    "min": ("Min", ["x", "y"], {}),
    "max_scalar": ("Max", ["x", "half"], {}),
    "clip": ("Clip", ["x", "lo", "hi"], {}),
    "exp": ("Exp", ["x"], {}),
    "tanh": ("Tanh", ["x"], {}),
    "erf": ("Erf", ["x"], {}),
    "sigmoid": ("Sigmoid", ["x"], {}),
    "softmax": ("Softmax", ["x"], {"axis": -1}),
    "softmax_odd": ("Softmax", ["x_odd"], {"axis": -1}),
    "softmax_axis0": ("Softmax", ["x"], {"axis": 0}),
    "reduce_max": ("ReduceMax", ["x"], {"axes": [1], "keepdims": 1}),
    "reduce_min": ("ReduceMin", ["x"], {"axes": [1], "keepdims": 0}),
    "reduce_max_all": ("ReduceMax", ["x"], {"keepdims": 0}),
    "reduce_max_axis0": ("ReduceMax", ["x"], {"axes": [0], "keepdims": 0}),
}
# numpy's versions of the ops onnxruntime answers without NaN propagation
NUMPY = {
    "reduce_max": lambda v: np.max(v["x"], axis=1, keepdims=True),
    "reduce_min": lambda v: np.min(v["x"], axis=1),
    "reduce_max_all": lambda v: np.max(v["x"]),
    "reduce_max_axis0": lambda v: np.max(v["x"], axis=0),
}


def _rows(width: int) -> np.ndarray:
    """Rows with a NaN, +inf, -inf, all -inf, all +inf, all NaN, ordinary values, and large exp arguments."""
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((8, width)).astype(np.float32)
    rows[0, 3] = NAN
    rows[1, 5] = INF
    rows[2, 7] = -INF
    rows[3, :] = -INF
    rows[4, :] = INF
    rows[5, :] = NAN
    rows[7, :4] = [100.0, -100.0, 88.0, -88.0]  # (the polynomial exp saturates to inf from 88.38 on)
    return rows


def _inputs() -> dict[str, np.ndarray]:
    x = _rows(WIDTH)
    y = np.roll(x, 1, axis=1)[::-1].copy()  # NaN / inf in other places than x
    y[6, :3] = [NAN, INF, -INF]
    return {"x": x, "y": y, "x_odd": _rows(WIDTH - 3)}


def _op_model(path):
    inputs = _inputs()
    constants = {
        "half": np.array(0.5, np.float32),
        "lo": np.array(-1.0, np.float32),
        "hi": np.array(1.0, np.float32),
    }
    nodes = [helper.make_node(op, args, [name], **attrs) for name, (op, args, attrs) in OPS.items()]
    graph = helper.make_graph(
        nodes,
        "nan_ops",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in inputs.items()],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in OPS],
        initializer=[numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    _save(path, graph)
    return path, inputs


def _pool_conv_model(path):
    """x[1,16,6,6] → MaxPool(3x3, pad 1), and x → Conv(16→16) → BatchNormalization → Relu."""
    rng = np.random.default_rng(1)
    channels = 16
    tensors = {
        "w": rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.1,
        "b": rng.standard_normal(channels).astype(np.float32),
        "scale": (0.5 + rng.random(channels)).astype(np.float32),
        "bias": rng.standard_normal(channels).astype(np.float32),
        "mean": rng.standard_normal(channels).astype(np.float32) * 0.1,
        "var": (0.5 + rng.random(channels)).astype(np.float32),
    }
    nodes = [
        helper.make_node("MaxPool", ["x"], ["pool"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["x"], ["pool_ceil"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv", "scale", "bias", "mean", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["relu"]),
    ]
    x = rng.standard_normal((1, channels, 7, 7)).astype(np.float32)
    x[0, 0, 2, 2] = NAN
    x[0, 1, 3, 3] = INF
    x[0, 2, 4, 4] = -INF
    x[0, 3] = -INF  # a whole channel of -inf: every window's max is -inf
    x[0, 4, 6, 6] = NAN  # in the last (ceil-mode) window
    graph = helper.make_graph(
        nodes,
        "nan_pool_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("pool", "pool_ceil", "relu")],
        initializer=[numpy_helper.from_array(v, k) for k, v in tensors.items()],
    )
    _save(path, graph)
    return path, {"x": x}


def _save(path, graph) -> None:
    """The model with its output shapes filled in by ONNX shape inference (bitc wants them)."""
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    path.write_bytes(model.SerializeToString())


def _max_pool_reference(x: np.ndarray, kernel: int, stride: int, pad: int, out: int) -> np.ndarray:
    """NCHW max-pooling in numpy: -inf padding (ONNX ignores padded cells), NaN-propagating window max."""
    size = (out - 1) * stride + kernel
    padded = np.full((*x.shape[:2], size, size), -INF, np.float32)
    height = min(x.shape[2], size - pad)
    padded[:, :, pad : pad + height, pad : pad + height] = x[:, :, :height, :height]
    windows = [
        [padded[:, :, i * stride : i * stride + kernel, j * stride : j * stride + kernel] for j in range(out)]
        for i in range(out)
    ]
    return np.array([[np.max(w, axis=(2, 3)) for w in row] for row in windows]).transpose(2, 3, 0, 1)


POOL_NUMPY = {
    "pool": lambda v: _max_pool_reference(v["x"], 3, 1, 1, 7),
    "pool_ceil": lambda v: _max_pool_reference(v["x"], 2, 2, 0, 4),
}


def _compiled(tmp_path_factory, make, numpy_ops) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(bitc's outputs, the expected ones) by name: onnxruntime's, or numpy's for the ops in `numpy_ops`."""
    root = tmp_path_factory.mktemp("nan")
    path, inputs = make(root / "model.onnx")
    result = bitc.compile(str(path), root / "model.bitc")
    ours = bitc.load(result.path).run(inputs)
    expected = dict(zip(list(ours), run_onnxruntime(path, inputs), strict=True))
    expected.update({name: reference(inputs) for name, reference in numpy_ops.items()})
    return ours, expected


@pytest.fixture(scope="module")
def op_outputs(tmp_path_factory):
    return _compiled(tmp_path_factory, _op_model, NUMPY)


@pytest.fixture(scope="module")
def pool_conv_outputs(tmp_path_factory):
    return _compiled(tmp_path_factory, _pool_conv_model, POOL_NUMPY)


def _assert_same(ours: np.ndarray, expected: np.ndarray, name: str) -> None:
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(expected), err_msg=f"{name}: NaN positions")
    np.testing.assert_array_equal(np.isinf(ours) * np.sign(ours), np.isinf(expected) * np.sign(expected), err_msg=name)
    np.testing.assert_allclose(ours, expected, rtol=2e-6, atol=1e-6, equal_nan=True, err_msg=name)


@pytest.mark.parametrize("name", list(OPS))
def test_op_matches_onnxruntime(op_outputs, name):
    ours, expected = op_outputs
    _assert_same(ours[name], expected[name], name)


@pytest.mark.parametrize("name", ["pool", "pool_ceil", "relu"])
def test_pool_and_conv_relu_match_onnxruntime(pool_conv_outputs, name):
    ours, expected = pool_conv_outputs
    _assert_same(ours[name], expected[name], name)


def test_exact_values_of_the_edge_cases(op_outputs):
    """What IEEE says, independent of onnxruntime: the cases the fast paths used to clamp or skip."""
    ours, _ = op_outputs
    x = _inputs()["x"]
    assert np.isnan(ours["relu"][0, 3]) and ours["relu"][1, 5] == INF and ours["relu"][2, 7] == 0
    assert ours["exp"][1, 5] == INF and ours["exp"][2, 7] == 0 and ours["exp"][7, 0] == INF
    assert ours["tanh"][4, 0] == 1 and ours["tanh"][3, 0] == -1 and np.isnan(ours["tanh"][5, 0])
    assert ours["erf"][4, 0] == 1 and ours["erf"][3, 0] == -1 and np.isnan(ours["erf"][5, 0])
    assert ours["reduce_max"][3, 0] == -INF and np.isnan(ours["reduce_max"][0, 0])
    assert ours["reduce_min"][4] == INF and np.isnan(ours["reduce_min"][0])
    assert np.isnan(ours["softmax"][0]).all() and np.isnan(ours["reduce_max_all"])
    np.testing.assert_array_equal(ours["relu"][6], np.maximum(x[6], 0))


def test_clip_takes_bounds_given_as_python_numbers():
    """HardSigmoid / Relu6 come with clip bounds the FFI hands over as Python ints: cast to the data dtype."""
    import tvm
    from tvm import te

    from bitc.codegen.relax.nan_semantics import clip

    data = te.placeholder((6,), "float32", name="x")
    func = tvm.compile(te.create_prim_func([data, clip(data, 0, 1)]), target="llvm")
    x = np.array([-2.0, 0.25, 0.5, 3.0, NAN, -INF], np.float32)
    out = tvm.runtime.tensor(np.zeros(6, np.float32))
    func(tvm.runtime.tensor(x), out)
    np.testing.assert_array_equal(out.numpy(), [0.0, 0.25, 0.5, 1.0, NAN, 0.0])


# Reductions over the contiguous last axis take the lane-wise path (vectors of partial results, then the lanes and
# the row's tail): widths a multiple of 16, with a 1-element and a 15-element tail, and one below two vectors.
REDUCE_WIDTHS = (64, 33, 47, 31)
REDUCTIONS = {
    "max_last": ("ReduceMax", {"axes": [-1], "keepdims": 1}, lambda x: np.max(x, axis=-1, keepdims=True)),
    "min_last": ("ReduceMin", {"axes": [2], "keepdims": 0}, lambda x: np.min(x, axis=2)),
    "max_axes_0_2": ("ReduceMax", {"axes": [0, 2], "keepdims": 1}, lambda x: np.max(x, axis=(0, 2), keepdims=True)),
    "min_all": ("ReduceMin", {"keepdims": 0}, np.min),
    "max_axis1": ("ReduceMax", {"axes": [1], "keepdims": 0}, lambda x: np.max(x, axis=1)),
}


def _reduce_rows(width: int) -> np.ndarray:
    """[2, 4, width]: NaN first, in the last full chunk and in the tail; ±inf in the tail; rows of ±inf."""
    rng = np.random.default_rng(width)
    x = rng.standard_normal((2, 4, width)).astype(np.float32)
    x[0, 0, 0] = NAN
    x[0, 1, width - 1] = NAN  # the tail's last element (or the last chunk's, at a multiple of 16)
    x[0, 2, 16 * (width // 16) - 1] = NAN
    x[1, 0, width - 1] = INF
    x[1, 1, width - 1] = -INF
    x[1, 1, :-1] = -10.0
    x[1, 2, :] = -INF
    x[1, 3, :] = INF
    return x


def _reduce_model(path):
    """Every reduction of REDUCTIONS on float inputs of each width, and int32 ReduceMax / ReduceMin."""
    inputs = {f"x{w}": _reduce_rows(w) for w in REDUCE_WIDTHS}
    rng = np.random.default_rng(2)
    inputs["i47"] = rng.integers(-(2**31), 2**31 - 1, (2, 4, 47), dtype=np.int64).astype(np.int32)
    inputs["i47"][0, 0, 46] = 2**31 - 1
    inputs["i47"][0, 1, 46] = -(2**31)
    nodes, outputs, expected = [], [], {}
    for source in inputs:
        kinds = REDUCTIONS if source.startswith("x") else {k: REDUCTIONS[k] for k in ("max_last", "min_all")}
        for kind, (op, attrs, reference) in kinds.items():
            name = f"{kind}_{source}"
            nodes.append(helper.make_node(op, [source], [name], **attrs))
            elem = TensorProto.FLOAT if source.startswith("x") else TensorProto.INT32
            outputs.append(helper.make_tensor_value_info(name, elem, None))
            expected[name] = np.asarray(reference(inputs[source]))
    graph = helper.make_graph(
        nodes,
        "reductions",
        [
            helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
            for k, v in inputs.items()
        ],
        outputs,
    )
    _save(path, graph)
    return path, inputs, expected


@pytest.fixture(scope="module")
def reduce_outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reduce")
    path, inputs, expected = _reduce_model(root / "model.onnx")
    ours = bitc.load(bitc.compile(str(path), root / "model.bitc").path).run(inputs)
    return ours, expected


REDUCE_NAMES = [f"{kind}_x{w}" for w in REDUCE_WIDTHS for kind in REDUCTIONS] + ["max_last_i47", "min_all_i47"]


@pytest.mark.parametrize("name", REDUCE_NAMES)
def test_reductions_match_numpy_exactly(reduce_outputs, name):
    """max / min are exact in any order: the lane-wise path gives numpy's values, dtype and shape bit for bit."""
    ours, expected = reduce_outputs
    assert ours[name].dtype == expected[name].dtype and ours[name].shape == expected[name].shape, name
    np.testing.assert_array_equal(ours[name], expected[name], err_msg=name)


def test_nan_in_the_tail_or_last_chunk_propagates(reduce_outputs):
    ours, _ = reduce_outputs
    for width in (33, 47):
        row_max, row_min = ours[f"max_last_x{width}"][0, :, 0], ours[f"min_last_x{width}"][0]
        assert np.isnan(row_max[:3]).all() and np.isnan(row_min[:3]).all() and not np.isnan(row_max[3])
        assert ours[f"max_last_x{width}"][1, 0, 0] == INF and ours[f"min_last_x{width}"][1, 1] == -INF


@pytest.mark.parametrize(
    ("shape", "axis", "keepdims"),
    [((1, 64, 1024), [-1], True), ((2, 4, 47), [0, 2], True), ((2, 4, 33), None, False)],
)
def test_lanewise_reduction_gets_its_vector_schedule(shape, axis, keepdims):
    """A schedule refusal would fall back silently to a serial select chain (20x slower): the reduction must come
    out with its lane loop vectorised (and its rows in parallel where it has rows)."""
    from tvm import te

    from bitc.codegen.cpu import schedules as cpu_schedules
    from bitc.codegen.relax import nan_semantics

    data = te.placeholder(shape, "float32", name="x")
    reduced = nan_semantics.lanewise_reduce(data, axis, keepdims, nan_semantics.max_reducer)
    scheduled = cpu_schedules.schedule_lanewise_reduction(te.create_prim_func([data, reduced]), 2, 16)
    assert scheduled is not None and "T.vectorized(16)" in scheduled.mod.script()
    assert ("T.parallel" in scheduled.mod.script()) == (axis is not None)


@pytest.mark.parametrize("width", [256, 512])
def test_wide_softmax_rows_keep_nan_and_inf_in_every_chunk(tmp_path, width):
    """Softmax's stabilising max over 16-16-32 vector chunks: a NaN or inf in the first, a middle or the last chunk
    still makes its row what onnxruntime gives (the chunk max may drop a NaN; the row's sum keeps it)."""
    rows = np.random.default_rng(2).standard_normal((9, width)).astype(np.float32) * 4
    for row, column in enumerate([3, width // 2 + 1, width - 1]):
        rows[row, column] = NAN
        rows[3 + row, column] = INF
    rows[6, :] = -INF
    rows[7, width - 16 :] = 90.0  # the max in the last chunk only
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
        "wide_softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(rows.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    _save(tmp_path / "m.onnx", graph)
    bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc")
    _assert_same(bitc.load(tmp_path / "m.bitc")(rows), run_onnxruntime(tmp_path / "m.onnx", {"x": rows})[0], "softmax")


def test_softmax_row_max_grows_linearly_with_the_row():
    """Each chunk adds one max to the expression: a NaN-keeping max folded over the chunks doubled it per chunk
    (lowering a 128-wide softmax took a minute, a 256-wide one did not finish)."""
    from tvm import te

    from bitc.codegen.cpu.fast_math import softmax

    def size(width: int) -> int:
        data = te.placeholder((2, width), "float32", name="x")
        return len(te.create_prim_func([data, softmax(data, -1)]).script())

    narrow, wide = size(64), size(128)  # 4 and 8 chunks
    assert wide < 2 * narrow, (narrow, wide)
