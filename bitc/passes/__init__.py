"""Graph passes over onnx-ir, by name, with a pipeline runner that times, dumps and verifies them."""

from bitc.passes.manager import DEFAULT_PIPELINE, PassRecord, insert_pass, parse_pipeline, run_pipeline
from bitc.passes.registry import PHASES, available, create, passes, register

__all__ = [
    "DEFAULT_PIPELINE",
    "PHASES",
    "PassRecord",
    "available",
    "create",
    "insert_pass",
    "parse_pipeline",
    "passes",
    "register",
    "run_pipeline",
]
