"""Human-facing output of the CLI (rich): progress while compiling, tables after. Quiet when not a terminal.

Names, paths and manifest strings are untrusted: they are printed as rich `Text` (never parsed as markup, so a
name like `x[/]` prints as itself) with terminal control characters shown as escapes (`printable`).
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

_err = Console(stderr=True)
_out = Console()

# C0 controls (ESC, CR, BS, NUL, line breaks ...), DEL, C1 controls, and the bidirectional overrides that make a
# terminal show text in another order than it is
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(value: Any) -> str:
    """`str(value)` with every terminal control character written as a visible escape (\\x1b, \\u202e)."""
    return _CONTROL.sub(_escape_control, str(value))


def _escape_control(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _text(*parts: Any) -> Text:
    """One line from plain parts and (part, style) pairs, each made printable and never read as markup."""
    line = Text()
    for part in parts:
        if isinstance(part, tuple):
            line.append(printable(part[0]), style=part[1])
        else:
            line.append(printable(part))
    return line


def _cells(*values: Any) -> list[Text]:
    return [Text(printable(value)) for value in values]


def _print(*parts: Any, style: str | None = None) -> None:
    _out.print(_text(*parts), style=style, highlight=False)


class CompileProgress:
    """Shows which pass runs and a tuning bar on a terminal; does nothing on a pipe or in CI logs."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and _err.is_terminal
        self._progress: Progress | None = None
        self._tuning_task: Any = None
        self._stage_task: Any = None

    def __enter__(self) -> CompileProgress:
        if self.enabled:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=_err,
                transient=True,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def on_stage(self, name: str) -> None:
        if self._progress is None:
            return
        if self._stage_task is None:
            self._stage_task = self._progress.add_task(name, total=None)
        self._progress.update(self._stage_task, description=name)

    def on_pass(self, record: Any) -> None:
        if self._progress is not None:
            self._progress.console.print(
                _text(f"pass {record.name}: {record.nodes_before} → {record.nodes_after} nodes"),
                style="dim",
                highlight=False,
            )

    def on_tuning(self, done: int, total: int) -> None:
        if self._progress is None:
            return
        if self._tuning_task is None:
            self._tuning_task = self._progress.add_task("tuning (MetaSchedule)", total=total)
        self._progress.update(self._tuning_task, completed=done, total=total)


def _print_generic_convs(lines: list[str], shown: int = 8) -> None:
    """Never silent about slow code: convolutions that TVM's generic NCHW code runs (typically 10-50x slower than
    a blocked kernel or onnxruntime's), named with why."""
    if not lines:
        return
    _print(
        f"warning: {len(lines)} convolution(s) run in TVM's generic NCHW code (untuned, typically 10-50x slower "
        "than a blocked kernel):",
        style="yellow",
    )
    for line in lines[:shown]:
        _print(f"  {line}", style="yellow")
    if len(lines) > shown:
        _print(f"  ... and {len(lines) - shown} more ('bitc inspect' on the artifact lists them all)", style="yellow")


