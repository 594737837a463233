"""`bitc.compile`: source model → passes → TVM build → one `.bitc` artifact, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from bitc.atomic import check_output_path, process_temp_dir
from bitc.codegen.build import build
from bitc.codegen.cpu import tuning
from bitc.codegen.target import parse_target
from bitc.errors import BadInputError
from bitc.frontend import from_torch, load_onnx, normalize, onnx_lowering
from bitc.frontend.index_ranges import input_index_ranges
from bitc.frontend.narrow_types import narrow_io
from bitc.ir.shapes import infer_shapes, static_shape
from bitc.layers import layer_table, summarize_layers
from bitc.passes import PassRecord, insert_pass, registry, run_pipeline
from bitc.runtime.artifact import FORMAT, FORMAT_VERSION, LIBRARY_NAME, write_artifact
from bitc.runtime.kv_cache import METADATA_KEY as KV_METADATA_KEY


@dataclass
class CompileResult:
    path: Path
    manifest: dict[str, Any]
    pass_log: list[PassRecord] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def compile(
    model: str | os.PathLike | ir.Model | Any,
    output: str | os.PathLike | None = None,
    *,
    target: str = "cpu",
    passes: str | Sequence[Any] | None = None,
    binarize: Mapping[str, Any] | bool | None = None,
    prune: Mapping[str, Any] | float | None = None,
    reorder: Mapping[str, Any] | bool | None = None,
    lowbit_linear: Mapping[str, Any] | int | str | None = None,
    kv_compress: Mapping[str, Any] | int | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    example_inputs: Sequence[Any] | None = None,
    tune_trials: int = 0,
    tuning_db: str | os.PathLike | None = None,
    use_tuning_db: bool = True,
    dump_ir: str | os.PathLike | None = None,
    verify: bool = False,
    check_exact: bool = True,
    num_cores: int | None = None,
    on_pass: Callable[[PassRecord], None] | None = None,
    on_tuning: Callable[[int, int], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    **pass_options: Mapping[str, Any] | bool | None,
) -> CompileResult:
    """Compile an ONNX file, an `onnx_ir.Model` or a torch `nn.Module` (with `example_inputs`) for `target`.

    Returns where the artifact went and its manifest. `output` defaults to the ONNX file's name with `.bitc`.
    `binarize` binarizes a float model after training: True for the default policy (every Conv/Gemm/MatMul but the
    first and last, 1 weight plane, sign activations) or a dict of the `binarize` pass's options. `prune` (a ratio
    or the `prune` pass's options) and `reorder` (True or its options) run after BN folding. `lowbit_linear`
    gives MatMul/Gemm layers low-bit weights with float activations: a plane count, "ternary", or the
    `lowbit_linear` pass's options (group_size, salient, calibration, ...). `kv_compress` compresses a decoder's
    KV cache: a bit width or the `kv_compress` pass's options (residual, key_group, pre_rope, ...); the artifact
    then runs through `bitc.load(path).session()`.
    Any other registered pass is asked for the same way, by its name: `bitc.compile(..., my_pass={...})`; each
    requested pass goes where its phase puts it in the pipeline.
    `check_exact` (default on; CLI `--no-verify` turns it off) checks on seeded inputs that the exact passes kept the
    model's outputs: a violation is a CompileError and no artifact is written.
    `on_pass`, `on_tuning(done, total)` and `on_stage(name)` report progress (the CLI draws it).
    """
    stage = on_stage or (lambda _name: None)
    timings: dict[str, float] = {}
    build_target = parse_target(target, num_cores)
    if tune_trials < 0:
        raise BadInputError(f"--tune-trials must be >= 0, got {tune_trials}")

    output_path = _output_path(output, model)
    stage("loading")
    start = time.perf_counter()
    ir_model, source, source_sha = _load(model, input_shapes, example_inputs)
    _check_static_inputs(ir_model)
    _check_io_types(ir_model)
    timings["frontend"] = time.perf_counter() - start

    stage("passes")
    start = time.perf_counter()
    requested = {
        "prune": prune,
        "reorder": reorder,
        "lowbit_linear": lowbit_linear,
        "kv_compress": kv_compress,
        "binarize": binarize,
        **pass_options,
    }
    passes = _with_requested_passes(passes, requested)
    ir_model, records = run_pipeline(
        ir_model, passes, dump_dir=dump_ir, verify_numerics=verify, check_exact=check_exact, on_pass=on_pass
    )
    # forms whose shapes only became static once the passes folded their shape subgraphs (an LSTM after a Pad
    # whose pads are computed from constants): lowered now, instead of refused at import
    if onnx_lowering.lower_unsupported_forms(ir_model):
        infer_shapes(ir_model, source=source)
    timings["passes"] = time.perf_counter() - start

    options = tuning.TuningOptions(
        trials=tune_trials,
        database_dir=Path(tuning_db) if tuning_db else None,
        use_database=use_tuning_db,
        on_progress=on_tuning,
    )
    stage("tuning and building" if tune_trials else "building (TVM)")
    built = build(ir_model, build_target, tuning_options=options, source=source)
    timings["build"] = built.seconds

    layers = layer_table(ir_model)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "entry": "main",
        "source": {"name": source, "sha256": source_sha},
        "inputs": _input_specs(ir_model),
        "outputs": _output_specs(ir_model),
        "target": build_target.to_manifest(),
        "versions": _versions(ir_model),
        "passes": [r.to_json(timing=False) for r in records],
        "tuning": built.tuning,
        "codegen": {"conv_layout": built.conv_layout}
        | ({"generic_convs": built.generic_convs} if built.generic_convs else {}),
        "stats": {"nodes": len(ir_model.graph), "parameters": _parameter_count(ir_model), **summarize_layers(layers)},
        "layers": layers,
    }
    if built.kernels:
        manifest["kernels"] = built.kernels
    if (kv_cache := ir_model.metadata_props.get(KV_METADATA_KEY)) is not None:
        manifest["kv_cache"] = json.loads(kv_cache)
    _reinstall_python_signal_handlers()
    stage("writing")
    start = time.perf_counter()
    write_artifact(output_path, manifest, {LIBRARY_NAME: built.library, **built.members})
    timings["write"] = time.perf_counter() - start
    return CompileResult(path=output_path, manifest=manifest, pass_log=records, seconds=timings)


def _reinstall_python_signal_handlers() -> None:
    """LLVM installs its own SIGINT/SIGTERM handlers during codegen (they re-raise with the default action, so
    the process dies without running Python cleanup). Put Python's handlers back before writing the artifact so
    an interrupt then still removes the temp file."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler is not None:
            signal.signal(signum, handler)


