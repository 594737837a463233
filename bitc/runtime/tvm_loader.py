"""Load a compiled library with the TVM runtime alone: tvm_ffi plus libtvm_runtime.so, no compiler.

Importing `tvm` pulls in the whole compiler (~1 s, ~190 MB); `tvm_ffi` with the runtime library is ~0.2 s.
`tvm_ffi` imports torch eagerly when it can; the runtime must not, so that import is blocked while it loads.

CUDA artifacts also need libtvm_runtime_cuda.so (which needs the NVIDIA driver, libcuda.so.1). TVM's CUDA module
asks the `tvm_callback_cuda_compile` hook to compile its kernel source when it loads; bitc answers with the
fatbin compiled at build time, found by the sha256 of that source, so no compiler is needed here.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bitc.atomic import process_temp_dir
from bitc.errors import BadInputError, BitcError
from bitc.runtime.hostcpu import physical_cores

DL_CPU = 1
DL_CUDA = 2
_POOLED_ALLOCATOR = 2
_DEVICE_EXISTS, _COMPUTE_VERSION = 0, 4  # TVM's DeviceAttrKind
CUDA_COMPILE_HOOK = "tvm_callback_cuda_compile"


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
    _check_env_threads()
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
    with tempfile.TemporaryDirectory(prefix="lib-", dir=process_temp_dir()) as tmp:
        lib_path = Path(tmp) / name
        lib_path.write_bytes(library)
        try:
            return tvm_ffi.load_module(str(lib_path))
        except Exception as exc:  # the FFI raises RuntimeError/ValueError subclasses with C++ text
            first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise BadInputError(f"cannot load the compiled library: {first_line}") from None


def create_vm(library_module: Any, device_type: int = DL_CPU) -> Any:
    """A Relax VM over the library's executable with the pooled allocator, on the CPU or on GPU 0 (with the CPU
    as its host device)."""
    vm = library_module["vm_load_executable"]()
    if device_type == DL_CPU:
        vm["vm_initialization"](DL_CPU, 0, _POOLED_ALLOCATOR)
    else:
        vm["vm_initialization"](device_type, 0, _POOLED_ALLOCATOR, DL_CPU, 0, _POOLED_ALLOCATOR)
    return vm


def require_gpu() -> None:
    """Load the CUDA runtime and check that GPU 0 exists; a one-line BitcError when there is no driver or GPU."""
    tvm_ffi = ffi()
    spec = importlib.util.find_spec("tvm")
    cuda_lib = Path(spec.origin).parent / "lib" / "libtvm_runtime_cuda.so"  # type: ignore[union-attr]
    try:
        ctypes.CDLL(str(cuda_lib), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        raise BitcError(f"this artifact runs on an NVIDIA GPU; the CUDA runtime cannot load here ({exc})") from None
    try:
        exists = tvm_ffi.get_global_func("runtime.GetDeviceAttr")(DL_CUDA, 0, _DEVICE_EXISTS)
    except Exception as exc:  # the CUDA device API is missing: no driver
        raise BitcError(f"this artifact runs on an NVIDIA GPU, and CUDA is not available here ({exc})") from None
    if not exists:
        raise BitcError("this artifact runs on an NVIDIA GPU, and no GPU is visible (driver loaded, no device 0)")


@contextlib.contextmanager
def prebuilt_cuda_kernels(source_sha256: str, fatbin: bytes):
    """Inside the block, TVM's CUDA compile hook returns `fatbin` for the kernel source with that sha256 (TVM
    calls it when a CUDA module is created, i.e. while the library loads). The hook TVM's Python package
    registers (or none) is put back afterwards, so importing `tvm` later still works."""
    tvm_ffi = ffi()
    previous = tvm_ffi.get_global_func(CUDA_COMPILE_HOOK, allow_missing=True)

    def serve(code: str, *_target: Any) -> bytes:
        if hashlib.sha256(str(code).encode()).hexdigest() == source_sha256:
            return fatbin
        if previous is not None:
            return previous(code, *_target)
        raise RuntimeError("CUDA kernels were not compiled ahead of time for this library (source hash mismatch)")

    tvm_ffi.register_global_func(CUDA_COMPILE_HOOK, serve, override=True)
    try:
        yield
    finally:
        if previous is not None:
            tvm_ffi.register_global_func(CUDA_COMPILE_HOOK, previous, override=True)
        else:
            tvm_ffi.registry.remove_global_func(CUDA_COMPILE_HOOK)


def arch_capability(arch: str) -> int:
    """80 for 'sm_80', 90 for 'sm_90a': the number GPU compute capabilities compare by."""
    return int(arch.removeprefix("sm_").rstrip("af"))


def gpu_compute_capability() -> int:
    """80 for an sm_80 GPU 0 (call after `require_gpu`)."""
    version = str(ffi().get_global_func("runtime.GetDeviceAttr")(DL_CUDA, 0, _COMPUTE_VERSION))
    major, _, minor = version.partition(".")
    return int(major) * 10 + int(minor or 0)


def device_tensor(array: Any, device_type: int) -> Any:
    """A TVM tensor on the device holding a copy of `array` (a zero-copy view on the CPU)."""
    if array.size == 0:  # nothing to copy; numpy's strides for an empty array are not the compact ones TVM checks
        tvm_ffi = ffi()
        return tvm_ffi.get_global_func("runtime.TVMTensorAllocWithScope")(
            array.shape, str(array.dtype), tvm_ffi.Device(device_type, 0), None
        )
    host = ffi().from_dlpack(array)
    return host if device_type == DL_CPU else copy_to(host, device_type)


def host_array(tensor: Any) -> Any:
    """A fresh numpy array with the contents of a TVM tensor on any device."""
    import numpy as np

    if 0 in tuple(tensor.shape):
        return np.empty(tuple(int(d) for d in tensor.shape), np.dtype(str(tensor.dtype)))
    on_host = tensor if tensor.device.dlpack_device_type() == DL_CPU else copy_to(tensor, DL_CPU)
    return np.from_dlpack(on_host).copy()


def copy_to(tensor: Any, device_type: int) -> Any:
    """A new tensor on device 0 of `device_type` with the contents of `tensor`."""
    tvm_ffi = ffi()
    copy = tvm_ffi.get_global_func("runtime.TVMTensorAllocWithScope")(
        tensor.shape, tensor.dtype, tvm_ffi.Device(device_type, 0), None
    )
    tvm_ffi.get_global_func("runtime.TVMTensorCopyFromTo")(tensor, copy)
    return copy


def synchronize(device_type: int) -> None:
    """Wait for the device's queued work (kernel launches return before the GPU is done)."""
    if device_type != DL_CPU:
        ffi().get_global_func("runtime.Device_StreamSync")(ffi().Device(device_type, 0), None)


