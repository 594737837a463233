"""Low-bit transformer weights: speed of the LowBitMatMul kernels and the quality they keep on real models.

    python benchmarks/bench_lowbit.py --gemv [--threads 1,2] [--runs 200] [--batches 1,16] [--target cpu:x86-64-v3]
    python benchmarks/bench_lowbit.py --quality [--plot benchmarks/lowbit_quality.png]
    python benchmarks/bench_lowbit.py --decode

--gemv: one Linear layer x[1, K] · W[K, N] (batch 1: the decode GEMV) and x[16, K] (a short prefill), compiled by
bitc with 1 / 2 / 3 weight planes and ternary weights (group size 128), beside onnxruntime fp32 and bitc fp32 on
the same float layer, each engine and thread count in its own process (median latency). Shapes: SmolLM2-135M's
(576→576, 576→192, 576→1536, 1536→576) and LLaMA-7B's (4096→4096, 4096→11008).

--quality: all-MiniLM-L6-v2 (cosine of the sentence embeddings to fp32, and whether each sentence's nearest
neighbour among the others stays the same, on real BBC News sentences) and SmolLM2-135M (perplexity on BBC News
and on Python's pydoc topics), for each weight format; every Linear layer but SmolLM2's vocabulary head converted.
Calibration for the activation-aware / GPTQ fits uses other text than the evaluation text.

--decode: SmolLM2-135M decode step (one token, KV cache of fixed length) tokens/s, bitc with 2-plane weights vs
onnxruntime fp32 on the fp32 export.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

import bitc
from bitc.bench import bench_artifact, measure_in_subprocess
from bitc.ops.lowbit_matmul import float_twin
from bitc.passes.lowbit_linear import LowBitLinear

sys.path.append(str(Path(__file__).resolve().parents[1]))  # bitc_zoo: the repository's reference models

console = Console(width=200)

GEMV_SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576), (4096, 4096), (4096, 11008)]
FORMATS = {"1-plane": {"planes": 1}, "2-plane": {"planes": 2}, "3-plane": {"planes": 3}, "ternary": {"ternary": True}}


def _linear_model(path: Path, rows: int, k: int, n: int) -> Path:
    w = (np.random.default_rng(k * n).standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="linear")],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])],
        [numpy_helper.from_array(w, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _lowbit_model(source: Path, path: Path, options: dict) -> Path:
    model = ir.load(source)
    LowBitLinear(**options, group_size=128, keep_last=False, measure_error=False)(model)
    ir.save(model, path)
    return path


def gemv(threads: list[int], runs: int, batches: list[int], target: str = "cpu") -> None:
    title = f"Linear layer latency (median ms) and speed-up vs onnxruntime fp32, bitc --target {target}"
    table = Table(title=title, show_lines=False)
    for column in [
        "rows",
        "K→N",
        "threads",
        "onnxruntime fp32",
        "bitc fp32",
        *FORMATS,
        *(f"{f} ×ORT" for f in FORMATS),
    ]:
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for rows in batches:
            for k, n in GEMV_SHAPES:
                float_onnx = _linear_model(folder / f"linear_{rows}_{k}_{n}.onnx", rows, k, n)
                float_artifact = folder / f"linear_{rows}_{k}_{n}.bitc"
                bitc.compile(float_onnx, float_artifact, target=target)
                artifacts = {}
                for name, options in FORMATS.items():
                    lowbit = _lowbit_model(float_onnx, folder / f"{name}_{rows}_{k}_{n}.onnx", options)
                    artifacts[name] = folder / f"{name}_{rows}_{k}_{n}.bitc"
                    bitc.compile(lowbit, artifacts[name], passes=[], target=target)
                for count in threads:
                    ort = bench_artifact(str(float_artifact), threads=[count], runs=runs, onnx_path=str(float_onnx))[0]
                    ort_ms, fp32_ms = ort["onnxruntime"]["median_ms"], ort["bitc"]["median_ms"]
                    ms = {
                        name: measure_in_subprocess("bitc", str(path), str(path), count, runs, 20)["median_ms"]
                        for name, path in artifacts.items()
                    }
                    table.add_row(
                        str(rows), f"{k}→{n}", str(count), f"{ort_ms:.3f}", f"{fp32_ms:.3f}",
                        *(f"{ms[name]:.3f}" for name in FORMATS), *(f"{ort_ms / ms[name]:.1f}×" for name in FORMATS),
                    )  # fmt: skip
    console.print(table)


QUALITY_FORMATS: dict[str, dict | None] = {
    "fp32": None,
    "1-plane": {"planes": 1},
    "1-plane + 10% salient": {"planes": 1, "salient": 0.1},
    "ternary": {"ternary": True},
    "2-plane": {"planes": 2},
    "2-plane + 5% salient": {"planes": 2, "salient": 0.05},
    "3-plane": {"planes": 3},
    "3-plane + 5% salient": {"planes": 3, "salient": 0.05},
    "4-plane": {"planes": 4},
}
MINILM_SEQ = 64


def _convert(source: Path, options: dict, calibration: dict, keep_last: bool) -> tuple[ir.Model, dict]:
    model = ir.load(source)
    lowbit = LowBitLinear(**options, calibration=calibration, keep_last=keep_last, measure_error=False)
    lowbit(model)
    return model, lowbit.report.to_json()


def _minilm(folder: Path, batch: int) -> Path:
    import torch

    from bitc_zoo import real
    from bitc_zoo.export import export_onnx

    tokens = real.minilm_tokenize(real.SAMPLE_SENTENCES[:1] * batch, MINILM_SEQ)
    example = (torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"]))
    path = folder / "minilm.onnx"
    export_onnx(real.minilm_encoder(), example, path, input_names=["input_ids", "attention_mask"],
                output_names=["embedding"])  # fmt: skip
    return path


def minilm_quality(folder: Path) -> list[dict]:
    """Cosine to fp32 embeddings and nearest-neighbour agreement on real BBC sentences, compiled by bitc."""
    from bitc_zoo import real, text

    sentences, labels = text.sentences(256)
    evaluation = sentences[:64]
    # calibration: 64 other sequences of three sentences each, so few positions are padding
    calibration_text = [" ".join(sentences[i : i + 3]) for i in range(64, 256, 3)]
    source = _minilm(folder, 64)
    feeds = real.minilm_tokenize(evaluation, MINILM_SEQ)
    calibration = real.minilm_tokenize(calibration_text, MINILM_SEQ)
    rows, reference = [], None
    for name, options in QUALITY_FORMATS.items():
        if options is None:
            model, report = ir.load(source), {"bits_per_weight": 32.0}
        else:
            model, report = _convert(source, options, calibration, keep_last=False)
        ir.save(model, folder / "q.onnx")
        bitc.compile(folder / "q.onnx", folder / "q.bitc", passes=[])
        embeddings = bitc.load(folder / "q.bitc")(**feeds)
        if reference is None:
            reference = embeddings
        cosine = (embeddings * reference).sum(axis=1) / (
            np.linalg.norm(embeddings, axis=1) * np.linalg.norm(reference, axis=1)
        )
        rows.append({
            "model": "all-MiniLM-L6-v2", "format": name, "bits_per_weight": report["bits_per_weight"],
            "cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()),
            "neighbour_agreement": _neighbour_agreement(embeddings, reference),
            "topic_accuracy": _topic_accuracy(embeddings, labels[:64]),
        })  # fmt: skip
        console.print(rows[-1])
    return rows


SMOLLM_WINDOW = 256


def _smollm_tokens() -> dict[str, np.ndarray]:
    """Evaluation text (BBC News, pydoc topics) and calibration text (other BBC articles), as token ids."""
    from bitc_zoo import smollm2, text

    articles = text.bbc_articles()
    calibration = smollm2.encode("\n\n".join(article for _, article in articles[-64:]))
    return {
        "bbc": smollm2.bbc_tokens(8 * SMOLLM_WINDOW),
        "pydoc": smollm2.encode(text.pydoc_text()[:200_000])[: 8 * SMOLLM_WINDOW],
        "calibration": calibration[: 8 * SMOLLM_WINDOW].reshape(8, SMOLLM_WINDOW),
    }


def smollm_quality(folder: Path, compiled_check: str = "2-plane") -> list[dict]:
    """Perplexity of SmolLM2-135M with low-bit Linear weights (the vocabulary head stays float), onnxruntime on
    the dequantized graph; the `compiled_check` format also runs compiled by bitc on the first windows."""
    import onnxruntime as ort

    from bitc.frontend.decoder_export import export_logits_onnx
    from bitc_zoo import text

    source = export_logits_onnx(folder / "smollm2.onnx", SMOLLM_WINDOW).path
    tokens = _smollm_tokens()
    rows = []
    for name, options in QUALITY_FORMATS.items():
        start = time.perf_counter()
        if options is None:
            model, report = ir.load(source), {"bits_per_weight": 32.0}
        else:
            model, report = _convert(source, options, {"input_ids": tokens["calibration"]}, keep_last=True)
        fit_seconds = time.perf_counter() - start
        session = ort.InferenceSession(float_twin(model).SerializeToString(), providers=["CPUExecutionProvider"])
        logits_fn = lambda ids, s=session: s.run(None, {"input_ids": ids})[0]  # noqa: E731
        row = {"model": "SmolLM2-135M", "format": name, "bits_per_weight": report["bits_per_weight"]}
        for corpus in ("bbc", "pydoc"):
            row[f"ppl_{corpus}"] = text.perplexity(logits_fn, tokens[corpus], SMOLLM_WINDOW)
        row["fit_s"] = round(fit_seconds, 1)
        if name == compiled_check:
            row |= _compiled_smollm(folder, model, logits_fn, tokens["bbc"][: 2 * SMOLLM_WINDOW])
        rows.append(row)
        console.print(row)
        del session
    return rows


def _compiled_smollm(folder: Path, model: ir.Model, reference_fn, ids: np.ndarray) -> dict:
    """bitc's compiled low-bit model vs onnxruntime on its dequantized twin: logits and perplexity agree."""
    from bitc_zoo import text

    ir.save(model, folder / "smollm2_lowbit.onnx")
    start = time.perf_counter()
    bitc.compile(folder / "smollm2_lowbit.onnx", folder / "smollm2_lowbit.bitc", passes=[])
    compile_seconds = time.perf_counter() - start
    compiled = bitc.load(folder / "smollm2_lowbit.bitc")
    compiled_fn = lambda ids: compiled(input_ids=ids)  # noqa: E731
    window = ids[:SMOLLM_WINDOW][None]
    expected, got = reference_fn(window), compiled_fn(window)
    return {
        "compiled_max_logit_diff": float(np.abs(got - expected).max()),
        "compiled_ppl_2_windows": text.perplexity(compiled_fn, ids, SMOLLM_WINDOW),
        "reference_ppl_2_windows": text.perplexity(reference_fn, ids, SMOLLM_WINDOW),
        "compile_s": round(compile_seconds, 1),
    }


