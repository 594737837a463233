"""Frontend: ONNX files (external data, Constant weights, bad files) and torch modules become onnx-ir models."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from conftest import make_conv_bn_model, run_onnxruntime
from onnx import TensorProto, helper

from bitc.errors import BadInputError
from bitc.frontend import from_torch, load_onnx
from bitc.passes.verify import run_onnxruntime as run_ir


def test_constant_node_weights_become_initializers(tmp_path):
    path = make_conv_bn_model(tmp_path / "m.onnx", with_constant_weights=True)
    model = load_onnx(path)
    assert not [n for n in model.graph if n.op_type == "Constant"]
    assert {"w", "b", "fc_w"} <= set(model.graph.initializers)
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(run_ir(model, {"x": x})[0], run_onnxruntime(path, {"x": x})[0], rtol=1e-6, atol=1e-6)


def test_external_data_is_loaded_from_the_model_folder(tmp_path):
    source = onnx.load(make_conv_bn_model(tmp_path / "inline.onnx"))
    path = tmp_path / "ext" / "model.onnx"
    path.parent.mkdir()
    onnx.save(source, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert (path.parent / "weights.bin").stat().st_size > 0
    model = load_onnx(path)
    weight = model.graph.initializers["w"].const_value
    assert not isinstance(weight, ir.ExternalTensor)  # read into memory at load: no pass can alias the map
    inline = onnx.load(tmp_path / "inline.onnx")  # onnx.save moved `source`'s weights out; reload the original
    np.testing.assert_array_equal(weight.numpy(), onnx.numpy_helper.to_array(inline.graph.initializer[0]))


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, location):
    proto = onnx.load(make_conv_bn_model(tmp_path / "m.onnx"))
    tensor = proto.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    (tmp_path / "outside.bin").write_bytes(b"\0" * 4096)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    onnx.save(proto, model_dir / "m.onnx")
    with pytest.raises(BadInputError, match="refused"):
        load_onnx(model_dir / "m.onnx")


def test_missing_external_data_file_is_named(tmp_path):
    proto = onnx.load(make_conv_bn_model(tmp_path / "m.onnx"))
    tensor = proto.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="gone.bin")
    onnx.save(proto, tmp_path / "m.onnx")
    with pytest.raises(BadInputError, match=r"gone\.bin"):
        load_onnx(tmp_path / "m.onnx")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"\x08\x07\x12\xff\xff\xff\xff\x0f garbage", "not a valid ONNX"),
        (bytes(range(256)) * 8, "not a valid ONNX|no graph|invalid ONNX"),
    ],
)
def test_unreadable_files_get_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(BadInputError, match=message) as info:
        load_onnx(path)
    assert "\n" not in str(info.value)


def test_truncated_model_is_refused(tmp_path):
    data = make_conv_bn_model(tmp_path / "m.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError):
        load_onnx(tmp_path / "cut.onnx")


def _tiny_model(opset: int, nodes=None, inputs=None, output_shape=(2, 3)) -> onnx.ModelProto:
    nodes = nodes or [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(output_shape))
    graph = helper.make_graph(nodes, "g", inputs, [output])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_opset_older_than_7_is_upgraded_or_refused(tmp_path):
    """The importer reads opset 7 on: older models compile only through onnx's version converter."""
    onnx.save(_tiny_model(5), tmp_path / "old.onnx")
    assert load_onnx(tmp_path / "old.onnx", check=False).opset_imports[""] == 13
    graph = helper.make_graph(
        [helper.make_node("Pad", ["x"], ["y"], paddings=[0, 0, 1, 1])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 1)]), tmp_path / "pad.onnx")
    with pytest.raises(BadInputError, match="opset 1 is older than the oldest supported"):
        load_onnx(tmp_path / "pad.onnx", check=False)


def test_old_opset_is_upgraded(tmp_path):
    onnx.save(_tiny_model(9), tmp_path / "m.onnx")
    assert load_onnx(tmp_path / "m.onnx").opset_imports[""] == 13


def test_empty_graph_is_refused(tmp_path):
    graph = helper.make_graph([], "g", [], [])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "e.onnx")
    with pytest.raises(BadInputError, match="no nodes"):
        load_onnx(tmp_path / "e.onnx")


def test_mismatched_shapes_are_refused(tmp_path):
    nodes = [helper.make_node("Add", ["x", "z"], ["y"], name="add")]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
        helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 5]),
    ]
    onnx.save(_tiny_model(17, nodes, inputs), tmp_path / "m.onnx")
    with pytest.raises(BadInputError, match="shape inference failed"):
        load_onnx(tmp_path / "m.onnx")


def test_input_shapes_fix_symbolic_dims(tmp_path):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])]
    onnx.save(_tiny_model(17, inputs=inputs, output_shape=("batch", 3)), tmp_path / "m.onnx")
    model = load_onnx(tmp_path / "m.onnx", {"x": [4, 3]})
    assert list(model.graph.inputs[0].shape) == [4, 3]
    assert list(model.graph.outputs[0].shape) == [4, 3]
    with pytest.raises(BadInputError, match="inputs are \\['x'\\]"):
        load_onnx(tmp_path / "m.onnx", {"nope": [1, 3]})
    with pytest.raises(BadInputError, match="rank"):
        load_onnx(tmp_path / "m.onnx", {"x": [1, 3, 1]})


def test_from_torch_matches_torch():
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()
    x = torch.randn(2, 8)
    model = from_torch(module, (x,), input_names=["features"], output_names=["scores"])
    assert [v.name for v in model.graph.inputs] == ["features"]
    assert [v.name for v in model.graph.outputs] == ["scores"]
    got = run_ir(model, {"features": x.numpy()})[0]
    np.testing.assert_allclose(got, module(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_from_torch_rejects_non_modules():
    with pytest.raises(BadInputError, match=r"nn\.Module"):
        from_torch(lambda x: x, (torch.randn(1),))
