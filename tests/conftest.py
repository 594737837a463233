"""Shared fixtures: small hand-built graphs, exported reference models (cached per session), comparisons."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

# Lines that tests want in the run's closing summary (the fuzzers' case counts), shown without `pytest -s`.
SUMMARY_LINES: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:
    if SUMMARY_LINES:
        terminalreporter.write_sep("-", "fuzzing and accuracy")
        for line in SUMMARY_LINES:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _private_tuning_db(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's tuning database."""
    monkeypatch.setenv("BITC_TUNING_DB", str(tmp_path_factory.getbasetemp() / "tuning-db"))


def run_onnxruntime(path: str | Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def save_graph(
    path: Path,
    nodes: list,
    inputs: dict[str, list[int]],
    outputs: dict[str, list[int]],
    initializers: list | tuple = (),
    opset: int = 17,
) -> Path:
    """A graph of float32 inputs and outputs saved as an ONNX model at `path`."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs.items()],
        list(initializers),
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    return path


def save_matmul_model(
    path: Path,
    x_shape: list[int] | tuple[int, ...],
    columns: int,
    rng: np.random.Generator,
    *,
    activation: str | None = None,
    weight_scale: float = 1.0,
) -> Path:
    """x @ W + b (W and b drawn from `rng`, in that order), then an optional "Relu" or "Gelu" (onnxruntime's
    com.microsoft form, as transformer exports write it), saved as an ONNX model at `path` with output y."""
    w = numpy_helper.from_array(rng.standard_normal((x_shape[-1], columns)).astype(np.float32) * weight_scale, "w")
    b = numpy_helper.from_array(rng.standard_normal(columns).astype(np.float32), "b")
    last = "y" if activation is None else "a"
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], [last])]
    if activation is not None:
        domain = "com.microsoft" if activation == "Gelu" else ""
        nodes.append(helper.make_node(activation, ["a"], ["y"], domain=domain))
    save_graph(path, nodes, {"x": list(x_shape)}, {"y": [*x_shape[:-1], columns]}, [w, b])
    if activation == "Gelu":
        model = onnx.load(path)
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        onnx.save(model, path)
    return path


def compile_matching_onnxruntime(path: Path, feeds: dict[str, np.ndarray], *, rtol: float, atol: float):
    """Compile `path` next to itself, check its first output against onnxruntime's; returns the compile result."""
    import bitc

    result = bitc.compile(path, path.with_suffix(".bitc"))
    got = next(iter(bitc.load(result.path).run(feeds).values()))
    np.testing.assert_allclose(got, run_onnxruntime(path, feeds)[0], rtol=rtol, atol=atol)
    return result


def make_conv_bn_model(path: Path, *, channels: int = 8, with_constant_weights: bool = False) -> Path:
    """x[1,3,16,16] → Conv(3→channels) → BatchNormalization → Relu → GlobalAveragePool → Flatten → Gemm(→10)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((channels, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32)
    scale = (0.5 + rng.random(channels)).astype(np.float32)
    bias = rng.standard_normal(channels).astype(np.float32)
    mean = (0.1 * rng.standard_normal(channels)).astype(np.float32)
    var = (0.5 + rng.random(channels)).astype(np.float32)
    fc_w = rng.standard_normal((10, channels)).astype(np.float32)
    fc_b = rng.standard_normal(10).astype(np.float32)
    tensors = {"w": w, "b": b, "scale": scale, "bias": bias, "mean": mean, "var": var, "fc_w": fc_w, "fc_b": fc_b}
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv", "scale", "bias", "mean", "var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    initializers = []
    if with_constant_weights:
        nodes = [
            helper.make_node("Constant", [], [name], name=f"const_{name}", value=numpy_helper.from_array(t, name))
            for name, t in tensors.items()
        ] + nodes
    else:
        initializers = [numpy_helper.from_array(t, name) for name, t in tensors.items()]
    graph = helper.make_graph(
        nodes,
        "conv_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


@pytest.fixture
def conv_bn_onnx(tmp_path) -> Path:
    return make_conv_bn_model(tmp_path / "conv_bn.onnx")


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """Exported reference models, each exported once per test session on first use."""
    return _Zoo(tmp_path_factory.mktemp("zoo"))


class _Zoo:
    def __init__(self, root: Path):
        self.root = root

    def _cached(self, name: str, export) -> Path:
        path = self.root / f"{name}.onnx"
        if not path.exists():
            export(path)
        return path

    def resnet18(self) -> Path:
        import torch

        from bitc_zoo import cnn
        from bitc_zoo.export import export_onnx

        return self._cached(
            "resnet18",
            lambda p: export_onnx(cnn.resnet18(), (torch.randn(1, 3, 224, 224),), p, input_names=["image"]),
        )

    def mobilenet_v2(self) -> Path:
        import torch

        from bitc_zoo import cnn
        from bitc_zoo.export import export_onnx

        return self._cached(
            "mobilenet_v2",
            lambda p: export_onnx(cnn.mobilenet_v2(), (torch.randn(1, 3, 224, 224),), p, input_names=["image"]),
        )

    def minilm(self, seq_len: int = 128) -> Path:
        import torch

        from bitc_zoo import real
        from bitc_zoo.export import export_onnx

        def export(path: Path) -> None:
            tokens = real.minilm_tokenize(real.SAMPLE_SENTENCES[:1], seq_len)
            example = (torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"]))
            export_onnx(
                real.minilm_encoder(),
                example,
                path,
                input_names=["input_ids", "attention_mask"],
                output_names=["embedding"],
            )

        return self._cached(f"minilm_{seq_len}", export)
