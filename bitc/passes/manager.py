"""Run a named pipeline of passes: each one timed, optionally dumped as .onnx and checked against onnxruntime."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir

from bitc.atomic import atomic_path
from bitc.errors import BadInputError, BitcError, CompileError, first_line
from bitc.ir import graph_edit
from bitc.ir.feeds import random_feeds
from bitc.passes import registry, verify

DEFAULT_PIPELINE = (
    "fold_constants",
    "simplify",
    "eliminate_identity",
    "fold_batchnorm",
    "lower_binary",
    "fuse_binary",
    "cse",
    "remove_unused",
)

PassSpec = str | tuple[str, Mapping[str, Any]]


@dataclass
class PassRecord:
    """What one pass did: the manifest's pass log and `--verbose` are made of these."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    modified: bool = False
    nodes_before: int = 0
    nodes_after: int = 0
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    note: str | None = None
    details: dict[str, Any] | None = None
    exact_check: dict[str, Any] | None = None  # on the last pass of a run of exact passes: what the check found

    def to_json(self, timing: bool = True) -> dict[str, Any]:
        """As a dict; `timing=False` drops the wall time so that manifests are reproducible byte for byte."""
        record = {k: v for k, v in asdict(self).items() if v is not None}
        record["options"] = _json_safe(record.get("options", {}))
        if not timing:
            record.pop("seconds")
        return record


