"""The runtime on hostile artifacts, inputs and callers: bounded reads of the artifact, manifests of the wrong
shape, manifests that lie about the library, concurrent calls, thread counts and API misuse. Every case ends in
the right numbers or a one-line BitcError naming what was wrong, never a crash, a traceback or a huge allocation."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import make_conv_bn_model

import bitc
from bitc.cli import main as bitc_main
from bitc.errors import BadInputError
from bitc.runtime import tvm_loader
from bitc.runtime.artifact import (
    FORMAT,
    FORMAT_VERSION,
    LIBRARY_NAME,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    read_artifact,
    write_artifact,
)
from bitc.runtime.kv_cache import KVCacheLayout
from bitc.runtime.session import DecoderSession

X_SHAPE = (1, 3, 16, 16)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    """conv_bn compiled once for the module: x[1,3,16,16] float32 -> logits[1,10]."""
    root = tmp_path_factory.mktemp("runtime_safety")
    return bitc.compile(make_conv_bn_model(root / "m.onnx"), root / "m.bitc").path


@pytest.fixture(scope="module")
def model(compiled) -> bitc.Model:
    return bitc.load(compiled)


@pytest.fixture(scope="module")
def library_and_manifest(compiled) -> tuple[bytes, dict]:
    artifact = read_artifact(compiled)
    manifest = {key: value for key, value in artifact.manifest.items() if key != "members"}
    return artifact.library, manifest


def forged(folder: Path, library_and_manifest, name: str = "forged.bitc", **changes) -> Path:
    """The compiled artifact with some manifest fields replaced, written with correct checksums (so only the
    changed fields can be what is refused)."""
    library, manifest = library_and_manifest
    return write_artifact(folder / name, {**manifest, **changes}, {LIBRARY_NAME: library})


def inputs(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(X_SHAPE).astype(np.float32)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text, text
    return text


# --- threads ----------------------------------------------------------------------------------------------------


def _hammer(call, xs: list[np.ndarray], calls: int) -> tuple[list[list[np.ndarray]], list[BaseException]]:
    """`call(xs[i])` `calls` times from one thread per input, all at once; the results per thread and any error."""
    results: list[list[np.ndarray]] = [[] for _ in xs]
    errors: list[BaseException] = []
    start = threading.Barrier(len(xs))

    def work(index: int) -> None:
        start.wait()
        try:
            for _ in range(calls):
                results[index].append(call(index))
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


def test_one_model_called_from_four_threads_gives_the_single_threaded_results(model):
    xs = [inputs(seed) for seed in range(4)]
    expected = [model(x) for x in xs]
    results, errors = _hammer(lambda i: model(xs[i]), xs, calls=20)
    assert not errors
    for index, outputs in enumerate(results):
        assert len(outputs) == 20
        for out in outputs:
            np.testing.assert_array_equal(out, expected[index])


def test_models_loaded_per_thread_run_in_parallel_with_the_same_results(compiled):
    models = [bitc.load(compiled) for _ in range(4)]
    xs = [inputs(seed) for seed in range(4)]
    expected = [models[0](x) for x in xs]
    results, errors = _hammer(lambda i: models[i](xs[i]), xs, calls=20)
    assert not errors
    for index, outputs in enumerate(results):
        for out in outputs:
            np.testing.assert_array_equal(out, expected[index])


def test_calls_into_one_model_never_overlap(model, monkeypatch):
    """The lock itself: a stand-in VM entry that notices when a second call enters before the first left."""
    inside, overlaps = [0], [0]
    real = model._sizes[0].main

    def entry(*tensors):
        inside[0] += 1
        overlaps[0] += inside[0] > 1
        time.sleep(0.001)
        try:
            return real(*tensors)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(model, "_sizes", [dataclasses.replace(model._sizes[0], main=entry)])
    x = inputs()
    _, errors = _hammer(lambda i: model(x), [x] * 4, calls=10)
    assert not errors and overlaps[0] == 0


def test_decoder_session_steps_from_several_threads_run_one_at_a_time():
    layout = KVCacheLayout(layers=1, kv_heads=1, head_dim=16, max_context=64, key_bits=4, value_bits=4, key_group=8)
    inside, overlaps = [0], [0]

    def bind(feeds):
        def run():
            inside[0] += 1
            overlaps[0] += inside[0] > 1
            time.sleep(0.001)
            inside[0] -= 1
            step = np.zeros((1, 1, 1, 1, 16), np.float32)
            return np.zeros((1, 1, 8), np.float32), step, step

        return run

    session = DecoderSession(layout, bind, vocab_size=8)
    _, errors = _hammer(lambda i: session.step(i), [None] * 4, calls=10)
    assert not errors and overlaps[0] == 0 and session.tokens == 40


# --- thread counts ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", ["4", True, 2.0, [4], 0, -3, 100_000, 10**30])
def test_absurd_thread_counts_are_refused_before_loading(compiled, count):
    with pytest.raises(BadInputError, match="thread count must be"):
        bitc.load(compiled, num_threads=count)


@pytest.mark.parametrize("value", ["abc", "0", "100000", "1e9", ""])
def test_absurd_tvm_num_threads_is_refused_by_name(monkeypatch, value):
    monkeypatch.setenv("TVM_NUM_THREADS", value)
    with pytest.raises(BadInputError, match=r"^TVM_NUM_THREADS must be"):
        tvm_loader._check_env_threads()


def test_thread_limit_allows_oversubscription_but_not_tens_of_thousands():
    assert tvm_loader.check_num_threads(np.int64(3)) == 3
    assert 64 <= tvm_loader.max_threads() < 100_000


def test_cli_refuses_a_hundred_thousand_threads_in_one_line(compiled):
    out = subprocess.run(
        [sys.executable, "-m", "bitc", "run", str(compiled), "--random", "--threads", "100000"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("bitc: error: thread count must be in 1..")
    assert len(out.stderr.strip().splitlines()) == 1


# --- API misuse -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda m: m.run(None), "run() takes a dict of input name -> array, got NoneType"),
        (lambda m: m.run([inputs()]), "got list (call the model itself, model(x, ...)"),
        (lambda m: m.run(inputs()), "got ndarray"),
        (lambda m: m.benchmark({"x": inputs()}, runs=0), "runs must be an integer >= 1, got 0"),
        (lambda m: m.benchmark({"x": inputs()}, runs="3"), "runs must be an integer >= 1, got '3'"),
        (lambda m: m.benchmark({"x": inputs()}, warmup=-1), "warmup must be an integer >= 0, got -1"),
        (lambda m: m.benchmark([inputs()]), "benchmark() takes a dict"),
        (lambda m: m(inputs().astype(np.complex64)), "input 'x': dtype complex64, expected float32"),
        (lambda m: m(np.full(X_SHAPE, "a")), "input 'x': dtype <U1, expected float32"),
        (lambda m: m(np.full(X_SHAPE, None)), "input 'x': dtype object, expected float32"),
        (lambda m: m(inputs().astype(">f4")), "input 'x': dtype >f4, expected float32"),
    ],
)
def test_api_misuse_raises_bitc_errors(model, call, fragment):
    with pytest.raises(BadInputError) as info:
        call(model)
    assert fragment in one_line(info.value)


@pytest.mark.parametrize("path", [5, None, 3.5, ["m.bitc"]])
def test_load_refuses_what_is_not_a_path(path):
    with pytest.raises(BadInputError, match=r"an artifact path must be a str or os\.PathLike, got"):
        bitc.load(path)


def _read_only(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x.setflags(write=False)
    return x


@pytest.mark.parametrize(
    "make",
    [
        _read_only,
        lambda x: np.broadcast_to(x[:, :, :1, :], X_SHAPE),  # read-only, stride 0
        lambda x: np.asfortranarray(x),
        lambda x: np.concatenate([x, x], axis=3)[..., ::2],  # strided view
        lambda x: np.concatenate([np.zeros(1, np.float32), x.reshape(-1)])[1:].reshape(X_SHAPE),  # misaligned
    ],
    ids=["read_only", "broadcast", "fortran", "strided", "misaligned"],
)
def test_read_only_and_non_contiguous_inputs_give_the_results_of_a_plain_copy(model, make):
    x = make(inputs())
    np.testing.assert_array_equal(model(x), model(np.ascontiguousarray(x)))


def test_memory_mapped_read_only_input_is_accepted(model, tmp_path):
    np.save(tmp_path / "x.npy", inputs())
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert not mapped.flags.writeable
    np.testing.assert_array_equal(model(mapped), model(inputs()))
    np.testing.assert_array_equal(model.run({"x": mapped})["logits"], model(inputs()))


# --- manifests that lie about the library -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "feed"),
    [
        ({"inputs": [{"name": "x", "shape": [1, 4, 16, 16], "dtype": "float32"}]}, np.zeros((1, 4, 16, 16), "f4")),
        ({"inputs": [{"name": "x", "shape": list(X_SHAPE), "dtype": "int8"}]}, np.zeros(X_SHAPE, np.int8)),
        ({"inputs": [{"name": "x", "shape": [1, 3, 16], "dtype": "float32"}]}, np.zeros((1, 3, 16), "f4")),
    ],
    ids=["shape", "dtype", "rank"],
)
def test_manifest_that_lies_about_an_input_is_one_line_naming_the_artifact(
    tmp_path, library_and_manifest, change, feed
):
    path = forged(tmp_path, library_and_manifest, **change)
    lying = bitc.load(path)
    with pytest.raises(BadInputError) as info:
        lying(feed)
    assert one_line(info.value).startswith(f"{path}: the artifact's manifest does not match its library (")


@pytest.mark.parametrize(
    ("outputs", "fragment"),
    [
        ([{"name": "logits", "shape": [1, 10], "dtype": "float16"}], "output 'logits' is float32[1, 10], the manifest"),
        ([{"name": "logits", "shape": [10], "dtype": "float32"}], "the manifest says float32[10]"),
        (
            [{"name": "a", "shape": [1, 10], "dtype": "float32"}, {"name": "b", "shape": [1], "dtype": "float32"}],
            "model returned 1 outputs, manifest lists 2",
        ),
    ],
)
def test_manifest_that_lies_about_outputs_is_refused(tmp_path, library_and_manifest, outputs, fragment):
    path = forged(tmp_path, library_and_manifest, outputs=outputs)
    with pytest.raises(BadInputError) as info:
        bitc.load(path)(inputs())
    assert fragment in one_line(info.value) and str(path) in str(info.value)


def test_cli_run_on_a_lying_manifest_exits_2_with_one_line(tmp_path, library_and_manifest):
    forged(tmp_path, library_and_manifest, inputs=[{"name": "x", "shape": [1, 4, 16, 16], "dtype": "float32"}])
    code, err = _cli(["run", str(tmp_path / "forged.bitc"), "--random"])
    assert code == 2 and "manifest does not match its library" in err


# --- decoder sessions: token ids are checked before native code -------------------------------------------------

SESSION_LAYOUT = KVCacheLayout(layers=1, kv_heads=1, head_dim=16, max_context=16, key_bits=4, value_bits=4, key_group=8)
VOCAB = 32


def _forged_decoder_path(folder: Path, library_and_manifest) -> Path:
    """A manifest describing a decoder (token, position, cache state; logits over 32 tokens) over conv_bn's
    library."""
    specs = {"input_ids": ((1, 1), "int64"), "position": ((1,), "int64")} | SESSION_LAYOUT.state_specs()
    tensors = [{"name": name, "shape": list(shape), "dtype": dtype} for name, (shape, dtype) in specs.items()]
    outs = [{"name": "logits", "shape": [1, 1, VOCAB], "dtype": "float32"}]
    kv = SESSION_LAYOUT.to_json()
    return forged(folder, library_and_manifest, inputs=tensors, outputs=outs, kv_cache=kv)


@pytest.fixture
def forged_decoder(tmp_path, library_and_manifest, monkeypatch) -> bitc.Model:
    """The forged decoder loaded past the parameter-count check (which refuses it: see the test below), so that
    the session's own checks run for real and whatever reaches the library is refused by it."""
    monkeypatch.setattr("bitc.runtime.model._check_parameters", lambda *args: None)
    return bitc.load(_forged_decoder_path(tmp_path, library_and_manifest))


