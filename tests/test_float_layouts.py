"""Float convs keep the blocked layout through the activations real models put between them (HardSwish,
HardSigmoid, `+ c` / `/ c` with one-element constants, stacks), so layout transforms stay at the model's edges;
each rule on the smallest graph that exercises it, compared with onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compile_matching_onnxruntime, save_graph
from onnx import helper, numpy_helper


def _conv_act_conv(path, activation: list, channels: int = 16):
    """x → conv → <activation nodes from 'a' to 'b'> → conv → y."""
    rng = np.random.default_rng(11)
    inits = [
        numpy_helper.from_array(rng.standard_normal((channels, 8, 3, 3)).astype(np.float32) * 0.3, "w1"),
        numpy_helper.from_array(rng.standard_normal((channels, channels, 1, 1)).astype(np.float32) * 0.3, "w2"),
        numpy_helper.from_array(np.array([3.0], np.float32), "three"),
        numpy_helper.from_array(np.array([6.0], np.float32), "six"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(6.0, np.float32), "six_scalar"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        *activation,
        helper.make_node("Conv", ["b", "w2"], ["y"]),
    ]
    return save_graph(path, nodes, {"x": [1, 8, 12, 12]}, {"y": [1, channels, 12, 12]}, inits)


ACTIVATIONS = {
    "hardswish": [helper.make_node("HardSwish", ["a"], ["b"])],
    "hardsigmoid_mul": [helper.make_node("HardSigmoid", ["a"], ["s"]), helper.make_node("Mul", ["a", "s"], ["b"])],
    # HardSwish as exporters write it: x · clip(x + 3, 0, 6) / 6 with one-element constants
    "add_clip_mul_div": [
        helper.make_node("Add", ["a", "three"], ["t"]),
        helper.make_node("Clip", ["t", "zero", "six_scalar"], ["c"]),
        helper.make_node("Mul", ["a", "c"], ["m"]),
        helper.make_node("Div", ["m", "six"], ["b"]),
    ],
}


def _runtime_kernels(path) -> list[str]:
    """The kernels the lowered model calls at run time, in order."""
    from tvm import relax

    from bitc.codegen.cpu.build import lower_to_fused_tir
    from bitc.codegen.relax_import import to_relax
    from bitc.codegen.target import parse_target
    from bitc.frontend import load_onnx
    from bitc.passes import run_pipeline

    target = parse_target("cpu", None)
    model, _ = run_pipeline(load_onnx(path), None, check_exact=False)
    mod, _, _ = lower_to_fused_tir(to_relax(model, "m", target), target)
    called = []

    def visit(expr):
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.call_tir":
            called.append(expr.args[0].name_hint)

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return called


def _runtime_layout_transforms(path) -> int:
    """Layout transforms left in the lowered model that run at run time (constant ones are folded away)."""
    return sum(name.startswith("te_layout_transform") for name in _runtime_kernels(path))


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_activations_between_convs_stay_blocked_and_match_onnxruntime(tmp_path, activation):
    path = _conv_act_conv(tmp_path / "m.onnx", ACTIVATIONS[activation])
    assert _runtime_layout_transforms(path) == 2  # into the blocked layout at the input, out of it at the output
    x = np.random.default_rng(0).standard_normal((1, 8, 12, 12)).astype(np.float32) * 3
    x[0, 0, 0, :4] = [-3.0, 3.0, 0.0, np.nan]  # the clip's edges, and NaN through it as onnxruntime does
    compile_matching_onnxruntime(path, {"x": x}, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("kernel", "group"), [(2, 1), (3, 1), (2, 2)])
def test_transposed_convs_match_onnxruntime(tmp_path, kernel, group):
    """kernel = stride (upsampling): a 1x1 conv plus pixel shuffle; other forms keep TVM's transposed conv."""
    rng = np.random.default_rng(12)
    w = numpy_helper.from_array(rng.standard_normal((16, 24 // group, kernel, kernel)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(24).astype(np.float32), "b")
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], group=group)
    size = (9 - 1) * 2 + kernel
    path = save_graph(tmp_path / "t.onnx", [node], {"x": [2, 16, 9, 9]}, {"y": [2, 24, size, size]}, [w, b])
    x = rng.standard_normal((2, 16, 9, 9)).astype(np.float32)
    result = compile_matching_onnxruntime(path, {"x": x}, rtol=1e-4, atol=1e-4)
    upsampling = kernel == 2 and group == 1
    assert ("generic_convs" not in result.manifest["codegen"]) == upsampling


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "LayerNormalization"])
def test_a_single_row_reduction_computes_each_reduction_once_and_matches_onnxruntime(tmp_path, op):
    """[1, 1000] (a classifier's head): every reduction runs once over the row, not once per element."""
    from bitc.codegen.cpu import schedules

    inits = []
    inputs = ["x"]
    if op == "LayerNormalization":
        inits = [numpy_helper.from_array(np.full(1000, 1.5, np.float32), "g")]
        inputs = ["x", "g"]
    node = helper.make_node(op, inputs, ["y"], axis=-1)
    path = save_graph(tmp_path / "r.onnx", [node], {"x": [1, 1000]}, {"y": [1, 1000]}, inits)
    x = np.random.default_rng(0).standard_normal((1, 1000)).astype(np.float32) * 4
    compile_matching_onnxruntime(path, {"x": x}, rtol=1e-4, atol=1e-5)

    from tvm import te, topi

    row = te.placeholder((1, 1000), name="x")
    sch = schedules.schedule_single_row_reduction(te.create_prim_func([row, topi.nn.softmax(row, axis=-1)]), 16)
    assert sch is not None
    for block in schedules._blocks(sch):
        if schedules._has_reduction(sch.get(block)):
            extents = [int(sch.get(loop).extent) for loop in sch.get_loops(block)]
            assert int(np.prod(extents)) == 1000, extents  # the row once, not once per output element


