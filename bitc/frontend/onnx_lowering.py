"""Rewrite ONNX nodes whose attribute or input form TVM's importer lowers wrongly into standard ops it gets right.

Each rule names an op and a condition (`applies`) and builds the replacement from plain ONNX ops, so every pass
after `normalize` and the `--verify` check see ordinary nodes. Where ONNX defines the op as a function, the
rewrite is the spec's own function body (`expand_function`); the rest follow the operator text. What no rule
covers and the importer cannot do is refused later, in `bitc.codegen.onnx_support`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common

from bitc import ops
from bitc.frontend.integer_lowering import INTEGER_LOWERINGS
from bitc.frontend.recurrent_lowering import RECURRENT_LOWERINGS
from bitc.frontend.tensor_lowering import BOOLEAN_REDUCTIONS, TENSOR_LOWERINGS, boolean_reduction
from bitc.frontend.weight_only_lowering import CONTRIB_LOWERINGS, DEQUANTIZED_MATMUL
from bitc.ir import graph_edit

EXPAND_DOMAIN = "bitc.expand"
# Marks the nodes a rule emitted: already in the form the importer gets right, even where the rule's condition
# holds again (BitShift's rewrite is a BitShift by safe amounts).
LOWERED = "bitc.lowered"


@dataclass(frozen=True)
class Rule:
    """`applies(node)` says whether the importer would get this node wrong; `lower(builder, node)` returns the
    values replacing its outputs (None: the rule cannot do this form after all, the node stays)."""

    applies: Callable[[ir.Node], bool]
    lower: Callable[[Builder, ir.Node], list[ir.Value | None] | None]


class Builder:
    """Adds nodes before `anchor` and constants as initializers, with names derived from the anchor's. `taken`
    holds the prefixes (and node names) already in use: unnamed nodes of one op type would otherwise share one
    prefix, and their lowerings' values one name each."""

    def __init__(self, graph: ir.Graph, anchor: ir.Node, opset: int = 13, taken: set[str] | None = None) -> None:
        self.graph, self.anchor, self.opset = graph, anchor, opset
        base = f"{anchor.name or anchor.op_type}__lowered"
        self.prefix, number = base, 1
        while taken is not None and self.prefix in taken:
            number += 1
            self.prefix = f"{base}{number}"
        if taken is not None:
            taken.add(self.prefix)
        self.count = 0
        self.taken = taken if taken is not None else taken_names(graph)

    def fresh_name(self) -> str:
        """The next node name under this builder's prefix that nothing in the graph uses."""
        self.count += 1
        while f"{self.prefix}_{self.count}" in self.taken:
            self.count += 1
        name = f"{self.prefix}_{self.count}"
        self.taken.add(name)
        return name

    def op(self, op_type: str, *inputs: ir.Value | None, outputs: int = 1, **attributes: Any) -> Any:
        node = ir.Node(
            "",
            op_type,
            list(inputs),
            attributes=ir.convenience.convert_attributes(attributes),
            num_outputs=outputs,
            name=self.fresh_name(),
            metadata_props={LOWERED: "1"},
        )
        for index, value in enumerate(node.outputs):
            value.name = f"{node.name}_out{index}"
        self.graph.insert_before(self.anchor, node)
        return node.outputs[0] if outputs == 1 else list(node.outputs)

    def bitc_op(self, op_type: str, *inputs: ir.Value, **attributes: Any) -> ir.Value:
        """A node of bitc's own domain (its one output typed by the op's rule when the inputs' shapes are
        static); the graph imports the domain."""
        node = ir.Node(
            ops.DOMAIN,
            op_type,
            list(inputs),
            attributes=ir.convenience.convert_attributes(attributes),
            name=self.fresh_name(),
        )
        node.outputs[0].name = f"{node.name}_out0"
        if all(v.shape is not None and v.shape.is_static() for v in inputs):
            ops.infer_shapes(node)
        self.graph.insert_before(self.anchor, node)
        self.graph.opset_imports.setdefault(ops.DOMAIN, ops.DOMAIN_VERSION)
        return node.outputs[0]

    def const(self, array: np.ndarray | Any, dtype: Any = None) -> ir.Value:
        return graph_edit.add_initializer(self.graph, np.asarray(array, dtype=dtype), f"{self.prefix}_const")