def test_manifest_listing_inputs_the_library_does_not_take_is_refused_at_load(tmp_path, library_and_manifest):
    path = _forged_decoder_path(tmp_path, library_and_manifest)
    with pytest.raises(BadInputError) as info:
        bitc.load(path)
    assert one_line(info.value).startswith(f"{path}: the artifact's manifest does not match its library (")
    assert "the library's 'main' takes ['x']" in str(info.value)


@pytest.mark.parametrize(
    ("token", "fragment"),
    [
        (None, "a token id must be an integer, got NoneType"),
        (1.5, "a token id must be an integer, got float"),
        (True, "a token id must be an integer, got bool"),
        ("3", "a token id must be an integer, got str"),
        (VOCAB, f"token id {VOCAB} is outside the vocabulary 0..{VOCAB - 1}"),
        (-1, "token id -1 is outside the vocabulary"),
        (2**63, f"token id {2**63} is outside"),
        (-(2**31), "is outside the vocabulary"),
        (np.int64(10**7), "token id 10000000 is outside"),
    ],
)
def test_session_refuses_token_ids_outside_the_vocabulary_before_native_code(forged_decoder, token, fragment):
    session = forged_decoder.session()
    assert session.vocab_size == VOCAB
    with pytest.raises(BadInputError) as info:
        session.step(token)
    assert fragment in one_line(info.value)
    with pytest.raises(BadInputError, match=r"token id|a token id"):
        session.generate([1, token], 2)
    assert session.tokens == 0  # nothing was fed


