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
from bitc.codegen.build import BuildResult, build, build_sizes
from bitc.codegen.cpu import float_gemv, tuning
from bitc.codegen.relax import module_merge
from bitc.codegen.target import CpuTarget, Target, parse_target
from bitc.errors import BadInputError
from bitc.frontend import from_torch, load_onnx, normalize, onnx_lowering, shape_variants
from bitc.frontend.index_ranges import input_index_ranges
from bitc.frontend.narrow_types import narrow_io
from bitc.ir.shapes import infer_shapes, static_shape
from bitc.layers import layer_table, summarize_layers
from bitc.passes import PassRecord, insert_pass, parse_pipeline, registry, run_pipeline
from bitc.runtime.artifact import FORMAT, FORMAT_VERSION, LIBRARY_NAME, write_artifact
from bitc.runtime.kv_cache import METADATA_KEY as KV_METADATA_KEY

DEFAULT_PREFILL_CHUNK = 32  # prompt tokens per prefill step (the cache quantizes groups of 32 tokens)
MAX_PREFILL_CHUNK = float_gemv.GEMM_MAX_ROWS  # the few-row GEMM's limit: longer chunks would lose its speed


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
    input_shapes: Mapping[str, Any] | Sequence[Mapping[str, Sequence[int]]] | None = None,
    dims: Mapping[str, int | Sequence[int]] | None = None,
    example_inputs: Sequence[Any] | None = None,
    tune_trials: int = 0,
    tuning_db: str | os.PathLike | None = None,
    use_tuning_db: bool = True,
    dump_ir: str | os.PathLike | None = None,
    verify: bool = False,
    check_exact: bool = True,
    num_cores: int | None = None,
    prefill_chunk: int | None = None,
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
    then runs through `bitc.load(path).session()`; a decoder exported with a dynamic token count (ids [1, S]) gets
    a one-token decode step and a `prefill_chunk`-token prefill step in one artifact (weights shared), and the
    session feeds prompts through the prefill step.
    Any other registered pass is asked for the same way, by its name: `bitc.compile(..., my_pass={...})`; each
    requested pass goes where its phase puts it in the pipeline.
    `input_shapes` fixes dynamic input dims ({"x": [1, 3, 224, 224]}); a list of shapes for an input
    ({"x": [[1, 3, 48, 320], [1, 3, 48, 640]]}) or a list of such dicts compiles one artifact for several sizes.
    `dims` sets named dynamic dims in every input that has them ({"batch": 1, "seq": [128, 256]}): each value is
    one more size. The runtime picks the size whose shapes match a call and refuses others.
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
    requested = {
        "prune": prune,
        "reorder": reorder,
        "lowbit_linear": lowbit_linear,
        "kv_compress": kv_compress,
        "binarize": binarize,
        **pass_options,
    }
    passes = _with_requested_passes(passes, requested)
    sizes = _requested_sizes(model, input_shapes, dims, example_inputs)
    decoder = "kv_compress" in [name for name, _ in parse_pipeline(passes)]
    if sizes == [None] and decoder:
        sizes = _decoder_sizes(model, DEFAULT_PREFILL_CHUNK if prefill_chunk is None else prefill_chunk)
        if sizes == [None] and prefill_chunk is not None and prefill_chunk > 1:
            raise BadInputError(
                f"--prefill-chunk {prefill_chunk}: the decoder's token input has a fixed size, so it has no prefill "
                "step; export it with a dynamic token count (ids [1, S]) to get one"
            )
    elif prefill_chunk is not None:
        raise BadInputError(
            "--prefill-chunk applies to a decoder compiled with a runtime-owned KV cache (--kv-bits) whose token "
            "count is dynamic, without --input-shape / --dim (those give the sizes themselves)"
        )
    options = tuning.TuningOptions(
        trials=tune_trials,
        database_dir=Path(tuning_db) if tuning_db else None,
        use_database=use_tuning_db,
        on_progress=on_tuning,
    )
    prepared: list[_PreparedSize] = []
    for index, shapes in enumerate(sizes):
        if len(sizes) > 1:
            stage(f"size {index + 1} of {len(sizes)}: {describe_shapes(shapes)}")
        dump_dir = Path(dump_ir) / f"size{index}" if dump_ir and len(sizes) > 1 else dump_ir
        prepared.append(
            _prepare_size(
                model,
                shapes,
                example_inputs,
                passes,
                copy_model=len(sizes) > 1,
                dump_dir=dump_dir,
                verify=verify,
                check_exact=check_exact,
                on_pass=on_pass,
                stage=stage,
                timings=timings,
            )
        )
    _check_decoder_sizes(prepared)
    stage("tuning and building" if options.trials else "building (TVM)")
    compiled = _build_sizes(prepared, build_target, options, timings)
    first = compiled[0]
    ir_model, records, built = first.model, first.records, first.built
    layers = layer_table(ir_model)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "entry": "main",
        "source": {"name": first.source, "sha256": first.source_sha},
        "inputs": first.inputs,
        "outputs": first.outputs,
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
    members = {LIBRARY_NAME: built.library, **built.members}
    if len(compiled) > 1:
        manifest["variants"] = _size_entries(compiled, members)
    _reinstall_python_signal_handlers()
    stage("writing")
    start = time.perf_counter()
    write_artifact(output_path, manifest, members)
    timings["write"] = time.perf_counter() - start
    return CompileResult(path=output_path, manifest=manifest, pass_log=records, seconds=timings)


