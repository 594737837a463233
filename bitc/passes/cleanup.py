"""Standard graph clean-ups, under bitc names; the work is done by onnx-ir and onnxscript's own passes."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript.rewriter import RewritePass
from onnxscript.rewriter.rules import common as rules

from bitc.errors import CompileError
from bitc.ir import graph_edit
from bitc.ir.graph_edit import add_initializer
from bitc.ir.shapes import infer_shapes, twin_shapes
from bitc.passes.options import configure, option
from bitc.passes.registry import register


def _fold_constants_pass() -> type:
    """onnxscript's FoldConstantsPass, imported on first use. Its module is private: a release that moves it
    fails this pass with a message naming the versions that have it, not `import bitc.passes` with an ImportError."""
    try:
        from onnxscript.optimizer._constant_folding import FoldConstantsPass
    except ImportError as exc:
        import onnxscript

        raise CompileError(
            "fold_constants needs FoldConstantsPass from onnxscript's private module "
            "onnxscript.optimizer._constant_folding, which onnxscript 0.5 to 0.7.2 have (installed: "
            f"{getattr(onnxscript, '__version__', 'unknown')}; pip install 'onnxscript>=0.5,<=0.7.2'): {exc}"
        ) from None
    return FoldConstantsPass


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@register("fold_constants", phase="cleanup", exact=True)
class FoldConstants(ir.passes.InPlacePass):
    """Evaluate constant subgraphs into initializers; turn inference-mode Dropout into Identity."""

    @dataclass(frozen=True)
    class Options:
        input_size_limit: int = option(1 << 27, "largest constant input (elements) a folded node may read")
        output_size_limit: int = option(1 << 27, "largest constant (elements) folding may create")

    def __init__(self, **options: Any) -> None:
        super().__init__()
        o = self.options = configure(self, options)
        self.input_size_limit = o.input_size_limit
        self.output_size_limit = o.output_size_limit

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folder = _fold_constants_pass()(
            shape_inference=True, input_size_limit=self.input_size_limit, output_size_limit=self.output_size_limit
        )
        # The folder logs every node it cannot evaluate; that is expected and not the user's concern.
        with _quiet("onnxscript.optimizer"):
            result = folder(model)
        filled = _materialize_constant_fills(model, self.output_size_limit)
        if filled:  # the fills' shape constants are unused now, and what reads a fill may fold now
            common.RemoveUnusedNodesPass()(model)
            with _quiet("onnxscript.optimizer"):
                folder(model)
        if _materialize_known_outputs(model):
            filled = True
            common.RemoveUnusedNodesPass()(model)
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        rewritten = graph_edit.lower_constant_attributes(model)  # constant outputs the lift leaves
        if any(twin_shapes(node) for node in model.graph):
            # the folder's inference stops at weight-only quantized products, leaving what follows them with the
            # shapes it had before the folding: one run that sees through them
            infer_shapes(model, source="fold_constants")
        return ir.passes.PassResult(model, result.modified or filled or bool(rewritten))


def _materialize_constant_fills(model: ir.Model, limit: int) -> bool:
    """ConstantOfShape of a constant shape → the tensor itself (the folder leaves fills alone). Exporters write
    weights that way (the onnx 'light' models): as initializers, BN folding and the channel passes can use them."""
    changed = False
    for node in list(model.graph):
        if (
            node.op_type != "ConstantOfShape"
            or node.domain not in ("", "ai.onnx")
            or node.inputs[0].const_value is None
        ):
            continue
        shape = [int(d) for d in node.inputs[0].const_value.numpy().reshape(-1)]
        if int(np.prod(shape)) > limit:
            continue
        fill = node.attributes.get("value")
        scalar = fill.as_tensor().numpy().reshape(-1)[0] if fill is not None else np.float32(0)
        array = np.full(shape, scalar, dtype=np.asarray(scalar).dtype)
        output = node.outputs[0]
        if f"{output.name}__fill" in model.graph.initializers:
            continue
        constant = add_initializer(model.graph, array, f"{output.name}__fill")
        if output.is_graph_output():
            continue
        ir.convenience.replace_all_uses_with(output, constant)
        model.graph.remove(node, safe=True)
        changed = True
    return changed


def _materialize_known_outputs(model: ir.Model) -> bool:
    """Nodes whose every output the folder computed (it sets const_value but may keep the node, e.g. a Cast of
    a constant) → initializers. TVM's importer returns a Cast's constant input uncast, so such a node would
    compile to the wrong dtype."""
    changed = False
    for node in list(model.graph):
        outputs = list(node.outputs)
        if node.domain not in ("", "ai.onnx") or not outputs or any(v.const_value is None for v in outputs):
            continue
        if node.op_type in _NONDETERMINISTIC:
            continue
        for output in outputs:
            constant = add_initializer(model.graph, output.const_value.numpy(), f"{output.name}__folded")
            graph_edit.replace_output(model.graph, output, constant)
        changed = True
    return changed


_NONDETERMINISTIC = {
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
}  # fmt: skip


@register("simplify", phase="cleanup", exact=True)
class Simplify(ir.passes.InPlacePass):
    """Remove x·1, x+0, x−0, x/1 (scalar constants), no-op casts, transposes, reshapes and expands."""

    RULES = (
        rules.dropout_inference_rule,
        rules.dropout_zero_rule,
        rules.add_0_rule,
        rules.sub_0_rule,
        rules.mul_by_1_rule,
        rules.div_by_1_rule,
        rules.no_op_cast_rule,
        rules.cast_cast_rule,
        rules.no_op_transpose_rule,
        rules.transpose_transpose_rule,
        rules.reshape_reshape_rule,
        rules.no_op_expand_rule,
        rules.unsqueeze_unsqueeze_rule,
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return RewritePass(list(self.RULES))(model)


@register("eliminate_identity", phase="cleanup", exact=True)
class EliminateIdentity(ir.passes.InPlacePass):
    """Remove Identity nodes, renaming values so graph outputs keep their names.

    An Identity whose output is a graph output stays when its input cannot take that name: a graph input or
    initializer, another graph output (both names must survive), or a value of an enclosing graph (a subgraph
    output may not be an outer graph's value)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
            modified |= _eliminate_identity(node)
        return ir.passes.PassResult(model, modified)


def _eliminate_identity(node: ir.Node) -> bool:
    if node.op_type != "Identity" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 1:
        return False
    source, result, graph = node.inputs[0], node.outputs[0], node.graph
    if source is None or graph is None:
        return False
    result_is_output = result.is_graph_output()
    if result_is_output:
        producer = source.producer()
        if producer is None or producer.graph is not graph or source.is_graph_output():
            return False
    if source.shape is None:
        source.shape = result.shape
    if source.type is None:
        source.type = result.type
    name = result.name
    ir.convenience.replace_all_uses_with(result, source, replace_graph_outputs=True)
    if result_is_output:  # the output keeps its name; a source that already was an output keeps its own
        source.name = name
    graph.remove(node, safe=True)
    return True


@register("cse", phase="final", exact=True)
class EliminateCommonSubexpressions(ir.passes.InPlacePass):
    """Merge nodes that compute the same thing from the same inputs."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return common.CommonSubexpressionEliminationPass()(model)


@register("remove_unused", phase="final", exact=True)
class RemoveUnused(ir.passes.InPlacePass):
    """Remove nodes, initializers and opset imports that no output depends on."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        nodes = common.RemoveUnusedNodesPass()(model)
        opsets = common.RemoveUnusedOpsetsPass()(model)
        return ir.passes.PassResult(model, nodes.modified or opsets.modified)
