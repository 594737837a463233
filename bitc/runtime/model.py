"""A loaded artifact as a callable model: numpy in, numpy out, inputs checked against the manifest first."""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bitc.errors import BadInputError, BitcError, first_line
from bitc.runtime import narrow_dtypes, tvm_loader
from bitc.runtime.artifact import LIBRARY_NAME, read_artifact
from bitc.runtime.hostcpu import host_arch, host_cpu_flags
from bitc.runtime.kv_cache import KVCacheLayout
from bitc.runtime.session import DecoderSession
from bitc.runtime.timing import time_calls

_ALIGNMENT = 64  # TVM kernels assume 64-byte aligned buffers; numpy only guarantees 16.
MAX_TENSOR_BYTES = 2**36  # a manifest's tensor spec larger than 64 GiB is refused at load (random_inputs allocates it)


@dataclass(frozen=True)
class IndexRange:
    """An input's values index a tensor: low <= value < high, else `node` (op, name, axis) would read out of
    bounds."""

    low: int
    high: int
    node: str

    @classmethod
    def from_json(cls, entry: Any) -> IndexRange:
        if not isinstance(entry, Mapping):
            raise TypeError(f"an index range is an object, got {type(entry).__name__}")
        low, high, node = entry["low"], entry["high"], entry["node"]
        integers = type(low) is int and type(high) is int
        if not integers or not isinstance(node, str) or not -(2**63) <= low < high <= 2**63:
            raise ValueError(f"index range {str(dict(entry))[:120]} is not int64 bounds low < high and a node name")
        return cls(low, high, node)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    index_range: IndexRange | None = None
    carrier: str | None = None  # a narrow dtype's (bfloat16, float8, int4...) type inside the compiled code

    @property
    def compiled_dtype(self) -> np.dtype:
        """The dtype the compiled code takes or returns."""
        return np.dtype(self.carrier or self.dtype)

    @property
    def numpy_dtype(self) -> np.dtype:
        """The dtype callers pass or get back."""
        return narrow_dtypes.numpy_dtype(self.dtype)

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> TensorSpec:
        """A spec from the manifest; wrong types raise TypeError/ValueError (no str() or int() of anything)."""
        if not isinstance(entry, Mapping):
            raise TypeError(f"a tensor spec is an object, got {type(entry).__name__}")
        name, shape, dtype = entry["name"], entry["shape"], entry["dtype"]
        if not isinstance(name, str) or not isinstance(dtype, str):
            raise TypeError(f"name and dtype must be strings, got {type(name).__name__} and {type(dtype).__name__}")
        if not isinstance(shape, list) or not all(type(d) is int for d in shape):
            raise ValueError(f"shape of '{name[:80]}' must be a list of integers, got {str(shape)[:80]}")
        index_range = IndexRange.from_json(entry["index_range"]) if "index_range" in entry else None
        carrier = entry.get("carrier")
        if carrier is not None and narrow_dtypes.CARRIERS.get(dtype) != carrier:
            raise ValueError(f"'{name[:80]}': no narrow dtype {str(dtype)[:40]} carried as {str(carrier)[:40]}")
        return cls(name, tuple(shape), dtype, index_range, carrier)

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join(map(str, self.shape))}]"


