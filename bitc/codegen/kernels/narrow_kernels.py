"""The RoundToFormat kernel: float → the nearest value of a narrow float format, computed exactly in float64.

The value's binary exponent comes from its bits (clamped to the format's smallest normal exponent, below which
the format's spacing is fixed); scaling by a power of two is exact in float64 for every format here, so the
rounding itself is one round-half-to-even of an integer-sized float.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bitc.ops.round_to_format import FloatFormat, overflow_value

if TYPE_CHECKING:
    from tvm import te, tirx

_EXPONENT_BIAS = 1023
_MANTISSA_BITS = 52


def round_to_format(x: te.Tensor, fmt: FloatFormat, saturate: bool) -> te.Tensor:
    """TE compute: `x` (float16/32/64) rounded to `fmt`, as float32."""
    from tvm import te
    from tvm import tirx as tir

    def power_of_two(exponent: tirx.Expr) -> tirx.Expr:
        field = (exponent + _EXPONENT_BIAS).astype("int64") << tir.const(_MANTISSA_BITS, "int64")
        return tir.reinterpret("float64", field)

    def element(*index: tirx.Var) -> tirx.Expr:
        value = x(*index).astype("float64")
        bits = tir.reinterpret("int64", value)
        magnitude = tir.abs(value)
        biased = ((bits >> tir.const(_MANTISSA_BITS, "int64")) & tir.const(0x7FF, "int64")).astype("int32")
        exponent = tir.max(biased - _EXPONENT_BIAS, fmt.min_exponent)
        quantum = exponent - fmt.mantissa_bits
        scaled = magnitude * power_of_two(-quantum)
        whole = tir.floor(scaled)
        fraction = scaled - whole
        odd = whole - tir.floor(whole * 0.5) * 2.0
        steps = tir.Select(fraction > 0.5, whole + 1.0, tir.Select(fraction < 0.5, whole, whole + odd))
        rounded = steps * power_of_two(quantum)
        too_big = tir.Or(rounded > fmt.max_value, biased == 0x7FF)  # overflow, or an infinity (NaN below)
        rounded = tir.Select(too_big, tir.const(overflow_value(fmt, saturate), "float64"), rounded)
        negative = bits < 0
        if fmt.unsigned_zero:
            negative = tir.And(negative, rounded != 0.0)
        result = tir.Select(negative, -rounded, rounded)
        fraction_bits = bits & tir.const((1 << _MANTISSA_BITS) - 1, "int64")
        is_nan = tir.And(biased == 0x7FF, fraction_bits != 0)  # (x != x is simplified to False)
        special = tir.const(float("nan") if fmt.has_nan else 0.0, "float64")
        return tir.Select(is_nan, special, result).astype("float32")

    return te.compute(x.shape, element, name="round_to_format")
