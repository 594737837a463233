"""Small hand-built graphs with bitc ops or binary patterns, for the op, kernel and pass tests."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from bitc import ops
from bitc.ops.packing import pack_conv_weights, pack_dense_weights


def pm1(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return np.where(rng.standard_normal(shape) >= 0, 1, -1)


def _model(nodes, inputs, outputs, initializers, bitc: bool = True) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(ops.DOMAIN, 1)] if bitc else [])
    proto = helper.make_model(graph, opset_imports=opsets)
    if not bitc:  # give the graph output its inferred shape (the checker wants one)
        graph = onnx.shape_inference.infer_shapes(proto).graph
        inferred = {v.name: v for v in [*graph.value_info, *graph.output] if v.type.tensor_type.HasField("shape")}
        for output in proto.graph.output:
            if output.name in inferred:
                output.CopyFrom(inferred[output.name])
        return proto
    model = ir.from_proto(proto)  # give the graph output its shape (ONNX's inference skips bitc ops)
    for node in model.graph:
        ops.infer_shapes(node)
    last = model.graph.node(-1).outputs[0]
    model.graph.outputs[0].shape, model.graph.outputs[0].dtype = last.shape, last.dtype
    return ir.to_proto(model)


def _epilogue(
    rng: np.random.Generator,
    inits: list,
    output_format: str,
    planes: int,
    channels: int,
    reach: int,
    threshold_planes: int,
) -> list[str]:
    """Random epilogue constants appended to `inits`: scale [P, O] + bias [O] (float output), or sorted integer
    thresholds within a third of the dot range (packed output, [P, O] or [O]); returns the input names."""
    if output_format == "float":
        inits += [
            numpy_helper.from_array(rng.standard_normal((planes, channels)).astype(np.float32), "scale"),
            numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "bias"),
        ]
        return ["scale", "bias"]
    shape = (threshold_planes, channels)
    thresholds = np.sort(rng.integers(-reach // 3, reach // 3, shape), axis=0).astype(np.int32)
    inits.append(numpy_helper.from_array(thresholds if threshold_planes > 1 else thresholds[0], "threshold"))
    return ["threshold"]


def binary_conv_model(
    *,
    n: int = 2,
    c: int = 37,
    o: int = 45,
    h: int = 9,
    w: int = 11,
    k: int = 3,
    stride: int = 1,
    pad: int = 1,
    pad_value: int = 0,
    output_format: str = "float",
    planes: int = 1,
    threshold_planes: int = 1,
    input_thresholds: list[float] | None = None,
    seed: int = 0,
) -> onnx.ModelProto:
    """x (float NCHW) → BitPack (thermometer planes with `input_thresholds`) → BinaryConv, with random ±1
    weights and epilogue (`threshold_planes` output planes when packed)."""
    rng = np.random.default_rng(seed)
    pack_attrs = {"thresholds": input_thresholds} if input_thresholds else {}
    in_channels = c * (len(input_thresholds) if input_thresholds else 1)
    inits = [numpy_helper.from_array(pack_conv_weights(pm1(rng, (planes, o, in_channels, k, k))), "w")]
    epilogue = _epilogue(rng, inits, output_format, planes, o, in_channels * k * k * planes, threshold_planes)
    nodes = [
        helper.make_node("BitPack", ["x"], ["xp"], domain=ops.DOMAIN, name="pack", **pack_attrs),
        helper.make_node(
            "BinaryConv",
            ["xp", "w", *epilogue],
            ["y"],
            domain=ops.DOMAIN,
            name="bconv",
            in_channels=in_channels,
            strides=[stride, stride],
            pads=[pad] * 4,
            pad_value=pad_value,
            output_format=output_format,
        ),
    ]
    out_type = TensorProto.FLOAT if output_format == "float" else TensorProto.UINT32
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, h, w])],
        [helper.make_tensor_value_info("y", out_type, None)],
        inits,
    )


def binary_dense_model(
    *,
    m: int = 3,
    k: int = 100,
    n: int = 45,
    output_format: str = "float",
    planes: int = 1,
    threshold_planes: int = 1,
    seed: int = 0,
) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(pack_dense_weights(pm1(rng, (planes, n, k))), "w")]
    epilogue = _epilogue(rng, inits, output_format, planes, n, k, threshold_planes)
    nodes = [
        helper.make_node("BitPack", ["x"], ["xp"], domain=ops.DOMAIN, name="pack"),
        helper.make_node(
            "BinaryDense",
            ["xp", "w", *epilogue],
            ["y"],
            domain=ops.DOMAIN,
            name="bdense",
            in_features=k,
            output_format=output_format,
        ),
    ]
    out_type = TensorProto.FLOAT if output_format == "float" else TensorProto.UINT32
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", out_type, None)],
        inits,
    )


def packed_pool_model(*, c: int = 70, h: int = 9, w: int = 10, pad: int = 1, stride: int = 2) -> onnx.ModelProto:
    nodes = [
        helper.make_node("BitPack", ["x"], ["xp"], domain=ops.DOMAIN, name="pack"),
        helper.make_node(
            "PackedMaxPool",
            ["xp"],
            ["y"],
            domain=ops.DOMAIN,
            name="pool",
            kernel_shape=[3, 3],
            strides=[stride, stride],
            pads=[pad] * 4,
        ),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, c, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.UINT32, None)],
        [],
    )


def sign_conv_model(
    *,
    c: int = 20,
    o: int = 24,
    hw: int = 10,
    stride: int = 1,
    pad: int = 1,
    bn_gamma: np.ndarray | None = None,
    then_sign_conv: bool = True,
    explicit_pad: float | None = None,
    onnx_sign: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """x → sign → Conv(±α weights) → BN → [sign → Conv(±α)] : the shape of a torch/Brevitas BNN block."""
    rng = np.random.default_rng(seed)
    alpha = (0.1 + rng.random((o, 1, 1, 1))).astype(np.float32)
    inits = [
        numpy_helper.from_array((alpha * pm1(rng, (o, c, 3, 3))).astype(np.float32), "w1"),
        numpy_helper.from_array(np.float32(0), "zero"),
        numpy_helper.from_array(np.float32(1), "one"),
        numpy_helper.from_array(np.float32(-1), "minus_one"),
        numpy_helper.from_array(bn_gamma if bn_gamma is not None else (0.5 + rng.random(o)).astype(np.float32), "g"),
        numpy_helper.from_array(rng.standard_normal(o).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal(o).astype(np.float32), "mean"),
        numpy_helper.from_array((0.5 + rng.random(o)).astype(np.float32), "var"),
    ]

    def sign(src: str, dst: str) -> list[onnx.NodeProto]:
        if onnx_sign:
            return [helper.make_node("Sign", [src], [dst], name=f"sign_{dst}")]
        return [
            helper.make_node("GreaterOrEqual", [src, "zero"], [f"{dst}_ge"], name=f"ge_{dst}"),
            helper.make_node("Where", [f"{dst}_ge", "one", "minus_one"], [dst], name=f"where_{dst}"),
        ]

    nodes = sign("x", "s1")
    conv_in, conv_pads = "s1", [pad] * 4
    if explicit_pad is not None:
        inits += [
            numpy_helper.from_array(np.array([0, 0, pad, pad, 0, 0, pad, pad], np.int64), "pads"),
            numpy_helper.from_array(np.float32(explicit_pad), "pad_value"),
        ]
        nodes.append(helper.make_node("Pad", ["s1", "pads", "pad_value"], ["s1p"], name="pad"))
        conv_in, conv_pads = "s1p", [0, 0, 0, 0]
    nodes += [
        helper.make_node("Conv", [conv_in, "w1"], ["c1"], name="conv1", pads=conv_pads, strides=[stride, stride]),
        helper.make_node("BatchNormalization", ["c1", "g", "b", "mean", "var"], ["bn1"], name="bn1"),
    ]
    out = "bn1"
    if then_sign_conv:
        inits.append(numpy_helper.from_array((0.3 * pm1(rng, (16, o, 3, 3))).astype(np.float32), "w2"))
        nodes += sign("bn1", "s2")
        nodes.append(helper.make_node("Conv", ["s2", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]))
        out = "c2"
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        inits,
        bitc=False,
    )


def as_ir(proto: onnx.ModelProto) -> ir.Model:
    from bitc.frontend import normalize

    return normalize(ir.from_proto(proto), source="test")


def lowbit_matmul_model(
    *,
    shape: tuple[int, ...] = (3, 100),
    n: int = 45,
    planes: int = 1,
    group_size: int = 0,
    scale_dtype: type = np.float32,
    seed: int = 0,
) -> onnx.ModelProto:
    """x [..., K] → LowBitMatMul with random ±1 planes and positive per-group scales."""
    from bitc.ops.lowbit_matmul import group_count

    rng = np.random.default_rng(seed)
    k = shape[-1]
    scales = rng.uniform(0.1, 1.0, (planes, n, group_count(k, group_size))).astype(scale_dtype)
    inits = [
        numpy_helper.from_array(pack_dense_weights(pm1(rng, (planes, n, k))), "w"),
        numpy_helper.from_array(scales, "scales"),
    ]
    node = helper.make_node(
        "LowBitMatMul",
        ["x", "w", "scales"],
        ["y"],
        domain=ops.DOMAIN,
        name="lowbit",
        in_features=k,
        group_size=group_size,
    )
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]
    return _model([node], inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)


def compiled_and_reference(tmp_path, proto: onnx.ModelProto, x: np.ndarray, target: str) -> tuple[np.ndarray, ...]:
    """A one-input ("x") model with bitc ops compiled for `target` (no passes) and run on `x`, beside the numpy
    references through onnx's evaluator: (compiled output, reference output)."""
    import bitc

    onnx.save(proto, tmp_path / "m.onnx")
    reference = ops.reference_evaluator(ir.load(tmp_path / "m.onnx")).run(None, {"x": x})[0]
    bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc", passes=[], target=target)
    return bitc.load(tmp_path / "m.bitc")(x=x), reference
