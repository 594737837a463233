"""Load a compiled library with the TVM runtime alone: tvm_ffi plus libtvm_runtime.so, no compiler.

Importing `tvm` pulls in the whole compiler (~1 s, ~190 MB); `tvm_ffi` with the runtime library is ~0.2 s.
`tvm_ffi` imports torch eagerly when it can; the runtime must not, so that import is blocked while it loads.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bitc.errors import BadInputError, BitcError
from bitc.runtime.hostcpu import physical_cores

DL_CPU = 1
_POOLED_ALLOCATOR = 2


@contextlib.contextmanager
def _without_torch():
    """Make `import torch` fail inside the block unless torch is already loaded."""
    if "torch" in sys.modules:
        yield
        return
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if sys.modules.get("torch") is None:
            del sys.modules["torch"]


@functools.cache
def ffi() -> Any:
    """The tvm_ffi module with libtvm_runtime.so loaded (global symbols, as TVM-built libraries expect).

    TVM sizes its worker pool once, from TVM_NUM_THREADS, when the pool starts; unset, it takes half the
    hardware threads (1 on a 2-core machine without SMT), so bitc defaults it to every physical core.
    """
    os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")
    os.environ.setdefault("TVM_NUM_THREADS", str(physical_cores()))
    with _without_torch():
        try:
            import tvm_ffi
        except ImportError as exc:
            raise BitcError(f"the TVM runtime is not installed ({exc}); pip install apache-tvm") from None
    if "tvm" not in sys.modules:
        spec = importlib.util.find_spec("tvm")
        if spec is None or spec.origin is None:
            raise BitcError("the TVM runtime library is not installed; pip install apache-tvm")
        runtime_lib = Path(spec.origin).parent / "lib" / "libtvm_runtime.so"
        ctypes.CDLL(str(runtime_lib), mode=ctypes.RTLD_GLOBAL)
    return tvm_ffi


def load_library(library: bytes, name: str) -> Any:
    """dlopen a shared library held in memory (written to a private temp file that is removed once loaded)."""
    tvm_ffi = ffi()
    with tempfile.TemporaryDirectory(prefix="bitc-") as tmp:
        lib_path = Path(tmp) / name
        lib_path.write_bytes(library)
        try:
            return tvm_ffi.load_module(str(lib_path))
        except Exception as exc:  # the FFI raises RuntimeError/ValueError subclasses with C++ text
            first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise BadInputError(f"cannot load the compiled library: {first_line}") from None


def create_vm(library_module: Any) -> Any:
    """A Relax VM over the library's executable, on the CPU with the pooled allocator."""
    vm = library_module["vm_load_executable"]()
    vm["vm_initialization"](DL_CPU, 0, _POOLED_ALLOCATOR)
    return vm


def set_num_threads(num_threads: int) -> None:
    """Size TVM's worker pool. Reliable only before the first model runs (it sets TVM_NUM_THREADS); resizing a
    running pool is best effort in TVM, so measure different thread counts in separate processes."""
    if num_threads < 1:
        raise BadInputError(f"thread count must be >= 1, got {num_threads}")
    if ffi.cache_info().currsize == 0:
        os.environ["TVM_NUM_THREADS"] = str(num_threads)
        return
    ffi().get_global_func("runtime.config_threadpool")(1, int(num_threads))