def test_session_token_inside_the_vocabulary_reaches_the_library_and_its_refusal_is_one_line(forged_decoder):
    with pytest.raises(BadInputError) as info:
        forged_decoder.session().step(VOCAB - 1)
    assert one_line(info.value).startswith(f"{forged_decoder.path}: running the compiled model failed (")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"temperature": math.nan, "top_k": 3}, "temperature must be a finite number > 0, got nan"),
        ({"temperature": math.inf}, "temperature must be a finite number > 0"),
        ({"temperature": "hot"}, "temperature must be a number > 0, got str"),
        ({"top_k": 0}, "top_k must be an integer >= 1"),
        ({"top_k": 2.5}, "top_k must be an integer >= 1"),
        ({"max_new_tokens": 1.5}, "max_new_tokens must be an integer >= 0"),
        ({"max_new_tokens": -1}, "max_new_tokens must be an integer >= 0"),
        ({"seed": "abc"}, "bad seed or stop_ids"),
        ({"prompt": "hello"}, "token ids must be a sequence of integers, got str"),
        ({"prompt": 7}, "token ids must be a sequence of integers, got int"),
    ],
)
def test_generate_refuses_unusable_settings_before_any_step(forged_decoder, kwargs, fragment):
    session = forged_decoder.session()
    prompt = kwargs.pop("prompt", [1, 2])
    settings = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(BadInputError) as info:
        session.generate(prompt, settings.pop("max_new_tokens"), **settings)
    assert fragment in one_line(info.value)


