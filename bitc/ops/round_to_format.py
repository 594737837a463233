"""RoundToFormat: a float rounded to a narrow float format (bfloat16, float8, float4), kept in float32.

bitc runs narrow types on wider carriers (`bitc.frontend.narrow_types`): every value of a narrow float type is a
float32 holding a value the type can represent, and this op is where a value enters the type, with ONNX Cast's
rules (round to nearest even; `saturate` clamps overflow and infinities to the largest finite value, else they
become infinity where the format has one and NaN where it has not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from bitc.ops.base import BitcOp


@dataclass(frozen=True)
class FloatFormat:
    """A binary float format: mantissa bits, smallest normal exponent, largest finite value, and its specials."""

    ml_dtype: str  # ml_dtypes' name, also the dtype name in manifests
    mantissa_bits: int
    min_exponent: int
    max_value: float
    has_inf: bool
    has_nan: bool
    unsigned_zero: bool  # the "fnuz" formats: no negative zero
    saturable: bool  # Cast's `saturate` applies (float8); float4 always saturates, bfloat16 never


FORMATS: dict[str, FloatFormat] = {
    "bfloat16": FloatFormat("bfloat16", 7, -126, float(np.float32(3.3895313892515355e38)), True, True, False, False),
    "float8_e4m3fn": FloatFormat("float8_e4m3fn", 3, -6, 448.0, False, True, False, True),
    "float8_e4m3fnuz": FloatFormat("float8_e4m3fnuz", 3, -7, 240.0, False, True, True, True),
    "float8_e5m2": FloatFormat("float8_e5m2", 2, -14, 57344.0, True, True, False, True),
    "float8_e5m2fnuz": FloatFormat("float8_e5m2fnuz", 2, -15, 57344.0, False, True, True, True),
    "float4_e2m1fn": FloatFormat("float4_e2m1fn", 1, 0, 6.0, False, False, False, False),
}


def overflow_value(fmt: FloatFormat, saturate: bool) -> float:
    """What a value beyond the largest finite one (or an infinity) becomes."""
    if (saturate and fmt.saturable) or not fmt.has_nan:
        return fmt.max_value
    return float("inf") if fmt.has_inf else float("nan")


class RoundToFormat(BitcOp):
    """float [any shape] → float32, each value rounded to `format` (a key of FORMATS) as ONNX Cast rounds."""

    name = "RoundToFormat"
    inputs = ("x",)
    attributes: ClassVar[dict[str, Any]] = {"format": "bfloat16", "saturate": 1}

    @classmethod
    def output_types(cls, input_shapes: Sequence[tuple[int, ...]], **attrs: Any) -> list[tuple[ir.DataType, tuple]]:
        return [(ir.DataType.FLOAT, input_shapes[0])]

    @staticmethod
    def reference(x: np.ndarray, **attrs: Any) -> tuple[np.ndarray, ...]:
        """ml_dtypes' conversion (what onnx's reference Cast does), clipped first where Cast saturates."""
        import ml_dtypes

        fmt = FORMATS[attrs["format"]]
        values = np.asarray(x, dtype=np.float64)
        if fmt.saturable and attrs["saturate"]:
            values = np.clip(values, -fmt.max_value, fmt.max_value)
        if not fmt.has_nan:  # float4: ml_dtypes saturates on its own; NaN has no encoding and becomes 0
            values = np.where(np.isnan(values), np.float64(0.0), values)
        narrow = values.astype(getattr(ml_dtypes, fmt.ml_dtype))
        return (narrow.astype(np.float32),)
