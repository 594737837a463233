"""Frontends: every source format becomes one normalised `onnx_ir.Model`."""

from bitc.frontend.normalize import normalize, set_input_shapes
from bitc.frontend.onnx_loader import load_onnx
from bitc.frontend.torch_loader import from_torch

__all__ = ["from_torch", "load_onnx", "normalize", "set_input_shapes"]