@pytest.mark.parametrize(
    "change",
    [{"layers": "1"}, {"head_dim": 0}, {"max_context": 2**40}, {"pre_rope": 1}, {"input_ids": 5}, {"key_bits": 3}],
)
def test_malformed_kv_cache_layout_is_refused_by_session_and_inspect(tmp_path, library_and_manifest, change):
    path = forged(tmp_path, library_and_manifest, kv_cache={**SESSION_LAYOUT.to_json(), **change})
    with pytest.raises(BadInputError, match="manifest 'kv_cache' is malformed"):
        bitc.load(path).session()
    code, err = _cli(["inspect", str(path)])
    assert code == 2 and "manifest 'kv_cache' is malformed" in err


# --- the artifact's zip: sizes and ratios from the directory, bounded reads -------------------------------------


def _table(members: dict[str, bytes]) -> dict:
    return {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for name, data in members.items()}


GOOD = {
    "format": FORMAT,
    "format_version": FORMAT_VERSION,
    "inputs": [{"name": "x", "shape": [1], "dtype": "float32"}],
    "outputs": [{"name": "y", "shape": [1], "dtype": "float32"},],
    "target": {"kind": "llvm", "name": "llvm", "cpu_features": []},
}  # fmt: skip


ENCRYPTED = 0x1  # the zip flag bit; zipfile cannot write encrypted members, so hand_zip sets it in the headers