@dataclass
class _PreparedSize:
    """One input size after the passes: the model, the pass log, the source and the input specs."""

    model: ir.Model
    records: list[PassRecord]
    source: str
    source_sha: str
    inputs: list[dict[str, Any]]


@dataclass
class _CompiledSize(_PreparedSize):
    """One input size's compile: its build, the entry function that runs it in the build's library and its
    output specs (known static only once the build has checked them)."""

    built: BuildResult
    outputs: list[dict[str, Any]]
    entry: str = "main"


def _prepare_size(
    model: Any,
    shapes: Mapping[str, Sequence[Any]] | None,
    example_inputs: Sequence[Any] | None,
    passes: Any,
    *,
    copy_model: bool,
    dump_dir: str | os.PathLike | None,
    verify: bool,
    check_exact: bool,
    on_pass: Callable[[PassRecord], None] | None,
    stage: Callable[[str], None],
    timings: dict[str, float],
) -> _PreparedSize:
    """Load with `shapes` fixed and run the passes: everything one input size needs before the build."""
    stage("loading")
    start = time.perf_counter()
    if copy_model and isinstance(model, ir.Model):  # every size starts from the model as given
        model = ir.from_proto(ir.to_proto(model))
    ir_model, source, source_sha = _load(model, shapes, example_inputs)
    _check_static_inputs(ir_model)
    _check_io_types(ir_model)
    _add_time(timings, "frontend", start)

    stage("passes")
    start = time.perf_counter()
    ir_model, records = run_pipeline(
        ir_model, passes, dump_dir=dump_dir, verify_numerics=verify, check_exact=check_exact, on_pass=on_pass
    )
    # forms whose shapes only became static once the passes folded their shape subgraphs (an LSTM after a Pad
    # whose pads are computed from constants): lowered now, instead of refused at import
    if onnx_lowering.lower_unsupported_forms(ir_model):
        infer_shapes(ir_model, source=source)
    _add_time(timings, "passes", start)
    return _PreparedSize(ir_model, records, source, source_sha, _input_specs(ir_model))


