"""The CUDA target: artifacts build without a GPU and carry the expected instructions; the GPU kernels' computes
match the op references (built for the CPU: the GPU schedules only reorder them); the 1-bit mma kernel's tiling
and fragment layouts, emulated in numpy, compute the GEMM; the runtime refuses a machine without a GPU in one
line. Tests marked `gpu` run the artifacts on a GPU and compare them with the CPU build (skipped without one)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from binary_models import as_ir, binary_conv_model, binary_dense_model, lowbit_matmul_model, packed_pool_model

import bitc
from bitc import ops
from bitc.codegen import registry
from bitc.codegen.cuda import emitters as cuda_emitters
from bitc.codegen.cuda import mma as cuda_mma
from bitc.codegen.cuda.te_kernel import TeKernel
from bitc.codegen.kernels.nodes import conv_parts
from bitc.codegen.target import CudaTarget, local_gpu_arch, parse_target
from bitc.errors import BadInputError, BitcError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not installed")
needs_gpu = pytest.mark.skipif(local_gpu_arch() is None, reason="no CUDA GPU on this machine")


def test_cuda_targets_name_an_arch_and_refuse_unknown_ones():
    assert parse_target("cuda:sm_90") == CudaTarget("sm_90", "requested")
    default = parse_target("cuda")
    assert default.arch == (local_gpu_arch() or "sm_80")
    assert default.to_manifest()["ptx"] == f"compute_{default.compute_capability}"
    assert CudaTarget("sm_80").has_b1_mma and not CudaTarget("sm_75").has_b1_mma
    if shutil.which("nvcc") is not None:
        with pytest.raises(BadInputError, match="'sm_61' is not a GPU arch this nvcc builds for"):
            parse_target("cuda:sm_61")


def _ptx(artifact: Path) -> str:
    with zipfile.ZipFile(artifact) as archive:
        return archive.read("kernels.ptx").decode()


MMA = "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc"


@needs_nvcc
@pytest.mark.parametrize(
    ("case", "arch", "expected"),
    [
        ("conv", "sm_80", [MMA, "popc.b32"]),
        ("conv", "sm_75", ["popc.b32", "ld.shared."]),
        ("dense_batch", "sm_90", [MMA, "popc.b32"]),
        ("dense_row", "sm_80", ["popc.b32", "ld.shared."]),
        ("gemv", "sm_80", ["shfl.sync.", "xor.b32"]),
    ],
)
def test_cuda_artifacts_build_and_carry_the_expected_instructions(tmp_path, case, arch, expected):
    """Batched binary conv and dense: 1-bit tensor-core mma (sm_80+); before sm_80, and for one row: popc over
    shared-memory tiles; the low-bit GEMV: sign flips by xor and a warp shuffle reduction."""
    proto = {
        "conv": lambda: binary_conv_model(c=64, o=64, output_format="packed"),
        "dense_batch": lambda: binary_dense_model(m=64, k=512, n=128),
        "dense_row": lambda: binary_dense_model(m=1, k=512, n=128),
        "gemv": lambda: lowbit_matmul_model(shape=(1, 512), n=256, group_size=128),
    }[case]()
    onnx.save(proto, tmp_path / "m.onnx")
    result = bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc", target=f"cuda:{arch}", passes=[])
    ptx = _ptx(result.path)
    assert f".target {arch}" in ptx
    for instruction in expected:
        assert instruction in ptx, f"{instruction} missing from the {case} kernels"
    if MMA not in expected:
        assert "mma.sync" not in ptx
    manifest = result.manifest
    assert manifest["target"]["kind"] == "cuda" and manifest["target"]["arch"] == arch
    with zipfile.ZipFile(result.path) as archive:
        assert set(archive.namelist()) == {"manifest.json", "model.so", "kernels.fatbin", "kernels.ptx"}


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_example_models_build_for_cuda(tmp_path, arch):
    """The bundled float CNN (dlight's GPU schedules) and Bi-Real-Net (bitc's binary kernels) for both archs."""
    for name in ("resnet18_small", "bireal18_small"):
        result = bitc.compile(EXAMPLES / f"{name}.onnx", tmp_path / f"{name}.bitc", target=f"cuda:{arch}")
        ptx = _ptx(result.path)
        assert f".target {arch}" in ptx and len(re.findall(r"\.entry ", ptx)) > 5
        if name == "bireal18_small":
            assert MMA in ptx and "popc.b32" in ptx  # binary convs on tensor cores, bit counts on CUDA cores
        with zipfile.ZipFile(result.path) as archive:
            assert archive.read("kernels.fatbin")[:4] == bytes.fromhex("50ed55ba")  # fatbin magic


def _run_on_cpu(kernel: TeKernel, *activations: np.ndarray) -> np.ndarray:
    """Build the GPU kernel's compute for the CPU, unscheduled, and run it."""
    import tvm
    from tvm import te

    arrays = [*activations, *kernel.constants]
    placeholders = [te.placeholder(a.shape, str(a.dtype), name=n) for a, n in zip(arrays, kernel.names, strict=True)]
    output = kernel.compute(*placeholders)
    func = te.create_prim_func([*placeholders, output]).with_attr("global_symbol", "main")
    library = tvm.compile(tvm.IRModule({"main": func}), tvm.target.Target({"kind": "llvm"}))
    result = tvm.runtime.empty([int(d) for d in output.shape], output.dtype, tvm.cpu())
    library["main"](*(tvm.runtime.tensor(a, tvm.cpu()) for a in arrays), result)
    return result.numpy()


