"""Files and faults: output paths checked before any work, temp files a killed process leaves are cleaned up,
writes that a full disk interrupts leave nothing, untrusted names print as themselves, and every bad option or
input file is one line with exit code 2."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_conv_bn_model
from onnx import TensorProto, helper, numpy_helper

import bitc
from bitc import atomic, cli
from bitc.errors import BadInputError, BitcError


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    make_conv_bn_model(root / "m.onnx")
    bitc.compile(root / "m.onnx", root / "m.bitc")
    return root


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bitc: error: ") and "Traceback" not in err, err
    return lines[0]


def identity_model(path: Path, dtype: int = TensorProto.FLOAT, shape=(2, 3), x="x", y="y", op_name="id") -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", [x], [y], name=op_name)],
        "g",
        [helper.make_tensor_value_info(x, dtype, list(shape))],
        [helper.make_tensor_value_info(y, dtype, list(shape))],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


# --- output path, checked before the model is even read --------------------------------------------------------


def _output_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    model = make_conv_bn_model(tmp / "m.onnx")
    (tmp / "link.bitc").symlink_to(model)
    os.link(model, tmp / "hard.bitc")
    os.mkfifo(tmp / "fifo.bitc")
    (tmp / "folder").mkdir()
    (tmp / "file").write_text("x")
    return {
        "source_itself": (model, "itself; give the output another name"),
        "symlink_to_source": (tmp / "link.bitc", "itself; give the output another name"),
        "hardlink_to_source": (tmp / "hard.bitc", "itself; give the output another name"),
        "fifo": (tmp / "fifo.bitc", "is not a regular file"),
        "device": (Path("/dev/null"), "is not a regular file"),
        "folder": (tmp / "folder", "is a folder"),
        "under_a_file": (tmp / "file" / "m.bitc", "is a file, not a folder"),
        "unwritable_folder": (Path("/proc/m.bitc"), "cannot write in the folder /proc"),
    }


OUTPUT_CASES = [
    "source_itself", "symlink_to_source", "hardlink_to_source", "fifo", "device", "folder", "under_a_file",
    "unwritable_folder",
]  # fmt: skip


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_compile_refuses_bad_output_path_before_reading_the_model(tmp_path, case):
    output, message = _output_cases(tmp_path)[case]
    source = (tmp_path / "m.onnx").read_bytes()
    with pytest.raises(BadInputError, match=message):
        bitc.compile(tmp_path / "m.onnx", output)
    assert (tmp_path / "m.onnx").read_bytes() == source
    assert (tmp_path / "fifo.bitc").is_fifo()
    assert not list(tmp_path.glob(".*.tmp"))
    # checked first: a model that cannot even be read still gets the output path's error
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    if case not in ("source_itself", "symlink_to_source", "hardlink_to_source"):
        with pytest.raises(BadInputError, match=message):
            bitc.compile(tmp_path / "junk.onnx", output)


def test_cli_compile_onto_the_source_model_keeps_it(tmp_path, capsys):
    model = make_conv_bn_model(tmp_path / "m.onnx")
    before = model.read_bytes()
    code, _, err = run_cli(capsys, "compile", str(model), "-o", str(model))
    assert code == 2 and "itself; give the output another name" in one_line_error(err)
    assert model.read_bytes() == before


# --- temp files of killed processes ------------------------------------------------------------------------------


def _python(code: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, **(env or {})}, text=True, **kwargs
    )


def test_temp_file_of_a_writer_killed_mid_write_is_removed_by_the_next_write(tmp_path):
    killed = _python(
        f"""
        import os, signal
        from bitc.atomic import atomic_output
        with atomic_output({str(tmp_path / "m.bitc")!r}) as handle:
            handle.write(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    assert killed.wait(timeout=60) == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".m.bitc.bitc-{killed.pid}-") and left[0].endswith(".tmp"), left
    other = tmp_path / ".other.bitc.tmp"  # not bitc's pattern: never touched
    other.write_bytes(b"someone else's")
    with atomic.atomic_output(tmp_path / "m.bitc") as handle:
        handle.write(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.bitc.tmp", "m.bitc"]
    assert (tmp_path / "m.bitc").read_bytes() == b"whole"


def test_temp_file_of_a_live_writer_is_kept(tmp_path):
    writer = _python(
        f"""
        import sys
        from bitc.atomic import atomic_output
        with atomic_output({str(tmp_path / "m.bitc")!r}) as handle:
            handle.write(b"partial")
            print("writing", flush=True)
            sys.stdin.readline()
        """,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert writer.stdout.readline().strip() == "writing"
        assert atomic.remove_stale_temp_files(tmp_path) == []
        with atomic.atomic_output(tmp_path / "m.bitc") as handle:
            handle.write(b"ours")
        assert len(list(tmp_path.glob(f".m.bitc.bitc-{writer.pid}-*.tmp"))) == 1
    finally:
        writer.communicate("done\n", timeout=60)
    assert writer.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bitc"]


def test_process_temp_dir_is_removed_at_exit_and_a_killed_ones_by_the_next_process(tmp_path):
    env = {"TMPDIR": str(tmp_path)}
    killed = _python(
        """
        import os, signal
        from bitc.atomic import process_temp_dir
        (process_temp_dir() / "model.so").write_bytes(b"half a library")
        os.kill(os.getpid(), signal.SIGKILL)
        """,
        env,
    )
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert [p.name.startswith(f"bitc-{killed.pid}-") for p in tmp_path.iterdir()] == [True]
    foreign = tmp_path / "bitc-build-abc"  # an older bitc's or another tool's folder: not ours to remove
    foreign.mkdir()
    clean = _python("from bitc.atomic import process_temp_dir; print(process_temp_dir())", env, stdout=subprocess.PIPE)
    printed, _ = clean.communicate(timeout=60)
    assert clean.returncode == 0 and Path(printed.strip()).parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == ["bitc-build-abc"]


@pytest.mark.slow
def test_compile_killed_while_writing_leaves_nothing_after_the_next_compile(tmp_path):
    """A real compile SIGKILLed with the artifact half written: the next compile into the folder removes the temp
    file, and the killed build's temp folder goes too."""
    make_conv_bn_model(tmp_path / "m.onnx")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {"TMPDIR": str(tmpdir)}
    killed = _python(
        f"""
        import os, signal
        import bitc.compiler, bitc.runtime.artifact as artifact

        def write_and_die(path, *args, **kwargs):
            with artifact.atomic_output(path) as handle:
                handle.write(b"PK half an artifact")
                os.kill(os.getpid(), signal.SIGKILL)

        bitc.compiler.write_artifact = write_and_die
        bitc.compile({str(tmp_path / "m.onnx")!r}, {str(tmp_path / "m.bitc")!r})
        """,
        env,
        cwd=tmp_path,
    )
    assert killed.wait(timeout=300) == -signal.SIGKILL
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    assert any(p.name.startswith(f"bitc-{killed.pid}-") for p in tmpdir.iterdir())
    done = subprocess.run(
        [sys.executable, "-m", "bitc.cli", "compile", "m.onnx"], cwd=tmp_path, env={**os.environ, **env}
    )
    assert done.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bitc", "m.onnx", "tmp"]
    assert [p.name for p in tmpdir.iterdir() if p.name.startswith("bitc-")] == []  # (libraries may leave others)


def test_unusable_tmpdir_is_named(tmp_path, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    done = subprocess.run(
        [sys.executable, "-m", "bitc.cli", "compile", str(make_conv_bn_model(tmp_path / "m.onnx"))],
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(not_a_folder)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert f"TMPDIR={not_a_folder}: not a writable folder" in one_line_error(done.stderr)
    assert not (tmp_path / "m.bitc").exists()


# --- a full disk --------------------------------------------------------------------------------------------------


def _disk_full(*args, **kwargs):
    handle = args[0] if hasattr(args[0], "write") else None
    if handle is not None:
        handle.write(b"\x93NUMPY partial")
    else:
        Path(args[1]).write_bytes(b"partial onnx")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_dump_ir_on_a_full_disk_leaves_no_truncated_model(tmp_path, monkeypatch):
    import onnx_ir as ir

    from bitc.passes import manager

    model = ir.load(make_conv_bn_model(tmp_path / "m.onnx"))
    monkeypatch.setattr(manager.ir, "save", _disk_full)
    with pytest.raises(BitcError, match=r"--dump-ir .*00_input.onnx: cannot write \(No space left on device\)"):
        manager.run_pipeline(model, ["fold_constants"], dump_dir=tmp_path / "dump")
    assert list((tmp_path / "dump").iterdir()) == []


def test_run_output_dir_on_a_full_disk_leaves_no_empty_npy(workdir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(np, "save", _disk_full)
    code, _, err = run_cli(capsys, "run", str(workdir / "m.bitc"), "--random", "--output-dir", str(tmp_path / "out"))
    assert code == 1 and "logits.npy: cannot write (No space left on device)" in one_line_error(err)
    assert list((tmp_path / "out").iterdir()) == []


def test_run_output_dir_writes_whole_arrays(workdir, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "run", str(workdir / "m.bitc"), "--random", "--output-dir", str(tmp_path / "o"))
    assert code == 0 and "-> " in out
    assert np.load(tmp_path / "o" / "logits.npy").shape == (1, 10)
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["logits.npy"]


# --- untrusted names on the terminal -------------------------------------------------------------------------------


HOSTILE_INPUT = "[bold]x\x1b[31m"
HOSTILE_OP = "[/]op\x1b]0;title\x07\x9b2J"


def test_markup_and_escape_sequences_in_names_print_as_text(tmp_path, capsys):
    source = identity_model(tmp_path / "names.onnx", x=HOSTILE_INPUT, y="y[/]", op_name=HOSTILE_OP)
    artifact = tmp_path / "model[/].bitc"
    code, out, err = run_cli(capsys, "compile", str(source), "-o", str(artifact))
    assert code == 0, err
    assert str(artifact) in out and artifact.is_file()
    for target in (source, artifact):
        code, out, err = run_cli(capsys, "inspect", str(target), "--verbose")
        assert code == 0, err
        assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
        assert "[bold]x\\x1b[31m" in out  # shown as written, escapes visible
    code, out, _ = run_cli(capsys, "run", str(artifact), "--random")
    assert code == 0 and out.startswith("y[/]: float32[2, 3]")


def test_error_messages_show_control_characters_escaped(capsys):
    code, _, err = run_cli(capsys, "run", "missing\x1b[2J.bitc", "--random")
    assert code == 2 and "\x1b" not in err and "missing\\x1b[2J.bitc" in one_line_error(err)


# --- models whose artifact could never load or run -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "shape", "error", "message"),
    [
        (TensorProto.FLOAT8E8M0, [2, 3], BadInputError, "float8e8m0"),
        (TensorProto.STRING, [2], BadInputError, "input 'x' has dtype string"),
        (TensorProto.COMPLEX64, [2], BadInputError, "input 'x' has dtype complex64"),
    ],
)
def test_unloadable_input_types_are_refused_at_compile_time(tmp_path, dtype, shape, error, message):
    with pytest.raises(error, match=message):
        bitc.compile(identity_model(tmp_path / "m.onnx", dtype, shape), tmp_path / "m.bitc")
    assert not (tmp_path / "m.bitc").exists()


def test_empty_tensors_compile_load_and_run(tmp_path):
    """Inputs and outputs with a 0 dimension pass through the runtime without a copy (numpy's strides for them
    are not the compact ones TVM checks), on both sides of the call."""
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["y"], name="relu"),
            helper.make_node("ReduceSum", ["x"], ["total"], name="sum", keepdims=0),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [0, 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [0, 3]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, []),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    model = bitc.load(bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc").path)
    for x in (np.zeros((0, 3), np.float32), np.ones((3, 0), np.float32).T):
        out = model.run({"x": x})
        assert out["y"].shape == (0, 3) and out["y"].dtype == np.float32 and out["total"] == 0


def test_bfloat16_output_loads_and_comes_back_as_bfloat16(tmp_path):
    """bfloat16 runs on a float32 carrier (bitc.frontend.narrow_types); the caller gets ml_dtypes' bfloat16."""
    import ml_dtypes

    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], name="cast", to=TensorProto.BFLOAT16)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2, 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    x = np.linspace(-3, 3, 6, dtype=np.float32).reshape(2, 3) + np.float32(1e-3)
    y = bitc.load(bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc").path).run({"x": x})["y"]
    assert y.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(y, x.astype(ml_dtypes.bfloat16))


def test_initializer_with_more_data_than_its_shape_is_refused(tmp_path, capsys):
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    w.raw_data = w.raw_data + bytes(8)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"], name="add")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    code, _, err = run_cli(capsys, "compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.bitc"))
    assert code == 2 and "'w'" in one_line_error(err)


# --- input files -----------------------------------------------------------------------------------------------------


def test_run_refuses_a_fifo_input_without_blocking(workdir, tmp_path):
    os.mkfifo(tmp_path / "x.npy")
    done = subprocess.run(
        [sys.executable, "-m", "bitc.cli", "run", str(workdir / "m.bitc"), "--input", f"x={tmp_path / 'x.npy'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "x.npy: not a regular file" in one_line_error(done.stderr)


def _npy_claiming(path: Path, shape: tuple[int, ...], dtype=np.float32, data: bytes = bytes(16)) -> Path:
    with path.open("wb") as handle:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(data)
    return path


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((2**40,), np.float32, r"announces shape \[1099511627776\] \(4,398,046,511,104 bytes\) but the file holds 16"),
        ((1, 3, 16, 16), np.float32, "announces shape"),
        ((2,), np.dtype("U4"), "is not a numeric array"),
    ],
)
def test_run_refuses_npy_headers_that_lie_or_are_not_numeric(workdir, tmp_path, capsys, shape, dtype, message):
    file = _npy_claiming(tmp_path / "x.npy", shape, dtype)
    code, _, err = run_cli(capsys, "run", str(workdir / "m.bitc"), "--input", f"x={file}")
    assert code == 2 and re.search(message, one_line_error(err)), err


def test_calibration_must_be_an_npz_of_arrays(workdir, tmp_path, capsys):
    np.save(tmp_path / "calib.npy", np.zeros((1, 3, 16, 16), np.float32))
    args = ["compile", str(workdir / "m.onnx"), "-o", str(tmp_path / "m.bitc"), "--lowbit-weights", "2"]
    code, _, err = run_cli(capsys, *args, "--calibration", str(tmp_path / "calib.npy"))
    assert code == 2 and "calib.npy: not an .npz archive" in one_line_error(err)
    _npy_claiming(tmp_path / "x.npy", (2**40,))
    with zipfile.ZipFile(tmp_path / "lying.npz", "w") as archive:
        archive.write(tmp_path / "x.npy", "x.npy")
    code, _, err = run_cli(capsys, *args, "--calibration", str(tmp_path / "lying.npz"))
    assert code == 2 and "lying.npz:x.npy: the header announces shape [1099511627776]" in one_line_error(err)
    assert not (tmp_path / "m.bitc").exists()


# --- options --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "m.bitc", "--threads", "abc"], "--threads: 'abc' is not a thread count"),
        (["bench", "m.bitc", "--threads", "1,,2"], "--threads expects comma-separated thread counts"),
        (["bench", "m.bitc", "--threads", "0"], "--threads must be in 1.."),
        (["bench", "m.bitc", "--threads", "-1"], "--threads must be in 1.."),
        (["bench", "m.bitc", "--onnx", "missing.onnx"], "--onnx missing.onnx: no such file"),
        (["compile", "m.onnx", "--kv-bits", "3"], "--kv-bits must be 1, 2, 4, 8 or float, got '3'"),
        (["generate", "m.bitc", "--ids", "1", "--temperature", "nan"], "--temperature must be a finite number > 0"),
        (["generate", "m.bitc", "--ids", "1", "--temperature", "inf"], "--temperature must be a finite number > 0"),
        (["generate", "m.bitc", "--ids", "1", "--temperature", "-1"], "--temperature must be a finite number > 0"),
        (["generate", "m.bitc", "--ids", "1", "--max-new-tokens", "-5"], "--max-new-tokens must be >= 0, got -5"),
        (["generate", "m.bitc", "--ids", "1", "--top-k", "0"], "--top-k must be >= 1, got 0"),
        (["generate", "m.bitc", "--ids", "99999999999999999999"], "token id 99999999999999999999 is out of range"),
        (["generate", "m.bitc", "--ids", "5,-1"], "token id -1 is out of range"),
    ],
)
def test_bad_option_is_one_line_exit_2(workdir, capsys, monkeypatch, args, message):
    monkeypatch.chdir(workdir)
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and message in one_line_error(err)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('passes = [{name = "fold_constants", options = 5}]', "'options' of pass 'fold_constants' must be a table"),
        ("frobnicate = 1", "unknown key 'frobnicate'"),
        ('[prune]\nratio = "0.3"', "[prune] 'ratio' must be a number, got '0.3'"),
        ("[prune]\nratio = nan", "[prune] 'ratio' must be a finite number"),
        ("passes = " + "[" * 5000 + "]" * 5000, "nested too deep"),
        ('passes = [{name = "fold_constants", opts = {}}]', "bad entry in 'passes'"),
    ],
)
def test_bad_config_is_one_line_exit_2(workdir, tmp_path, capsys, text, message):
    (tmp_path / "bitc.toml").write_text(text + "\n")
    code, _, err = run_cli(capsys, "compile", str(workdir / "m.onnx"), "--config", str(tmp_path / "bitc.toml"))
    assert code == 2 and message in one_line_error(err)