def _build_sizes(
    prepared: Sequence[_PreparedSize], target: Target, options: tuning.TuningOptions, timings: dict[str, float]
) -> list[_CompiledSize]:
    """Build every size: on a CPU, several sizes as one library with an entry function each (weights shared);
    otherwise (one size, or CUDA, whose kernels are compiled per size) one library per size."""
    if len(prepared) > 1 and isinstance(target, CpuTarget):
        models = [size.model for size in prepared]
        built = build_sizes(models, target, tuning_options=options, source=prepared[0].source)
        timings["build"] = timings.get("build", 0.0) + built.seconds
        compiled = [
            _CompiledSize(
                **vars(size), built=built, outputs=_output_specs(size.model), entry=module_merge.entry_name(index)
            )
            for index, size in enumerate(prepared)
        ]
    else:
        compiled = []
        for size in prepared:
            built = build(size.model, target, tuning_options=options, source=size.source)
            timings["build"] = timings.get("build", 0.0) + built.seconds
            compiled.append(_CompiledSize(**vars(size), built=built, outputs=_output_specs(size.model)))
    _check_signatures(compiled)
    return compiled


def _add_time(timings: dict[str, float], stage: str, start: float) -> None:
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def _requested_sizes(
    model: Any, input_shapes: Any, dims: Any, example_inputs: Sequence[Any] | None
) -> list[dict[str, list[Any]] | None]:
    """The input sizes to compile: [None] when the model's own shapes are used, else one {input: dims} each."""
    lists = shape_variants.shape_lists(input_shapes)
    if not lists and not dims:
        return [None]
    if not isinstance(model, str | os.PathLike | ir.Model):
        raise BadInputError(
            "input_shapes/dims apply to ONNX models; a torch module is compiled at its example_inputs' shapes"
        )
    if not dims and all(len(shapes) == 1 for shapes in lists.values()):
        return [{name: shapes[0] for name, shapes in lists.items()}]  # one size: the loader checks the names
    if isinstance(model, ir.Model):
        declared = shape_variants.declared_dims(model)
    else:
        declared = shape_variants.declared_file_dims(model)
    return list(shape_variants.variants(declared, lists, dims)) or [None]


def _check_decoder_sizes(sizes: Sequence[_PreparedSize]) -> None:
    """A decoder with a runtime-owned cache may hold several token counts (a decode step and prefill chunks)
    over one cache layout, one of them a one-token step; anything else is refused before the build."""
    layouts = [size.model.metadata_props.get(KV_METADATA_KEY) for size in sizes]
    if len(sizes) == 1 or all(layout is None for layout in layouts):
        return
    if len(set(layouts)) != 1 or None in layouts:
        raise BadInputError("the input sizes of a decoder with a runtime-owned KV cache must share one cache layout")
    tokens = [size.inputs[0]["shape"][-1] if size.inputs[0]["shape"] else 0 for size in sizes]
    if 1 not in tokens or any(len(size.inputs[0]["shape"]) != 2 for size in sizes):
        raise BadInputError(
            f"a decoder with a runtime-owned KV cache is compiled as a one-token step [1, 1] plus prefill chunks "
            f"[1, S]; the sizes give token inputs {[size.inputs[0]['shape'] for size in sizes]}"
        )


def _decoder_sizes(model: Any, prefill_chunk: int) -> list[dict[str, list[Any]] | None]:
    """A decoder whose token count (the last dim of its first input, ids [1, S]) is a named dynamic dim compiles
    twice into one artifact: a one-token decode step and a `prefill_chunk`-token prefill step (none when it is 1).
    Per-layer past inputs get one past token (kv_compress replaces them) and a mask's other dim past + S. Any
    other decoder compiles at its own shapes."""
    if type(prefill_chunk) is not int or not 1 <= prefill_chunk <= MAX_PREFILL_CHUNK:
        raise BadInputError(f"--prefill-chunk must be 1..{MAX_PREFILL_CHUNK}, got {prefill_chunk!r}")
    if isinstance(model, ir.Model):
        declared = shape_variants.declared_dims(model)
    elif isinstance(model, str | os.PathLike):
        declared = shape_variants.declared_file_dims(model)
    else:
        return [None]
    first = next(iter(declared), None)
    token = declared[first][-1] if first is not None and declared[first] else None
    if not isinstance(token, str) or any(d is None for dims in declared.values() for d in dims):
        return [None]  # no named token dim, or a dim nothing names: the model's own shapes (checked later)
    # Hugging Face-style caches: per-layer past inputs [1, kv_heads, past, D] (one step sees 1 past token here;
    # the pass replaces them), and a mask over past + S tokens
    past = {dims[2] for dims in declared.values() if len(dims) == 4 and isinstance(dims[2], str)} - {token}
    names = {d for dims in declared.values() for d in dims if isinstance(d, str)}
    others = names - past - {token}
    if len(past) > 1 or (others and not past):
        return [None]

    def size(tokens: int) -> dict[str, list[Any]]:
        values = {token: tokens, **dict.fromkeys(past, 1), **dict.fromkeys(others, 1 + tokens)}
        return {
            name: [values.get(d, d) if isinstance(d, str) else d for d in dims]
            for name, dims in declared.items()
            if any(isinstance(d, str) for d in dims)
        }

    return [size(tokens) for tokens in dict.fromkeys((1, prefill_chunk))]