def test_a_grouped_conv_with_small_groups_runs_as_a_band(tmp_path):
    """4 groups of 34 channels (ShuffleNet): no block divides 34, but 136 takes one; zeros between groups."""
    rng = np.random.default_rng(13)
    w = numpy_helper.from_array(rng.standard_normal((136, 34, 1, 1)).astype(np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=4)
    path = save_graph(tmp_path / "g.onnx", [node], {"x": [1, 136, 10, 10]}, {"y": [1, 136, 10, 10]}, [w])
    x = rng.standard_normal((1, 136, 10, 10)).astype(np.float32)
    result = compile_matching_onnxruntime(path, {"x": x}, rtol=1e-4, atol=1e-4)
    assert "generic_convs" not in result.manifest["codegen"]


@pytest.mark.parametrize("normalisation", ["BatchNormalization", "MulAdd"])
def test_a_per_channel_affine_after_a_concat_stays_blocked_and_matches_onnxruntime(tmp_path, normalisation):
    """DenseNet's form: conv → Concat → BatchNorm (or Mul/Add by [C, 1, 1] constants) → Relu → conv; the BN cannot
    fold into a conv, and must not send the activation to NCHW and back."""
    rng = np.random.default_rng(14)
    channels = 32
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.3, "w1"),
        numpy_helper.from_array(rng.standard_normal((16, channels, 1, 1)).astype(np.float32) * 0.3, "w2"),
        numpy_helper.from_array(rng.uniform(0.5, 2, channels).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2, channels).astype(np.float32), "var"),
        numpy_helper.from_array(rng.uniform(0.5, 2, (channels, 1, 1)).astype(np.float32), "scale"),
        numpy_helper.from_array(rng.standard_normal((channels, 1, 1)).astype(np.float32), "shift"),
    ]
    if normalisation == "BatchNormalization":
        affine = [helper.make_node("BatchNormalization", ["cat", "gamma", "beta", "mean", "var"], ["n"])]
    else:
        affine = [helper.make_node("Mul", ["cat", "scale"], ["m"]), helper.make_node("Add", ["m", "shift"], ["n"])]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Concat", ["a", "r"], ["cat"], axis=1),
        *affine,
        helper.make_node("Relu", ["n"], ["b"]),
        helper.make_node("Conv", ["b", "w2"], ["y"]),
    ]
    path = save_graph(tmp_path / "m.onnx", nodes, {"x": [1, 8, 12, 12]}, {"y": [1, 16, 12, 12]}, inits)
    assert _runtime_layout_transforms(path) == 2
    x = rng.standard_normal((1, 8, 12, 12)).astype(np.float32)
    compile_matching_onnxruntime(path, {"x": x}, rtol=1e-4, atol=1e-4)