def hand_zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    encrypted = [i.filename.encode() for i, _ in entries if isinstance(i, zipfile.ZipInfo) and i.flag_bits & ENCRYPTED]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names, which one case writes on purpose
        with zipfile.ZipFile(path, "w") as archive:
            for entry, data in entries:
                archive.writestr(entry, data)
    if encrypted:
        path.write_bytes(_with_encrypted_flag(path.read_bytes(), encrypted))
    return path


# Zip headers: signature, offset of the flag bits, of the name's length, of the name.
_HEADERS = ((b"PK\x03\x04", 6, 26, 30), (b"PK\x01\x02", 8, 28, 46))


def _with_encrypted_flag(data: bytes, names: list[bytes]) -> bytes:
    """Set the encryption flag of the named members in their local and central directory headers."""
    out = bytearray(data)
    for signature, flag_at, length_at, name_at in _HEADERS:
        at = out.find(signature)
        while at >= 0:
            length = int.from_bytes(out[at + length_at : at + length_at + 2], "little")
            if bytes(out[at + name_at : at + name_at + length]) in names:
                out[at + flag_at] |= ENCRYPTED
            at = out.find(signature, at + 4)
    return bytes(out)


def info(name: str, method: int = zipfile.ZIP_STORED, flags: int = 0) -> zipfile.ZipInfo:
    entry = zipfile.ZipInfo(name)
    entry.compress_type = method
    entry.flag_bits |= flags
    return entry


def _manifest_bytes(present: dict[str, bytes], **changes) -> bytes:
    return json.dumps({**GOOD, "members": _table(present), **changes}).encode()


LIB = b"\x7fELF not really"
DEFLATED = zipfile.ZIP_DEFLATED