def _reference_case(proto: onnx.ModelProto, seed: int) -> tuple[ir.Node, ir.Model, np.ndarray, np.ndarray, np.ndarray]:
    """The model's first bitc op after its BitPack, a seeded random input x, the value reaching that op (the
    BitPack's output, or x), and the model's output, all by the numpy references."""
    model = as_ir(proto)
    node = next(node for node in model.graph if ops.is_bitc(node) and node.op_type != "BitPack")
    x = np.random.default_rng(seed).standard_normal([int(d) for d in model.graph.inputs[0].shape]).astype(np.float32)
    evaluator = ops.reference_evaluator(model)
    feeds = {model.graph.inputs[0].name: x}
    (value,) = evaluator.run([node.inputs[0].name], feeds) if node.inputs[0].producer() else (x,)
    return node, model, x, value, evaluator.run(None, feeds)[0]


@pytest.mark.parametrize(
    "case",
    [
        {},
        {"stride": 2, "c": 100, "o": 33},
        {"output_format": "packed", "planes": 2, "threshold_planes": 2},
        {"pad": 0},
        {"pad_value": 1},
    ],
)
def test_gpu_binary_conv_compute_matches_reference(case):
    node, _, _, packed, expected = _reference_case(binary_conv_model(**case), seed=0)
    _assert_matches(_run_on_cpu(cuda_emitters.binary_conv_kernel(node), packed), expected)
    # the tensor-core path: packed im2col, the and-GEMM (in numpy here), the epilogue from and counts
    columns = _run_on_cpu(cuda_mma.im2col_kernel(conv_parts(node).geometry), packed)
    weights = node.inputs[1].const_value.numpy()
    and_counts = _and_counts(columns, weights.reshape(weights.shape[0] * weights.shape[1], -1))
    _assert_matches(_run_on_cpu(cuda_mma.conv_epilogue_kernel(node), columns, and_counts), expected)


@pytest.mark.parametrize("case", [{}, {"output_format": "packed", "planes": 2, "threshold_planes": 3}, {"k": 33}])
def test_gpu_binary_dense_computes_match_reference(case):
    """The CUDA-core popcount kernel, and the tensor-core path's epilogue (xor counts from and counts)."""
    node, _, _, packed, expected = _reference_case(binary_dense_model(**case), seed=1)
    _assert_matches(_run_on_cpu(cuda_emitters.binary_dense_kernel(node), packed), expected)
    weights = node.inputs[1].const_value.numpy()
    and_counts = _and_counts(packed, weights.reshape(-1, weights.shape[-1]))
    _assert_matches(_run_on_cpu(cuda_mma.epilogue_kernel(node), packed, and_counts), expected)


@pytest.mark.parametrize("case", [{"shape": (1, 100)}, {"shape": (1, 1, 576), "group_size": 64, "planes": 2}])
def test_gpu_lowbit_gemv_compute_matches_reference(case):
    """Sign flips by xor of the float's sign bit, per-word group scales, a partial last word."""
    node, _, x, _, expected = _reference_case(lowbit_matmul_model(**case), seed=2)
    kernel = cuda_emitters.lowbit_matmul_kernel(node)
    assert kernel.name == "lowbit_gemv"
    got = _run_on_cpu(kernel, x.reshape(-1, x.shape[-1])).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4 * np.abs(expected).max())


