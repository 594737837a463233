"""Exact passes stay exact or are refused: channel rewrites on blocks that reuse one tensor at several Concat
offsets (YOLO's SPP/SPPF), and the compile-time check that every exact pass preserved the model's outputs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from torch import nn

import bitc
from bitc.errors import CompileError
from bitc.frontend import load_onnx, normalize
from bitc.ir.feeds import random_feeds
from bitc.passes import registry, run_pipeline, verify
from bitc.passes.verify import run_onnxruntime
from bitc_zoo.export import export_onnx


class SPPF(nn.Module):
    """YOLOv5/v8's SPPF: one tensor and three nested max-pools of it, concatenated, then a 1×1 conv."""

    def __init__(self, dead: int = 0) -> None:
        super().__init__()
        self.cv1, self.cv2 = nn.Conv2d(3, 8, 1), nn.Conv2d(32, 4, 1)
        self.mp = nn.MaxPool2d(5, 1, 2)
        _kill(self.cv1, dead)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.cv1(x))
        a = self.mp(x)
        b = self.mp(a)
        return self.cv2(torch.cat([x, a, b, self.mp(b)], 1))


class SelfConcat(nn.Module):
    """One value consumed twice by one Concat, around a block of another layer's channels."""

    def __init__(self, dead: int = 0) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 6, 1), nn.Conv2d(22, 4, 1)
        _kill(self.a, dead)
        _kill(self.b, dead * 3 // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        return self.c(torch.cat([y, torch.relu(self.b(x)), y], 1))


class SplitSwap(nn.Module):
    """Split, then Concat the halves in the other order."""

    def __init__(self, dead: int = 0) -> None:
        super().__init__()
        self.a, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        _kill(self.a, dead)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = torch.split(torch.relu(self.a(x)), [3, 5], dim=1)
        return self.c(torch.cat([hi, lo], 1))


class DuplicatedProducer(nn.Module):
    """Concat([y, y]) added to a conv output: that conv's channel c and c + 8 are one channel, which ranking its
    output alone cannot keep in step — the rewrite must refuse that group, not interleave it."""

    def __init__(self, dead: int = 0) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 16, 1), nn.Conv2d(16, 4, 1)
        _kill(self.a, dead)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        return self.c(torch.relu(torch.cat([y, y], 1) + self.b(x)))


def _kill(conv: nn.Conv2d, dead: int) -> None:
    """Make the last `dead` filters output zero after the ReLU, so removing them must not change anything."""
    torch.manual_seed(1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn_like(conv.weight) * (1 + torch.arange(conv.out_channels)).view(-1, 1, 1, 1))
        if dead:
            conv.weight[-dead:] = 0
            conv.bias[-dead:] = -1


BLOCKS = {"sppf": SPPF, "self_concat": SelfConcat, "split_swap": SplitSwap, "duplicated_producer": DuplicatedProducer}


def _model(tmp_path, module: nn.Module):
    torch.manual_seed(0)
    path = export_onnx(module, (torch.randn(1, 3, 8, 8),), tmp_path / "m.onnx")
    return normalize(load_onnx(path), source=str(path))


def _run(model, spec):
    feeds = random_feeds(model, seed=3)
    before = run_onnxruntime(model, feeds)[0]
    model, records = run_pipeline(model, [spec], check_exact=False)
    return records[-1].details, before, run_onnxruntime(model, feeds)[0]


def _rel(before: np.ndarray, after: np.ndarray) -> float:
    return float(np.abs(after - before).max() / np.abs(before).max())


@pytest.mark.parametrize("block", BLOCKS)
def test_reorder_keeps_blocks_reusing_a_tensor_exact(tmp_path, block):
    _, before, after = _run(_model(tmp_path, BLOCKS[block]()), "reorder")
    assert after.shape == before.shape and _rel(before, after) < 1e-5


def test_reorder_keeps_spp_concat_exact(tmp_path):
    """The whole SPPF group moves (every Concat block the same way), not just the channels outside it."""
    report, before, after = _run(_model(tmp_path, SPPF()), "reorder")
    assert report["groups_reordered"] == 1 and report["channels_moved"] > 0
    assert _rel(before, after) < 1e-5


def test_reorder_refuses_a_group_it_cannot_lay_out_consistently(tmp_path):
    report, before, after = _run(_model(tmp_path, DuplicatedProducer()), "reorder")
    assert any("no consistent channel layout" in reason for reason in report["fixed_groups"])
    assert _rel(before, after) < 1e-5


