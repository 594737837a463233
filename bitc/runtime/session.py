"""A stateful decoder session: owns the (compressed) KV cache, runs prefill and decode steps, generates tokens.

The compiled step reads the cache state arrays in place (they are handed to the model once, as zero-copy views)
and returns only logits and the step's new keys and values; the session appends those to the cache. A decoder
compiled with prefill chunks (a step over S tokens at once, weights shared with the one-token step) takes the
prompt S tokens per call, each chunk cut where the cache would quantize its window, so every token sees the
cache exactly as the one-token steps would have left it; without them the prompt goes one token at a time.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from bitc.errors import BadInputError, first_line
from bitc.runtime.kv_cache import STATE_NAMES, KVCacheLayout, KVCacheState

StepFunction = Callable[[], Sequence[np.ndarray]]
Binder = Callable[[Mapping[str, np.ndarray]], StepFunction]


class ContextFullError(BadInputError):
    """The session's cache holds `max_context` tokens already."""


class DecoderSession:
    """One sequence's decoding state. Make it with `model.session()`; `step(token)` → logits of the next token,
    `generate(prompt, max_new_tokens)` → the new tokens (greedy, or top-k sampling).

    One sequence, so calls from several threads run one at a time (a lock; a whole `generate` is one call) and the
    cache stays consistent; use one session per thread to decode sequences in parallel."""

    def __init__(
        self,
        layout: KVCacheLayout,
        bind: Binder,
        allocate: Callable[..., np.ndarray] = np.zeros,
        vocab_size: int | None = None,
        chunks: Mapping[int, Binder] | None = None,
    ):
        """`bind(feeds)` gets the step's input arrays once (they are updated in place before every step) and
        returns the function that runs one step on them: (logits, new_keys, new_values, ...). `chunks` maps a
        token count S > 1 to the binder of the S-token prefill step (feeds with input_ids [1, S]). Token ids must
        be in 0..vocab_size-1 (the embedding's rows): the compiled gather does not check them."""
        self.layout = layout
        self.vocab_size = vocab_size
        self._lock = threading.RLock()
        self.cache = KVCacheState(layout, allocate)
        self.input_ids = allocate((1, 1), np.dtype(np.int64))
        # the first token's position [1], or each token's ([1, S]: position_ids of Hugging Face exports)
        self.position = allocate((1, 1) if layout.position_ids else (1,), np.dtype(np.int64))
        self.logits_row = allocate((1,), np.dtype(np.int64))  # which of a step's tokens to return logits for
        self._run = bind(self.feeds())
        self._chunks: dict[int, tuple[np.ndarray, np.ndarray, StepFunction]] = {}
        for tokens, bind_chunk in sorted((chunks or {}).items()):
            ids = allocate((1, tokens), np.dtype(np.int64))
            positions = allocate((1, tokens), np.dtype(np.int64)) if layout.position_ids else self.position
            feeds = self.feeds() | {layout.input_ids: ids, layout.position: positions}
            self._chunks[tokens] = (ids, positions, bind_chunk(feeds))
        self._pending: int | None = None
        self._logits: np.ndarray | None = None

    @property
    def tokens(self) -> int:
        """Tokens cached so far (prompt and generated)."""
        return self.cache.tokens

    @property
    def max_context(self) -> int:
        return self.layout.max_context

    def reset(self) -> None:
        """Start a new sequence (the cache memory is reused)."""
        with self._lock:
            self.cache.reset()
            self._pending = self._logits = None

    def _token(self, value: Any) -> int:
        """`value` as a token id, refused before it reaches native code unless it is an integer id in the
        vocabulary (an id past it would read outside the embedding table)."""
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise BadInputError(f"a token id must be an integer, got {type(value).__name__} {str(value)[:40]!r}")
        token = int(value.__index__())
        limit = self.vocab_size if self.vocab_size is not None else 2**63
        if not 0 <= token < limit:
            raise BadInputError(f"token id {token} is outside the vocabulary 0..{limit - 1}")
        return token

    def feeds(self) -> dict[str, np.ndarray]:
        """The step's inputs by name (the cache arrays themselves, not copies)."""
        names = {self.layout.input_ids: self.input_ids, self.layout.position: self.position}
        if self.layout.logits_row:
            names[self.layout.logits_row] = self.logits_row
        return names | {name: self.cache.arrays[name] for name in STATE_NAMES}

    def step(self, token: int) -> np.ndarray:
        """Feed one token; returns the next-token logits [vocab] (float32, a fresh array)."""
        token = self._token(token)
        with self._lock:
            return self._step(token)

    def _step(self, token: int) -> np.ndarray:
        if self.cache.tokens >= self.layout.max_context:
            raise ContextFullError(
                f"context is full: the model was compiled for at most {self.layout.max_context} tokens "
                "(compile the decoder with a longer cache, or reset() the session)"
            )
        self.input_ids[0, 0] = token
        self.position.reshape(-1)[0] = self.cache.tokens
        self.logits_row[0] = 0
        logits, keys, values = self._run()[:3]
        result = np.array(logits, dtype=np.float32).reshape(-1)
        self.cache.append(np.asarray(keys)[:, 0, :, 0, :], np.asarray(values)[:, 0, :, 0, :])
        self._logits = result
        return result

    @property
    def prefill_chunk(self) -> int:
        """Prompt tokens one prefill call takes at most (1: the decoder has no prefill step)."""
        return max(self._chunks, default=1)

    def prefill(self, token_ids: Iterable[int]) -> np.ndarray:
        """Feed a prompt; returns the logits after its last token."""
        ids = self._tokens(token_ids)
        if not ids:
            raise BadInputError("prefill needs at least one token")
        with self._lock:
            self._check_room(len(ids))
            logits = None
            done = 0
            while done < len(ids):
                count = min(len(ids) - done, self.prefill_chunk, self._room_before_quantizing())
                if count > 1:
                    logits = self._chunk(ids[done : done + count])
                else:
                    logits = self._step(ids[done])
                    count = 1
                done += count
            return logits  # type: ignore[return-value]

    def _room_before_quantizing(self) -> int:
        """Tokens that can join the cache before its window is next quantized (the one-token steps quantize it
        right after the token that fills it): a chunk never crosses that point."""
        return self.layout.window - self.cache.windowed

    def _chunk(self, token_ids: list[int]) -> np.ndarray:
        """Feed 2..S tokens through the smallest prefill step that takes them (padded after the last; padding
        positions come after every real one, so no real token attends to them, and their keys are dropped)."""
        count = len(token_ids)
        tokens = min(size for size in self._chunks if size >= count)
        if self.cache.tokens + tokens > self.layout.max_context:  # the padding's positions must exist too
            logits = None
            for token in token_ids:
                logits = self._step(token)
            return logits  # type: ignore[return-value]
        ids, positions, run = self._chunks[tokens]
        ids[0, :count] = token_ids
        ids[0, count:] = token_ids[-1]
        if self.layout.position_ids:
            positions[0] = np.arange(self.cache.tokens, self.cache.tokens + tokens)
        else:
            positions[0] = self.cache.tokens
        self.logits_row[0] = count - 1
        logits, keys, values = run()[:3]
        logits = np.asarray(logits)[0]  # [1, V] for the row asked for, or [S, V] without a row input
        result = np.array(logits[-1 if self.layout.logits_row else count - 1], dtype=np.float32)
        keys, values = np.asarray(keys), np.asarray(values)
        for index in range(count):
            self.cache.append(keys[:, 0, :, index, :], values[:, 0, :, index, :])
        self._logits = result
        return result

    def _tokens(self, token_ids: Any) -> list[int]:
        if isinstance(token_ids, (str, bytes)) or not isinstance(token_ids, Iterable):
            raise BadInputError(f"token ids must be a sequence of integers, got {type(token_ids).__name__}")
        return [self._token(t) for t in token_ids]

    def generate(
        self,
        prompt_ids: Iterable[int],
        max_new_tokens: int,
        *,
        top_k: int | None = None,
        temperature: float = 1.0,
        seed: int | None = None,
        stop_ids: Iterable[int] = (),
    ) -> np.ndarray:
        """Continue the session with `prompt_ids` and `max_new_tokens` more: greedy by default, top-k sampling at
        `temperature` with `top_k`. Stops early at a token in `stop_ids`. Returns the new token ids (int64). The
        last one is not fed yet (that would need one more step): the next `generate` feeds it first, so calls
        continue one conversation."""
        new_ids = self._tokens(prompt_ids)
        _check_sampling(max_new_tokens, top_k, temperature)
        with self._lock:
            return self._generate(new_ids, max_new_tokens, top_k, float(temperature), seed, stop_ids)

    def _generate(
        self,
        new_ids: list[int],
        max_new_tokens: int,
        top_k: int | None,
        temperature: float,
        seed: int | None,
        stop_ids: Iterable[int],
    ) -> np.ndarray:
        prompt = ([self._pending] if self._pending is not None else []) + new_ids
        if not prompt and self._logits is None:
            raise BadInputError("generate needs a prompt (at least one token) on a fresh session")
        # the last new token is returned, not fed: max_new_tokens - 1 of them need a slot
        self._check_room(len(prompt) + max(max_new_tokens - 1, 0))
        try:
            rng = np.random.default_rng(seed)
            stops = {int(t) for t in stop_ids}
        except (TypeError, ValueError, OverflowError) as exc:
            raise BadInputError(f"generate: bad seed or stop_ids ({first_line(exc)})") from None
        logits = self.prefill(prompt) if prompt else self._logits
        self._pending = None
        out: list[int] = []
        for index in range(max_new_tokens):
            token = choose(logits, top_k, temperature, rng)
            out.append(token)
            if token in stops or index == max_new_tokens - 1:
                break
            logits = self._step(token)
        self._pending = out[-1] if out else None
        return np.asarray(out, dtype=np.int64)

    def _check_room(self, tokens: int) -> None:
        if self.tokens + tokens > self.layout.max_context:
            raise ContextFullError(
                f"{tokens} more tokens do not fit: {self.tokens} cached, the model holds at most "
                f"{self.layout.max_context} (compile the decoder with a longer cache)"
            )