def test_report_refuses_a_model_that_is_not_the_artifacts_source(workdir, tmp_path, capsys):
    other = identity_model(tmp_path / "other.onnx")
    code, _, err = run_cli(capsys, "report", str(other), str(workdir / "m.bitc"), "-o", str(tmp_path / "r.html"))
    assert code == 2 and "other.onnx is not the source of" in one_line_error(err)
    resized = identity_model(tmp_path / "resized.onnx", shape=(1, 3, 8, 8), y="logits")
    code, _, err = run_cli(capsys, "report", str(resized), str(workdir / "m.bitc"), "-o", str(tmp_path / "r.html"))
    assert code == 2 and "'x' is float32[1, 3, 8, 8] there, float32[1, 3, 16, 16]" in one_line_error(err)
    assert not (tmp_path / "r.html").exists()
    before = (workdir / "m.bitc").read_bytes()
    code, _, err = run_cli(
        capsys, "report", str(workdir / "m.onnx"), str(workdir / "m.bitc"), "-o", str(workdir / "m.bitc")
    )
    assert code == 2 and "m.bitc itself; give the output another name" in one_line_error(err)
    assert (workdir / "m.bitc").read_bytes() == before


def test_inspect_json_of_hostile_names_is_valid_json(tmp_path, capsys):
    source = identity_model(tmp_path / "names.onnx", x=HOSTILE_INPUT, op_name=HOSTILE_OP)
    code, out, _ = run_cli(capsys, "inspect", str(source), "--json")
    assert code == 0 and json.loads(out)["inputs"][0]["name"] == HOSTILE_INPUT


def test_an_interrupt_that_native_code_turns_into_an_error_still_exits_130(tmp_path, capsys, monkeypatch):
    """SIGTERM while TVM runs a Python callback: TVM turns the KeyboardInterrupt into its own RuntimeError, which
    the build reports as a CompileError. The command still says it was interrupted and exits 130, not 1."""
    from bitc import compiler
    from bitc.errors import CompileError

    def compile_interrupted_inside_native_code(*args, **kwargs):
        try:
            cli._raise_interrupt(signal.SIGTERM, None)  # what the signal handler does
        except KeyboardInterrupt:
            raise CompileError("m.onnx: TVM compilation failed: RuntimeError") from None

    monkeypatch.setattr(compiler, "compile", compile_interrupted_inside_native_code)
    monkeypatch.setattr(cli, "_interrupt_delivered", False)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code, _, err = run_cli(capsys, "compile", str(identity_model(tmp_path / "m.onnx")))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 130 and one_line_error(err) == "bitc: error: interrupted; no output was written"
