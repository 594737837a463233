"""Graph passes over onnx-ir, by name, with a pipeline runner that times, dumps and verifies them."""

from bitc.passes.manager import (
    DEFAULT_PIPELINE,
    PassRecord,
    parse_pipeline,
    run_pipeline,
    with_binarize,
    with_channel_passes,
    with_kv_compress,
    with_lowbit_linear,
)
from bitc.passes.registry import available, create, register

__all__ = [
    "DEFAULT_PIPELINE",
    "PassRecord",
    "available",
    "create",
    "parse_pipeline",
    "register",
    "run_pipeline",
    "with_binarize",
    "with_channel_passes",
    "with_kv_compress",
    "with_lowbit_linear",
]