class Model:
    """A compiled model ready to run. Create it with `bitc.load(path)`.

    Thread-safe: calls from several threads run one at a time (a lock around the VM call; TVM's VM keeps its
    registers in the VM object, and every call already uses the whole worker pool)."""

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        if num_threads is not None:
            tvm_loader.check_num_threads(num_threads)
        artifact = read_artifact(path)
        self.path = artifact.path
        self.manifest = artifact.manifest
        self._device = _check_target(self.path, self.manifest.get("target", {}))
        if num_threads is not None:
            tvm_loader.set_num_threads(num_threads)
        entry = self.manifest.get("entry", "main")
        if not isinstance(entry, str):
            raise BadInputError(f"{self.path}: manifest 'entry' is malformed (not a string)")
        self._lock = threading.Lock()
        self._vms: dict[str, Any] = {}  # one VM per library: sizes built together are entry functions of one
        self._sizes = [self._open_size(artifact, entry, size) for size in _size_entries(self.path, self.manifest)]
        first = self._sizes[0]
        self.inputs, self.outputs = first.inputs, first.outputs
        self._vm, self._main = first.vm, first.main

    def _open_size(self, artifact: Any, entry: str, size: Mapping[str, Any]) -> CompiledSize:
        """One compiled input size: its specs checked, its entry function found in its library's VM (a library
        is loaded once, however many sizes it holds)."""
        inputs = _specs(self.path, size, "inputs")
        outputs = _specs(self.path, size, "outputs")
        entry = size.get("entry", entry)
        name = size["library"]
        if name not in self._vms:
            library = artifact.members[name]
            if self._device == tvm_loader.DL_CPU:
                self._vms[name] = _open_vm(self.path, library, self._device)
            else:
                sha256, fatbin = _cuda_kernels(artifact, size.get("kernels"))
                with tvm_loader.prebuilt_cuda_kernels(sha256, fatbin):
                    self._vms[name] = _open_vm(self.path, library, self._device)
        vm = self._vms[name]
        main = _entry_function(self.path, vm, entry)
        _check_parameters(self.path, vm, entry, inputs)
        return CompiledSize(inputs, outputs, vm, main)

    @property
    def sizes(self) -> list[dict[str, tuple[int, ...]]]:
        """The input shapes the artifact was compiled for ({input: shape} per size); a call must match one."""
        return [{spec.name: spec.shape for spec in size.inputs} for size in self._sizes]

    def __repr__(self) -> str:
        ins = ", ".join(map(str, self.inputs))
        outs = ", ".join(map(str, self.outputs))
        more = f", {len(self._sizes)} input sizes" if len(self._sizes) > 1 else ""
        return f"<bitc.Model {self.path.name} ({ins}) -> ({outs}){more} on {self.manifest['target'].get('name', '?')}>"

    def _call(self, size: CompiledSize, tensors: Sequence[Any], collect: Callable[[Any], Any]) -> Any:
        """`size`'s compiled entry on `tensors`, `collect` applied to its result, both under the model's lock; a
        failure inside the library is one line naming the artifact (inputs were already checked against the
        manifest, so a refusal there means the manifest does not describe the library)."""
        with self._lock:
            try:
                return collect(size.main(*tensors))
            except BitcError:
                raise
            except Exception as exc:  # tvm_ffi raises builtin exception types carrying C++ text
                raise BadInputError(f"{self.path}: {_call_failure(exc)}") from None

    def __call__(self, *args: np.ndarray, **kwargs: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run with positional or named inputs; one output comes back as an array, several as a tuple."""
        if args and kwargs:
            raise BadInputError("pass inputs either positionally or by name, not both")
        if args:
            if len(args) != len(self.inputs):
                raise BadInputError(f"model takes {len(self.inputs)} input(s), got {len(args)}")
            kwargs = {spec.name: arr for spec, arr in zip(self.inputs, args, strict=True)}
        results = self.run(kwargs)
        values = tuple(results.values())
        return values[0] if len(values) == 1 else values

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on named inputs; returns outputs by name (fresh arrays, owned by the caller)."""
        if not isinstance(inputs, Mapping):
            raise BadInputError(
                f"run() takes a dict of input name -> array, got {type(inputs).__name__} "
                f"(call the model itself, model(x, ...), to pass inputs positionally); inputs: {self._names()}"
            )
        size, tensors = self._prepare(inputs)
        return self._call(size, tensors, lambda raw: _collect(self.path, size.outputs, raw))

    @property
    def device(self) -> str:
        """'cpu' or 'cuda' (GPU 0): where the model runs; inputs and outputs are numpy arrays either way."""
        return "cpu" if self._device == tvm_loader.DL_CPU else "cuda"

    def benchmark(self, inputs: Mapping[str, np.ndarray], *, warmup: int = 3, runs: int = 20) -> list[float]:
        """Latencies in seconds of `runs` calls after `warmup` calls, with inputs prepared once."""
        for name, count, least in (("runs", runs, 1), ("warmup", warmup, 0)):
            if type(count) is not int or count < least:
                raise BadInputError(f"benchmark: {name} must be an integer >= {least}, got {count!r}")
        if not isinstance(inputs, Mapping):
            raise BadInputError(f"benchmark() takes a dict of input name -> array, got {type(inputs).__name__}")
        size, tensors = self._prepare(inputs)

        def call() -> None:
            self._call(size, tensors, lambda _: tvm_loader.synchronize(self._device))

        return time_calls(call, runs=runs, warmup=warmup)

    def session(self) -> DecoderSession:
        """A decoder session that owns this model's KV cache (models compiled with `kv_compress`). The cache
        arrays are handed to the compiled steps once, as zero-copy views, and updated in place; the one-token step
        decodes, the prefill steps (sizes with more tokens, when compiled) take the prompt."""
        if self._device != tvm_loader.DL_CPU:
            raise BadInputError(f"{self.path}: decoder sessions run CPU artifacts; compile it for --target cpu")
        if "kv_cache" not in self.manifest:
            raise BadInputError(
                f"{self.path}: not a decoder with a runtime-owned KV cache (compile it with --kv-bits / kv_compress)"
            )
        try:
            layout = KVCacheLayout.from_json(self.manifest["kv_cache"])
        except (TypeError, ValueError) as exc:
            raise BadInputError(f"{self.path}: manifest 'kv_cache' is malformed ({first_line(exc)})") from None
        steps = {self._token_count(size, layout): size for size in self._sizes}
        if 1 not in steps:
            raise BadInputError(f"{self.path}: the decoder has no one-token step ('{layout.input_ids}' [1, 1])")
        chunks = {tokens: functools.partial(self._bind, size) for tokens, size in steps.items() if tokens > 1}
        return DecoderSession(
            layout,
            functools.partial(self._bind, steps[1]),
            allocate=aligned_zeros,
            vocab_size=self._vocab_size(layout),
            chunks=chunks,
        )

    def _token_count(self, size: CompiledSize, layout: KVCacheLayout) -> int:
        """Tokens one call of a decoder size takes: its token input is [1, S]."""
        ids = [spec for spec in size.inputs if spec.name == layout.input_ids]
        if not ids or len(ids[0].shape) != 2 or ids[0].shape[0] != 1 or ids[0].shape[1] < 1:
            raise BadInputError(f"{self.path}: the decoder's '{layout.input_ids}' input is not [1, S] in every size")
        return ids[0].shape[1]

    def _vocab_size(self, layout: KVCacheLayout) -> int:
        """Token ids a session may feed: the logits' last dimension (the embedding has a row for each of them)."""
        logits = [spec for spec in self.outputs if spec.name == layout.logits]
        if not logits or not logits[0].shape or logits[0].shape[-1] < 1:
            raise BadInputError(f"{self.path}: the decoder has no '{layout.logits}' output with a vocabulary axis")
        return logits[0].shape[-1]

    def _bind(self, size: CompiledSize, feeds: Mapping[str, np.ndarray]) -> Any:
        """`size`'s compiled step over `feeds`, converted to TVM tensors once (zero-copy views of the arrays)."""
        missing = [spec.name for spec in size.inputs if spec.name not in feeds]
        if missing:
            raise BadInputError(f"{self.path}: the decoder's inputs {missing} are not part of its KV cache layout")
        ffi = tvm_loader.ffi()
        tensors = [ffi.from_dlpack(_checked(spec, feeds[spec.name])) for spec in size.inputs]
        return lambda: self._call(size, tensors, lambda raw: [np.from_dlpack(value) for value in raw])

    def set_instrument(self, callback: Any | None) -> None:
        """Call `callback(func, symbol, before, ret, *args)` around every VM call (None removes it): profiling."""
        with self._lock:
            for vm in self._vms.values():
                vm["set_instrument"](callback)

    def random_inputs(self, seed: int = 0, size: int = 0) -> dict[str, np.ndarray]:
        """Inputs of the right names, shapes and dtypes (normal floats, small non-negative integers), for the
        `size`-th compiled input size (see `sizes`)."""
        if type(size) is not int or not 0 <= size < len(self._sizes):
            raise BadInputError(f"{self.path}: size must be 0..{len(self._sizes) - 1}, got {size!r}")
        rng = np.random.default_rng(seed)
        specs = self._sizes[size].inputs
        try:
            return {spec.name: _random_input(rng, spec) for spec in specs}
        except MemoryError:
            sizes = [math.prod(spec.shape) * spec.compiled_dtype.itemsize for spec in specs]
            raise BadInputError(f"{self.path}: not enough memory for random inputs of {sum(sizes):,} bytes") from None

    def _names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    def _prepare(self, inputs: Mapping[str, np.ndarray]) -> tuple[CompiledSize, list[Any]]:
        expected = [spec.name for spec in self.inputs]
        missing = [n for n in expected if n not in inputs]
        unknown = [n for n in inputs if n not in expected]
        if missing or unknown:
            raise BadInputError(
                f"inputs do not match the model: missing {missing}, unknown {unknown}; expected {expected}"
            )
        size = self._size_for(inputs)
        # CPU kernels read the array in place (64-byte aligned); a GPU gets a copy in its own (aligned) memory
        host = _aligned if self._device == tvm_loader.DL_CPU else _contiguous
        tensors = [
            tvm_loader.device_tensor(host(_checked(spec, inputs[spec.name])), self._device) for spec in size.inputs
        ]
        return size, tensors

    def _size_for(self, inputs: Mapping[str, Any]) -> CompiledSize:
        """The compiled size whose input shapes are the call's; with one size, that one (its checks then say
        what differs); with several and no match, a refusal listing them."""
        if len(self._sizes) == 1:
            return self._sizes[0]
        shapes = {}
        for name, value in inputs.items():
            try:
                shapes[name] = tuple(np.shape(value))
            except (ValueError, TypeError):
                return self._sizes[0]  # not an array: _checked says so
        for size in self._sizes:
            if all(shapes[spec.name] == spec.shape for spec in size.inputs):
                return size
        given = " ".join(f"{name}{list(shape)}" for name, shape in shapes.items())
        compiled = "; ".join(" ".join(f"{n}{list(s)}" for n, s in size.items()) for size in self.sizes)
        raise BadInputError(
            f"input shapes {given} match none of the sizes the artifact was compiled for: {compiled} "
            "(compile with --input-shape/--dim for this size too)"
        )


@dataclass(frozen=True)
class CompiledSize:
    """One input size the artifact holds: its input/output specs and the VM running its library."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    vm: Any
    main: Any


def _collect(path: Any, specs: Sequence[TensorSpec], raw: Any) -> dict[str, np.ndarray]:
    values = list(raw) if isinstance(raw, Sequence) or not hasattr(raw, "__dlpack__") else [raw]
    if len(values) != len(specs):
        raise BadInputError(f"{path}: model returned {len(values)} outputs, manifest lists {len(specs)}")
    outputs = {spec.name: tvm_loader.host_array(v) for spec, v in zip(specs, values, strict=True)}
    for spec, value in zip(specs, outputs.values(), strict=True):
        if value.shape != spec.shape or value.dtype != spec.compiled_dtype:
            raise BadInputError(
                f"{path}: the artifact's manifest does not match its library (output '{spec.name}' is "
                f"{value.dtype}{list(value.shape)}, the manifest says {spec.compiled_dtype}{list(spec.shape)})"
            )
        if spec.carrier:
            outputs[spec.name] = narrow_dtypes.from_carrier(value, spec.dtype)
    return outputs


MAX_SIZES = 64  # compiled input sizes one artifact may list (bitc writes at most 16)


def _size_entries(path: Any, manifest: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The manifest's compiled sizes: its top-level library and specs, or its `variants` (the first of which
    must be that same library and those same specs). Every size takes the same inputs and returns the same
    outputs (names, dtypes, ranks); only dims differ."""
    main = {"library": LIBRARY_NAME, "inputs": manifest.get("inputs"), "outputs": manifest.get("outputs")}
    if "kernels" in manifest:
        main["kernels"] = manifest["kernels"]
    if "variants" not in manifest:
        return [main]
    listed = manifest["variants"]
    members = manifest.get("members")
    problem = None
    if not isinstance(listed, list) or not 1 <= len(listed) <= MAX_SIZES:
        problem = f"not a list of 1 to {MAX_SIZES} sizes"
    elif not all(isinstance(entry, Mapping) and isinstance(entry.get("library"), str) for entry in listed):
        problem = "each size is an object naming its library"
    elif not all(isinstance(entry.get("entry", "main"), str) for entry in listed):
        problem = "a size's entry function is not a name"
    elif not all(isinstance(members, Mapping) and entry["library"] in members for entry in listed):
        problem = "a size names a library the artifact does not hold"
    elif any(listed[0].get(key) != main.get(key) for key in main):
        problem = "the first size is not the artifact's main library and specs"
    else:
        signature = _signature(path, listed[0])
        if any(_signature(path, entry) != signature for entry in listed[1:]):
            problem = "the sizes do not share one signature (input/output names, dtypes and ranks)"
    if problem:
        raise BadInputError(f"{path}: manifest 'variants' is malformed ({problem})")
    return listed


def _signature(path: Any, entry: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    specs = [*_specs(path, entry, "inputs"), *_specs(path, entry, "outputs")]
    return [(spec.name, spec.dtype, len(spec.shape)) for spec in specs]


def _specs(path: Any, manifest: Mapping[str, Any], key: str) -> list[TensorSpec]:
    """The manifest's input or output specs; a malformed entry is refused here, not as a KeyError later."""
    try:
        if not isinstance(manifest[key], list):
            raise TypeError(f"not a list but {type(manifest[key]).__name__}")
        specs = [TensorSpec.from_json(entry) for entry in manifest[key]]
        dtypes = [spec.compiled_dtype for spec in specs]
    except (KeyError, TypeError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {first_line(exc)}"
        raise BadInputError(f"{path}: manifest '{key}' is malformed ({reason})") from None
    for spec, dtype in zip(specs, dtypes, strict=True):
        if dtype.kind not in "biuf" or dtype.byteorder not in "=|" or any(d < 0 for d in spec.shape):
            raise BadInputError(f"{path}: manifest '{key}' has an unusable tensor spec {str(spec)[:200]}")
        if math.prod(spec.shape) * dtype.itemsize > MAX_TENSOR_BYTES:
            raise BadInputError(
                f"{path}: manifest '{key}' has a tensor spec over {MAX_TENSOR_BYTES // 2**30} GiB: {str(spec)[:200]}"
            )
    return specs


def _call_failure(exc: Exception) -> str:
    """What a failed call into the library says, in one line. Inputs were checked against the manifest before
    the call, so the library refusing one of its parameters (TVM names it `loc=param[i]`) means the manifest does
    not describe the library."""
    text = first_line(exc)
    if "loc=param" in str(exc):
        return f"the artifact's manifest does not match its library ({text})"
    return f"running the compiled model failed ({type(exc).__name__}: {text})"


def _open_vm(path: Any, library: bytes, device_type: int) -> Any:
    """The Relax VM over one of the artifact's libraries; a library that loads but is no bitc model (no VM
    executable) is refused with the artifact's name."""
    try:
        return tvm_loader.create_vm(tvm_loader.load_library(library, LIBRARY_NAME), device_type)
    except BitcError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    except Exception as exc:  # the FFI raises AttributeError/RuntimeError subclasses with C++ text
        raise BadInputError(f"{path}: the library is not a runnable bitc model ({first_line(exc)})") from None


def _entry_function(path: Any, vm: Any, entry: str) -> Any:
    """The VM's entry function `entry`; a library without it is refused with the artifact's name."""
    try:
        return vm[entry]
    except Exception as exc:  # the FFI raises AttributeError/RuntimeError subclasses with C++ text
        raise BadInputError(f"{path}: the library is not a runnable bitc model ({first_line(exc)})") from None


def _check_parameters(path: Any, vm: Any, entry: str, inputs: Sequence[TensorSpec]) -> None:
    """Refuse at load a manifest that lists more or fewer inputs than the entry function takes: the part of a
    lying manifest the library can tell without a call (it checks shapes and dtypes on every call; its parameter
    names are sanitized forms of the input names, so only their number is compared)."""
    try:
        arity = int(vm["get_function_arity"](entry))
        names = [str(vm["get_function_param_name"](entry, index)) for index in range(arity)]
    except Exception as exc:  # the FFI raises builtin exception types carrying C++ text
        raise BadInputError(f"{path}: the library is not a runnable bitc model ({first_line(exc)})") from None
    listed = [spec.name for spec in inputs]
    if len(names) != len(listed):
        raise BadInputError(
            f"{path}: the artifact's manifest does not match its library "
            f"(manifest inputs {listed[:20]}, the library's '{entry}' takes {names[:20]})"
        )


def random_array(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Normal floats, or 0/1 for integers and bools: valid for token ids, masks and indices alike."""
    if np.issubdtype(np.dtype(dtype), np.floating):
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 2, shape).astype(dtype)


def _random_input(rng: np.random.Generator, spec: TensorSpec) -> np.ndarray:
    array = random_array(rng, spec.shape, spec.compiled_dtype)
    return narrow_dtypes.from_carrier(array, spec.dtype) if spec.carrier else array


def _checked(spec: TensorSpec, value: Any) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nested lists, objects without an array form
        raise BadInputError(f"input '{spec.name}': not an array ({first_line(exc)})") from None
    if spec.carrier and array.dtype.kind == "V" and array.dtype.itemsize == spec.numpy_dtype.itemsize:
        array = array.view(spec.numpy_dtype)  # how np.save / np.load store an ml_dtypes array
    if array.dtype != spec.numpy_dtype:
        raise BadInputError(f"input '{spec.name}': dtype {array.dtype}, expected {spec.dtype}")
    if array.shape != spec.shape:
        raise BadInputError(f"input '{spec.name}': shape {list(array.shape)}, expected {list(spec.shape)}")
    if spec.index_range is not None:
        _check_index_range(spec, array, spec.index_range)
    return narrow_dtypes.to_carrier(array, spec.carrier) if spec.carrier else array


def _check_index_range(spec: TensorSpec, array: np.ndarray, valid: IndexRange) -> None:
    """Refuse, before any kernel runs, an index input with a value outside what its Gather can read."""
    if array.size == 0:
        return
    outside = (array < valid.low) | (array >= valid.high)
    if outside.any():
        at = tuple(int(i) for i in np.argwhere(outside)[0])
        raise BadInputError(
            f"input '{spec.name}': index out of range in {valid.node}: valid [{valid.low}, {valid.high}), got "
            f"{array[at]} at {list(at)}"
        )


def aligned_zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Zeros in a 64-byte aligned buffer (kernels handed the array without a copy assume that alignment)."""
    return _aligned(np.zeros(shape, dtype))


def _contiguous(array: np.ndarray) -> np.ndarray:
    """A C-contiguous, writeable array with `array`'s contents: DLPack cannot export read-only memory (an
    `np.load(mmap_mode='r')` array, a broadcast view), so those are copied."""
    if array.flags.c_contiguous and array.flags.writeable:
        return array
    return np.array(array, order="C", copy=True)


def _aligned(array: np.ndarray) -> np.ndarray:
    """`_contiguous`, and 64-byte aligned (a copy only when it is not already)."""
    if array.flags.c_contiguous and array.flags.writeable and array.ctypes.data % _ALIGNMENT == 0:
        return array
    buffer = np.empty(array.nbytes + _ALIGNMENT, dtype=np.uint8)
    offset = (-buffer.ctypes.data) % _ALIGNMENT
    out = buffer[offset : offset + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


def _cuda_kernels(artifact: Any, kernels: Any) -> tuple[str, bytes]:
    """One size's prebuilt kernels (sha256 of their source, fatbin; `kernels` is its manifest entry), after
    checking the GPU against the artifact's arch."""
    fatbin = kernels.get("fatbin") if isinstance(kernels, Mapping) else None
    if not isinstance(fatbin, str) or fatbin not in artifact.members:
        raise BadInputError(f"{artifact.path}: CUDA artifact without its compiled kernels (manifest 'kernels')")
    try:
        tvm_loader.require_gpu()
        capability = tvm_loader.gpu_compute_capability()
    except BitcError as exc:
        raise BitcError(f"{artifact.path}: {exc}") from None
    arch = str(artifact.manifest["target"].get("arch", "sm_0"))
    try:
        built_for = tvm_loader.arch_capability(arch)
    except ValueError:
        raise BadInputError(f"{artifact.path}: manifest 'target' arch {arch!r} is not an sm_XY name") from None
    if capability < built_for:
        raise BadInputError(
            f"{artifact.path}: built for {arch}, this GPU is sm_{capability}; "
            f"recompile with --target cuda:sm_{capability}"
        )
    return str(kernels.get("source_sha256")), artifact.members[kernels["fatbin"]]


def _check_target(path: Any, target: Any) -> int:
    """The DLPack device type the artifact runs on, after refusing a machine it cannot run on."""
    if not isinstance(target, Mapping):
        raise BadInputError(f"{path}: manifest 'target' is malformed (not an object)")
    for key in ("kind", "name", "arch", "host_arch", "mcpu"):
        if key in target and not isinstance(target[key], str):
            raise BadInputError(f"{path}: manifest 'target' is malformed ('{key}' is not a string)")
    features = target.get("cpu_features", [])
    if not isinstance(features, list) or not all(isinstance(flag, str) for flag in features):
        raise BadInputError(f"{path}: manifest 'target' is malformed ('cpu_features' is not a list of strings)")
    kind = target.get("kind")
    if kind == "cuda":
        if target.get("host_arch") and target["host_arch"] != host_arch():
            raise BadInputError(f"{path}: artifact's host code is for {target['host_arch']}, this is {host_arch()}")
        return tvm_loader.DL_CUDA
    if kind != "llvm":
        raise BadInputError(f"{path}: artifact targets '{kind}', this runtime runs CPU (llvm) and CUDA artifacts")
    if target.get("arch") and target["arch"] != host_arch():
        raise BadInputError(f"{path}: artifact was built for {target['arch']}, this machine is {host_arch()}")
    required = set(features)
    flags = host_cpu_flags()
    if flags and not required <= flags:
        raise BadInputError(
            f"{path}: artifact was built for CPU '{target.get('mcpu')}' and needs "
            f"{sorted(required - flags)}, which this CPU lacks; recompile with --target cpu on this machine"
        )
    return tvm_loader.DL_CPU