def _check_sampling(max_new_tokens: Any, top_k: Any, temperature: Any) -> None:
    """Refuse generation settings that would fail (or sample from NaN probabilities) halfway through."""
    if isinstance(max_new_tokens, bool) or not hasattr(max_new_tokens, "__index__") or max_new_tokens < 0:
        raise BadInputError(f"max_new_tokens must be an integer >= 0, got {str(max_new_tokens)[:40]}")
    if top_k is not None and (isinstance(top_k, bool) or not hasattr(top_k, "__index__") or top_k < 1):
        raise BadInputError(f"top_k must be an integer >= 1, got {str(top_k)[:40]}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.number)):
        raise BadInputError(f"temperature must be a number > 0, got {type(temperature).__name__}")
    if not math.isfinite(float(temperature)) or temperature <= 0:
        raise BadInputError(f"temperature must be a finite number > 0, got {temperature}")


def choose(logits: np.ndarray, top_k: int | None, temperature: float, rng: np.random.Generator) -> int:
    """Greedy (top_k None or 1) or a sample from the `top_k` most likely tokens at `temperature`."""
    if top_k is None or top_k == 1:
        return int(np.argmax(logits))
    k = min(top_k, logits.size)
    candidates = np.argpartition(logits, -k)[-k:]
    scaled = logits[candidates].astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max())
    return int(candidates[rng.choice(k, p=probs / probs.sum())])