def _json_safe(value: Any) -> Any:
    """Options as the manifest can hold them: arrays (e.g. calibration inputs) become a short description."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"array{list(value.shape)} {value.dtype}"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def parse_pipeline(text: str | Sequence[PassSpec] | None) -> list[tuple[str, dict[str, Any]]]:
    """'a,b,c' or ['a', ('b', {...})] → [(name, options)]; None means the default pipeline. Every pass is
    created once, so unknown names and bad options fail before any pass runs."""
    specs = _split_pipeline(text)
    for name, options in specs:
        registry.create(name, options)
    return specs


def _split_pipeline(text: str | Sequence[PassSpec] | None) -> list[tuple[str, dict[str, Any]]]:
    """The pipeline as [(name, options)], without creating the passes (a pass may read files when created, e.g.
    calibration inputs: `run_pipeline` does that once)."""
    if text is None:
        text = DEFAULT_PIPELINE
    if isinstance(text, str):
        text = [part.strip() for part in text.split(",") if part.strip()]
    return [(item, {}) if isinstance(item, str) else (item[0], dict(item[1])) for item in text]


def insert_pass(
    pipeline: str | Sequence[PassSpec] | None, name: str, options: Mapping[str, Any] | None = None
) -> list[PassSpec]:
    """The pipeline with (`name`, options) where its phase puts it (see `registry.PHASES`): after the passes of
    its phase and earlier ones, before the first pass of a later phase; passes it `requires` that the pipeline
    lacks are inserted the same way. A pass asked for both in the list and as an option is refused."""
    specs: list[PassSpec] = [(n, opts) for n, opts in _split_pipeline(pipeline)]
    if name in [n for n, _ in specs]:
        raise BadInputError(f"'{name}' asked for twice: in the pass list and as an option")
    item = registry.info(name)
    item.build_options(options or {})
    for required in item.requires:
        if required not in [n for n, _ in specs]:
            specs = _insert_by_phase(specs, required, {})
    return _insert_by_phase(specs, name, dict(options or {}))


def _insert_by_phase(specs: list[PassSpec], name: str, options: dict[str, Any]) -> list[PassSpec]:
    rank = registry.info(name).rank
    later = [i for i, (n, _) in enumerate(specs) if registry.info(n).rank > rank]
    at = later[0] if later else len(specs)
    return [*specs[:at], (name, options), *specs[at:]]


def run_pipeline(
    model: ir.Model,
    pipeline: str | Sequence[PassSpec] | None = None,
    *,
    dump_dir: str | Path | None = None,
    verify_numerics: bool = False,
    check_exact: bool = True,
    seed: int = 0,
    on_pass: Callable[[PassRecord], None] | None = None,
) -> tuple[ir.Model, list[PassRecord]]:
    """Apply the pipeline in order. With `verify_numerics`, each pass's output is compared with the model before
    it on the same seeded random inputs (onnxruntime), so the record names the pass that introduced an error.

    With `check_exact` (the default), every maximal run of passes registered as exact is checked the same way,
    as a whole (the outputs before its first pass vs after its last): a violation is a CompileError naming the
    pass (found by re-running the run pass by pass) and the first differing value. Lossy passes get their output
    error recorded. Models the reference cannot run, or too big to run cheaply, are skipped with a note."""
    specs = parse_pipeline(pipeline)
    dump_path = Path(dump_dir) if dump_dir is not None else None
    if dump_path is not None:
        dump_path.mkdir(parents=True, exist_ok=True)
        _dump(model, dump_path / "00_input.onnx")
    feeds = random_feeds(model, seed) if verify_numerics else None
    previous = _reference(model, feeds)
    guard = ExactGuard(model, seed) if check_exact else None
    output_names = [value.name for value in model.graph.outputs]
    records: list[PassRecord] = []
    for index, (name, options) in enumerate(specs, start=1):
        if guard is not None:
            guard.before(model, specs, records, registry.is_exact(name))
        record = PassRecord(name=name, options=options, nodes_before=len(model.graph))
        start = time.perf_counter()
        try:
            instance = registry.create(name, options)
            result = instance(model)
        except BitcError:
            raise
        except Exception as exc:
            cause = exc.__cause__ or exc
            raise CompileError(f"pass '{name}' failed: {first_line(cause)}") from None
        model = result.model
        if registry.renames_outputs(name):
            output_names = [value.name for value in model.graph.outputs]
        elif graph_edit.restore_output_names(model.graph, output_names):
            record.modified = True
        record.seconds = time.perf_counter() - start
        record.modified = record.modified or bool(result.modified)
        record.nodes_after = len(model.graph)
        if (report := getattr(instance, "report", None)) is not None:
            record.details = report.to_json()
        if feeds is not None:
            current = _reference(model, feeds)
            if isinstance(previous, str) or isinstance(current, str):
                record.note = current if isinstance(current, str) else previous
            else:
                record.max_abs_error, record.max_rel_error = verify.max_errors(previous, current)
            previous = current
        if guard is not None:
            guard.after(model, record, registry.is_exact(name))
        if dump_path is not None:
            _dump(model, dump_path / f"{index:02d}_{name}.onnx")
        records.append(record)
        if on_pass is not None:
            on_pass(record)
    if guard is not None:
        guard.close_run(model, specs, records)
    return model, records


class ExactGuard:
    """The compile-time check that exact passes are exact: one seeded batch through the reference (onnxruntime,
    or onnx's evaluator once bitc ops appear) before and after each maximal run of exact passes, and around each
    lossy pass (whose error is then recorded, for the compile summary)."""

    def __init__(self, model: ir.Model, seed: int) -> None:
        self.seed = seed
        self.feeds: dict | None = None
        self.outputs: list | str | None = None  # the current model's outputs (None: not run since it changed)
        self.start: int | None = None  # index of the open run's first pass
        self.snapshot: Any = None  # the model (ModelProto) when the open run started
        self.reference: list | str | None = None  # its outputs then
        self.lossy_before: list | str | None = None  # the outputs before the lossy pass now running
        self.skip = None
        try:
            # the cost check first: an input of 2^31 rows must be skipped, not allocated
            self.skip = verify.check_cost(model)
            if self.skip is None:
                self.feeds = random_feeds(model, seed)
        except (BadInputError, MemoryError) as exc:
            self.skip = f"exact check skipped: {first_line(exc, 160)}"

    def before(self, model: ir.Model, specs: list, records: list[PassRecord], exact: bool) -> None:
        if exact and self.start is None:
            self.start = len(records)
            skip = self._affordable(model)
            self.snapshot = ir.to_proto(model) if skip is None else None
            self.reference = self._current(model, self.snapshot) if skip is None else skip
        elif not exact:
            self.close_run(model, specs, records)
            self.lossy_before = self._current(model) if self._affordable(model) is None else None

    def after(self, model: ir.Model, record: PassRecord, exact: bool) -> None:
        self.outputs = None
        if exact or not isinstance(self.lossy_before, list) or self._affordable(model) is not None:
            return
        after = self._current(model)
        if isinstance(after, list) and len(after) == len(self.lossy_before):
            with contextlib.suppress(TypeError, ValueError):  # sequence or map outputs: no error to report
                record.max_abs_error, record.max_rel_error = verify.max_errors(self.lossy_before, after)

    def close_run(self, model: ir.Model, specs: list, records: list[PassRecord]) -> None:
        """Compare the open run's outputs with those it started from; raise naming the pass that broke them."""
        if self.start is None:
            return
        start, self.start = self.start, None
        run = specs[start : len(records)]
        first, last = records[start], records[-1]
        actual = self._current(model) if self.snapshot is not None else self.reference
        note = self.reference if isinstance(self.reference, str) else actual if isinstance(actual, str) else None
        if note is not None:
            first.note = first.note or note
            last.exact_check = {"passes": [n for n, _ in run], "skipped": note}
            return
        names = [o.name for o in self.snapshot.graph.output]
        violation = _violation(names, self.reference, actual)
        if violation is not None:
            raise CompileError(self._blame(run, names, violation))
        try:
            _, rel = verify.max_errors(self.reference, actual)
        except (TypeError, ValueError):  # sequence or map outputs: compared by _violation where it can
            last.exact_check = {"passes": [n for n, _ in run], "skipped": "outputs are not tensors"}
            return
        last.exact_check = {"passes": [n for n, _ in run], "max_rel_error": float(f"{rel:.3g}")}

    def _blame(self, run: list, names: list[str], violation: str) -> str:
        """Re-run the run pass by pass from its snapshot: the first pass whose outputs break is the culprit."""
        model = ir.from_proto(self.snapshot)
        culprit, where = " + ".join(n for n, _ in run), None
        for name, options in run:
            before = ir.to_proto(model)
            try:
                model = registry.create(name, options)(model).model
                outputs = verify.run_reference(model, self.feeds)
            except Exception:
                break
            if (found := _violation(names, self.reference, outputs)) is not None:
                culprit, violation = name, found
                where = verify.first_difference(before, model, self.feeds)
                break
        at = f"; first differing value: {where}" if where else ""
        return (
            f"exact pass '{culprit}' changed the model's outputs ({violation}{at}) on seeded inputs; no artifact "
            "written. This is a bitc bug, please report it; --no-verify skips the check"
        )

    def _affordable(self, model: ir.Model) -> str | None:
        return self.skip or verify.check_cost(model)

    def _current(self, model: ir.Model, proto: Any = None) -> list | str:
        if self.outputs is None:
            try:
                self.outputs = list(verify.run_reference(model, self.feeds, proto))
            except Exception as exc:
                self.outputs = f"exact check skipped: the reference cannot run this model ({first_line(exc, 160)})"
        return self.outputs


def check_lines(passes: list[dict[str, Any]]) -> list[str]:
    """What the compile summary says about numerics (from the manifest's pass log): each lossy pass's measured
    output error, and whether the exact passes were checked (or why not)."""
    lines = []
    for record in passes:
        name, rel = record["name"], record.get("max_rel_error")
        if not registry.is_exact(name) and record.get("modified") and rel is not None:
            lines.append(
                f"{name} (lossy): output error {rel:.3g} of the largest output value on seeded inputs "
                f"(max abs {record.get('max_abs_error', 0.0):.3g})"
            )
    checks = [r["exact_check"] for r in passes if r.get("exact_check")]
    worst = max((c["max_rel_error"] for c in checks if "max_rel_error" in c), default=None)
    if worst is not None:
        lines.append(f"exact passes checked on seeded inputs: max rel error {worst:.2g}")
    lines += [f"note: {c['skipped']}" for c in checks if "skipped" in c]
    return lines


def _violation(names: list[str], reference: list, actual: list) -> str | None:
    if len(reference) != len(actual):
        return f"{len(actual)} outputs instead of {len(reference)}"
    try:
        return verify.exact_violation(names, reference, actual)
    except (TypeError, ValueError):  # an output numpy cannot compare (a sequence of tensors, a map): unchecked
        return None


def _dump(model: ir.Model, path: Path) -> None:
    """--dump-ir output, written atomically: a full disk leaves no truncated model that looks like a dump."""
    try:
        with atomic_path(path) as tmp:
            ir.save(model, tmp, format="protobuf")
    except OSError as exc:
        raise BitcError(f"--dump-ir {path}: cannot write ({exc.strerror or first_line(exc)})") from None


def _reference(model: ir.Model, feeds: Mapping | None) -> list | str | None:
    """Outputs of the model under onnxruntime (with bitc ops: onnx's reference evaluator plus our numpy
    references), or a note saying why it could not run."""
    if feeds is None:
        return None
    try:
        return verify.run_reference(model, feeds)
    except Exception as exc:
        return f"not verified: the reference cannot run this model ({first_line(exc, 160)})"