def _load(model: Any, input_shapes: Mapping | None, example_inputs: Sequence | None) -> tuple[ir.Model, str, str]:
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        loaded = load_onnx(path, dict(input_shapes) if input_shapes else None)
        return loaded, path.name, _file_sha256(path)
    if isinstance(model, ir.Model):
        normalized = normalize(model, source="<onnx_ir.Model>", input_shapes=input_shapes)
        return normalized, "<onnx_ir.Model>", ""
    if example_inputs is None:
        raise BadInputError(
            f"cannot compile a {type(model).__name__}: pass an ONNX path, an onnx_ir.Model, "
            "or a torch nn.Module with example_inputs=(...)"
        )
    return from_torch(model, example_inputs), f"<torch {type(model).__name__}>", ""


def _with_requested_passes(pipeline: str | Sequence[Any] | None, requested: Mapping[str, Any]) -> Any:
    """The pipeline with each pass asked for by keyword (None/False: not asked) inserted where its phase says."""
    known = registry.passes()
    for name, value in requested.items():
        if name not in known:
            raise BadInputError(f"bitc.compile: unknown keyword '{name}' (neither a compile option nor a pass name)")
        options = known[name].user_options(value)
        if options is not None:
            pipeline = insert_pass(pipeline, name, options)
    return pipeline


def _output_path(output: str | os.PathLike | None, model: Any) -> Path:
    """Where the artifact goes, checked before any work (so a bad -o is not found after a long build) along with
    the temp folder the build needs."""
    source = Path(model) if isinstance(model, str | os.PathLike) else None
    if output is not None:
        path = Path(output)
    elif source is not None:
        path = Path(source.name).with_suffix(".bitc")
    else:
        raise BadInputError("an output path is needed when compiling an in-memory model")
    check_output_path(path, source)
    process_temp_dir()
    return path