def taken_names(graph: ir.Graph) -> set[str]:
    """Node names of `graph` (Builder derives its node and value names from them)."""
    return {node.name for node in graph if node.name}


# Ops the importer knows by name but not in the ai.onnx form (it converts the com.microsoft Attention)
ALWAYS_EXPAND = {"Attention"}
# Domains of ops ONNX defines only as functions (TVM's importer reads none of them).
PREVIEW_DOMAINS = {"ai.onnx.preview"}
# Function bodies may call ops that are functions again (a few levels in practice); bounded against cycles.
MAX_EXPANSION_DEPTH = 4


def lower_unsupported_forms(model: ir.Model) -> int:
    """Expand the ops the importer lacks into their ONNX function bodies, then apply every rule to the main
    graph's nodes; returns how many nodes were rewritten."""
    from bitc.frontend.control_flow import unroll_scans

    opset = model.opset_imports.get("", 1)
    rewritten = expand_missing_ops(model, opset)
    if unrolled := unroll_scans(model):  # the bodies may call ops that need expanding too
        rewritten += unrolled + expand_missing_ops(model, opset)
    taken = taken_names(model.graph)
    for node in list(model.graph):
        if (contrib := CONTRIB_LOWERINGS.get((node.domain, node.op_type))) is not None:
            _replace(model.graph, node, contrib(Builder(model.graph, node, opset, taken), node))
            rewritten += 1
            continue
        rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None or not rule.applies(node):
            continue
        if node.op_type in FUNCTION_EXPANSIONS:
            rewritten += expand_function(model, node, opset)
            continue
        replacements = rule.lower(Builder(model.graph, node, opset, taken), node)
        if replacements is not None:
            _replace(model.graph, node, replacements)
            rewritten += 1
    _inline_expansions(model)
    return rewritten


def expand_missing_ops(model: ir.Model, opset: int) -> int:
    """Standard ops TVM's importer does not convert (Celu, window functions, the opset-23 Attention...) become
    the spec's own function body where ONNX defines one; what has none stays, to be refused by name."""
    known = importer_ops()
    if not known:
        return 0
    expanded = 0
    for _ in range(MAX_EXPANSION_DEPTH):
        missing = [
            node
            for node in model.graph
            if (node.domain in ("", "ai.onnx") and (node.op_type not in known or node.op_type in ALWAYS_EXPAND))
            or node.domain in PREVIEW_DOMAINS
        ]
        count = sum(
            expand_function(model, node, opset)
            for node in missing
            if _has_function(node.op_type, _domain_version(model, node.domain, opset), node.domain)
        )
        if not count:
            break
        expanded += count
        _inline_expansions(model)
        _infer_types(model)  # a nested function's context-dependent body is built from its inputs' types
    return expanded


def _infer_types(model: ir.Model) -> None:
    """Types and shapes for the values an inlined body introduced (best effort: a model ONNX's inference cannot
    handle keeps what it has)."""
    try:
        common.ShapeInferencePass()(model)
    except Exception:  # inference is an aid here; the importer reports real problems
        return


def importer_ops() -> set[str]:
    """Op types TVM's ONNX importer converts (empty if its private table moved: then nothing is expanded)."""
    from bitc.codegen.relax_import import supported_ops

    return set(supported_ops())


def _domain_version(model: ir.Model, domain: str, opset: int) -> int:
    """The version of `domain` the model imports (the default opset's for the default domain)."""
    return opset if domain in ("", "ai.onnx") else model.opset_imports.get(domain, 1)


def _has_function(op_type: str, opset: int, domain: str = "") -> bool:
    try:
        schema = onnx.defs.get_schema(op_type, opset, "" if domain == "ai.onnx" else domain)
    except onnx.defs.SchemaError:
        return False
    versions = [*schema.function_opset_versions, *schema.context_dependent_function_opset_versions]
    return any(v <= opset for v in versions)


