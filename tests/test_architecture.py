"""ARCHITECTURE.md's claims, checked: every pass and op is declared once and everything else is derived from that
declaration; a new pass is one file; the runtime and the passes keep to their layers."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from bitc import ops
from bitc.cli import main as cli_main
from bitc.config import load_config
from bitc.errors import BadInputError
from bitc.passes import PHASES, insert_pass, passes, registry
from bitc.passes.options import option, type_hints

ROOT = Path(__file__).resolve().parents[1]


def test_every_pass_declares_a_phase_and_options_with_types_and_help():
    for name, item in passes().items():
        assert item.phase in PHASES, name
        options = item.options_class
        assert dataclasses.is_dataclass(options), name
        hints = type_hints(options)
        for field in dataclasses.fields(options):
            assert field.name in hints, (name, field.name)
            assert field.metadata.get("help"), f"{name}.{field.name} has no help line"
        assert item.summary, f"pass {name} has no one-line description"


def test_default_pipeline_is_in_phase_order():
    from bitc.passes import DEFAULT_PIPELINE

    ranks = [passes()[name].rank for name in DEFAULT_PIPELINE]
    assert ranks == sorted(ranks)


def test_option_passes_go_where_their_phase_puts_them():
    pipeline = insert_pass(None, "binarize", {"planes": 2})
    pipeline = insert_pass(pipeline, "prune", {"ratio": 0.5})
    pipeline = insert_pass(pipeline, "lowbit_linear", {})
    pipeline = insert_pass(pipeline, "reorder", {})
    names = [name for name, _ in pipeline]
    assert names.index("fold_batchnorm") < names.index("prune") < names.index("reorder")
    assert names.index("reorder") < names.index("lowbit_linear") < names.index("binarize")
    assert names.index("binarize") < names.index("lower_binary") < names.index("fuse_binary") < names.index("cse")
    # a pipeline without the binary lowering gets it, after binarize and before the final clean-ups
    names = [name for name, _ in insert_pass("fold_constants,remove_unused", "binarize", {})]
    assert names == ["fold_constants", "binarize", "lower_binary", "fuse_binary", "remove_unused"]
    with pytest.raises(BadInputError, match="asked for twice"):
        insert_pass("fold_constants,prune", "prune", {})


def test_every_option_source_goes_through_one_validator(tmp_path):
    message = "[prune] 'ratio' must be a number, got 'x'"
    with pytest.raises(BadInputError, match=_re(message)):
        registry.create("prune", {"ratio": "x"})
    (tmp_path / "bitc.toml").write_text('[prune]\nratio = "x"\n')
    with pytest.raises(BadInputError, match=_re(message)):
        load_config(tmp_path / "bitc.toml")
    from bitc.passes.prune import Prune

    with pytest.raises(BadInputError, match=_re(message)):
        Prune(ratio="x")


# --------------------------------------------------------------------------------- a new pass is one declaration


def _identity_model(path: Path) -> Path:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    model = onnx.helper.make_model(
        onnx.helper.make_graph([node], "g", [x], [y]), opset_imports=[onnx.helper.make_opsetid("", 17)]
    )
    onnx.save(model, path)
    return path


@pytest.fixture
def toy_pass():
    """A pass declared here and nowhere else, registered for the test's duration."""

    @registry.register("scale_outputs", phase="final", switch=("--scale-outputs", "multiply every float output"))
    class ScaleOutputs(ir.passes.InPlacePass):
        """Multiply every graph output by a constant (a test pass: declared here and nowhere else)."""

        @dataclass(frozen=True)
        class Options:
            factor: float = option(2.0, "the multiplier", flag="--scale-factor", metavar="F")

        def __init__(self, **options) -> None:
            super().__init__()
            from bitc.passes.options import configure

            self.options = configure(self, options)

        def call(self, model: ir.Model) -> ir.passes.PassResult:
            graph = model.graph
            for index, output in enumerate(list(graph.outputs)):
                factor = ir.Value(name=f"{output.name}__factor", const_value=ir.tensor(np.float32(self.options.factor)))
                graph.register_initializer(factor)
                node = ir.node("Mul", [output, factor], name=f"scale_{index}")
                graph.append(node)
                node.outputs[0].shape, node.outputs[0].dtype = output.shape, output.dtype
                graph.outputs[index] = node.outputs[0]
            return ir.passes.PassResult(model, True)

    yield ScaleOutputs
    registry._PASSES.pop("scale_outputs", None)


