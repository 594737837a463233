"""Per-layer accounting: parameters, MACs and precision, in `bitc inspect` and the artifact's manifest."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx_ir as ir
from conftest import make_conv_bn_model
from onnx import TensorProto, helper, numpy_helper

import bitc
from bitc.frontend import load_onnx
from bitc.layers import layer_table, summarize_layers


def test_conv_and_gemm_costs_are_exact(tmp_path):
    rows = {r["op"]: r for r in layer_table(load_onnx(make_conv_bn_model(tmp_path / "m.onnx", channels=8)))}
    assert rows["Conv"]["macs"] == 8 * 16 * 16 * (3 * 3 * 3)
    assert rows["Conv"]["params"] == 8 * 3 * 3 * 3 + 8
    assert rows["Gemm"]["macs"] == 10 * 8 and rows["Gemm"]["params"] == 10 * 8 + 10
    assert rows["BatchNormalization"]["macs"] == 0
    assert {r["precision"] for r in rows.values()} == {"fp32"}


def test_matmul_grouped_conv_and_fp16_weights():
    w = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float16), "w")
    m = numpy_helper.from_array(np.ones((6, 5), np.float32), "m")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="dw", group=4, pads=[1, 1, 1, 1]),
            helper.make_node("MatMul", ["y", "m"], ["z"], name="mm"),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4, 8, 8]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 6]),
        ],
        [
            helper.make_tensor_value_info("c", TensorProto.FLOAT16, [1, 4, 8, 8]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3, 5]),
        ],
        [w, m],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    rows = {r["name"]: r for r in layer_table(model)}
    assert rows["dw"]["macs"] == 4 * 8 * 8 * 9 and rows["dw"]["precision"] == "fp16"
    assert rows["mm"]["macs"] == 2 * 3 * 5 * 6
    summary = summarize_layers(list(rows.values()))
    assert summary["macs"] == 4 * 8 * 8 * 9 + 2 * 3 * 5 * 6 and summary["binary_mac_share"] == 0.0


def test_manifest_and_inspect_report_layers(tmp_path):
    source = make_conv_bn_model(tmp_path / "m.onnx")
    result = bitc.compile(source, tmp_path / "m.bitc")
    layers = result.manifest["layers"]
    assert [r["op"] for r in layers] == ["Conv", "Gemm"]  # BN was folded into the conv
    assert result.manifest["stats"]["macs"] == sum(r["macs"] for r in layers)
    for target in (source, result.path):
        out = subprocess.run(
            [sys.executable, "-m", "bitc.cli", "inspect", str(target), "--json"], capture_output=True, text=True
        )
        info = json.loads(out.stdout)
        layers_seen = info["manifest"]["layers"] if info["kind"] == "artifact" else info["layers"]
        assert {r["op"] for r in layers_seen} >= {"Conv", "Gemm"}
    text = subprocess.run(
        [sys.executable, "-m", "bitc.cli", "inspect", str(result.path)], capture_output=True, text=True
    ).stdout
    assert "MAC share" in text and "precision" in text