def _inline_expansions(model: ir.Model) -> None:
    if any(node.domain == EXPAND_DOMAIN for node in model.graph):
        common.InlinePass()(model)
        common.RemoveUnusedFunctionsPass()(model)
        model.opset_imports.pop(EXPAND_DOMAIN, None)


def _replace(graph: ir.Graph, node: ir.Node, replacements: list[ir.Value | None]) -> None:
    for old, new in zip(node.outputs, replacements, strict=True):
        if new is None:
            if old.uses() or any(value is old for value in graph.outputs):
                raise ValueError(f"no replacement for used output '{old.name}'")
            continue
        new.shape, new.type = old.shape, old.type
        graph_edit.replace_output(graph, old, new)
    graph.remove(node, safe=True)


def _used(value: ir.Value | None, graph: ir.Graph) -> bool:
    return value is not None and (bool(value.uses()) or any(out is value for out in graph.outputs))


# --- function expansion (the ONNX spec's own definition of the op) ---


def expand_function(model: ir.Model, node: ir.Node, opset: int) -> int:
    """Turn `node` into a call of its schema's function body (for this opset and these input types), inlined by
    onnx-ir's inliner at the end of `lower_unsupported_forms`. Returns 1, or 0 when the schema has no body."""
    if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
        return 0  # onnx-ir's inliner cannot pass a graph attribute (SequenceMap's body) into a function
    proto = function_body(node, opset, _domain_version(model, node.domain, opset))
    if proto is None:
        return 0
    proto.domain, proto.name = EXPAND_DOMAIN, f"{node.op_type}_{id(node)}"
    try:
        function = ir.serde.deserialize_function(proto)
    except ir.serde.SerdeError:
        return 0  # left as it is: refused by name later
    model.functions[function.identifier()] = function
    model.opset_imports.setdefault(EXPAND_DOMAIN, 1)
    node.domain, node.op_type = EXPAND_DOMAIN, proto.name
    return 1


def function_body(node: ir.Node, opset: int, domain_version: int | None = None) -> onnx.FunctionProto | None:
    """The FunctionProto ONNX defines `node`'s op by, at the newest function version <= its domain's version
    (`domain_version`, default `opset`), with the node's omitted attributes given their defaults (the body refers
    to them by name). The body is stamped with the model's default `opset`."""
    version = opset if domain_version is None else domain_version
    schema = onnx.defs.get_schema(node.op_type, version, "" if node.domain == "ai.onnx" else node.domain)
    node_proto = ir.serde.serialize_node(node)
    for name, attribute in schema.attributes.items():
        if name not in node.attributes and attribute.default_value.name:
            node_proto.attribute.append(attribute.default_value)
    proto = onnx.FunctionProto()
    plain = [v for v in schema.function_opset_versions if v <= version]
    dependent = [v for v in schema.context_dependent_function_opset_versions if v <= version]
    if dependent and (not plain or max(dependent) >= max(plain)):
        inputs = node.inputs
        # with shapes: bodies such as RotaryEmbedding's are built for the input's rank (empty without it)
        types = [ir.serde.serialize_value(v).type if v is not None and v.type else onnx.TypeProto() for v in inputs]
        proto.ParseFromString(
            schema.get_context_dependent_function_with_opset_version(
                max(dependent), node_proto.SerializeToString(), [t.SerializeToString() for t in types]
            )
        )
    elif plain:
        proto.ParseFromString(schema.get_function_with_opset_version(max(plain)))
    else:
        return None
    if not proto.node or not _restamp_opset(proto, opset):
        return None
    # a context-dependent body is written for the outputs the node has: it may not produce the others it lists
    del proto.output[len(node.outputs) :]
    _stub_unused_outputs(proto, node)
    produced = {name for body_node in proto.node for name in body_node.output} | set(proto.input)
    if any(name not in produced for name in proto.output):
        return None
    for attribute in node_proto.attribute:
        if attribute.name not in node.attributes:
            node.attributes[attribute.name] = ir.serde.deserialize_attribute(attribute)
    return proto