def _shuffle_model(path, groups: int, channels: int, reshape_to, perm):
    """x → conv → relu → Reshape(reshape_to) → Transpose(perm) → Reshape back → conv → y (random weights)."""
    rng = np.random.default_rng(groups * channels)
    inits = [
        numpy_helper.from_array(rng.standard_normal((channels, 8, 3, 3)).astype(np.float32) * 0.3, "w1"),
        numpy_helper.from_array(rng.standard_normal((channels, channels, 1, 1)).astype(np.float32) * 0.3, "w2"),
        numpy_helper.from_array(np.array(reshape_to, np.int64), "split_shape"),
        numpy_helper.from_array(np.array([1, channels, 12, 12], np.int64), "back_shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Reshape", ["r", "split_shape"], ["s"]),
        helper.make_node("Transpose", ["s"], ["t"], perm=perm),
        helper.make_node("Reshape", ["t", "back_shape"], ["b"]),
        helper.make_node("Conv", ["b", "w2"], ["y"]),
    ]
    return save_graph(path, nodes, {"x": [1, 8, 12, 12]}, {"y": [1, channels, 12, 12]}, inits)


@pytest.mark.parametrize(("groups", "channels"), [(4, 32), (3, 48), (2, 64)])
def test_a_channel_shuffle_between_blocked_convs_is_one_gather_and_matches_onnxruntime(tmp_path, groups, channels):
    path = _shuffle_model(
        tmp_path / "shuffle.onnx", groups, channels, [1, groups, channels // groups, 12, 12], [0, 2, 1, 3, 4]
    )
    x = np.random.default_rng(5).standard_normal((1, 8, 12, 12)).astype(np.float32)
    compile_matching_onnxruntime(path, {"x": x}, rtol=1e-4, atol=1e-4)
    assert _runtime_layout_transforms(path) == 2  # the model's input and output only


def test_a_reshape_transpose_that_mixes_pixels_is_not_a_channel_gather(tmp_path):
    """Channels and rows swapped: not a channel permutation, so the chain stays (and still matches)."""
    path = _shuffle_model(tmp_path / "mix.onnx", 1, 16, [1, 16, 12, 12], [0, 2, 1, 3])
    x = np.random.default_rng(6).standard_normal((1, 8, 12, 12)).astype(np.float32)
    compile_matching_onnxruntime(path, {"x": x}, rtol=1e-4, atol=1e-4)
    assert _runtime_layout_transforms(path) > 2


def test_a_grouped_conv_with_odd_group_widths_runs_as_one_block_diagonal_conv(tmp_path):
    """4 groups of 28 channels (ShuffleNet's first unit): 14-wide blocks would split it into 4 convs with a layout
    transform each; one block-diagonal conv keeps the blocked layout."""
    rng = np.random.default_rng(17)
    w = numpy_helper.from_array(rng.standard_normal((112, 28, 1, 1)).astype(np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=4)
    path = save_graph(tmp_path / "g.onnx", [node], {"x": [1, 112, 10, 10]}, {"y": [1, 112, 10, 10]}, [w])
    x = rng.standard_normal((1, 112, 10, 10)).astype(np.float32)
    compile_matching_onnxruntime(path, {"x": x}, rtol=1e-4, atol=1e-4)
    assert _runtime_layout_transforms(path) == 2


@pytest.mark.parametrize("then", ["pool", "conv"])
def test_a_deep_conv_with_unblocked_output_channels_runs_padded_and_matches_onnxruntime(tmp_path, then):
    """100 output channels (no 16-block) over 32·3·3 inputs: zero filters up to 112, the real 100 sliced back."""
    rng = np.random.default_rng(23)
    inits = [
        numpy_helper.from_array(rng.standard_normal((100, 32, 3, 3)).astype(np.float32) * 0.2, "w"),
        numpy_helper.from_array(rng.standard_normal(100).astype(np.float32), "bias"),
        numpy_helper.from_array(rng.standard_normal((24, 100, 1, 1)).astype(np.float32) * 0.2, "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "bias"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
    ]
    if then == "pool":
        nodes.append(helper.make_node("GlobalAveragePool", ["r"], ["y"]))
        out = [1, 100, 1, 1]
    else:
        nodes.append(helper.make_node("Conv", ["r", "w2"], ["y"]))
        out = [1, 24, 13, 13]
    path = save_graph(tmp_path / "pad.onnx", nodes, {"x": [1, 32, 13, 13]}, {"y": out}, inits)
    x = rng.standard_normal((1, 32, 13, 13)).astype(np.float32)
    compile_matching_onnxruntime(path, {"x": x}, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("activation", ["silu", "add_clip_mul_div"])
def test_an_epilogue_that_reads_the_conv_twice_joins_the_conv_kernel(tmp_path, activation):
    """x·sigmoid(x) and x·clip(x+3, 0, 6)/6 read the conv's result twice; TVM's fusion stops there, the epilogue
    fusion joins them to the conv: each conv is one kernel with its activation, and the values match."""
    nodes = {
        "silu": [helper.make_node("Sigmoid", ["a"], ["s"]), helper.make_node("Mul", ["a", "s"], ["b"])],
        "add_clip_mul_div": ACTIVATIONS["add_clip_mul_div"],
    }[activation]
    path = _conv_act_conv(tmp_path / f"{activation}.onnx", nodes)
    x = np.random.default_rng(3).standard_normal((1, 8, 12, 12)).astype(np.float32)
    compile_matching_onnxruntime(path, {"x": x}, rtol=1e-4, atol=1e-4)
    kernels = _runtime_kernels(path)
    convs = [name for name in kernels if "conv2d" in name]
    assert len(convs) == 2 and any("multiply" in name for name in convs), kernels
    assert len(kernels) == 4  # input transform, conv + activation, conv, output transform


@pytest.mark.parametrize("form", ["erf", "tanh"])
def test_a_matmul_with_a_gelu_epilogue_matches_onnxruntime(tmp_path, form):
    """GELU reads the matmul's result several times: the joined epilogue must compute it as the graph does."""
    rng = np.random.default_rng(29)
    inits = [
        numpy_helper.from_array(rng.standard_normal((64, 48)).astype(np.float32) * 0.2, "w"),
        numpy_helper.from_array(rng.standard_normal(48).astype(np.float32), "bias"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(2**-0.5, np.float32), "rsqrt2"),
        numpy_helper.from_array(np.array(0.044715, np.float32), "c"),
        numpy_helper.from_array(np.array((2 / np.pi) ** 0.5, np.float32), "k"),
    ]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "bias"], ["a"])]
    if form == "erf":
        nodes += [
            helper.make_node("Mul", ["a", "rsqrt2"], ["s"]),
            helper.make_node("Erf", ["s"], ["e"]),
        ]
    else:
        nodes += [
            helper.make_node("Mul", ["a", "a"], ["a2"]),
            helper.make_node("Mul", ["a2", "a"], ["a3"]),
            helper.make_node("Mul", ["a3", "c"], ["ca3"]),
            helper.make_node("Add", ["a", "ca3"], ["inner"]),
            helper.make_node("Mul", ["inner", "k"], ["s"]),
            helper.make_node("Tanh", ["s"], ["e"]),
        ]
    nodes += [
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["a", "e1"], ["ae"]),
        helper.make_node("Mul", ["ae", "half"], ["y"]),
    ]
    path = save_graph(tmp_path / "gelu.onnx", nodes, {"x": [1, 16, 64]}, {"y": [1, 16, 48]}, inits)
    x = rng.standard_normal((1, 16, 64)).astype(np.float32)
    compile_matching_onnxruntime(path, {"x": x}, rtol=1e-4, atol=1e-5)


