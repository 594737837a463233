"""End to end on small models: compile, load, run, compare with onnxruntime; the artifact and runtime contract."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from conftest import compile_matching_onnxruntime, make_conv_bn_model, run_onnxruntime, save_graph, save_matmul_model

import bitc
from bitc.errors import BadInputError
from bitc.runtime.artifact import LIBRARY_NAME, MANIFEST_NAME


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("compiled")
    source = make_conv_bn_model(root / "conv_bn.onnx", channels=13)
    result = bitc.compile(source, root / "conv_bn.bitc")
    return source, result


def test_compiled_model_matches_onnxruntime(compiled):
    source, result = compiled
    model = bitc.load(result.path)
    x = np.random.default_rng(7).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(model(x), run_onnxruntime(source, {"x": x})[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model(x=x), model.run({"x": x})["logits"])


def test_manifest_describes_the_artifact(compiled):
    _, result = compiled
    manifest = result.manifest
    assert manifest["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "logits", "shape": [1, 10], "dtype": "float32"}]
    assert manifest["target"]["kind"] == "llvm" and manifest["target"]["mcpu"]
    assert {"bitc", "apache-tvm", "onnx", "onnx-ir", "opsets"} <= set(manifest["versions"])
    assert [p["name"] for p in manifest["passes"]] == list(bitc.passes.DEFAULT_PIPELINE)
    assert manifest["codegen"] == {"conv_layout": "blocked"}
    with zipfile.ZipFile(result.path) as archive:
        stored = json.loads(archive.read(MANIFEST_NAME))
        library = archive.read(LIBRARY_NAME)
    import hashlib

    assert stored["members"][LIBRARY_NAME]["sha256"] == hashlib.sha256(library).hexdigest()


def test_compile_from_torch_module(tmp_path):
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten()).eval()
    x = torch.randn(2, 3, 8, 8)
    result = bitc.compile(module, tmp_path / "torch.bitc", example_inputs=(x,))
    out = bitc.load(result.path)(x.numpy())
    np.testing.assert_allclose(out, module(x).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_inputs_are_checked_before_running(compiled):
    model = bitc.load(compiled[1].path)
    good = np.zeros((1, 3, 16, 16), np.float32)
    with pytest.raises(BadInputError, match="dtype float64"):
        model(good.astype(np.float64))
    with pytest.raises(BadInputError, match="shape"):
        model(np.zeros((1, 3, 16, 15), np.float32))
    with pytest.raises(BadInputError, match="missing \\['x'\\], unknown \\['y'\\]"):
        model(y=good)
    with pytest.raises(BadInputError, match="takes 1 input"):
        model(good, good)


def test_unaligned_and_strided_inputs_are_handled(compiled):
    source, result = compiled
    model = bitc.load(result.path)
    base = np.random.default_rng(1).standard_normal(1 * 3 * 16 * 16 + 1).astype(np.float32)
    unaligned = base[1:].reshape(1, 3, 16, 16)
    strided = np.random.default_rng(2).standard_normal((1, 3, 16, 32)).astype(np.float32)[..., ::2]
    for x in (unaligned, strided):
        np.testing.assert_allclose(model(x), run_onnxruntime(source, {"x": np.ascontiguousarray(x)})[0], atol=1e-5)


def test_tampered_artifact_is_refused(compiled, tmp_path):
    with zipfile.ZipFile(compiled[1].path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    library = bytearray(members[LIBRARY_NAME])
    library[len(library) // 2] ^= 0xFF
    members[LIBRARY_NAME] = bytes(library)
    with zipfile.ZipFile(tmp_path / "bad.bitc", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(BadInputError, match="checksum"):
        bitc.load(tmp_path / "bad.bitc")


def test_artifact_for_a_missing_cpu_feature_is_refused(compiled, tmp_path):
    with zipfile.ZipFile(compiled[1].path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(members[MANIFEST_NAME])
    manifest["target"]["cpu_features"].append("avx512_imaginary")
    members[MANIFEST_NAME] = json.dumps(manifest).encode()
    with zipfile.ZipFile(tmp_path / "other_cpu.bitc", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(BadInputError, match="avx512_imaginary"):
        bitc.load(tmp_path / "other_cpu.bitc")


def test_non_artifacts_are_refused(tmp_path):
    (tmp_path / "junk.bitc").write_bytes(b"not a zip")
    with pytest.raises(BadInputError, match="not a bitc artifact"):
        bitc.load(tmp_path / "junk.bitc")
    with pytest.raises(BadInputError, match="no such artifact"):
        bitc.load(tmp_path / "missing.bitc")


def test_failed_compile_leaves_no_file(tmp_path):
    from onnx import TensorProto, helper, save

    node = helper.make_node("NoSuchOp", ["x"], ["y"], name="mystery", domain="acme")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme", 1)]),
        tmp_path / "m.onnx",
    )
    with pytest.raises(BadInputError, match="NoSuchOp \\(domain acme, node 'mystery'\\)"):
        bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc")
    assert list(tmp_path.iterdir()) == [tmp_path / "m.onnx"]


def test_dynamic_inputs_need_a_shape(tmp_path):
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    with pytest.raises(BadInputError, match=r"'x' \[n,4\]; fix them with --dim n=N \("):
        bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc")
    result = bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc", input_shapes={"x": [3, 4]})
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(bitc.load(result.path)(x), np.maximum(x, 0))


def test_runtime_process_imports_no_compiler(compiled):
    """A deployment process loads the artifact with the TVM runtime only: no torch, onnx or TVM compiler."""
    script = (
        "import sys, numpy as np, bitc\n"
        f"m = bitc.load({str(compiled[1].path)!r})\n"
        "y = m(np.zeros((1, 3, 16, 16), np.float32))\n"
        "banned = [n for n in sys.modules if n.split('.')[0] in ('torch', 'onnx', 'onnx_ir', 'onnxscript', "
        "'onnxruntime', 'tvm')]\n"
        "print(y.shape, banned)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(1, 10) []", out.stdout + out.stderr


def test_compiling_twice_gives_identical_artifacts(tmp_path):
    source = make_conv_bn_model(tmp_path / "m.onnx")
    first = bitc.compile(source, tmp_path / "a.bitc").path.read_bytes()
    second = bitc.compile(source, tmp_path / "b.bitc").path.read_bytes()
    assert first == second


def test_channel_counts_without_a_multiple_of_8_still_get_blocked_convs(tmp_path):
    """45 channels (a pruned layer) use 15-wide blocks instead of TVM's plain NCHW conv (3-17× slower)."""
    import bitc.codegen.cpu.nchwc as nchwc

    assert (
        nchwc._channel_block(45, 16) == 15
        and nchwc._channel_block(48, 16) == 16
        and nchwc._channel_block(47, 16) is None
    )
    path = make_conv_bn_model(tmp_path / "m.onnx", channels=45)
    compiled = bitc.load(bitc.compile(path, tmp_path / "m.bitc").path)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(compiled(x), run_onnxruntime(path, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_few_row_matmuls_run_over_reblocked_weights_and_match_onnxruntime(tmp_path):
    """A decode-style MatMul (one row × a large constant matrix, N not a multiple of the 64-column tile) goes to
    the re-blocked GEMV kernel, seven rows (a prefill chunk: one partial 6-row register tile) to the GEMM over
    the same blocks, 65 rows keep the ordinary schedule. All match onnxruntime."""
    import onnx
    import onnx_ir as ir
    from onnx import TensorProto, helper, numpy_helper

    from bitc.codegen.cpu.float_gemv import blocked_rows, is_streamed_gemv

    rng = np.random.default_rng(0)
    weights = rng.standard_normal((320, 1000)).astype(np.float32)
    for rows in (1, 7, 65):
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
            "gemv",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows, 320])],
            [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, rows, 1000])],
            [numpy_helper.from_array(weights, "w")],
        )
        path = tmp_path / f"gemv{rows}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
        matmul = next(node for node in ir.load(path).graph if node.op_type == "MatMul")
        assert is_streamed_gemv(matmul) == (rows == 1) and blocked_rows(matmul) == (rows if rows <= 64 else 0)
        x = rng.standard_normal((1, rows, 320)).astype(np.float32)
        result = bitc.compile(path, tmp_path / f"gemv{rows}.bitc")
        got = bitc.load(result.path)(x)
        np.testing.assert_allclose(got, run_onnxruntime(path, {"x": x})[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("rows", "in_features"), [(2, 320), (7, 320), (5, 100)])
def test_few_row_gemm_for_16_register_cpus_matches_onnxruntime(tmp_path, rows, in_features):
    """The AVX2 form of the few-row GEMM (32-column halves, 2-row pairs, blocks of inputs; an odd row count and an
    input count with no 64/48/32-input block) matches onnxruntime."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(rows)
    weights = rng.standard_normal((in_features, 700)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows, in_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, rows, 700])],
        [numpy_helper.from_array(weights, "w")],
    )
    path = tmp_path / "gemm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    x = rng.standard_normal((1, rows, in_features)).astype(np.float32)
    result = bitc.compile(path, tmp_path / "gemm.bitc", target="cpu:x86-64-v3")
    got = bitc.load(result.path)(x)
    np.testing.assert_allclose(got, run_onnxruntime(path, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_every_dynamic_input_is_named_in_one_message(tmp_path):
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", 3]) for name in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["n", 3])],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    with pytest.raises(BadInputError, match=r"2 inputs .*'a'.*'b'.*fix them with --dim n=N \("):
        bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc")
    graph.input[1].type.tensor_type.shape.dim[0].Clear()  # no name: only --input-shape can fix it
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    with pytest.raises(BadInputError, match=r"2 inputs .*'a'.*'b'.*--dim n=N --input-shape b=d0,d1,\.\.\. \("):
        bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc")


def _generic_conv_model(path):
    """A grouped conv of 4 groups of 17 inputs (68 channels: no vector block, merged or banded) and a 1-D conv
    with 4 output channels, both over the size worth a warning: neither has a blocked kernel."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(3)
    weights = [
        numpy_helper.from_array(rng.standard_normal((272, 17, 1, 1)).astype(np.float32), "w_grouped"),
        numpy_helper.from_array(rng.standard_normal((4, 272, 3)).astype(np.float32), "w_1d"),
        numpy_helper.from_array(np.array([1, 272, 64], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w_grouped"], ["g"], name="grouped", group=4),
        helper.make_node("Reshape", ["g", "shape"], ["r"], name="flatten_rows"),
        helper.make_node("Conv", ["r", "w_1d"], ["y"], name="conv1d"),
    ]
    return save_graph(path, nodes, {"x": [1, 68, 8, 8]}, {"y": [1, 4, 62]}, weights)


def test_convs_left_to_generic_code_are_named_on_the_terminal(tmp_path):
    source = _generic_conv_model(tmp_path / "generic.onnx")
    out = subprocess.run(
        [sys.executable, "-m", "bitc.cli", "compile", str(source), "-o", str(tmp_path / "g.bitc")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "warning: 2 convolution(s) run in TVM's generic NCHW code" in " ".join(out.stdout.split())
    manifest = bitc.load(tmp_path / "g.bitc").manifest
    generic = manifest["codegen"]["generic_convs"]
    assert len(generic) == 2
    assert any("grouped (4 groups of 17 inputs, 68 outputs): no block fits" in line for line in generic)
    assert any("no vector block divides its 4 output channels" in line for line in generic)  # the 1-D conv
    x = np.random.default_rng(0).standard_normal((1, 68, 8, 8)).astype(np.float32)
    expected = run_onnxruntime(source, {"x": x})[0]
    np.testing.assert_allclose(bitc.load(tmp_path / "g.bitc")(x), expected, rtol=1e-4, atol=1e-4)


def test_a_conv_over_a_one_pixel_wide_image_matches_onnxruntime(tmp_path):
    """W = 1 (a 1-D conv written as 2-D): the blocked conv's register tile runs over OH·OW together."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((32, 16, 5, 1)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[2, 0, 2, 0], strides=[2, 1])
    path = save_graph(tmp_path / "narrow.onnx", [node], {"x": [1, 16, 37, 1]}, {"y": [1, 32, 19, 1]}, [w, b])
    x = rng.standard_normal((1, 16, 37, 1)).astype(np.float32)
    result = compile_matching_onnxruntime(path, {"x": x}, rtol=1e-4, atol=1e-4)
    assert "generic_convs" not in result.manifest["codegen"]


def test_avx2_conv_register_tiles_span_several_channel_blocks():
    """16 ymm registers: 2-4 output-channel blocks per tile (fewer loads per FMA than one block × 14 rows), the
    accumulators, one weight vector per block, one broadcast and a spare within 16; 2 blocks × 6 rows where no
    divisor tile holds 12 accumulators (the last row tile predicated); 32 zmm registers take bigger tiles."""
    from bitc.codegen.cpu.schedules import _conv_register_tile

    for channel_blocks, row_extent in ((8, 56), (32, 14), (6, 28), (4, 7), (1, 56), (32, 13), (3, 16)):
        blocks, rows = _conv_register_tile(channel_blocks, row_extent, registers=16)
        assert channel_blocks % blocks == 0 and rows <= row_extent
        assert blocks * rows + blocks + 2 <= 16
        if channel_blocks > 1 and row_extent in (56, 14, 13):
            assert (blocks, rows) == (2, 6)
    assert _conv_register_tile(64, 7, registers=16) == (1, 7)  # 2 × 6 + 1 was slower on 7-wide convs
    assert _conv_register_tile(8, 112, registers=16, tail=False) == (2, 4)  # a stem: no tail (70 % slower)
    assert _conv_register_tile(8, 56, registers=32) != _conv_register_tile(8, 56, registers=16)
    for channel_blocks, row_extent in ((8, 56), (32, 14), (4, 7), (32, 13)):  # AVX-512: divisor tiles
        blocks, rows = _conv_register_tile(channel_blocks, row_extent, registers=32)
        assert row_extent % rows == 0 and blocks * rows + blocks + 2 <= 32


@pytest.mark.parametrize(
    ("channels", "size", "kernel"), [(64, 28, 3), (48, 14, 1), (32, 7, 3), (32, 13, 3), (48, 27, 1)]
)
def test_avx2_multi_block_conv_tiles_match_onnxruntime(tmp_path, channels, size, kernel):
    """The AVX2 build (x86-64-v3: runs on any AVX2 CPU) of convs whose register tiles span 2-4 channel blocks,
    with a bias and ReLU in the write-back; 13 and 27 wide: row tiles of 6 with a shorter last one."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(channels)
    w = numpy_helper.from_array(rng.standard_normal((channels, 16, kernel, kernel)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[kernel // 2] * 4),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    shape = [1, channels, size, size]
    path = save_graph(tmp_path / "conv.onnx", nodes, {"x": [1, 16, size, size]}, {"y": shape}, [w, b])
    x = rng.standard_normal((1, 16, size, size)).astype(np.float32)
    bitc.compile(path, tmp_path / "avx2.bitc", target="cpu:x86-64-v3")
    got = bitc.load(tmp_path / "avx2.bitc")(x)
    np.testing.assert_allclose(got, run_onnxruntime(path, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_avx2_odd_channel_block_counts_get_one_zero_block(tmp_path):
    """120 output channels are 15 AVX2 blocks: one zero block makes 16, which the 2-block register tile takes;
    the real 120 are sliced back and match onnxruntime. Shallow convs, and 16-wide blocks, are left as they are."""
    from onnx import helper, numpy_helper

    from bitc.codegen.cpu.nchwc import _padded_output_channels

    assert _padded_output_channels(120, 288, 8) == 128
    assert _padded_output_channels(1000, 512, 8) == 1008  # SqueezeNet's classifier conv
    assert _padded_output_channels(120, 144, 8) is None and _padded_output_channels(72, 288, 8) is None
    assert _padded_output_channels(240, 288, 16) is None
    rng = np.random.default_rng(120)
    w = numpy_helper.from_array(rng.standard_normal((120, 32, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(120).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    path = save_graph(tmp_path / "conv.onnx", nodes, {"x": [1, 32, 13, 13]}, {"y": [1, 120, 13, 13]}, [w, b])
    x = rng.standard_normal((1, 32, 13, 13)).astype(np.float32)
    bitc.compile(path, tmp_path / "avx2.bitc", target="cpu:x86-64-v3")
    got = bitc.load(tmp_path / "avx2.bitc")(x)
    np.testing.assert_allclose(got, run_onnxruntime(path, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_avx2_matmul_register_tiles_leave_room_for_operands():
    """16 ymm registers: at most 12 accumulators per matmul tile (4 vectors × 4 rows took all 16 and spilled)."""
    from bitc.codegen.cpu.schedules import matmul_tile_vectors

    for blocks in (192, 48, 125, 7, 6, 1):
        vectors = matmul_tile_vectors(blocks, has_32_registers=False)
        rows = 14 if vectors == 1 else 6 if vectors == 2 else 4  # the row caps schedule_anchor pairs them with
        assert blocks % vectors == 0 and vectors * rows <= 14 and vectors in (1, 2, 3)
    assert matmul_tile_vectors(192) == 4  # 32 zmm registers keep the wide tile


@pytest.mark.parametrize(("rows", "inner", "columns"), [(128, 96, 384), (24, 64, 48), (7, 32, 40)])
def test_avx2_matmul_tiles_match_onnxruntime(tmp_path, rows, inner, columns):
    """The AVX2 build (x86-64-v3) of matmuls with 2- and 3-vector tiles and a row count no tile divides."""
    rng = np.random.default_rng(rows)
    path = save_matmul_model(tmp_path / "mm.onnx", [rows, inner], columns, rng)
    x = rng.standard_normal((rows, inner)).astype(np.float32)
    bitc.compile(path, tmp_path / "avx2.bitc", target="cpu:x86-64-v3")
    got = bitc.load(tmp_path / "avx2.bitc")(x)
    np.testing.assert_allclose(got, run_onnxruntime(path, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_a_1d_conv_runs_as_a_blocked_2d_conv_and_matches_onnxruntime(tmp_path):
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(6)
    w = numpy_helper.from_array(rng.standard_normal((32, 16, 5)).astype(np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[2, 1], strides=[2], dilations=[2])
    path = save_graph(tmp_path / "c1d.onnx", [node], {"x": [2, 16, 100]}, {"y": [2, 32, 48]}, [w])
    x = rng.standard_normal((2, 16, 100)).astype(np.float32)
    result = compile_matching_onnxruntime(path, {"x": x}, rtol=1e-4, atol=1e-4)
    assert "generic_convs" not in result.manifest["codegen"]


def test_a_grouped_conv_runs_as_blocked_convs_per_group_and_matches_onnxruntime(tmp_path):
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(8)
    w = numpy_helper.from_array(rng.standard_normal((48, 8, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(48).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], group=3, pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    path = save_graph(tmp_path / "grouped.onnx", nodes, {"x": [1, 24, 15, 15]}, {"y": [1, 48, 8, 8]}, [w, b])
    x = rng.standard_normal((1, 24, 15, 15)).astype(np.float32)
    result = compile_matching_onnxruntime(path, {"x": x}, rtol=1e-4, atol=1e-4)
    assert "generic_convs" not in result.manifest["codegen"]
