"""Each pass on the smallest graph that exercises it: the rewritten IR and the numbers (vs onnxruntime)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import make_conv_bn_model
from onnx import TensorProto, helper, numpy_helper

from bitc.errors import BadInputError
from bitc.frontend import load_onnx
from bitc.ir.feeds import random_feeds
from bitc.ir.graph_edit import restore_output_names
from bitc.passes import DEFAULT_PIPELINE, available, create, run_pipeline
from bitc.passes.verify import run_onnxruntime

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, initializers=()) -> ir.Model:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in dict(initializers).items()],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _apply(name: str, model: ir.Model) -> tuple[ir.Model, list[np.ndarray], list[np.ndarray], bool]:
    """Run pass `name`; return the model, outputs before and after (same random inputs), and `modified`."""
    feeds = random_feeds(model, seed=3)
    before = run_onnxruntime(model, feeds)
    result = create(name)(model)
    after = run_onnxruntime(result.model, feeds)
    return result.model, before, after, result.modified


def _ops(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


def test_fold_batchnorm_into_conv_preserves_output(tmp_path):
    model = load_onnx(make_conv_bn_model(tmp_path / "m.onnx", channels=13))
    model, before, after, modified = _apply("fold_batchnorm", model)
    assert modified
    assert "BatchNormalization" not in _ops(model)
    assert _ops(model).count("Conv") == 1
    np.testing.assert_allclose(after[0], before[0], rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_into_gemm_preserves_output():
    n = 16
    model = _model(
        [
            helper.make_node("Gemm", ["x", "w", "c"], ["g"], transB=1, alpha=0.5, beta=2.0),
            helper.make_node("BatchNormalization", ["g", "s", "b", "m", "v"], ["y"], epsilon=1e-3),
        ],
        [("x", [4, 8])],
        [("y", [4, n])],
        {
            "w": RNG.standard_normal((n, 8)),
            "c": RNG.standard_normal(n),
            "s": RNG.standard_normal(n),  # negative gammas too
            "b": RNG.standard_normal(n),
            "m": RNG.standard_normal(n),
            "v": 0.5 + RNG.random(n),
        },
    )
    model, before, after, modified = _apply("fold_batchnorm", model)
    assert modified and _ops(model) == ["Gemm"]
    np.testing.assert_allclose(after[0], before[0], rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_leaves_shared_conv_alone():
    """A Conv whose output also feeds another node cannot absorb the BN."""
    model = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"]),
            helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"]),
            helper.make_node("Add", ["bn", "c"], ["y"]),
        ],
        [("x", [1, 2, 5, 5])],
        [("y", [1, 3, 5, 5])],
        {
            "w": RNG.standard_normal((3, 2, 1, 1)),
            "s": np.ones(3),
            "b": np.zeros(3),
            "m": np.zeros(3),
            "v": np.ones(3),
        },
    )
    model, before, after, modified = _apply("fold_batchnorm", model)
    assert not modified and "BatchNormalization" in _ops(model)
    np.testing.assert_array_equal(after[0], before[0])


def test_fold_constants_evaluates_constant_subgraphs():
    model = _model(
        [
            helper.make_node("Add", ["a", "b"], ["ab"]),
            helper.make_node("Exp", ["ab"], ["e"]),
            helper.make_node("Mul", ["x", "e"], ["y"]),
        ],
        [("x", [3, 4])],
        [("y", [3, 4])],
        {"a": RNG.standard_normal((3, 4)), "b": RNG.standard_normal((3, 4))},
    )
    model, before, after, modified = _apply("fold_constants", model)
    assert modified and _ops(model) == ["Mul"]
    np.testing.assert_allclose(after[0], before[0], rtol=1e-6)


def test_fold_constants_turns_inference_dropout_into_identity():
    model = _model(
        [helper.make_node("Dropout", ["x"], ["d"]), helper.make_node("Relu", ["d"], ["y"])],
        [("x", [2, 5])],
        [("y", [2, 5])],
    )
    model, before, after, modified = _apply("fold_constants", model)
    assert modified and _ops(model) == ["Identity", "Relu"]
    np.testing.assert_array_equal(after[0], before[0])


def test_simplify_removes_no_op_arithmetic_and_transposes():
    model = _model(
        [
            helper.make_node("Mul", ["x", "one"], ["m"]),
            helper.make_node("Transpose", ["m"], ["t1"], perm=[1, 0]),
            helper.make_node("Transpose", ["t1"], ["t2"], perm=[1, 0]),
            helper.make_node("Relu", ["t2"], ["y"]),
        ],
        [("x", [2, 5])],
        [("y", [2, 5])],
        {"one": np.float32(1.0)},
    )
    model, before, _, modified = _apply("simplify", model)
    create("eliminate_identity")(model)
    create("remove_unused")(model)
    assert modified and _ops(model) == ["Relu"]
    np.testing.assert_array_equal(run_onnxruntime(model, random_feeds(model, 3))[0], before[0])


def test_eliminate_identity_keeps_output_names():
    model = _model(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])],
        [("x", [4])],
        [("y", [4])],
    )
    model, before, after, modified = _apply("eliminate_identity", model)
    assert modified and _ops(model) == ["Relu"]
    assert [v.name for v in model.graph.outputs] == ["y"]
    np.testing.assert_array_equal(after[0], before[0])


def test_eliminate_identity_leaves_an_output_that_feeds_an_identity_its_name():
    """Relu → y (an output) → Identity → z (not an output): dropping the Identity must not rename y."""
    model = _model(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Identity", ["y"], ["z"])],
        [("x", [4])],
        [("y", [4])],
    )
    model, _, _, _ = _apply("eliminate_identity", model)
    assert [v.name for v in model.graph.outputs] == ["y"]


def test_pipeline_restores_output_names_a_pass_changed():
    model = _model(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])],
        [("x", [4])],
        [("y", [4]), ("r", [4])],
    )
    outputs = model.graph.outputs
    outputs[0].name, outputs[1].name = "renamed", "y"  # what a buggy rewrite could leave: names swapped
    restore_output_names(model.graph, ["y", "r"])
    assert [v.name for v in model.graph.outputs] == ["y", "r"]
    assert [v.producer().op_type for v in model.graph.outputs] == ["Neg", "Relu"]
    onnx.checker.check_model(ir.to_proto(model))


def test_cse_merges_duplicate_nodes():
    model = _model(
        [
            helper.make_node("Relu", ["x"], ["r1"]),
            helper.make_node("Relu", ["x"], ["r2"]),
            helper.make_node("Add", ["r1", "r2"], ["y"]),
        ],
        [("x", [4])],
        [("y", [4])],
    )
    model, before, after, modified = _apply("cse", model)
    assert modified and _ops(model) == ["Relu", "Add"]
    np.testing.assert_array_equal(after[0], before[0])


def test_remove_unused_drops_dead_nodes_and_initializers():
    model = _model(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Mul", ["x", "dead_w"], ["dead"])],
        [("x", [4])],
        [("y", [4])],
        {"dead_w": np.ones(4)},
    )
    model, _, _, modified = _apply("remove_unused", model)
    assert modified and _ops(model) == ["Relu"]
    assert "dead_w" not in model.graph.initializers


def test_pipeline_dumps_each_step_and_verifies_numerics(tmp_path):
    model = load_onnx(make_conv_bn_model(tmp_path / "m.onnx"))
    model, records = run_pipeline(model, dump_dir=tmp_path / "dump", verify_numerics=True)
    assert [r.name for r in records] == list(DEFAULT_PIPELINE)
    dumped = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert dumped[0] == "00_input.onnx" and len(dumped) == len(DEFAULT_PIPELINE) + 1
    onnx.checker.check_model(str(tmp_path / "dump" / dumped[-1]))
    folded = next(r for r in records if r.name == "fold_batchnorm")
    assert folded.modified and folded.nodes_after == folded.nodes_before - 1
    assert all(r.max_abs_error is not None and r.max_abs_error < 1e-4 for r in records)
    assert all(r.seconds >= 0 for r in records)


def test_pipeline_names_are_checked_before_running():
    with pytest.raises(BadInputError, match="unknown pass 'fold_everything'"):
        run_pipeline(ir.Model(ir.Graph([], [], nodes=[]), ir_version=8), "fold_constants,fold_everything")
    with pytest.raises(BadInputError, match="bad options"):
        create("fold_batchnorm", {"nonsense": 1})


def test_every_pass_is_listed_with_a_description():
    passes = available()
    assert set(DEFAULT_PIPELINE) <= set(passes)
    assert all(doc and doc.endswith(".") for doc in passes.values())