def test_a_squeeze_excitation_block_matches_onnxruntime(tmp_path):
    """conv → (global pool → 1×1 convs → HardSigmoid) → Mul back onto the conv's [N, C, H, W] result: the Mul
    broadcasts a [N, C, 1, 1] gate, which must not be joined to the small conv that makes the gate."""
    rng = np.random.default_rng(31)
    inits = [
        numpy_helper.from_array(rng.standard_normal((32, 8, 3, 3)).astype(np.float32) * 0.3, "w1"),
        numpy_helper.from_array(rng.standard_normal((8, 32, 1, 1)).astype(np.float32) * 0.3, "w2"),
        numpy_helper.from_array(rng.standard_normal((32, 8, 1, 1)).astype(np.float32) * 0.3, "w3"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["a"], ["p"]),
        helper.make_node("Conv", ["p", "w2"], ["q"]),
        helper.make_node("Relu", ["q"], ["r"]),
        helper.make_node("Conv", ["r", "w3"], ["g"]),
        helper.make_node("HardSigmoid", ["g"], ["h"]),
        helper.make_node("Mul", ["a", "h"], ["y"]),
    ]
    path = save_graph(tmp_path / "se.onnx", nodes, {"x": [1, 8, 12, 12]}, {"y": [1, 32, 12, 12]}, inits)
    x = rng.standard_normal((1, 8, 12, 12)).astype(np.float32)
    compile_matching_onnxruntime(path, {"x": x}, rtol=1e-4, atol=1e-5)