def print_compile_summary(summary: dict[str, Any], verbose: bool = False) -> None:
    seconds = summary["seconds"]
    total = sum(seconds.values())
    _print(
        (summary["artifact"], "bold"),
        f": {summary['size_bytes'] / 1e6:.2f} MB for {summary['target']} "
        f"in {total:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in seconds.items())})",
    )
    if len(summary.get("variants") or []) > 1:
        _print(f"compiled for {len(summary['variants'])} input sizes: {_sizes_line(summary['variants'])}")
    for p in summary["passes"]:
        details = p.get("details") or {}
        if p["name"] == "binarize":
            kept = details.get("kept_in_float")
            _print(f"binarize: {details.get('binarized', 0)} layers binarized; kept in float: {kept}")
        if p["name"] == "lower_binary" and (details.get("lowered") or details.get("skipped")):
            skipped = details.get("skipped") or {}
            line = f"binary layers: {details['lowered']} on packed xor/popcount kernels"
            _print(line + (f"; left in float: {skipped}" if skipped else ""))
            for note in details.get("notes", []):
                _print(f"note: {note}", style="yellow")
    _print_generic_convs(summary.get("generic_convs") or [])
    from bitc.passes.manager import check_lines

    for line in check_lines(summary["passes"]):
        _print(line, style="yellow" if line.startswith("note:") else None)
    tuning = summary.get("tuning") or {}
    if tuning:
        _print(f"tuning: {', '.join(f'{k}={v}' for k, v in tuning.items())}")
    if verbose:
        table = Table("pass", "ms", "modified", "nodes", "max abs err", "note", title="passes")
        for p in summary["passes"]:
            err = p.get("max_abs_error")
            table.add_row(
                *_cells(
                    p["name"],
                    f"{p['seconds'] * 1e3:.1f}",
                    "yes" if p["modified"] else "",
                    f"{p['nodes_before']} → {p['nodes_after']}",
                    "" if err is None else f"{err:.3g}",
                    p.get("note", ""),
                )
            )
        _out.print(table)


def print_bench_table(artifact: str, rows: list[dict[str, Any]]) -> None:
    has_ort = any("onnxruntime" in r for r in rows)
    has_sizes = any("input_shapes" in r for r in rows)
    columns = [*(["input size"] if has_sizes else []), "threads", "bitc median ms", "bitc p90 ms"]
    if has_ort:
        columns += ["onnxruntime median ms", "speed-up vs ort"]
    table = Table(*columns, title=_text(f"{artifact} ({rows[0]['runs']} runs)"))
    for r in rows:
        cells = [*([r.get("input_shapes", "")] if has_sizes else []), str(r["threads"])]
        cells += [f"{r['bitc']['median_ms']:.3f}", f"{r['bitc']['p90_ms']:.3f}"]
        if has_ort:
            cells += [f"{r['onnxruntime']['median_ms']:.3f}", f"{r['speedup_vs_onnxruntime']:.2f}×"]
        table.add_row(*_cells(*cells))
    _out.print(table)


def print_inspect(info: dict[str, Any], verbose: bool = False) -> None:
    if info["kind"] == "artifact":
        m = info["manifest"]
        _print((info["path"], "bold"), f": bitc artifact, {info['size_bytes'] / 1e6:.2f} MB")
        _print(f"source: {m['source']['name']}  target: {_target_line(m['target'])}")
        _print(f"versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}")
        _print_values(m["inputs"], m["outputs"])
        if len(variants := m.get("variants") or []) > 1:
            _print(f"compiled for {len(variants)} input sizes (a call must match one): {_sizes_line(variants)}")
        _print(f"passes: {', '.join(str(p['name']) for p in m['passes'])}")
        _print(f"conv layout: {m.get('codegen', {}).get('conv_layout', '?')}")
        for line in m.get("codegen", {}).get("generic_convs", []):
            _print(f"  generic (slow) conv: {line}", style="yellow")
        if (kv := m.get("kv_cache")) is not None:
            _print_kv_cache(kv)
        for name, meta in m["members"].items():
            _print(f"member {name}: {meta['size']} bytes sha256 {str(meta['sha256'])[:16]}…")
        if m.get("layers"):
            _print_layers(m["layers"], m["stats"], verbose)
        if verbose:
            _out.print_json(data=m)
        return
    _print((info["path"], "bold"), f": ONNX model, {info['size_bytes'] / 1e6:.2f} MB, producer {info['producer']}")
    _print(f"opsets: {info['opsets']}  nodes: {info['nodes']}  parameters: {info['parameters']:,}")
    _print_values(info["inputs"], info["outputs"])
    table = Table("op", "count", title="ops")
    for op, count in info["ops"].items():
        table.add_row(*_cells(op, count))
    _out.print(table)
    if info.get("layers"):
        _print_layers(info["layers"], info["summary"], verbose)
    _print_readiness(info)


_UNNAMED = ("None", "?", "")  # how a dimension without a name prints