DECODE_CONTEXT = 512


def decode(threads: list[int], runs: int) -> None:
    """Tokens/s of one SmolLM2 decode step (KV cache of DECODE_CONTEXT slots): onnxruntime fp32 vs bitc fp32 vs
    bitc with 2-plane Linear weights (vocabulary head float, and also 2-plane). Weights fitted without
    calibration here: speed does not depend on the fit."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = bitc.export_decoder_onnx(folder / "decoder.onnx", DECODE_CONTEXT).path
        variants = {"bitc fp32": None, "bitc 2-plane": {"keep_last": True}, "bitc 2-plane + head": {"keep_last": False}}
        artifacts = {}
        for name, options in variants.items():
            path = source
            if options is not None:
                model = ir.load(source)
                LowBitLinear(planes=2, measure_error=False, **options)(model)
                path = folder / f"{name.replace(' ', '_')}.onnx"
                ir.save(model, path)
            artifacts[name] = folder / f"{name.replace(' ', '_')}.bitc"
            start = time.perf_counter()
            result = bitc.compile(path, artifacts[name], passes=[] if options is not None else None)
            size, fp32_size = artifacts[name].stat().st_size / 2**20, source.stat().st_size / 2**20
            seconds = time.perf_counter() - start
            console.print(f"{name}: compiled in {seconds:.0f} s, {size:.0f} MiB (fp32 ONNX {fp32_size:.0f} MiB)")
            del result
        table = Table(title=f"SmolLM2-135M decode step, KV cache {DECODE_CONTEXT} (tokens/s; median of {runs})")
        for column in ["threads", "onnxruntime fp32", *variants, *(f"{v} ×ORT" for v in variants if v != "bitc fp32")]:
            table.add_column(column, justify="right")
        for count in threads:
            ort = bench_artifact(str(artifacts["bitc fp32"]), threads=[count], runs=runs, onnx_path=str(source))[0]
            rate = {
                "onnxruntime fp32": 1000 / ort["onnxruntime"]["median_ms"],
                "bitc fp32": 1000 / ort["bitc"]["median_ms"],
            }
            for name in variants:
                if name != "bitc fp32":
                    ms = measure_in_subprocess("bitc", str(artifacts[name]), str(artifacts[name]), count, runs, 5)
                    rate[name] = 1000 / ms["median_ms"]
            ratios = [f"{rate[v] / rate['onnxruntime fp32']:.2f}×" for v in variants if v != "bitc fp32"]
            table.add_row(str(count), *(f"{rate[k]:.1f}" for k in ["onnxruntime fp32", *variants]), *ratios)
        console.print(table)


def _nearest(embeddings: np.ndarray) -> np.ndarray:
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(axis=1)


def _neighbour_agreement(embeddings: np.ndarray, reference: np.ndarray) -> float:
    """Share of sentences whose most similar other sentence is the same as with fp32 embeddings."""
    return float((_nearest(embeddings) == _nearest(reference)).mean())


def _topic_accuracy(embeddings: np.ndarray, labels: list[str]) -> float:
    """Share of sentences whose nearest neighbour has the same BBC category (retrieval quality itself)."""
    labels_array = np.array(labels)
    return float((labels_array[_nearest(embeddings)] == labels_array).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gemv", action="store_true")
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--decode", action="store_true")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--target", default="cpu", help="bitc target for --gemv (e.g. cpu:x86-64-v3 for AVX2)")
    parser.add_argument("--plot", default=None, help="write the size/quality curve here (PNG)")
    parser.add_argument("--models", default="minilm,smollm2")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    if args.gemv:
        gemv(threads, args.runs, [int(b) for b in args.batches.split(",")], args.target)
    if args.decode:
        decode(threads, min(args.runs, 30))
    if args.quality:
        with tempfile.TemporaryDirectory() as tmp:
            rows = minilm_quality(Path(tmp)) if "minilm" in args.models else []
            rows += smollm_quality(Path(tmp)) if "smollm2" in args.models else []
        _quality_table(rows)
        if args.plot:
            _plot(rows, Path(args.plot))


def _plot(rows: list[dict], path: Path) -> None:
    """Size/quality curve: bits per weight against the quality measure of each model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("all-MiniLM-L6-v2", "cosine_mean", "cosine to fp32 embedding"),
              ("SmolLM2-135M", "ppl_bbc", "perplexity, BBC News (lower is better)")]  # fmt: skip
    panels = [p for p in panels if any(r["model"] == p[0] for r in rows)]
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for axis, (model, key, label) in zip(axes[0], panels, strict=True):
        points = [r for r in rows if r["model"] == model and r["format"] != "fp32"]
        reference = next(r[key] for r in rows if r["model"] == model and r["format"] == "fp32")
        axis.scatter([r["bits_per_weight"] for r in points], [r[key] for r in points])
        for r in points:
            axis.annotate(r["format"], (r["bits_per_weight"], r[key]), fontsize=8, xytext=(4, 2),
                          textcoords="offset points")  # fmt: skip
        axis.axhline(reference, linestyle="--", color="gray", label=f"fp32 ({reference:.3g})")
        axis.set(xlabel="bits per Linear weight (planes + scales + float salient columns)", ylabel=label, title=model)
        if key.startswith("ppl"):
            axis.set_yscale("log")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    console.print(f"wrote {path}")


def _quality_table(rows: list[dict]) -> None:
    table = Table(title="Quality of low-bit Linear weights (real weights, real text)")
    columns = sorted({key for row in rows for key in row}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns))
    console.print(table)


if __name__ == "__main__":
    main()