def test_gpu_bitpack_and_pool_computes_match_reference():
    node, model, x, packed_reference, expected = _reference_case(packed_pool_model(), seed=3)
    bitpack = next(n for n in model.graph if n.op_type == "BitPack")
    packed = _run_on_cpu(cuda_emitters.bitpack_kernel(bitpack), x)
    assert np.array_equal(packed, packed_reference)
    assert np.array_equal(_run_on_cpu(cuda_emitters.packed_max_pool_kernel(node), packed), expected)


def _assert_matches(got: np.ndarray, expected: np.ndarray) -> None:
    if expected.dtype == np.uint32:
        assert np.array_equal(got, expected)  # integer path: bit-exact
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5 * np.abs(expected).max())


def _and_counts(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    bits_x = np.unpackbits(x.view(np.uint8), axis=1).astype(np.int32)
    bits_w = np.unpackbits(w.view(np.uint8), axis=1).astype(np.int32)
    return bits_x @ bits_w.T


def test_mma_fragments_cover_each_tile_element_once():
    """The m16n8k256 fragments: 32 lanes × 4 A registers = 16 rows × 8 words, 32 × 2 B = 8 columns × 8 words,
    32 × 4 C = 16 × 8 accumulators, every element exactly once."""
    for fragment, registers, shape in (
        (cuda_mma.a_fragment, 4, (16, 8)),
        (cuda_mma.b_fragment, 2, (8, 8)),
        (cuda_mma.c_fragment, 4, (16, 8)),
    ):
        seen = np.zeros(shape, int)
        for lane in range(32):
            for register in range(registers):
                seen[fragment(lane, register)] += 1
        assert np.all(seen == 1)
    for row in range(cuda_mma.BM):  # the swizzle permutes each row's words
        assert sorted(cuda_mma.swizzle(row, w) for w in range(cuda_mma.STAGE_WORDS)) == list(range(16))
    for word0 in (0, 4, 8, 12):  # a fragment load (8 rows × 4 words) touches 32 distinct banks
        banks = {(r % 2) * 16 + cuda_mma.swizzle(r, word0 + t) for r in range(8) for t in range(4)}
        assert len(banks) == 32


def _emulate_and_gemm(x: np.ndarray, weights: np.ndarray, columns: int) -> np.ndarray:
    """The and-GEMM kernel's loops in numpy: shared-memory stages (swizzled), per-warp tiles, fragment loads,
    an mma that assembles its operands from the 32 lanes' registers as the hardware does, guarded stores."""
    rows, in_words = x.shape
    padded_rows, padded_words = -(-rows // cuda_mma.BM) * cuda_mma.BM, weights.shape[1]
    xs = np.zeros((padded_rows, padded_words), np.uint32)
    xs[:rows, :in_words] = x
    y = np.zeros((rows, columns), np.int64)
    for bm in range(padded_rows // cuda_mma.BM):
        for bn in range(weights.shape[0] // cuda_mma.BN):
            acc = np.zeros((4, 32, cuda_mma.TILES_M * cuda_mma.TILES_N * 4), np.int64)
            for ko in range(padded_words // cuda_mma.STAGE_WORDS):
                words = slice(ko * cuda_mma.STAGE_WORDS, (ko + 1) * cuda_mma.STAGE_WORDS)
                a_s, b_s = np.zeros((64, 16), np.uint32), np.zeros((64, 16), np.uint32)
                for r in range(64):
                    for w in range(16):
                        a_s[r, cuda_mma.swizzle(r, w)] = xs[bm * 64 + r, words][w]
                        b_s[r, cuda_mma.swizzle(r, w)] = weights[bn * 64 + r, words][w]
                for warp in range(4):
                    for ks in range(2):
                        for mt in range(cuda_mma.TILES_M):
                            for nt in range(cuda_mma.TILES_N):
                                row0 = (warp // 2) * 32 + mt * 16
                                col0 = (warp % 2) * 32 + nt * 8
                                a_tile, b_tile = np.zeros((16, 8), np.uint32), np.zeros((8, 8), np.uint32)
                                for lane in range(32):
                                    for reg in range(4):
                                        r, w = cuda_mma.a_fragment(lane, reg)
                                        a_tile[r, w] = a_s[row0 + r, cuda_mma.swizzle(row0 + r, ks * 8 + w)]
                                    for reg in range(2):
                                        c, w = cuda_mma.b_fragment(lane, reg)
                                        b_tile[c, w] = b_s[col0 + c, cuda_mma.swizzle(col0 + c, ks * 8 + w)]
                                c_tile = _and_counts(a_tile, b_tile)
                                for lane in range(32):
                                    for reg in range(4):
                                        acc[warp, lane, (mt * cuda_mma.TILES_N + nt) * 4 + reg] += c_tile[
                                            cuda_mma.c_fragment(lane, reg)
                                        ]
            for warp in range(4):
                for lane in range(32):
                    for mt in range(cuda_mma.TILES_M):
                        for nt in range(cuda_mma.TILES_N):
                            for reg in range(4):
                                r, c = cuda_mma.c_fragment(lane, reg)
                                row = bm * 64 + (warp // 2) * 32 + mt * 16 + r
                                col = bn * 64 + (warp % 2) * 32 + nt * 8 + c
                                if row < rows and col < columns:
                                    y[row, col] = acc[warp, lane, (mt * cuda_mma.TILES_N + nt) * 4 + reg]
    return y


def test_mma_kernel_tiling_computes_the_and_gemm():
    """Rows, columns and words that fill no tile evenly (40 rows, 70 columns, 19 words)."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 2**32, (40, 19), dtype=np.uint64).astype(np.uint32)
    packed = rng.integers(0, 2**32, (1, 70, 19), dtype=np.uint64).astype(np.uint32)
    got = _emulate_and_gemm(x, cuda_mma.padded_weights(packed), 70)
    assert np.array_equal(got, _and_counts(x, packed[0]))
    assert np.array_equal(cuda_mma.weight_bit_counts(packed), _and_counts(packed[0], packed[0]).diagonal())


@needs_nvcc
@pytest.mark.skipif(local_gpu_arch() is not None, reason="this machine has a GPU")
def test_cuda_artifact_without_gpu_is_a_one_line_error(tmp_path):
    onnx.save(binary_dense_model(), tmp_path / "m.onnx")
    bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc", target="cuda", passes=[])
    with pytest.raises(BitcError, match="runs on an NVIDIA GPU"):
        bitc.load(tmp_path / "m.bitc")
    done = subprocess.run(
        [sys.executable, "-m", "bitc", "run", str(tmp_path / "m.bitc")], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "NVIDIA GPU" in done.stderr


def test_device_copies_round_trip():
    """The runtime's host↔device copy path (exercised here between CPU tensors; the GPU tests use it for real)."""
    from bitc.runtime import tvm_loader

    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    tensor = tvm_loader.device_tensor(array, tvm_loader.DL_CPU)
    copy = tvm_loader.copy_to(tensor, tvm_loader.DL_CPU)
    assert np.array_equal(tvm_loader.host_array(copy), array)


def test_kv_attention_has_no_cuda_kernel_yet(tmp_path):
    from bitc.errors import CompileError

    node = ir.Node("bitc", "KVAttention", [], name="attention")
    with pytest.raises(CompileError, match="KVAttention has no CUDA kernel"):
        registry.emit(None, node, [], CudaTarget())


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize(
    "proto",
    [
        lambda: binary_conv_model(c=64, o=64, output_format="packed"),
        lambda: binary_conv_model(),
        lambda: binary_dense_model(m=64, k=512, n=128),
        lambda: binary_dense_model(m=64, k=300, n=70, output_format="packed", planes=2),
        lambda: lowbit_matmul_model(shape=(1, 512), n=256, group_size=128),
    ],
)
def test_cuda_kernels_match_the_cpu_build_on_a_gpu(tmp_path, proto):
    onnx.save(proto(), tmp_path / "m.onnx")
    cpu = bitc.compile(tmp_path / "m.onnx", tmp_path / "cpu.bitc", passes=[])
    gpu = bitc.compile(tmp_path / "m.onnx", tmp_path / "gpu.bitc", target="cuda", passes=[])
    model = bitc.load(cpu.path)
    inputs = model.random_inputs(seed=5)
    _assert_matches(bitc.load(gpu.path).run(inputs)["y"], model.run(inputs)["y"])


@pytest.mark.gpu
@needs_gpu
def test_example_models_on_a_gpu_match_the_cpu_build(tmp_path):
    for name in ("bireal18_small", "resnet18_small"):
        cpu = bitc.load(bitc.compile(EXAMPLES / f"{name}.onnx", tmp_path / f"{name}.cpu.bitc").path)
        gpu = bitc.load(bitc.compile(EXAMPLES / f"{name}.onnx", tmp_path / f"{name}.gpu.bitc", target="cuda").path)
        assert gpu.device == "cuda"
        inputs = cpu.random_inputs(seed=6)
        (expected,), (got,) = cpu.run(inputs).values(), gpu.run(inputs).values()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@needs_nvcc
def test_tuning_a_cuda_target_is_refused(tmp_path):
    onnx.save(binary_dense_model(), tmp_path / "m.onnx")
    with pytest.raises(BadInputError, match="not wired to the CUDA target"):
        bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc", target="cuda", tune_trials=4)
    assert not (tmp_path / "m.bitc").exists()


def test_prebuilt_kernels_answer_tvms_compile_hook_only_while_loading():
    """The CUDA loader's compile request gets the artifact's fatbin for its own source; the hook that was there
    before (TVM's nvcc one, once `tvm` is imported) is back afterwards."""
    import hashlib

    from bitc.runtime import tvm_loader

    ffi = tvm_loader.ffi()
    before = ffi.get_global_func(tvm_loader.CUDA_COMPILE_HOOK, allow_missing=True)
    source = 'extern "C" __global__ void k() {}'
    with tvm_loader.prebuilt_cuda_kernels(hashlib.sha256(source.encode()).hexdigest(), b"FATBIN"):
        hook = ffi.get_global_func(tvm_loader.CUDA_COMPILE_HOOK)
        assert bytes(hook(source)) == b"FATBIN"
    after = ffi.get_global_func(tvm_loader.CUDA_COMPILE_HOOK, allow_missing=True)
    assert (before is None and after is None) or (after is not None and after.same_as(before))


@pytest.mark.slow
@needs_nvcc
@pytest.mark.parametrize("name", ["light_resnet50", "light_shufflenet", "light_squeezenet"])
def test_onnx_light_graphs_build_for_cuda(tmp_path, name):
    """Classic float CNNs through dlight's GPU schedules (resnet50's input is named 'gpu_0/data_0', which TVM
    would print as a CUDA parameter name unless bitc renames it). Inception v1 (LRN, concats) builds too; it is
    left out for CI time (44-65 s on a 2-core machine)."""
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    result = bitc.compile(light / f"{name}.onnx", tmp_path / "m.bitc", target="cuda")
    assert len(re.findall(r"\.entry ", _ptx(result.path))) > 5
    original = {value.name for value in onnx.load(light / f"{name}.onnx").graph.input}
    assert {spec["name"] for spec in result.manifest["inputs"]} <= original  # users keep the model's names


@needs_nvcc
def test_cli_compiles_for_cuda_and_names_a_bad_arch_in_one_line(tmp_path):
    onnx.save(binary_dense_model(), tmp_path / "m.onnx")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bitc", *args], capture_output=True, text=True, check=False)

    done = cli("compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.bitc"), "--target", "cuda:sm_90", "--json")
    assert done.returncode == 0, done.stderr
    assert '"target": "cuda:sm_90"' in done.stdout
    inspected = cli("inspect", str(tmp_path / "m.bitc"))
    assert "cuda:sm_90 (NVIDIA GPU, requested arch; PTX compute_90" in " ".join(inspected.stdout.split())
    bad = cli("compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "bad.bitc"), "--target", "cuda:sm_61")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "sm_61" in bad.stderr
    assert not (tmp_path / "bad.bitc").exists()


@needs_nvcc
def test_narrow_type_and_bitcast_kernels_build_for_cuda(tmp_path):
    """bitc.RoundToFormat (a Cast to float8) and bitc.Reinterpret (BitCast) get their elementwise GPU kernels."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["q"], to=TensorProto.FLOAT8E4M3FN),
         helper.make_node("BitCast", ["x"], ["bits"], to=TensorProto.INT32)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("q", TensorProto.FLOAT8E4M3FN, [4, 64]),
         helper.make_tensor_value_info("bits", TensorProto.INT32, [4, 64])],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 26)]), tmp_path / "m.onnx")
    result = bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc", target="cuda")
    ptx = _ptx(result.path)
    assert "round_to_format" in ptx and "reinterpret" in ptx
    assert result.manifest["outputs"][0]["dtype"] == "float8_e4m3fn"