def _check_static_inputs(model: ir.Model) -> None:
    """Every input with a dynamic dimension named in one message, with the flag that fixes each."""
    dynamic = [v for v in model.graph.inputs if v.shape is None or not v.shape.is_static()]
    if len(dynamic) == 1:
        static_shape(dynamic[0])
    if dynamic:
        names = ", ".join(f"'{v.name}' {v.shape}" for v in dynamic)
        flags = " ".join(f"--input-shape {v.name}=d0,d1,..." for v in dynamic)
        raise BadInputError(f"{len(dynamic)} inputs have dynamic shapes: {names}; fix them with {flags}")


def _check_io_types(model: ir.Model) -> None:
    """Refuse, before any work, inputs and outputs whose type is known and that no artifact can take or return."""
    for role, values in (("input", model.graph.inputs), ("output", model.graph.outputs)):
        for value in values:
            if value.type is not None and not _is_tensor_type(value.type):
                raise BadInputError(
                    f"{role} '{value.name}' is {_type_kind(value.type)}: bitc artifacts take and return only tensors"
                )
            if value.dtype is not None:
                _io_dtype(value, role)


def _is_tensor_type(type_: ir.TypeProtocol) -> bool:
    """A dense tensor, or an optional one (passed and returned as the tensor itself)."""
    if isinstance(type_, ir.OptionalType):
        type_ = type_.elem_type
    return isinstance(type_, ir.TensorType)


def _type_kind(type_: ir.TypeProtocol) -> str:
    kinds = {"SequenceType": "a sequence", "OptionalType": "an optional value", "SparseTensorType": "a sparse tensor"}
    return kinds.get(type(type_).__name__, f"a {type(type_).__name__}")


_IO_DTYPES = {"bool", "float16", "float32", "float64", *(f"{s}int{b}" for s in ("", "u") for b in (8, 16, 32, 64))}


def _io_dtype(value: ir.Value, role: str) -> np.dtype:
    """The numpy dtype of an input or output: bool, integer or IEEE float (bfloat16, float8, int4, strings and
    complex numbers have no kernels, and numpy alone cannot even load them from the artifact)."""
    try:
        dtype = np.dtype(value.dtype.numpy())
    except Exception:
        dtype = np.dtype(object)
    if dtype.name not in _IO_DTYPES:
        name = value.dtype.name.lower() if value.dtype is not None else "unknown"
        raise BadInputError(
            f"{role} '{value.name}' has dtype {name}: bitc artifacts take and return only bool, integer and "
            "float16/32/64 tensors; cast it in the model"
        )
    return dtype


def _input_specs(model: ir.Model) -> list[dict[str, Any]]:
    """The inputs' specs; an input that indexes a tensor carries its valid range, checked by the runtime."""
    ranges, narrow = input_index_ranges(model), narrow_io(model)
    specs = [_spec(v, "input", narrow) for v in model.graph.inputs]
    for spec in specs:
        if spec["name"] in ranges:
            spec["index_range"] = ranges[spec["name"]]
    return specs


def _output_specs(model: ir.Model) -> list[dict[str, Any]]:
    narrow = narrow_io(model)
    return [_spec(v, "output", narrow) for v in model.graph.outputs]


def _spec(value: ir.Value, role: str, narrow: Mapping[str, str]) -> dict[str, Any]:
    """name, shape, dtype; a narrow dtype (bfloat16, float8, int4...) also names its carrier in the code."""
    if value.dtype is None or value.shape is None:
        raise BadInputError(f"value '{value.name}' has no inferred type or shape")
    shape = [int(d) for d in static_shape(value)]  # a 0 is fine: empty tensors are passed without a copy
    spec = {"name": value.name, "shape": shape, "dtype": _io_dtype(value, role).name}
    if value.name in narrow:
        spec["carrier"], spec["dtype"] = spec["dtype"], narrow[value.name]
    return spec


def _parameter_count(model: ir.Model) -> int:
    return sum(int(v.const_value.size) for v in model.graph.initializers.values() if v.const_value is not None)


def _versions(model: ir.Model) -> dict[str, Any]:
    packages = {name: _package_version(name) for name in ("bitc", "apache-tvm", "onnx", "onnx-ir", "onnxscript")}
    return {**packages, "opsets": dict(sorted(model.opset_imports.items()))}


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
