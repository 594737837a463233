"""Narrow tensor types at the artifact's edge: the caller's ml_dtypes arrays ↔ the kernels' carrier arrays.

Compiled code holds a bfloat16 / float8 / float4 value in a float32 and an int4 / int2 in an int8 or uint8
(`bitc.frontend.narrow_types`); the manifest names both. Conversions are exact: every narrow value is a carrier
value, and the kernels only ever produce carrier values the narrow type can hold.
"""

from __future__ import annotations

import numpy as np

# narrow dtype name (numpy/ml_dtypes) → carrier dtype name
CARRIERS = {
    "bfloat16": "float32",
    "float8_e4m3fn": "float32",
    "float8_e4m3fnuz": "float32",
    "float8_e5m2": "float32",
    "float8_e5m2fnuz": "float32",
    "float4_e2m1fn": "float32",
    "int4": "int8",
    "uint4": "uint8",
    "int2": "int8",
    "uint2": "uint8",
}


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype called `name`; narrow ones come from ml_dtypes (imported only for such artifacts)."""
    if name in CARRIERS:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def to_carrier(array: np.ndarray, carrier: str) -> np.ndarray:
    return array.astype(carrier)


def from_carrier(array: np.ndarray, name: str) -> np.ndarray:
    """The carrier's values in the narrow type (a float carrier's -0 becomes the fnuz formats' only zero)."""
    if name.endswith("fnuz"):
        array = array + array.dtype.type(0)
    return array.astype(numpy_dtype(name))
