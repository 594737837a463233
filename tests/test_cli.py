"""The `bitc` command as a user runs it: exit codes, one-line errors, files written."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_conv_bn_model, run_onnxruntime


def bitc(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bitc.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_conv_bn_model(root / "m.onnx")
    return root


def test_compile_run_bench_inspect(workdir):
    out = bitc("compile", "m.onnx", "-o", "m.bitc", "--json", "--verify", "--dump-ir", "dump", cwd=workdir)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["artifact"] == "m.bitc" and summary["size_bytes"] > 0
    assert all(p["max_abs_error"] < 1e-4 for p in summary["passes"])
    assert (workdir / "dump" / "00_input.onnx").exists()

    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(workdir / "x.npy", x)
    out = bitc("run", "m.bitc", "--input", "x=x.npy", "--output-dir", "outs", cwd=workdir)
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(
        np.load(workdir / "outs" / "logits.npy"), run_onnxruntime(workdir / "m.onnx", {"x": x})[0], atol=1e-5
    )

    out = bitc("bench", "m.bitc", "--runs", "5", "--threads", "1,2", "--onnx", "m.onnx", "--json", cwd=workdir)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["threads"] for r in rows] == [1, 2]
    assert all(r["bitc"]["median_ms"] > 0 and r["speedup_vs_onnxruntime"] > 0 for r in rows)

    for target in ("m.bitc", "m.onnx"):
        out = bitc("inspect", target, "--json", cwd=workdir)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["kind"] in ("artifact", "onnx")


def test_passes_lists_every_pass():
    out = bitc("passes")
    assert out.returncode == 0
    assert "fold_batchnorm" in out.stdout and "default pipeline:" in out.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["compile", "missing.onnx"], 2, "missing.onnx: no such file"),
        (["compile", "m.onnx", "--target", "tpu"], 2, "unknown target 'tpu'"),
        (["compile", "m.onnx", "--passes", "fold_constants,nope"], 2, "unknown pass 'nope'"),
        (["compile", "m.onnx", "--input-shape", "x"], 2, "--input-shape expects"),
        (["run", "m.onnx", "--random"], 2, "not a bitc artifact"),
        (["run", "missing.bitc", "--random"], 2, "no such artifact"),
        (["frobnicate"], 2, "invalid choice"),
        (["compile"], 2, "required"),
        (["compile", "m.onnx", "--binarize-planes", "9"], 2, "planes must be 1-4"),
        (["compile", "m.onnx", "--binarize-layers", "nope"], 2, "no Conv/Gemm/MatMul named nope"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code(workdir, args, code, message):
    out = bitc(*args, cwd=workdir)
    assert out.returncode == code
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


def test_run_checks_input_files(workdir):
    assert bitc("compile", "m.onnx", "-o", "m.bitc", cwd=workdir).returncode == 0
    np.save(workdir / "bad.npy", np.zeros((2, 2), np.float32))
    out = bitc("run", "m.bitc", "--input", "x=bad.npy", cwd=workdir)
    assert out.returncode == 2 and "input 'x': shape [2, 2], expected [1, 3, 16, 16]" in out.stderr
    (workdir / "junk.npy").write_bytes(b"junk")
    out = bitc("run", "m.bitc", "--input", "x=junk.npy", cwd=workdir)
    assert out.returncode == 2 and "junk.npy: not a readable .npy array" in out.stderr


@pytest.mark.parametrize("delay", [0.5, 2.0, 4.0])
def test_interrupted_compile_leaves_no_file(tmp_path, delay):
    """SIGTERM at any point of a compile: never a temp or partial file. Exit code 130 where Python handles the
    signal; during LLVM code generation LLVM's own handler ends the process with the signal (-15)."""
    import signal
    import time

    make_conv_bn_model(tmp_path / "m.onnx", channels=64)
    process = subprocess.Popen(
        [sys.executable, "-m", "bitc.cli", "compile", "m.onnx", "-o", "m.bitc"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert "Traceback" not in stderr
    assert process.returncode in (0, 130, -signal.SIGTERM), stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left in (["m.onnx"], ["m.bitc", "m.onnx"]), left  # never a temp file
    if "m.bitc" in left:  # the signal came after the rename: the artifact must be whole
        import bitc as bitc_api

        assert bitc_api.load(tmp_path / "m.bitc").outputs[0].shape == (1, 10)


def test_report_is_written_with_measurements(workdir):
    assert bitc("compile", "m.onnx", "-o", "m.bitc", "--verify", cwd=workdir).returncode == 0
    out = bitc("report", "m.onnx", "m.bitc", "-o", "out/report.html", "--runs", "3", cwd=workdir)
    assert out.returncode == 0, out.stderr
    page = (workdir / "out" / "report.html").read_text()
    for section in ("Latency", "Error against onnxruntime", "Time per kernel", "Layers", "Passes"):
        assert f"<h2>{section}" in page
    assert "data:image/png;base64," in page  # charts
    assert "fused_conv2d" in page  # a profiled kernel
    assert "fold_batchnorm" in page


def test_binarize_flag_compiles_binary_layers_and_reports_their_error(workdir):
    out = bitc("compile", "m.onnx", "-o", "bin.bitc", "--binarize", "--binarize-layers", "fc", "--json", cwd=workdir)
    assert out.returncode == 0, out.stderr
    passes = {p["name"]: p for p in json.loads(out.stdout)["passes"]}
    layers = passes["binarize"]["details"]["layers"]
    assert list(layers) == ["fc"] and 0 < layers["fc"]["weight_rel_error"] < 1
    assert 0 < layers["fc"]["output_rel_error"] < 2
    assert passes["lower_binary"]["details"]["lowered"] == 1
    inspected = bitc("inspect", "bin.bitc", "--json", cwd=workdir)
    assert "bitc::BinaryDense" in inspected.stdout


def test_prune_and_reorder_flags_shrink_the_model_and_report_it(workdir):
    out = bitc("compile", "m.onnx", "-o", "pruned.bitc", "--prune", "0.5", "--prune-round-to", "2", "--reorder",
               "--json", cwd=workdir)  # fmt: skip
    assert out.returncode == 0, out.stderr
    passes = [p["name"] for p in json.loads(out.stdout)["passes"]]
    assert (
        passes.index("fold_batchnorm") < passes.index("prune") < passes.index("reorder") < passes.index("lower_binary")
    )
    report = next(p for p in json.loads(out.stdout)["passes"] if p["name"] == "prune")["details"]
    assert report["after"]["params"] < report["before"]["params"]
    assert bitc("run", "pruned.bitc", "--random", cwd=workdir).returncode == 0


def test_inspect_onnx_names_dynamic_inputs_and_unsupported_ops_before_compiling(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Det", ["x"], ["y"], name="determinant"), helper.make_node("Relu", ["z"], ["w"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 3]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 4])],
    )  # fmt: skip
    path = tmp_path / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    result = bitc("inspect", str(path))
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "dynamic inputs: x ['n', 3, 3]; compile with --dim n=N" in out
    assert "unsupported: Det (domain ai.onnx, node 'determinant')" in out
