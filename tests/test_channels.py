"""Channel-dependency graph, `reorder` and `prune`: one small graph per coupling kind, numbers vs onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bitc.errors import BadInputError
from bitc.frontend import load_onnx, normalize
from bitc.ir.feeds import random_feeds
from bitc.passes import run_pipeline
from bitc.passes.channel_graph import build_channel_graph
from bitc.passes.verify import run_onnxruntime
from bitc_zoo.cnn import randomize_batchnorm
from bitc_zoo.export import export_onnx


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        return self.c(torch.relu(self.bn(self.b(y)) + y))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 10, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(torch.cat([self.a(x), self.b(x)], dim=1)))


class Depthwise(nn.Module):
    def __init__(self, groups: int = 16) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=groups)
        self.c = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.dw(torch.relu(self.a(x)))))


class FlattenGemm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


class Attention(nn.Module):
    """One transformer block: heads via view/transpose, then a feed-forward MLP."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.up, self.down = nn.Linear(dim, 64), nn.Linear(64, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, d // self.heads).transpose(1, 2)

        attn = torch.softmax(split(self.q(x)) @ split(self.k(x)).transpose(-1, -2) / 8, dim=-1) @ split(self.v(x))
        x = self.norm(x + self.o(attn.transpose(1, 2).reshape(b, s, d)))
        return x + self.down(torch.nn.functional.gelu(self.up(x)))


def _export(tmp_path, module: nn.Module, shape: tuple[int, ...]):
    torch.manual_seed(0)
    path = export_onnx(randomize_batchnorm(module), (torch.randn(*shape),), tmp_path / "m.onnx")
    return path


def _load(path):
    model = normalize(load_onnx(path), source=str(path))
    model, _ = run_pipeline(model, ["fold_constants", "fold_batchnorm", "remove_unused"])
    return model


def _apply(path, spec):
    model = _load(path)
    feeds = random_feeds(model)
    before = run_onnxruntime(model, feeds)[0]
    model, records = run_pipeline(model, [spec])
    return model, records[-1].details, before, run_onnxruntime(model, feeds)[0]


def _weight_shapes(model) -> dict[str, tuple[int, ...]]:
    return {name: tuple(v.const_value.shape) for name, v in model.graph.initializers.items()}


CASES = {
    "residual": (Residual, (1, 3, 8, 8)),
    "concat": (Concat, (1, 3, 8, 8)),
    "depthwise": (Depthwise, (1, 3, 8, 8)),
    "flatten_gemm": (FlattenGemm, (1, 3, 8, 8)),
    "attention": (Attention, (1, 6, 32)),
}


@pytest.mark.parametrize("case", CASES)
def test_reorder_permutes_every_coupling_without_changing_the_output(tmp_path, case):
    module, shape = CASES[case]
    _, report, before, after = _apply(_export(tmp_path, module(), shape), "reorder")
    assert report["groups_reordered"] >= 1 and report["channels_moved"] > 0
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * np.abs(before).max())


@pytest.mark.parametrize("case", CASES)
def test_prune_keeps_every_coupled_tensor_consistent(tmp_path, case):
    module, shape = CASES[case]
    _, report, before, after = _apply(_export(tmp_path, module(), shape), ("prune", {"ratio": 0.5}))
    assert report["after"]["params"] < report["before"]["params"]
    assert after.shape == before.shape and np.all(np.isfinite(after))  # onnxruntime ran the pruned model


def test_residual_branches_share_one_group(tmp_path):
    model = _load(_export(tmp_path, Residual(), (1, 3, 8, 8)))
    conv_outputs = [n.outputs[0].name for n in model.graph if n.op_type == "Conv"]
    groups = build_channel_graph(model).groups()
    stream = next(g for g in groups if (conv_outputs[0], 1) in g.dims)
    assert (conv_outputs[1], 1) in stream.dims and stream.prunable and len(stream.channels) == 16


def test_concat_blocks_prune_per_input(tmp_path):
    model, _, _, _ = _apply(_export(tmp_path, Concat(), (1, 3, 8, 8)), ("prune", {"ratio": 0.5, "round_to": 1}))
    shapes = sorted(shape for shape in _weight_shapes(model).values() if len(shape) == 4)
    assert shapes == [(3, 3, 3, 3), (4, 8, 1, 1), (5, 3, 1, 1)]  # 6→3 and 10→5 channels; the consumer reads 8


def test_depthwise_conv_follows_its_input_and_keeps_group_equal_to_channels(tmp_path):
    model, _, _, _ = _apply(_export(tmp_path, Depthwise(), (1, 3, 8, 8)), ("prune", {"ratio": 0.5, "round_to": 4}))
    depthwise = next(n for n in model.graph if n.op_type == "Conv" and n.attributes.get_int("group", 1) > 1)
    assert depthwise.attributes.get_int("group") == 8 == int(depthwise.inputs[1].shape[0])


def test_grouped_conv_is_fixed_with_its_reason(tmp_path):
    model = _load(_export(tmp_path, Depthwise(groups=4), (1, 3, 8, 8)))
    _, records = run_pipeline(model, [("prune", {"ratio": 0.5})])
    assert any("grouped conv with 4 groups" in reason for reason in records[-1].details["fixed_groups"])


