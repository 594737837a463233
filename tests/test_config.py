"""bitc.toml: the same compile options as the CLI flags, validated, with flags taking precedence."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import make_conv_bn_model

from bitc.config import load_config
from bitc.errors import BadInputError


def _bitc(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bitc.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_config_file_equals_flags(tmp_path):
    make_conv_bn_model(tmp_path / "m.onnx")
    (tmp_path / "bitc.toml").write_text(
        'target = "cpu"\nverify = true\ndump_ir = "dump"\n'
        'passes = ["fold_constants", {name = "fold_batchnorm"}, "remove_unused"]\n'
        "[input_shapes]\nx = [1, 3, 16, 16]\n"
    )
    by_config = _bitc("compile", "m.onnx", "-o", "a.bitc", "--config", "bitc.toml", "--json", cwd=tmp_path)
    assert by_config.returncode == 0, by_config.stderr
    by_flags = _bitc(
        "compile", "m.onnx", "-o", "b.bitc", "--verify", "--dump-ir", "dump2",
        "--passes", "fold_constants,fold_batchnorm,remove_unused", "--input-shape", "x=1,3,16,16", cwd=tmp_path,
    )  # fmt: skip
    assert by_flags.returncode == 0, by_flags.stderr
    assert (tmp_path / "a.bitc").read_bytes() == (tmp_path / "b.bitc").read_bytes()
    assert [p["name"] for p in json.loads(by_config.stdout)["passes"]] == [
        "fold_constants", "fold_batchnorm", "remove_unused",
    ]  # fmt: skip
    assert (tmp_path / "dump" / "00_input.onnx").exists()


def test_flags_override_the_config(tmp_path):
    make_conv_bn_model(tmp_path / "m.onnx")
    (tmp_path / "bitc.toml").write_text('passes = ["nope"]\n')
    out = _bitc("compile", "m.onnx", "--config", "bitc.toml", "--passes", "remove_unused", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert [p["name"] for p in json.loads(out.stdout)["passes"]] == ["remove_unused"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("targett = 'cpu'\n", "unknown key 'targett'"),
        ("tune_trials = 'many'\n", "'tune_trials' must be an integer"),
        ("verify = 1\n", "'verify' must be true or false"),
        ("[input_shapes]\nx = [1, 'a']\n", "input_shapes"),
        ("passes = 'fold_constants'\n", "'passes' must be a list"),
        ("passes = [{nom = 'x'}]\n", "bad entry in 'passes'"),
        ("target = \n", "not a valid TOML file"),
        ("[binarize]\nplanez = 2\n", "unknown key 'planez' in \\[binarize\\]"),
        ("[binarize]\nplanes = '2'\n", "'planes' must be an integer"),
        ("[binarize]\nexclude = [1]\n", "list of layer names"),
        ("binarize = 1\n", "must be a table"),
        ("[prune]\nratioo = 0.5\n", "\\[prune\\] must be a table with keys from"),
        ("reorder = 'yes'\n", "'reorder' must be true or false"),
    ],
)
def test_bad_config_is_refused(tmp_path, text, message):
    (tmp_path / "bitc.toml").write_text(text)
    with pytest.raises(BadInputError, match=message):
        load_config(tmp_path / "bitc.toml")


def test_missing_config_is_a_usage_error(tmp_path):
    make_conv_bn_model(tmp_path / "m.onnx")
    out = _bitc("compile", "m.onnx", "--config", "nope.toml", cwd=tmp_path)
    assert out.returncode == 2 and "nope.toml: no such config file" in out.stderr


def test_binarize_table_equals_binarize_flags(tmp_path):
    make_conv_bn_model(tmp_path / "m.onnx")
    (tmp_path / "bitc.toml").write_text("[binarize]\nplanes = 2\nkeep_first_last = false\n")
    by_config = _bitc("compile", "m.onnx", "-o", "a.bitc", "--config", "bitc.toml", "--json", cwd=tmp_path)
    assert by_config.returncode == 0, by_config.stderr
    (tmp_path / "all.toml").write_text("[binarize]\nkeep_first_last = false\n")
    by_flags = _bitc(
        "compile", "m.onnx", "-o", "b.bitc", "--config", "all.toml", "--binarize-planes", "2", "--json", cwd=tmp_path
    )
    assert by_flags.returncode == 0, by_flags.stderr
    assert (tmp_path / "a.bitc").read_bytes() == (tmp_path / "b.bitc").read_bytes()
    passes = {p["name"]: p for p in json.loads(by_config.stdout)["passes"]}
    assert passes["binarize"]["options"] == {"planes": 2, "keep_first_last": False}
    assert passes["binarize"]["details"]["binarized"] == 2
    assert passes["lower_binary"]["details"]["lowered"] == 4  # one per plane, merged back into one op per layer:
    assert passes["fuse_binary"]["details"]["merged_planes"] == 2