@functools.cache
def _bomb_cases() -> dict[str, tuple[list, str]]:
    zeros = bytes(32 * 2**20)
    big_manifest = json.dumps({**GOOD, "pad": " " * (MAX_MANIFEST_BYTES + 1)}).encode()
    deep = b"[" * 100_000 + b"]" * 100_000
    nested = json.dumps({**GOOD, "x": json.loads("[" * 100 + "]" * 100)}).encode()
    return {
        "deflated_library_bomb": (
            [(MANIFEST_NAME, _manifest_bytes({LIBRARY_NAME: zeros})), (info(LIBRARY_NAME, DEFLATED), zeros)],
            "(more than 200x: a zip bomb, refused)",
        ),
        "huge_manifest": ([(info(MANIFEST_NAME, zipfile.ZIP_DEFLATED), big_manifest)], "the limit is 16777216"),
        "deep_json": ([(MANIFEST_NAME, deep)], "unreadable manifest (JSON nested too"),
        "nested_json": ([(MANIFEST_NAME, nested)], "JSON nested more than 64 levels"),
        "size_lies": (
            [(MANIFEST_NAME, _manifest_bytes({LIBRARY_NAME: LIB[:4]})), (LIBRARY_NAME, LIB)],
            "member 'model.so' is 15 bytes in the zip directory, the manifest says 4",
        ),
        "duplicate": (
            [(MANIFEST_NAME, _manifest_bytes({LIBRARY_NAME: LIB})), (LIBRARY_NAME, LIB), (LIBRARY_NAME, b"evil")],
            "member name(s) ['model.so'] appear more than once",
        ),
        "duplicate_manifest": (
            [(MANIFEST_NAME, b"{}"), (MANIFEST_NAME, _manifest_bytes({LIBRARY_NAME: LIB})), (LIBRARY_NAME, LIB)],
            "member name(s) ['manifest.json'] appear more than once",
        ),
        "encrypted": (
            [(MANIFEST_NAME, _manifest_bytes({LIBRARY_NAME: LIB})), (info(LIBRARY_NAME, flags=ENCRYPTED), LIB)],
            "member 'model.so' is encrypted (refused)",
        ),
        "bzip2": (
            [(MANIFEST_NAME, _manifest_bytes({LIBRARY_NAME: LIB})), (info(LIBRARY_NAME, zipfile.ZIP_BZIP2), LIB)],
            "uses zip compression method 12; bitc artifacts are stored or deflated only",
        ),
        "lzma_manifest": (
            [(info(MANIFEST_NAME, zipfile.ZIP_LZMA), _manifest_bytes({}))],
            "member 'manifest.json' uses zip compression method 14",
        ),
        "size_not_int": (
            [(MANIFEST_NAME, _manifest_bytes({}, members={LIBRARY_NAME: {"sha256": "0", "size": "15"}}))],
            "checksum of member 'model.so' does not match the manifest (malformed entry)",
        ),
        "version_true": ([(MANIFEST_NAME, _manifest_bytes({}, format_version=True))], "format version True is not"),
        "not_utf8": ([(MANIFEST_NAME, b"\xff\xfe{}")], "unreadable manifest ("),
        "huge_int": ([(MANIFEST_NAME, b'{"format": ' + b"9" * 5000 + b"}")], "unreadable manifest ("),
    }  # fmt: skip


BOMB_CASES = ["deflated_library_bomb", "huge_manifest", "deep_json", "nested_json", "size_lies", "duplicate"]
BOMB_CASES += ["duplicate_manifest", "encrypted", "bzip2", "lzma_manifest", "size_not_int", "version_true"]
BOMB_CASES += ["not_utf8", "huge_int"]


@pytest.mark.parametrize("case", BOMB_CASES)
def test_forged_zip_is_refused_from_its_directory_with_bounded_memory(tmp_path, case):
    entries, fragment = _bomb_cases()[case]
    path = hand_zip(tmp_path / "bad.bitc", entries)
    tracemalloc.start()
    try:
        with pytest.raises(BadInputError) as info_:
            bitc.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert fragment in one_line(info_.value) and str(path) in str(info_.value)
    assert peak < 8 * 2**20, f"{peak:,} bytes allocated to refuse it"
    code, err = _cli(["inspect", str(path)])
    assert code in (0, 2) and "internal error" not in err


def test_member_whose_data_is_shorter_than_its_directory_entry_is_damaged(tmp_path):
    path = hand_zip(tmp_path / "bad.bitc", [(MANIFEST_NAME, _manifest_bytes({LIBRARY_NAME: LIB})), (LIBRARY_NAME, LIB)])
    data = bytearray(path.read_bytes())
    at = data.index(LIB)
    data[at : at + 4] = b"XXXX"  # same length, wrong CRC
    path.write_bytes(bytes(data))
    with pytest.raises(BadInputError, match=r"member 'model\.so' is damaged"):
        bitc.load(path)