def describe_shapes(shapes: Mapping[str, Sequence[Any]] | None) -> str:
    """'x[1,3,48,320] mask[1,320]': the sizes one compile fixes."""
    if not shapes:
        return "the model's own shapes"
    return " ".join(f"{name}[{','.join(str(d) for d in dims)}]" for name, dims in shapes.items())


def _size_entries(compiled: Sequence[_CompiledSize], members: dict[str, bytes]) -> list[dict[str, Any]]:
    """The manifest's `variants`: each size's library (the first is the artifact's main library) and entry
    function in it, its own CUDA kernels under a folder of its own, and its input/output specs."""
    entries: list[dict[str, Any]] = []
    for index, size in enumerate(compiled):
        shared = size.built is compiled[0].built  # sizes built into one library, an entry function each
        prefix = "" if index == 0 or shared else f"size{index}/"
        if prefix:
            members[prefix + LIBRARY_NAME] = size.built.library
            members.update({prefix + name: data for name, data in size.built.members.items()})
        entry: dict[str, Any] = {"library": prefix + LIBRARY_NAME, "inputs": size.inputs, "outputs": size.outputs}
        if index:
            entry["entry"] = size.entry
        if size.built.kernels:
            entry["kernels"] = {
                key: prefix + value if value in size.built.members else value
                for key, value in size.built.kernels.items()
            }
        entries.append(entry)
    return entries


def _check_signatures(sizes: Sequence[_CompiledSize]) -> None:
    """The names, dtypes and order of inputs and outputs must agree across sizes (one call signature); only dims
    may differ."""
    signature = _signature(sizes[0])
    for index, size in enumerate(sizes):
        if _signature(size) != signature:
            raise BadInputError(
                f"input size {index + 1} gives the model other inputs or outputs (names/dtypes {_signature(size)} "
                f"vs {signature}); one artifact needs one signature"
            )


def _signature(size: _CompiledSize) -> list[tuple[str, str, int]]:
    return [(spec["name"], spec["dtype"], len(spec["shape"])) for spec in [*size.inputs, *size.outputs]]


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
    """Every input with a dynamic dimension named in one message, with the flags that fix them: --dim for a
    named dimension (it fixes that dimension in every input), --input-shape for the rest."""
    dynamic = [v for v in model.graph.inputs if v.shape is None or not v.shape.is_static()]
    if not dynamic:
        return
    names = ", ".join(f"'{v.name}' {v.shape}" for v in dynamic)
    named = sorted({d.value for v in dynamic for d in v.shape or [] if isinstance(getattr(d, "value", None), str)})
    unnamed = [v for v in dynamic if v.shape is None or any(getattr(d, "value", 0) is None for d in v.shape)]
    fixes = [f"--dim {name}=N" for name in named] + [f"--input-shape {v.name}=d0,d1,..." for v in unnamed]
    count = "1 input has a dynamic shape" if len(dynamic) == 1 else f"{len(dynamic)} inputs have dynamic shapes"
    raise BadInputError(
        f"{count}: {names}; fix them with {' '.join(fixes) or '--input-shape NAME=d0,d1,...'} "
        "(each flag may be given several times, or --dim with several sizes, to compile one artifact for several "
        "sizes)"
    )


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