def _print_readiness(info: dict[str, Any]) -> None:
    """What `bitc compile` will ask for or refuse: dynamic inputs (with the flag) and unsupported nodes."""
    dynamic = info.get("dynamic_inputs") or []
    if dynamic:
        named = sorted({d for v in dynamic for d in v["shape"] or [] if isinstance(d, str) and d not in _UNNAMED})
        unnamed = [v for v in dynamic if v["shape"] is None or any(d in _UNNAMED for d in v["shape"])]
        flags = " ".join([*(f"--dim {d}=N" for d in named), *(f"--input-shape {v['name']}=..." for v in unnamed)])
        shapes = ", ".join(f"{v['name']} {v['shape']}" for v in dynamic)
        _print(f"dynamic inputs: {shapes}; compile with {flags}")
    for entry in info.get("unsupported") or []:
        _print(f"unsupported: {entry['op']} (domain {entry['domain']}, node '{entry['node']}'): {entry['reason']}")
    if not dynamic and not info.get("unsupported"):
        _print("static input shapes; every op has a lowering")


def _sizes_line(variants: list[dict[str, Any]]) -> str:
    """'x[1,3,48,320]; x[1,3,48,640]': each compiled size's input shapes."""
    return "; ".join(
        " ".join(f"{t['name']}[{','.join(map(str, t['shape']))}]" for t in variant["inputs"]) for variant in variants
    )


def _target_line(target: dict[str, Any]) -> str:
    if target.get("kind") == "cuda":
        return (
            f"{target['name']} (NVIDIA GPU, {target.get('arch_source', '?')} arch; "
            f"PTX {target.get('ptx', '?')} for newer GPUs)"
        )
    return f"{target['name']} ({target.get('num_cores', '?')} cores)"


def _print_kv_cache(kv: dict[str, Any]) -> None:
    """The decoder's cache layout and what it holds at full context (run it with `bitc generate`)."""
    from bitc.runtime.kv_cache import KVCacheLayout

    layout = KVCacheLayout.from_json(kv)
    full = layout.max_context
    kind = f"keys {layout.key_bits}-bit, values {layout.value_bits}-bit" if layout.quantizes else "float32"
    _print(
        f"KV cache (runtime-owned): {kind}, {full} tokens max, float window {layout.residual} tokens, "
        f"key group {layout.key_group}, value group {layout.value_group or layout.head_dim}"
        f"{', pre-RoPE keys' if layout.pre_rope else ''}; "
        f"{layout.cache_bytes(full) / 2**20:.2f} MiB at {full} tokens "
        f"(float32: {layout.float_cache_bytes(full) / 2**20:.2f} MiB)"
    )


def _print_layers(layers: list[dict[str, Any]], summary: dict[str, Any], verbose: bool, limit: int = 40) -> None:
    """Per-layer cost table; the heaviest `limit` layers by MACs unless verbose."""
    shown = layers if verbose else sorted(layers, key=lambda r: -r["macs"])[:limit]
    total = max(summary.get("macs", 0), 1)
    title = (
        f"layers ({summary['layers']}; {summary['params']:,} params, {summary['macs'] / 1e6:,.1f} M MACs, "
        f"{summary['binary_mac_share']:.0%} binary)"
    )
    table = Table("layer", "op", "precision", "params", "MACs (M)", "MAC share", "bytes", title=_text(title))
    for r in shown:
        table.add_row(*_cells(
            r["name"], r["op"], r["precision"], f"{r['params']:,}", f"{r['macs'] / 1e6:,.2f}",
            f"{r['macs'] / total:.1%}", f"{r['bytes']:,}",
        ))  # fmt: skip
    _out.print(table)
    if len(shown) < len(layers):
        _print(f"({len(layers) - len(shown)} lighter layers not shown; --verbose lists all)")


def _print_values(inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
    for label, values in (("input", inputs), ("output", outputs)):
        for v in values:
            _print(f"{label} {v['name']}: {v['dtype']}{v['shape']}")