def test_a_new_pass_gets_config_cli_and_compile_keyword_from_its_declaration(toy_pass, tmp_path, capsys):
    import bitc

    model = _identity_model(tmp_path / "m.onnx")
    x = np.array([[-1.0, 0.5, 2.0], [3.0, -4.0, 0.0]], np.float32)
    # the Python API: a keyword named after the pass
    result = bitc.compile(model, tmp_path / "api.bitc", scale_outputs={"factor": 3.0})
    np.testing.assert_allclose(bitc.load(result.path)(x), np.maximum(x, 0) * 3.0)
    # bitc.toml: a table named after the pass, validated against its Options
    (tmp_path / "bitc.toml").write_text("[scale_outputs]\nfactor = 5\n")
    assert load_config(tmp_path / "bitc.toml") == {"scale_outputs": {"factor": 5}}
    (tmp_path / "bad.toml").write_text("[scale_outputs]\nfactr = 5\n")
    with pytest.raises(BadInputError, match="unknown key 'factr' in \\[scale_outputs\\]"):
        load_config(tmp_path / "bad.toml")
    # CLI: the declared switch and flag; the flag wins over the config file
    out = tmp_path / "cli.bitc"
    args = ["compile", str(model), "-o", str(out), "--config", str(tmp_path / "bitc.toml"), "--scale-factor", "4"]
    assert cli_main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert next(p for p in summary["passes"] if p["name"] == "scale_outputs")["options"] == {"factor": 4.0}
    np.testing.assert_allclose(bitc.load(out)(x), np.maximum(x, 0) * 4.0)
    assert cli_main(["compile", str(model), "-o", str(out), "--scale-factor", "many"]) == 2
    assert "--scale-factor must be a number" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------ the ops


def test_every_op_declares_inputs_a_reference_and_a_shape_rule():
    for name, op in ops.registered().items():
        assert op.inputs, f"{name} declares no inputs"
        assert op.reference is not ops.BitcOp.reference, f"{name} has no numpy reference"
        assert op.output_types.__func__ is not ops.BitcOp.output_types.__func__, f"{name} has no shape rule"
        assert set(op.targets) <= {"llvm", "cuda"}, name
        assert not set(op.required) & set(op.attributes), f"{name}: an attribute is both required and defaulted"


def test_every_target_an_op_claims_has_an_emitter():
    from bitc.codegen import registry as kernels

    emitted = kernels.emitted_op_types()
    for name, op in ops.registered().items():
        for kind in op.targets:
            assert name in emitted[kind], f"{name} claims target {kind} but has no emitter for it"
    for kind, names in emitted.items():
        assert set(names) <= set(ops.registered()), f"{kind} emits ops nobody declared"


@pytest.fixture
def toy_op():
    """A bitc op and its CPU kernel, declared here and nowhere else, for the test's duration."""
    from tvm import te

    from bitc.codegen import registry as kernels
    from bitc.ops import base

    class ToySquare(ops.BitcOp):
        """x·x, elementwise."""

        name = "ToySquare"
        inputs = ("x",)
        targets = ("llvm",)

        @classmethod
        def output_types(cls, input_shapes, **attrs):
            return [(ir.DataType.FLOAT, tuple(input_shapes[0]))]

        @staticmethod
        def reference(x, **attrs):
            return (x * x,)

    @kernels.emitter("ToySquare", "llvm")
    def emit(bb, node, args, target):
        return bb.emit_te(lambda x: te.compute(x.shape, lambda *i: x(*i) * x(*i), name="square"), args[0])

    yield ToySquare
    base._OPS.pop("ToySquare")
    kernels._EMITTERS.pop(("bitc", "ToySquare", "llvm"))


def test_a_new_op_is_its_declaration_and_its_kernel(toy_op, tmp_path):
    import bitc

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 5])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 5])
    nodes = [
        onnx.helper.make_node("ToySquare", ["x"], ["s"], domain="bitc"),
        onnx.helper.make_node("Neg", ["s"], ["y"]),
    ]
    opsets = [onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("bitc", 1)]
    onnx.save(
        onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [x], [y]), opset_imports=opsets), tmp_path / "m.onnx"
    )
    value = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    result = bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc")
    np.testing.assert_array_equal(bitc.load(result.path)(value), -(value * value))


def test_a_node_without_a_required_attribute_is_refused_naming_it():
    from bitc.errors import CompileError

    node = ir.node("BinaryDense", [ir.Value(name="x"), ir.Value(name="w")], domain=ops.DOMAIN, name="fc")
    with pytest.raises(CompileError, match="node 'fc': BinaryDense lacks required attribute\\(s\\) in_features"):
        ops.get("BinaryDense").attrs(node)


# ------------------------------------------------------------------------------------------------------ layers


def test_the_runtime_imports_nothing_above_it():
    code = (
        "import sys, bitc.runtime.model, bitc.runtime.session; print([m for m in sys.modules if m.startswith('bitc.')])"
    )
    loaded = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.replace(
            "'", '"'
        )
    )
    above = [m for m in loaded if not m.startswith(("bitc.runtime", "bitc.errors", "bitc.atomic", "bitc.npyfile"))]
    assert above == []


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [("passes", ("bitc.frontend", "bitc.codegen")), ("ir", ("bitc.frontend", "bitc.passes", "bitc.codegen"))],
)
def test_lower_layers_do_not_import_higher_ones(layer, forbidden):
    for path in sorted((ROOT / "bitc" / layer).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in getattr(node, "names", [])]
                if isinstance(node, ast.Import)
                else []
            )
            for name in names:
                assert not name.startswith(forbidden), f"{path.relative_to(ROOT)} imports {name}"


def _re(text: str) -> str:
    import re

    return re.escape(text)
