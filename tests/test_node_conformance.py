"""onnx backend node tests that bitc used to get wrong (exit 0, wrong numbers) now match onnx's expected outputs
or are refused with bitc's own error: never WRONG, never a crash (benchmarks/node_conformance.py runs them all)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "node_conformance.py"
_spec = importlib.util.spec_from_file_location("node_conformance", _SCRIPT)
conformance = importlib.util.module_from_spec(_spec)
sys.modules["node_conformance"] = conformance  # dataclasses look their module up there
_spec.loader.exec_module(conformance)

# Each was WRONG before its lowering in bitc.frontend.onnx_lowering.
FIXED = [
    "test_isinf_positive",
    "test_isinf_negative",
    "test_bitshift_right_int32_shift_ge_width",
    "test_bitshift_left_int32_shift_ge_width",
    "test_bitshift_right_int32_negative_shift",
    "test_bitshift_left_int32_negative_shift",
    "test_spacetodepth_crd_mode_example",
    "test_layer_normalization_4d_axis1",
    "test_layer_normalization_2d_axis0",
    "test_mod_float_edge_cases_fmod_0_float32",
    "test_convtranspose_output_shape",
    "test_training_dropout_zero_ratio",
]


@pytest.fixture(scope="module")
def cases() -> dict:
    pattern = "^(" + "|".join(FIXED) + ")$"
    return {case.name: case for case in conformance.load_cases(pattern, constant_variants=False)}


@pytest.mark.parametrize("name", FIXED)
def test_node_case_matches_onnx_reference(name: str, cases: dict, tmp_path: Path) -> None:
    outcome = conformance.run_case(cases[name], tmp_path)
    assert outcome.status == "PASS", f"{outcome.status}: {outcome.detail}"


def test_compare_flags_nan_at_other_places() -> None:
    import numpy as np

    expected = [np.array([np.nan, 1.0], np.float32)]
    assert conformance.compare(expected, [np.array([0.0, 1.0], np.float32)], 1e-3, 1e-7)
    assert not conformance.compare(expected, [np.array([np.nan, 1.0], np.float32)], 1e-3, 1e-7)