def test_manifest_whose_deflate_stream_is_damaged_is_refused_not_a_zlib_error(tmp_path):
    """Found by the artifact fuzzer: zlib.error escaped the bounded read as an internal error."""
    text = _manifest_bytes({LIBRARY_NAME: LIB})
    path = hand_zip(tmp_path / "bad.bitc", [(info(MANIFEST_NAME, DEFLATED), text), (LIBRARY_NAME, LIB)])
    data = bytearray(path.read_bytes())
    start = 30 + len(MANIFEST_NAME)  # the first member's data follows its local header and name
    data[start] = 0xFF  # deflate block type 3: reserved, invalid
    path.write_bytes(bytes(data))
    with pytest.raises(BadInputError, match=r"member 'manifest\.json' is damaged \(Error -3"):
        bitc.load(path)
    assert _cli(["inspect", str(path)])[0] == 2


# --- manifests of the wrong shape at load -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"target": {"kind": "llvm", "cpu_features": "avx2"}}, "'cpu_features' is not a list of strings"),
        ({"target": {"kind": "llvm", "cpu_features": [1, 2]}}, "'cpu_features' is not a list of strings"),
        ({"target": {"kind": 5}}, "'kind' is not a string"),
        ({"target": {"kind": "llvm", "arch": ["x86_64"]}}, "'arch' is not a string"),
        ({"entry": 5}, "manifest 'entry' is malformed"),
        ({"inputs": {"x": [1]}}, "manifest 'inputs' is malformed (TypeError: not a list but dict)"),
        ({"inputs": ["x"]}, "a tensor spec is an object, got str"),
        ({"inputs": [{"name": 5, "shape": [1], "dtype": "float32"}]}, "name and dtype must be strings"),
        ({"inputs": [{"name": "x", "shape": [True], "dtype": "float32"}]}, "must be a list of integers"),
        ({"inputs": [{"name": "x", "shape": [1.0], "dtype": "float32"}]}, "must be a list of integers"),
        ({"inputs": [{"name": "x", "shape": [2**40], "dtype": "float32"}]}, "tensor spec over 64 GiB"),
        ({"inputs": [{"name": "x", "shape": [2**20, 2**20, 2**20], "dtype": "int8"}]}, "tensor spec over 64 GiB"),
        ({"inputs": [{"name": "x", "shape": [1], "dtype": ">f4"}]}, "unusable tensor spec"),
        ({"outputs": [{"name": "y", "shape": [1], "dtype": "complex64"}]}, "unusable tensor spec"),
        ({"kernels": {"fatbin": ["a"]}, "target": {"kind": "cuda"}}, "CUDA artifact without its compiled kernels"),
    ],
)
def test_manifest_fields_of_the_wrong_type_are_refused_at_load(tmp_path, change, fragment):
    path = write_artifact(tmp_path / "bad.bitc", {**GOOD, **change}, {LIBRARY_NAME: LIB})
    with pytest.raises(BadInputError) as info_:
        bitc.load(path)
    assert one_line(info_.value).startswith(f"{path}: ") and fragment in str(info_.value)


def test_cli_run_random_on_a_2_to_the_40_input_is_refused_without_allocating(tmp_path, library_and_manifest):
    forged(tmp_path, library_and_manifest, inputs=[{"name": "x", "shape": [2**40], "dtype": "float32"}])
    code, err = _cli(["run", str(tmp_path / "forged.bitc"), "--random"])
    assert code == 2 and "tensor spec over 64 GiB" in err


# --- inspect ----------------------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> tuple[int, str]:
    """`bitc ARGV` in this process: its exit code and stderr (one line when it fails)."""
    import contextlib
    import io

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = bitc_main(argv)
    if code:
        assert len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
    assert "Traceback" not in err.getvalue()
    return code, err.getvalue()