def max_threads() -> int:
    """The largest worker pool bitc starts: 4 per hardware thread, at least 64 (TVM starts every worker at once,
    and tens of thousands of threads abort the process)."""
    return max(64, 4 * (os.cpu_count() or 1))


def check_num_threads(num_threads: Any, source: str = "thread count") -> int:
    """`num_threads` if it is an int in 1..max_threads(); a one-line BadInputError otherwise (bools and numeric
    strings included: they are mistakes, not counts)."""
    limit = max_threads()
    if isinstance(num_threads, bool) or not hasattr(num_threads, "__index__"):  # int and numpy integers only
        kind = type(num_threads).__name__
        raise BadInputError(f"{source} must be an integer in 1..{limit}, got {kind} {str(num_threads)[:40]!r}")
    count = int(num_threads.__index__())
    if not 1 <= count <= limit:
        raise BadInputError(f"{source} must be in 1..{limit} ({os.cpu_count()} hardware threads here), got {count}")
    return count


def _check_env_threads() -> None:
    """A TVM_NUM_THREADS that TVM would parse as garbage or use to start an absurd pool is refused by name."""
    value = os.environ.get("TVM_NUM_THREADS")
    if value is None:
        return
    try:
        count = int(value.strip())
    except ValueError:
        raise BadInputError(f"TVM_NUM_THREADS must be an integer in 1..{max_threads()}, got {value[:40]!r}") from None
    check_num_threads(count, "TVM_NUM_THREADS")


def set_num_threads(num_threads: int) -> None:
    """Size TVM's worker pool. Reliable only before the first model runs (it sets TVM_NUM_THREADS); resizing a
    running pool is best effort in TVM, so measure different thread counts in separate processes."""
    num_threads = check_num_threads(num_threads)
    if ffi.cache_info().currsize == 0:
        os.environ["TVM_NUM_THREADS"] = str(num_threads)
        return
    ffi().get_global_func("runtime.config_threadpool")(1, int(num_threads))