def _stub_unused_outputs(proto: onnx.FunctionProto, node: ir.Node) -> None:
    """A body built for the outputs a node uses leaves the others unproduced; give each one a placeholder
    constant so the inliner can map every position (nothing reads it, dead-code removal drops it)."""
    produced = {name for body_node in proto.node for name in body_node.output} | set(proto.input)
    for index, name in enumerate(proto.output):
        if name not in produced and not node.outputs[index].name and not node.outputs[index].uses():
            proto.node.append(onnx.helper.make_node("Constant", [], [name], value_float=0.0))


def _restamp_opset(proto: onnx.FunctionProto, opset: int) -> bool:
    """Make the body import the model's default opset (the inliner requires it), where that changes no op's
    meaning: every op the body calls must have the same definition at both versions. False if one does not."""
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    if written == opset:
        return True
    for body_node in proto.node:
        if body_node.domain not in ("", "ai.onnx"):
            continue
        try:
            then = onnx.defs.get_schema(body_node.op_type, written, "").since_version
            now = onnx.defs.get_schema(body_node.op_type, opset, "").since_version
        except onnx.defs.SchemaError:
            return False
        if then != now:
            return False
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = opset
    return True


def _extra_outputs_used(node: ir.Node) -> bool:
    graph = node.graph
    return graph is not None and any(_used(value, graph) for value in node.outputs[1:])


# --- rules following the operator text ---


def _isinf_flags(node: ir.Node) -> bool:
    return not (node.attributes.get_int("detect_negative", 1) and node.attributes.get_int("detect_positive", 1))


def _lower_isinf(b: Builder, node: ir.Node) -> list[ir.Value | None] | None:
    """IsInf with one direction switched off: equality with that infinity (neither: never true)."""
    x = node.inputs[0]
    if x is None or x.dtype is None:
        return None
    dtype = x.dtype.numpy()
    negative = node.attributes.get_int("detect_negative", 1)
    positive = node.attributes.get_int("detect_positive", 1)
    if positive:
        return [b.op("Equal", x, b.const(np.inf, dtype))]
    if negative:
        return [b.op("Equal", x, b.const(-np.inf, dtype))]
    return [b.op("And", b.op("Equal", x, b.const(np.inf, dtype)), b.op("Equal", x, b.const(-np.inf, dtype)))]


def _lower_bitshift(b: Builder, node: ir.Node) -> list[ir.Value | None] | None:
    """Shifts by a negative amount or by >= the type's width give the sign fill (0, or -1 for a negative X
    shifted right) per the spec; LLVM's shift is undefined there, so those lanes are selected apart."""
    x, y = node.inputs[0], node.inputs[1]
    if x is None or y is None or x.dtype is None:
        return None
    dtype = x.dtype.numpy()
    width = dtype.itemsize * 8
    out_of_range = b.op("GreaterOrEqual", y, b.const(width, y.dtype.numpy()))
    if dtype.kind == "i":
        out_of_range = b.op("Or", out_of_range, b.op("Less", y, b.const(0, dtype)))
    zero = b.const(0, dtype)
    safe = b.op("Where", out_of_range, zero, y)
    direction = node.attributes.get_string("direction", "LEFT")
    shifted = b.op("BitShift", x, safe, direction=direction)
    fill = zero
    if direction == "RIGHT" and dtype.kind == "i":
        fill = b.op("Where", b.op("Less", x, zero), b.const(-1, dtype), zero)
    return [b.op("Where", out_of_range, fill, shifted)]


def _always(node: ir.Node) -> bool:
    return True


def _static_nchw(x: ir.Value | None) -> tuple[int, int, int, int] | None:
    """The four static dimensions of a 4-D value, or None (the rewrite needs them for its reshapes)."""
    if x is None or x.shape is None or len(x.shape) != 4 or not all(isinstance(d, int) for d in x.shape):
        return None
    n, c, h, w = (int(d) for d in x.shape)
    return n, c, h, w