@pytest.mark.parametrize("block", ["sppf", "self_concat"])
def test_prune_removes_a_channel_at_every_concat_offset(tmp_path, block):
    """Dead filters (zero after ReLU) removed everywhere they appear leave the output unchanged; removing them at
    one offset only, or shifting the other blocks, would not."""
    model = _model(tmp_path, BLOCKS[block](dead=4))
    spec = ("prune", {"ratio": 0.5, "round_to": 1, "criterion": "activation"})
    report, before, after = _run(model, spec)
    assert report["after"]["params"] < report["before"]["params"]
    assert report["groups"] and all(kept == n // 2 for n, kept in report["groups"].values())
    assert _rel(before, after) < 1e-5


def test_sppf_prune_cuts_the_next_conv_input_per_block(tmp_path):
    model = _model(tmp_path, SPPF(dead=4))
    model, _ = run_pipeline(model, [("prune", {"ratio": 0.5, "round_to": 1, "criterion": "activation"})])
    convs = [tuple(v.const_value.shape) for v in model.graph.initializers.values() if len(v.shape or ()) == 4]
    assert sorted(convs) == [(4, 3, 1, 1), (4, 16, 1, 1)]


# The compile-time exact check.


class _Broken(ir.passes.InPlacePass):
    """Claims to be exact, scales one conv's weights: what a buggy rewrite looks like to the check."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for value in model.graph.initializers.values():
            if len(value.shape or ()) == 4:
                value.const_value = ir.tensor(value.const_value.numpy() * 1.5, name=value.name)
                return ir.passes.PassResult(model, True)
        return ir.passes.PassResult(model, False)


@pytest.fixture
def broken_pass():
    registry.register("broken_exact_test", phase="cleanup", exact=True)(_Broken)
    yield "broken_exact_test"
    registry._PASSES.pop("broken_exact_test")


def test_exact_check_fails_the_compile_naming_the_pass(tmp_path, broken_pass):
    model = _model(tmp_path, SPPF())
    with pytest.raises(CompileError, match="exact pass 'broken_exact_test' changed the model's outputs") as info:
        run_pipeline(model, ["fold_constants", broken_pass, "cse", "remove_unused"])
    assert "first differing value" in str(info.value) and "\n" not in str(info.value)


def test_no_verify_turns_the_exact_check_off(tmp_path, broken_pass):
    _, records = run_pipeline(_model(tmp_path, SPPF()), [broken_pass], check_exact=False)
    assert records[0].modified and records[0].exact_check is None


def test_exact_run_records_its_check_and_lossy_passes_their_error(tmp_path):
    model = _model(tmp_path, SPPF())
    spec = ("prune", {"ratio": 0.5, "round_to": 1})
    _, records = run_pipeline(model, ["fold_constants", "reorder", spec, "cse", "remove_unused"])
    assert records[1].exact_check["passes"] == ["fold_constants", "reorder"]
    assert records[1].exact_check["max_rel_error"] < 1e-5
    assert records[2].max_rel_error is not None and records[2].max_rel_error > 1e-3  # pruning live channels
    assert records[4].exact_check["passes"] == ["cse", "remove_unused"]


def test_exact_check_skips_a_model_the_reference_cannot_run(tmp_path):
    """An op onnxruntime lacks: the check is skipped with a note, the pipeline goes on."""
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node, onnx.helper.make_node("NoSuchOp", ["y"], ["z"], domain="example.unknown")],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 4])],
    )
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    _, records = run_pipeline(ir.from_proto(proto), ["fold_constants", "remove_unused"])
    assert records[0].note.startswith("exact check skipped: the reference cannot run this model")
    assert "skipped" in records[-1].exact_check


def test_exact_check_skips_huge_models_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(verify, "CHECK_MAX_MACS", 10)
    _, records = run_pipeline(_model(tmp_path, SPPF()), ["fold_constants", "reorder"])
    assert "M MACs per run" in records[0].note and "skipped" in records[-1].exact_check


def test_cli_binarize_alone_binarizes(tmp_path):
    """A bare --binarize is the default policy, not a no-op."""
    from bitc_zoo.cnn import randomize_batchnorm

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = (
                nn.Conv2d(3, 32, 3, padding=1),
                nn.Conv2d(32, 32, 3, padding=1),
                nn.Conv2d(32, 4, 1),
            )
            self.bn = nn.BatchNorm2d(32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(self.bn(self.b(torch.relu(self.a(x)))))

    torch.manual_seed(0)
    source = export_onnx(randomize_batchnorm(Net()), (torch.randn(1, 3, 8, 8),), tmp_path / "net.onnx")
    out = tmp_path / "net.bitc"
    result = subprocess.run(
        [sys.executable, "-m", "bitc", "compile", str(source), "-o", str(out), "--binarize", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    passes = {p["name"]: p for p in bitc.load(out).manifest["passes"]}
    assert passes["binarize"]["modified"] and passes["binarize"]["details"]["binarized"] == 1
    assert passes["lower_binary"]["details"]["lowered"]
    assert passes["binarize"]["max_rel_error"] > 0  # the lossy pass's measured output error


# Compile-time crashes in passes.


def _identity_graph(case: str) -> onnx.GraphProto:
    def value(name: str) -> onnx.ValueInfoProto:
        return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, 4])

    def branch(op: str, out: str) -> onnx.GraphProto:
        return onnx.helper.make_graph([onnx.helper.make_node(op, ["a"], [out])], "branch", [], [value(out)])

    relu = onnx.helper.make_node("Relu", ["x"], ["a"])
    cond = onnx.helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])
    if_node = onnx.helper.make_node(
        "If", ["c"], ["y"], then_branch=branch("Identity", "t"), else_branch=branch("Neg", "e")
    )
    make = onnx.helper.make_node
    graphs = {
        "input_is_output": ([make("Identity", ["x"], ["y"])], [value("x")], ["y"]),
        "output_copies_output": ([relu, make("Identity", ["a"], ["b"])], [value("x")], ["a", "b"]),
        "two_copies_as_outputs": (
            [relu, make("Identity", ["a"], ["b"]), make("Identity", ["a"], ["c"])],
            [value("x")],
            ["b", "c"],
        ),
        "subgraph_returns_outer_output": ([relu, if_node], [value("x"), cond], ["a", "y"]),
        "subgraph_returns_outer_value": ([relu, if_node], [value("x"), cond], ["y"]),
    }
    nodes, inputs, outputs = graphs[case]
    return onnx.helper.make_graph(nodes, "g", inputs, [value(name) for name in outputs])


@pytest.mark.parametrize(
    "case",
    [
        "input_is_output",
        "output_copies_output",
        "two_copies_as_outputs",
        "subgraph_returns_outer_output",
        "subgraph_returns_outer_value",
    ],
)
def test_eliminate_identity_keeps_every_output_name_and_value(case):
    graph = _identity_graph(case)
    model = ir.from_proto(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]))
    feeds = {"x": np.random.default_rng(0).normal(size=(1, 4)).astype(np.float32), "c": np.array(True)}
    feeds = {value.name: feeds[value.name] for value in graph.input}
    before = run_onnxruntime(model, feeds)
    model, _ = run_pipeline(model, ["eliminate_identity"])
    assert [v.name for v in model.graph.outputs] == [v.name for v in graph.output]
    for expected, got in zip(before, run_onnxruntime(model, feeds), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_external_data_weights_folded_into_views_compile(tmp_path):
    """A tied embedding: Gather(W) and MatMul(·, Transpose(W)) with W in external data. Folding Transpose(W) gave
    a view of W's memory map, and closing the map (TVM import) failed with BufferError."""
    weights = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
    make = onnx.helper.make_node
    graph = onnx.helper.make_graph(
        [
            make("Gather", ["W", "ids"], ["e"]),
            make("Relu", ["e"], ["r"]),
            make("Transpose", ["W"], ["Wt"], perm=[1, 0]),
            make("MatMul", ["r", "Wt"], ["y"]),
        ],
        "g",
        [onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [1, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 50])],
        [onnx.numpy_helper.from_array(weights, "W")],
    )
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    path = tmp_path / "tied.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, location="tied.data", size_threshold=0)
    result = bitc.compile(path, tmp_path / "tied.bitc")
    ids = np.arange(8, dtype=np.int64).reshape(1, 8)
    expected = np.maximum(weights[ids], 0) @ weights.T
    np.testing.assert_allclose(bitc.load(result.path)(ids), expected, rtol=1e-5, atol=1e-5)


def test_an_ir3_model_is_exact_checked(tmp_path):
    """IR 3 at opset 9 (onnx's classic CNNs, where every initializer was a graph input too): upgrading the opset
    turns Dropout's ratio into an initializer, left unused once the Dropout goes, which onnxruntime refuses in an
    IR-3 model; the check runs it as IR 4 instead of skipping."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Dropout", ["c"], ["y"], ratio=0.5),
    ]
    graph = helper.make_graph(
        nodes,
        "ir3",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [8, 4, 3, 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    onnx.save(model, tmp_path / "ir3.onnx")
    result = bitc.compile(tmp_path / "ir3.onnx", tmp_path / "ir3.bitc")
    checks = [record["exact_check"] for record in result.manifest["passes"] if record.get("exact_check")]
    assert checks and all("max_rel_error" in check for check in checks), checks
