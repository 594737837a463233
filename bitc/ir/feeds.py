"""Seeded random inputs for a model's graph inputs (the numerical checks' and calibration's default data)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bitc.ir.shapes import static_shape
from bitc.runtime.model import random_array


def random_feeds(model: ir.Model, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs for every graph input: normal floats, small non-negative integers, random bools."""
    rng = np.random.default_rng(seed)
    return {v.name: random_array(rng, static_shape(v), v.dtype.numpy()) for v in model.graph.inputs}