def _lower_space_to_depth(b: Builder, node: ir.Node) -> list[ir.Value | None] | None:
    """SpaceToDepth as Reshape/Transpose/Reshape in either mode (the importer knows only DCR)."""
    x = node.inputs[0]
    if (dims := _static_nchw(x)) is None:
        return None
    n, c, h, w = dims
    bs = node.attributes.get_int("blocksize", 1)
    if bs < 1 or h % bs or w % bs:
        return None
    mode = node.attributes.get_string("mode", "DCR")
    blocks = b.op("Reshape", x, b.const([n, c, h // bs, bs, w // bs, bs], np.int64))
    perm = [0, 3, 5, 1, 2, 4] if mode == "DCR" else [0, 1, 3, 5, 2, 4]
    moved = b.op("Transpose", blocks, perm=perm)
    return [b.op("Reshape", moved, b.const([n, c * bs * bs, h // bs, w // bs], np.int64))]


def _lower_depth_to_space(b: Builder, node: ir.Node) -> list[ir.Value | None] | None:
    """DepthToSpace as Reshape/Transpose/Reshape in both modes, as the operator text writes it."""
    x = node.inputs[0]
    if (dims := _static_nchw(x)) is None:
        return None
    n, c, h, w = dims
    bs = node.attributes.get_int("blocksize", 1)
    if bs < 1 or c % (bs * bs):
        return None
    if node.attributes.get_string("mode", "DCR") == "DCR":
        blocks = b.op("Reshape", x, b.const([n, bs, bs, c // (bs * bs), h, w], np.int64))
        moved = b.op("Transpose", blocks, perm=[0, 3, 4, 1, 5, 2])
    else:
        blocks = b.op("Reshape", x, b.const([n, c // (bs * bs), bs, bs, h, w], np.int64))
        moved = b.op("Transpose", blocks, perm=[0, 1, 4, 2, 5, 3])
    return [b.op("Reshape", moved, b.const([n, c // (bs * bs), h * bs, w * bs], np.int64))]


def _identity_dropout(node: ir.Node) -> bool:
    """Dropout is the identity in inference mode (no training_mode input, or a constant false one) and in
    training mode with a constant ratio of 0; any other training-mode Dropout is refused in onnx_support."""
    training = node.inputs[2] if len(node.inputs) > 2 else None
    value = graph_edit.constant(training)
    if training is None or (value is not None and not bool(value)):
        return True
    ratio = graph_edit.constant(node.inputs[1] if len(node.inputs) > 1 else None)
    return value is not None and ratio is not None and float(ratio) == 0.0


def _lower_dropout(b: Builder, node: ir.Node) -> list[ir.Value | None] | None:
    """Output = input, mask = all true (bool, the spec's mask type; the importer's mask is float)."""
    x = node.inputs[0]
    outputs: list[ir.Value | None] = [b.op("Identity", x)]
    if len(node.outputs) > 1:
        if x is None or x.shape is None or not all(isinstance(d, int) for d in x.shape):
            return None
        outputs.append(b.const(np.ones([int(d) for d in x.shape], dtype=np.bool_)))
    return outputs


def _lowest(dtype: np.dtype) -> Any:
    return -np.inf if dtype.kind == "f" else False if dtype.kind == "b" else np.iinfo(dtype).min


def _highest(dtype: np.dtype) -> Any:
    return np.inf if dtype.kind == "f" else True if dtype.kind == "b" else np.iinfo(dtype).max


_REDUCE_IDENTITY = {
    "ReduceMax": _lowest,
    "ReduceMin": _highest,
    "ReduceSum": lambda dtype: 0,
    "ReduceSumSquare": lambda dtype: 0,
    "ReduceL1": lambda dtype: 0,
    "ReduceL2": lambda dtype: 0,
    "ReduceProd": lambda dtype: 1,
    "ReduceLogSum": lambda dtype: -np.inf,
    "ReduceLogSumExp": lambda dtype: -np.inf,
    "ReduceMean": lambda dtype: np.nan,
}


def _empty_reduction(node: ir.Node) -> bool:
    """A reduction whose input has no elements: its output is the reduction's identity (or NaN for a mean)."""
    x, out = node.inputs[0] if node.inputs else None, node.outputs[0]
    return (
        x is not None
        and x.shape is not None
        and any(d == 0 for d in x.shape)
        and out.shape is not None
        and all(isinstance(d, int) for d in out.shape)
    )


def _lower_empty_reduction(b: Builder, node: ir.Node) -> list[ir.Value | None] | None:
    out = node.outputs[0]
    if out.dtype is None or out.shape is None:
        return None
    dtype = out.dtype.numpy()
    shape = [int(d) for d in out.shape]
    if any(d == 0 for d in shape):
        return None  # an empty output of an empty input: nothing to compute, nothing to refuse here
    fill = _REDUCE_IDENTITY[node.op_type](dtype)
    return [b.op("Identity", b.const(np.full(shape, fill, dtype=dtype)))]


def _empty_or_boolean(node: ir.Node) -> bool:
    return boolean_reduction[0](node) or _empty_reduction(node)


def _lower_empty_or_boolean_reduction(b: Builder, node: ir.Node) -> list[ir.Value | None] | None:
    """An empty reduction is its identity (booleans too); a boolean one otherwise runs over bytes."""
    if _empty_reduction(node):
        return _lower_empty_reduction(b, node)
    return boolean_reduction[1](b, node)


def _has_output_shape(node: ir.Node) -> bool:
    return "output_shape" in node.attributes


def _lower_conv_transpose(b: Builder, node: ir.Node) -> list[ir.Value | None] | None:
    """ConvTranspose's `output_shape` as explicit pads (the importer ignores it), by the spec's formula; a
    negative total padding (a larger output) becomes extra output_padding at the end while that stays below
    the stride, else the node is left for onnx_support to refuse."""
    x, w = node.inputs[0], node.inputs[1]
    if x is None or w is None or x.shape is None or w.shape is None:
        return None
    dims = [d if isinstance(d, int) else None for d in (*x.shape, *w.shape)]
    if None in dims:
        return None
    rank, spatial = len(x.shape), len(x.shape) - 2
    sizes, kernel = [int(d) for d in x.shape[2:]], [int(d) for d in w.shape[2:]]
    wanted = list(node.attributes.get_ints("output_shape", []))
    wanted = wanted[2:] if len(wanted) == rank else wanted
    strides = list(node.attributes.get_ints("strides", [1] * spatial))
    dilations = list(node.attributes.get_ints("dilations", [1] * spatial))
    output_padding = list(node.attributes.get_ints("output_padding", [0] * spatial))
    upper = node.attributes.get_string("auto_pad", "NOTSET") == "SAME_UPPER"
    if len(wanted) != spatial:
        return None
    begin, end = [], []
    for i in range(spatial):
        total = strides[i] * (sizes[i] - 1) + output_padding[i] + (kernel[i] - 1) * dilations[i] + 1 - wanted[i]
        if total < 0:
            output_padding[i] -= total
            if output_padding[i] >= max(strides[i], dilations[i]):
                return None
            total = 0
        small, large = total // 2, total - total // 2
        begin.append(small if upper else large)
        end.append(large if upper else small)
    attributes = {k: v for k, v in node.attributes.items() if k not in ("output_shape", "auto_pad", "pads")}
    lowered = b.op("ConvTranspose", *node.inputs, pads=begin + end, output_padding=output_padding)
    lowered.producer().attributes.update({k: v for k, v in attributes.items() if k != "output_padding"})
    return [lowered]


def _float_floor_mod(node: ir.Node) -> bool:
    x = node.inputs[0] if node.inputs else None
    return (
        node.attributes.get_int("fmod", 0) == 0
        and x is not None
        and x.dtype is not None
        and x.dtype.is_floating_point()
    )


def _lower_float_floor_mod(b: Builder, node: ir.Node) -> list[ir.Value | None] | None:
    """Float Mod with fmod=0 as x - floor(x/y)*y, with the spec's case for an infinite y and a finite x: 0 for
    x = 0, else x when both have the same sign, else y (the formula alone gives NaN there)."""
    x, y = node.inputs[0], node.inputs[1]
    if x is None or y is None or x.dtype is None:
        return None
    dtype = x.dtype.numpy()
    zero = b.const(0, dtype)
    formula = b.op("Sub", x, b.op("Mul", b.op("Floor", b.op("Div", x, y)), y))
    x_finite = b.op("Not", b.op("Or", b.op("IsInf", x), b.op("IsNaN", x)))
    infinite_case = b.op("And", b.op("IsInf", y), x_finite)
    signs_differ = b.op("Xor", b.op("Less", x, zero), b.op("Less", y, zero))
    by_sign = b.op("Where", b.op("Equal", x, zero), zero, b.op("Where", signs_differ, y, x))
    return [b.op("Where", infinite_case, by_sign, formula)]


def _training_mode(node: ir.Node) -> bool:
    return node.attributes.get_int("training_mode", 0) == 1


def _lower_batchnorm_training(b: Builder, node: ir.Node) -> list[ir.Value | None] | None:
    """BatchNormalization with training_mode=1 normalises with the batch's own mean and (population) variance
    and returns the running statistics moved by `momentum`, as the operator text says; the importer uses the
    given mean and variance instead."""
    x, scale, bias, mean, var = (list(node.inputs) + [None] * 5)[:5]
    if x is None or x.shape is None or None in (scale, bias, mean, var):
        return None
    rank = len(x.shape)
    if rank < 2:
        return None
    axes = [0, *range(2, rank)]
    epsilon = node.attributes.get_float("epsilon", 1e-5)
    momentum = node.attributes.get_float("momentum", 0.9)
    dtype = x.dtype.numpy()
    per_channel = b.const([-1] + [1] * (rank - 2), np.int64)
    batch_mean = _reduce_mean(b, x, axes)
    centred = b.op("Sub", x, batch_mean)
    batch_var = _reduce_mean(b, b.op("Mul", centred, centred), axes)
    normalised = b.op("Div", centred, b.op("Sqrt", b.op("Add", batch_var, b.const(epsilon, dtype))))
    y = b.op("Add", b.op("Mul", normalised, b.op("Reshape", scale, per_channel)), b.op("Reshape", bias, per_channel))
    flat = b.const([-1], np.int64)
    outputs: list[ir.Value | None] = [y]
    for running, batch in ((mean, batch_mean), (var, batch_var)):
        moved = b.op("Mul", b.op("Reshape", batch, flat), b.const(1 - momentum, dtype))
        outputs.append(b.op("Add", b.op("Mul", running, b.const(momentum, dtype)), moved))
    return outputs[: len(node.outputs)]


def _reduce_mean(b: Builder, x: ir.Value, axes: list[int]) -> ir.Value:
    return _reduce(b, "ReduceMean", x, axes)


def _reduce(b: Builder, op_type: str, x: ir.Value, axes: list[int]) -> ir.Value:
    """A reduction keeping dims, with the axes where this opset wants them (an input from opset 18 on)."""
    if b.opset >= 18:
        return b.op(op_type, x, b.const(axes, np.int64), keepdims=1)
    return b.op(op_type, x, axes=axes, keepdims=1)


def _normalizes_more_than_last_axis(node: ir.Node) -> bool:
    """TVM's rms_norm indexes its scale by the last axis only; a leading `axis` fails in its compute."""
    x = node.inputs[0] if node.inputs else None
    axis = node.attributes.get_int("axis", -1)
    return x is None or x.shape is None or axis % len(x.shape) != len(x.shape) - 1


def _mixed_type_pow(node: ir.Node) -> bool:
    base, exponent = [*node.inputs, None, None][:2]
    return base is not None and exponent is not None and base.dtype != exponent.dtype


def _lower_mixed_type_pow(b: Builder, node: ir.Node) -> list[ir.Value | None] | None:
    """Pow with an exponent of another type: a float base takes the exponent in its type; an integer base is
    raised in float64 and truncated back, as ONNX's reference (numpy's power, then astype)."""
    base, exponent = node.inputs[0], node.inputs[1]
    if base.dtype is None or exponent.dtype is None:
        return None
    if base.dtype.is_floating_point():
        return [b.op("Pow", base, b.op("Cast", exponent, to=base.dtype))]
    wide = ir.DataType.DOUBLE
    power = b.op("Pow", b.op("Cast", base, to=wide), b.op("Cast", exponent, to=wide))
    return [b.op("Cast", power, to=base.dtype)]


def _typed_cast_like(node: ir.Node) -> bool:
    return len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].dtype is not None


def _lower_cast_like(b: Builder, node: ir.Node) -> list[ir.Value | None] | None:
    """CastLike as the Cast it means: TVM's importer returns a constant input uncast (a float32 zero stayed
    float32 beside float16 data in the Attention body and failed to compile)."""
    attributes = {"saturate": node.attributes.get_int("saturate", 1)} if b.opset >= 19 else {}
    return [b.op("Cast", node.inputs[0], to=node.inputs[1].dtype, **attributes)]


def _lower_lp_normalization(b: Builder, node: ir.Node) -> list[ir.Value | None] | None:
    """x / ||x||_p along `axis` (p 1 or 2), and 0 where the norm is 0, as ONNX's reference and onnxruntime do."""
    p = node.attributes.get_int("p", 2)
    x = node.inputs[0]
    if p not in (1, 2) or x is None or x.dtype is None:
        return None
    norm = _reduce(b, "ReduceL1" if p == 1 else "ReduceL2", x, [node.attributes.get_int("axis", -1)])
    zero = b.const(np.zeros((), x.dtype.numpy()))
    return [b.op("Where", b.op("Equal", norm, zero), zero, b.op("Div", x, norm))]


def _constant_without_tensor(node: ir.Node) -> bool:
    return graph_edit.attribute_constant(node) is not None


def _lower_constant(b: Builder, node: ir.Node) -> list[ir.Value | None] | None:
    """Constant(value_int(s)/value_float(s)) as Constant(value=tensor): the importer reads only `value`. (The
    passes' constant folder writes Shape and Size results that way too: `graph_edit.lower_constant_attributes`.)"""
    return [b.op("Constant", value=ir.tensor(graph_edit.attribute_constant(node)))]


RULES: dict[str, Rule] = {
    "Constant": Rule(_constant_without_tensor, _lower_constant),
    "LpNormalization": Rule(_always, _lower_lp_normalization),
    "RMSNormalization": Rule(_normalizes_more_than_last_axis, lambda b, node: None),
    "Pow": Rule(_mixed_type_pow, _lower_mixed_type_pow),
    "CastLike": Rule(_typed_cast_like, _lower_cast_like),
    "BatchNormalization": Rule(_training_mode, _lower_batchnorm_training),
    "ConvTranspose": Rule(_has_output_shape, _lower_conv_transpose),
    "Mod": Rule(_float_floor_mod, _lower_float_floor_mod),
    "LayerNormalization": Rule(_extra_outputs_used, lambda b, node: None),
    "IsInf": Rule(_isinf_flags, _lower_isinf),
    "BitShift": Rule(_always, _lower_bitshift),
    "SpaceToDepth": Rule(_always, _lower_space_to_depth),
    "DepthToSpace": Rule(_always, _lower_depth_to_space),
    "Dropout": Rule(_identity_dropout, _lower_dropout),
    "MatMul": Rule(*DEQUANTIZED_MATMUL),
    **{op: Rule(_empty_reduction, _lower_empty_reduction) for op in _REDUCE_IDENTITY},
    **{op: Rule(_always, lower) for op, lower in RECURRENT_LOWERINGS.items()},
    **{op: Rule(_always, lower) for op, lower in INTEGER_LOWERINGS.items()},
    **{op: Rule(*rule) for op, rule in TENSOR_LOWERINGS.items()},
    **{op: Rule(_empty_or_boolean, _lower_empty_or_boolean_reduction) for op in BOOLEAN_REDUCTIONS},
}
# Ops whose rule is "expand to the ONNX function body" rather than a hand-written lowering.
FUNCTION_EXPANSIONS = {"LayerNormalization", "RMSNormalization"}
