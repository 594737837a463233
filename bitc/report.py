"""`bitc report`: one HTML page comparing an artifact with its source model — latency (overall and per kernel),
size, numerical error, per-layer costs and the pass log — for deciding which layers to binarize or prune."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from bitc.atomic import atomic_output, check_output_path
from bitc.errors import BadInputError


def build_report(onnx_path: str | Path, artifact_path: str | Path, *, runs: int = 20) -> str:
    """Measure and render the report as an HTML string."""
    from bitc.bench import measure_in_subprocess, onnxruntime_session
    from bitc.runtime import load
    from bitc.runtime.hostcpu import physical_cores
    from bitc.runtime.profile import profile_kernels

    onnx_path, artifact_path = Path(onnx_path), Path(artifact_path)
    if not onnx_path.is_file():
        raise BadInputError(f"{onnx_path}: no such file")
    model = load(artifact_path)
    check_source_matches(onnx_path, model.manifest, artifact_path)
    inputs = model.random_inputs(seed=0)
    got = model.run(inputs)
    session = onnxruntime_session(str(onnx_path), physical_cores())
    expected = session.run(None, inputs)
    errors = [_error_row(name, g, e) for (name, g), e in zip(got.items(), expected, strict=True)]
    threads = physical_cores()
    latency = {
        engine: measure_in_subprocess(engine, str(path), str(artifact_path), threads, runs, 3)
        for engine, path in (("bitc", artifact_path), ("onnxruntime", onnx_path))
    }
    kernels = profile_kernels(model, inputs, runs=max(3, runs // 2))
    return _render(onnx_path, artifact_path, model.manifest, errors, latency, kernels, threads)


def check_source_matches(onnx_path: Path, manifest: dict[str, Any], artifact_path: Path) -> None:
    """Refuse, in one line, an ONNX model whose inputs and outputs are not the artifact's (names, outputs'
    order, element types, fixed dimensions): the comparison would otherwise be meaningless or fail in
    onnxruntime with a multi-line text."""
    import onnx

    from bitc.errors import first_line

    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception as exc:  # protobuf's DecodeError and friends
        raise BadInputError(f"{onnx_path}: not a readable ONNX model ({first_line(exc)})") from None
    initializers = {t.name for t in graph.initializer}
    inputs = {v.name: v for v in graph.input if v.name not in initializers}
    mismatch = f"{onnx_path} is not the source of {artifact_path}"
    if sorted(inputs) != sorted(s["name"] for s in manifest["inputs"]):
        raise BadInputError(f"{mismatch}: its inputs are {sorted(inputs)[:8]}, the artifact's differ")
    if [v.name for v in graph.output] != [s["name"] for s in manifest["outputs"]]:
        raise BadInputError(f"{mismatch}: its outputs are {[v.name for v in graph.output][:8]}, the artifact's differ")
    pairs = [(inputs[s["name"]], s) for s in manifest["inputs"]] + list(
        zip(graph.output, manifest["outputs"], strict=True)
    )
    for value, spec in pairs:
        dtype, dims = _onnx_type(value)
        if (dtype is not None and dtype != spec["dtype"]) or not _dims_agree(dims, list(spec["shape"])):
            raise BadInputError(
                f"{mismatch}: '{value.name}' is {dtype}{dims} there, {spec['dtype']}{spec['shape']} in it"
            )


def _onnx_type(value: Any) -> tuple[str | None, list[int | str] | None]:
    """Element type (numpy name) and dimensions ("?" where symbolic) of a graph input/output, None if unknown."""
    from onnx import helper

    tensor = value.type.tensor_type
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name if tensor.elem_type else None
    if not tensor.HasField("shape"):
        return dtype, None
    return dtype, [d.dim_value if d.HasField("dim_value") else "?" for d in tensor.shape.dim]


def _dims_agree(dims: list[int | str] | None, shape: list[int]) -> bool:
    if dims is None:
        return True
    return len(dims) == len(shape) and all(d == "?" or d == s for d, s in zip(dims, shape, strict=True))


def write_report(onnx_path: str | Path, artifact_path: str | Path, output: str | Path, *, runs: int = 20) -> Path:
    """Build the report and write it atomically (the output path checked first: it must not be either input)."""
    for source in (onnx_path, artifact_path):
        check_output_path(output, source)
    page = build_report(onnx_path, artifact_path, runs=runs)
    with atomic_output(output) as handle:
        handle.write(page.encode("utf-8"))
    return Path(output)


def _error_row(name: str, got: np.ndarray, expected: np.ndarray) -> dict[str, Any]:
    a, b = got.astype(np.float64).ravel(), np.asarray(expected, dtype=np.float64).ravel()
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    return {
        "output": name,
        "max_abs": float(np.max(np.abs(a - b))) if a.size else 0.0,
        "max_rel": float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12)) if a.size else 0.0,
        "cosine": float(a @ b / denominator) if denominator else 1.0,
    }


def _render(onnx_path, artifact_path, manifest, errors, latency, kernels, threads) -> str:
    sections = [
        _summary_section(onnx_path, artifact_path, manifest),
        _latency_section(latency, threads),
        "<h2>Error against onnxruntime (seeded random inputs)</h2>",
        _table(
            ["output", "max abs", "max rel", "cosine"],
            [[r["output"], f"{r['max_abs']:.3g}", f"{r['max_rel']:.3g}", f"{r['cosine']:.6f}"] for r in errors],
        ),
        _kernel_section(kernels),
        _layer_section(manifest.get("layers", [])),
        _pass_section(manifest.get("passes", [])),
        f"<p><small>{_e(', '.join(f'{k} {v}' for k, v in manifest.get('versions', {}).items()))}</small></p>",
    ]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
    )
    head = f"<head><meta charset='utf-8'><title>bitc report</title><style>{style}</style></head>"
    return f"<!doctype html><html>{head}<body>{''.join(sections)}</body></html>\n"


def _summary_section(onnx_path: Path, artifact_path: Path, manifest: dict[str, Any]) -> str:
    stats = manifest.get("stats", {})
    return (
        f"<h1>bitc report: {_e(artifact_path.name)}</h1>"
        f"<p>source {_e(onnx_path.name)} ({onnx_path.stat().st_size / 1e6:.2f} MB) → artifact "
        f"{artifact_path.stat().st_size / 1e6:.2f} MB for {_e(manifest['target'].get('name', '?'))}; "
        f"{stats.get('params', 0):,} parameters, {stats.get('macs', 0) / 1e6:,.1f} M MACs, "
        f"{stats.get('binary_mac_share', 0):.0%} of them binary.</p>"
    )


def _latency_section(latency: dict[str, dict[str, float]], threads: int) -> str:
    rows = [[name, threads, f"{v['median_ms']:.3f}", f"{v['p90_ms']:.3f}"] for name, v in latency.items()]
    ratio = latency["onnxruntime"]["median_ms"] / latency["bitc"]["median_ms"]
    return (
        "<h2>Latency</h2>"
        + _table(["engine", "threads", "median ms", "p90 ms"], rows)
        + f"<p>bitc runs at <b>{ratio:.2f}×</b> the speed of onnxruntime fp32 (ratio of medians).</p>"
    )


def _kernel_section(kernels: list[dict[str, Any]]) -> str:
    total = max(1e-12, sum(k["ms"] for k in kernels))
    rows = [[k["kernel"], k["calls_per_run"], f"{k['ms']:.4f}", f"{k['ms'] / total:.1%}"] for k in kernels]
    return (
        "<h2>Time per kernel (profiled)</h2>"
        + _bar_chart([k["kernel"] for k in kernels[:20]], [k["ms"] for k in kernels[:20]], "ms per run")
        + _table(["kernel", "calls per run", "ms per run", "share"], rows)
    )


def _layer_section(layers: list[dict[str, Any]]) -> str:
    heaviest = sorted(layers, key=lambda r: -r["macs"])[:20]
    rows = [
        [r["name"], r["op"], r["precision"], f"{r['params']:,}", f"{r['macs'] / 1e6:,.2f}", f"{r['bytes']:,}"]
        for r in layers
    ]
    return (
        "<h2>Layers</h2>"
        + _bar_chart([r["name"] for r in heaviest], [r["macs"] / 1e6 for r in heaviest], "M MACs")
        + _table(["layer", "op", "precision", "params", "M MACs", "bytes"], rows)
    )


def _pass_section(passes: list[dict[str, Any]]) -> str:
    rows = []
    for p in passes:
        error = f"{p['max_abs_error']:.3g}" if "max_abs_error" in p else p.get("note", "not verified (--verify)")
        rows.append([p["name"], "yes" if p["modified"] else "", f"{p['nodes_before']} → {p['nodes_after']}", error])
    return "<h2>Passes</h2>" + _table(["pass", "modified", "nodes", "max abs error"], rows)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _bar_chart(labels: list[str], values: list[float], unit: str) -> str:
    """A horizontal bar chart as an inline PNG (matplotlib); a note instead if matplotlib is not installed."""
    if not labels:
        return ""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        return "<p><i>Install matplotlib (pip install 'bitc[report]') for charts.</i></p>"
    figure, axes = plt.subplots(figsize=(9, 0.3 * len(labels) + 1))
    axes.barh(range(len(labels)), values)
    axes.set_yticks(range(len(labels)), [label[:50] for label in labels], fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel(unit)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return f"<img alt='{_e(unit)}' src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'/>"


def _e(value: Any) -> str:
    return html.escape(str(value))