MALFORMED_FOR_INSPECT = {
    "source_not_object": {"source": "model.onnx"},
    "source_name_list": {"source": {"name": ["a"]}},
    "target_list": {"target": ["llvm"]},
    "target_name_number": {"target": {"name": 5, "kind": "llvm"}},
    "versions_list": {"versions": ["tvm 1"]},
    "version_object": {"versions": {"tvm": {"a": 1}}},
    "inputs_string": {"inputs": "x"},
    "input_not_object": {"inputs": [5]},
    "input_dtype_number": {"inputs": [{"name": "x", "shape": [1], "dtype": 4}]},
    "input_shape_string": {"inputs": [{"name": "x", "shape": "1x3", "dtype": "float32"}]},
    "passes_object": {"passes": {"a": 1}},
    "pass_name_missing": {"passes": [{}]},
    "pass_name_number": {"passes": [{"name": 3}]},
    "codegen_string": {"codegen": "blocked"},
    "members_list": {"members": ["model.so"]},
    "member_size_string": {"members": {"model.so": {"size": "10", "sha256": "ab"}}},
    "member_sha_number": {"members": {"model.so": {"size": 10, "sha256": 5}}},
    "layers_object": {"layers": {"a": 1}},
    "layer_macs_string": {"layers": [{"name": "c", "op": "Conv", "macs": "many"}]},
    "stats_list": {"stats": [1]},
    "stats_share_string": {"stats": {"binary_mac_share": "half"}},
    "kv_cache_list": {"kv_cache": [1]},
    "kv_cache_bad": {"kv_cache": {"layers": 1}},
    "huge_string": {"source": {"name": "n" * 2_000_000}},
    "all_missing": {},
    "nan_everywhere": {"stats": {"macs": math.nan, "params": math.inf}, "layers": [{"macs": -math.inf}]},
}


@pytest.mark.parametrize("case", list(MALFORMED_FOR_INSPECT))
@pytest.mark.parametrize("as_json", [False, True], ids=["display", "json"])
def test_inspect_on_a_malformed_manifest_displays_it_or_gives_one_line(tmp_path, case, as_json):
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **MALFORMED_FOR_INSPECT[case]}
    path = tmp_path / "bad.bitc"
    text = json.dumps({"members": _table({LIBRARY_NAME: LIB}), **manifest}).encode()
    hand_zip(path, [(MANIFEST_NAME, text), (LIBRARY_NAME, LIB)])
    code, err = _cli(["inspect", str(path), *(["--json"] if as_json else [])])
    assert code in (0, 2), err
    if code == 2:
        assert err.startswith(f"bitc: error: {path}: manifest '")


def test_inspect_json_is_valid_json_when_the_manifest_holds_nan_and_infinity(tmp_path, capsys):
    manifest = {**GOOD, "members": _table({LIBRARY_NAME: LIB}), "stats": {"macs": math.nan, "ratio": math.inf}}
    path = hand_zip(tmp_path / "nan.bitc", [(MANIFEST_NAME, json.dumps(manifest).encode()), (LIBRARY_NAME, LIB)])
    assert bitc_main(["inspect", str(path), "--json"]) == 0

    def no_constants(name: str) -> None:
        raise AssertionError(f"inspect --json printed {name}, which is not JSON")

    shown = json.loads(capsys.readouterr().out, parse_constant=no_constants)
    assert shown["manifest"]["stats"]["macs"] == "NaN" and shown["manifest"]["stats"]["ratio"] == "Infinity"


def test_inspect_of_a_real_artifact_is_unchanged_by_the_checks(compiled, capsys):
    assert bitc_main(["inspect", str(compiled), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["manifest"]
    assert shown == json.loads(json.dumps(read_artifact(compiled).manifest))
