"""MetaSchedule tuning: a small bounded run fills the persistent database, later compiles reuse it, and a tuned
schedule replaces the default one only where it measures faster (slow: ~2 min, most of it TVM start-up)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_conv_bn_model, run_onnxruntime

import bitc

pytestmark = pytest.mark.slow


def test_tuning_fills_the_database_and_keeps_numerics(tmp_path):
    source = make_conv_bn_model(tmp_path / "m.onnx")
    database = tmp_path / "db"
    progress: list[tuple[int, int]] = []
    tuned = bitc.compile(
        source,
        tmp_path / "tuned.bitc",
        tune_trials=6,
        tuning_db=database,
        on_tuning=lambda d, t: progress.append((d, t)),
    )
    report = tuned.manifest["tuning"]
    assert report["trials"] == 6 and report["tasks"] >= 2
    assert 0 <= report["tuned_functions"] <= report["tasks"]
    assert (database / "database_tuning_record.json").stat().st_size > 0
    assert progress and progress[-1][1] == 6 and all(d <= t for d, t in progress)

    reused = bitc.compile(source, tmp_path / "reused.bitc", tuning_db=database)
    # No new trials; the database is consulted again (which schedule wins a near-tie may differ by timing noise).
    assert reused.manifest["tuning"]["trials"] == 0
    assert 0 <= reused.manifest["tuning"]["tuned_functions"] <= report["tasks"]
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    want = run_onnxruntime(source, {"x": x})[0]
    for artifact in (tuned.path, reused.path):
        np.testing.assert_allclose(bitc.load(artifact)(x), want, rtol=1e-5, atol=1e-5)


def test_binary_kernels_are_tuned_and_stay_bit_exact(tmp_path):
    """The bitc kernels are ordinary MetaSchedule tasks; whichever schedule wins, the integer path stays exact."""
    import onnx
    from binary_models import binary_conv_model

    from bitc import ops
    from bitc.frontend import load_onnx, normalize

    onnx.save(binary_conv_model(c=64, o=64, output_format="packed"), tmp_path / "m.onnx")
    database = tmp_path / "db"
    tuned = bitc.compile(tmp_path / "m.onnx", tmp_path / "m.bitc", passes=[], tune_trials=8, tuning_db=database)
    assert tuned.manifest["tuning"]["trials"] == 8
    logs = {p.name for p in (database / "logs").iterdir()}
    assert any("bitc_binary_conv" in name for name in logs), logs
    x = np.random.default_rng(0).standard_normal((2, 64, 9, 11)).astype(np.float32)
    model = normalize(load_onnx(tmp_path / "m.onnx"), source="m")
    expected = ops.reference_evaluator(model).run(None, {"x": x})[0]
    assert np.array_equal(bitc.load(tuned.path)(x), expected)


def test_intrinsic_import_skips_the_module_scan_only_for_frames_without_files():
    """The speed-up for importing MetaSchedule's intrinsics must not change what inspect reports for real code."""
    import inspect
    import sys

    from bitc.codegen.cpu.tuning import _frames_without_files_skip_module_scan

    frame = sys._getframe()
    with _frames_without_files_skip_module_scan():
        assert inspect.getmodule(frame, "<frozen importlib._bootstrap>") is None
        assert inspect.getmodule(frame, frame.f_code.co_filename) is sys.modules[__name__]
        assert inspect.getmodule(np.add) is np
    assert inspect.getmodule is not None and inspect.getmodule.__module__ == "inspect"
