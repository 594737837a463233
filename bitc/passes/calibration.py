"""Calibration inputs for the passes that measure activations (lowbit_linear, prune): arrays by input name."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from bitc.errors import BadInputError


def load_calibration(calibration: dict[str, Any] | str | os.PathLike) -> dict[str, np.ndarray]:
    """Calibration inputs as a dict of arrays, or an .npz file of them (named like the model's inputs)."""
    if isinstance(calibration, dict):
        return {name: np.asarray(value) for name, value in calibration.items()}
    try:
        with np.load(calibration, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{calibration}: cannot read calibration inputs ({str(exc).splitlines()[0]})") from None