def test_flatten_into_gemm_prunes_whole_spatial_blocks(tmp_path):
    model, _, _, _ = _apply(_export(tmp_path, FlattenGemm(), (1, 3, 8, 8)), ("prune", {"ratio": 0.5}))
    shapes = _weight_shapes(model)
    assert (10, 8 * 16) in shapes.values() and (8, 3, 3, 3) in shapes.values()


def test_attention_prunes_whole_heads_and_the_mlp(tmp_path):
    """Q, K, V and the output projection lose the same heads (round_to counts heads, not channels)."""
    model, report, _, _ = _apply(_export(tmp_path, Attention(), (1, 6, 32)), ("prune", {"ratio": 0.5}))
    shapes = [shape for shape in _weight_shapes(model).values() if len(shape) == 2]
    assert shapes.count((32, 16)) == 3 and (16, 32) in shapes  # 2 of 4 heads of 8 in Q, K, V ([in, out]); O reads 16
    assert shapes.count((32, 32)) == 2  # the MLP lost half of its 64 features
    assert sorted(report["groups"].values()) == [[4, 2], [64, 32]]
    reshapes = [n for n in model.graph if n.op_type == "Reshape"]
    assert any(list(n.inputs[1].const_value.numpy()) == [1, 6, 2, 8] for n in reshapes)


def test_pruning_a_layer_it_cannot_follow_names_the_node(tmp_path):
    model = _load(_export(tmp_path, Attention(), (1, 6, 32)))
    o = [n.name for n in model.graph if n.op_type in ("MatMul", "Gemm") and n.inputs[1].const_value is not None][3]
    with pytest.raises(BadInputError, match=f"cannot prune node '{o}': graph input; graph output"):
        run_pipeline(model, [("prune", {"ratio": 0.5, "layers": [o]})])


def test_round_to_aligns_kept_channels(tmp_path):
    model, _, _, _ = _apply(_export(tmp_path, Residual(), (1, 3, 8, 8)), ("prune", {"ratio": 0.3, "round_to": 8}))
    first = next(n for n in model.graph if n.op_type == "Conv")
    assert int(first.inputs[1].shape[0]) == 16  # 16·0.7 = 11.2 → rounded up to 16


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "minilm"])
def test_reorder_preserves_real_models_through_compilation(zoo, tmp_path, name):
    """The reordered model, compiled, equals onnxruntime on the original (≤ 1e-4 relative)."""
    import onnx_ir as ir

    import bitc

    path = getattr(zoo, name)()
    model = _load(path)
    feeds = random_feeds(model)
    if name == "minilm":  # token ids and a mask that are valid for the real vocabulary
        from bitc_zoo import real

        feeds = real.minilm_tokenize(real.SAMPLE_SENTENCES[:1], 128)
    expected = run_onnxruntime(model, feeds)[0]
    model, records = run_pipeline(model, ["reorder"])
    assert records[-1].details["channels_moved"] > 0
    ir.save(model, tmp_path / "reordered.onnx")
    compiled = bitc.load(bitc.compile(tmp_path / "reordered.onnx", tmp_path / "r.bitc").path)
    got = next(iter(compiled.run(feeds).values()))
    relative = float(np.abs(got - expected).max() / np.abs(expected).max())
    assert relative <= 1e-4, relative
    from conftest import SUMMARY_LINES

    SUMMARY_LINES.append(
        f"reorder {name}: {records[-1].details['channels_moved']} channels moved, rel err {relative:.1e}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["light_inception_v1.onnx", "light_squeezenet.onnx", "light_densenet121.onnx"])
def test_reorder_preserves_onnx_light_cnns(name):
    import onnx

    path = f"{onnx.__file__.rsplit('/', 1)[0]}/backend/test/data/light/{name}"
    model = _load(path)
    feeds = random_feeds(model)
    expected = run_onnxruntime(model, feeds)[0]
    model, _ = run_pipeline(model, ["reorder", "remove_unused"])
    np.testing.assert_allclose(
        run_onnxruntime(model, feeds)[0], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()
    )


def test_activation_criterion_removes_channels_dead_on_the_calibration_data(tmp_path):
    """Half the filters are large but never fire (ReLU after a very negative bias): L1 keeps them, the
    activation criterion, measured on calibration inputs, removes them."""
    module = FlattenGemm()
    with torch.no_grad():
        module.conv.weight[:8] *= 10
        module.conv.bias[:8] = -1e4
    path = export_onnx(module.eval(), (torch.randn(1, 3, 8, 8),), tmp_path / "m.onnx")
    calibration = {"x": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    name = _load(path).graph.inputs[0].name
    kept = {}
    for criterion in ("l1", "activation"):
        model = _load(path)
        options = {"ratio": 0.5, "criterion": criterion, "calibration": {name: calibration["x"]}}
        model, _ = run_pipeline(model, [("prune", options)])
        bias = next(v for v in model.graph.initializers.values() if v.const_value.shape == (8,) and "conv" in v.name)
        kept[criterion] = bias.const_value.numpy()
    assert np.all(kept["l1"] == -1e4)  # the big, dead filters won by norm
    assert np.all(kept["activation"] > -1e4)  # the live ones won on the data
