"""Thin runtime: load a `.bitc` artifact and run it. Depends on numpy and the TVM runtime only."""

from __future__ import annotations

import os

from bitc.runtime.model import Model, TensorSpec


def load(path: str | os.PathLike, num_threads: int | None = None) -> Model:
    """Load and verify an artifact; `num_threads` sizes the worker pool (default: TVM's, one per core)."""
    return Model(path, num_threads=num_threads)


__all__ = ["Model", "TensorSpec", "load"]
