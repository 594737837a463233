"""bitc: an ahead-of-time compiler for binarized and extremely low-bit neural networks.

`bitc.load` and the runtime import only numpy and the TVM runtime; `bitc.compile` (and everything that needs
onnx, onnx-ir, the TVM compiler or torch) is imported on first use, as is `bitc.export_decoder_onnx` (SmolLM2-135M
as one decode step over a fixed-length KV cache, the decoder form `kv_compress` compresses; needs torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bitc.errors import BadInputError, BitcError, CompileError
from bitc.runtime import Model, load

__version__ = "0.1.0"

if TYPE_CHECKING:
    from bitc.compiler import compile
    from bitc.frontend.decoder_export import export_decoder_onnx


def __getattr__(name: str) -> Any:
    if name == "compile":
        from bitc.compiler import compile as compile_model

        return compile_model
    if name == "export_decoder_onnx":
        from bitc.frontend.decoder_export import export_decoder_onnx

        return export_decoder_onnx
    raise AttributeError(f"module 'bitc' has no attribute {name!r}")


__all__ = [
    "BadInputError",
    "BitcError",
    "CompileError",
    "Model",
    "__version__",
    "compile",
    "export_decoder_onnx",
    "load",
]