# ResNeXt / RegNet / ShuffleNet forms: (channels in, channels out, groups, stride, dilation); per-group widths 8
# and 12 take a block as they are, 4 (ResNeXt-50's first stage) merges pairs of groups, 24 groups of 8 exceed the
# old split; 26 → 22 and 17 → 17 channels per group (no block, merged or not) run as bands of whole input blocks
@pytest.mark.parametrize(
    ("inputs", "outputs", "groups", "stride", "dilation"),
    [
        (256, 256, 32, 1, 1),
        (128, 128, 32, 2, 1),
        (96, 192, 8, 1, 2),
        (192, 192, 24, 1, 1),
        (48, 96, 4, 1, 1),
        (104, 88, 4, 2, 1),
        (136, 136, 8, 1, 1),
    ],
)
def test_grouped_convs_run_a_blocked_kernel_and_match_onnxruntime(tmp_path, inputs, outputs, groups, stride, dilation):
    rng = np.random.default_rng(inputs + groups)
    inits = [
        numpy_helper.from_array(rng.standard_normal((outputs, inputs // groups, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(outputs).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node(
            "Conv",
            ["x", "w", "b"],
            ["c"],
            group=groups,
            strides=[stride] * 2,
            dilations=[dilation] * 2,
            pads=[dilation] * 4,
        ),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    side = 14 // stride
    path = save_graph(tmp_path / "g.onnx", nodes, {"x": [1, inputs, 14, 14]}, {"y": [1, outputs, side, side]}, inits)
    x = rng.standard_normal((1, inputs, 14, 14)).astype(np.float32)
    result = compile_matching_onnxruntime(path, {"x": x}, rtol=1e-4, atol=1e-4)
    assert "generic_convs" not in result.manifest["codegen"]
    kernels = _runtime_kernels(path)
    assert any(name.startswith("fused_conv2d_nchwc") for name in kernels)
    assert not any("band_weight" in name for name in kernels)  # a band's weight is packed at compile time


def test_a_grouped_band_reads_each_output_blocks_groups_and_no_more():
    """4 groups of 34 channels in 8-channel blocks: an output block spans at most 2 groups, whose 68 inputs lie
    in 9 consecutive input blocks (of 17); the last bands are clamped inside the input."""
    from bitc.codegen.cpu.nchwc import grouped_band

    band = grouped_band(4, 136, 136, 8)
    assert (band.in_block, band.out_block, band.band_blocks) == (8, 8, 9)
    for block in range(17):
        start = band.start(block)
        groups = {channel // 34 for channel in range(block * 8, block * 8 + 8)}
        inputs = [channel for group in groups for channel in range(group * 34, group * 34 + 34)]
        assert start >= 0 and start + 9 <= 17
        assert start * 8 <= min(inputs) and max(inputs) < (start + 9) * 8
    assert grouped_band(4, 68, 272, 8) is None  # 68 channels take no block at all


def test_merged_groups_take_the_fewest_groups_whose_widths_take_a_block():
    from bitc.codegen.cpu.nchwc import merged_groups

    assert merged_groups(32, 8, 8, 16) == 1  # 8 channels per group: a block as it is
    assert merged_groups(32, 4, 4, 16) == 2  # ResNeXt's 4 channels per group: pairs of groups, 8-wide
    assert merged_groups(4, 17, 68, 16) is None  # no merge short of all groups takes a block (dense fallback)
    assert merged_groups(64, 1, 3, 16) == 8  # a depthwise multiplier of 3: 8 groups of 8 inputs, 24 outputs
