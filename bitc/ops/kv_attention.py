"""KVAttention: one decode step's attention over a compressed KV cache (the `kv_compress` pass makes it).

The cache is not an input that comes back as an output: the runtime owns it (`bitc.runtime.kv_cache`), the op
only reads it, and the step's new key and value leave the graph as small outputs that the runtime appends. So a
decode step never copies the cache, and the attention reads its low-bit codes directly instead of a float copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from bitc.ops.base import BitcOp
from bitc.runtime.kv_cache import STATE_NAMES, KVCacheLayout, dequantized_cache

FIXED_INPUTS = ("query", "key", "value")
COS_SIN = ("rope_cos", "rope_sin")


class KVAttention(BitcOp):
    """query [1, kv_heads, groups·S, D] (rows: each query head of a key/value head, then each of the step's S
    tokens), the step's keys and values [1, kv_heads, S, D], then the cache state inputs (`kv_cache.STATE_NAMES`,
    stacked over layers), and with `pre_rope` the rotary tables [positions, D] → softmax(scale · q·Kᵀ) · V
    [1, kv_heads, groups·S, D]: token s attends to the cached tokens and the step's tokens 0..s (causal). S is 1
    for a decode step and a chunk of the prompt for prefill. The layout attributes are `KVCacheLayout`'s fields."""

    name = "KVAttention"
    inputs = (*FIXED_INPUTS, *STATE_NAMES, *(f"{name}?" for name in COS_SIN))
    targets = ("llvm",)
    attributes: ClassVar[dict[str, Any]] = {
        "layer": 0,
        "scale": 1.0,
        "max_context": 0,
        "key_bits": 2,
        "value_bits": 2,
        "key_group": 32,
        "value_group": 0,
        "residual": 128,
        "pre_rope": 0,
    }

    @classmethod
    def output_types(cls, input_shapes: Sequence[tuple[int, ...]], **attrs: Any) -> list[tuple[ir.DataType, tuple]]:
        expected = len(FIXED_INPUTS) + len(STATE_NAMES) + (len(COS_SIN) if attrs["pre_rope"] else 0)
        if len(input_shapes) != expected:
            raise ValueError(f"needs {expected} inputs, got {len(input_shapes)}")
        query, key, value = input_shapes[:3]
        tokens = key[2] if len(key) == 4 else 0
        if (
            len(query) != 4
            or query[0] != 1
            or tokens < 1
            or query[2] % tokens
            or key != (1, query[1], tokens, query[3])
            or value != key
        ):
            raise ValueError(
                f"query {list(query)}, key {list(key)}, value {list(value)}: want [1, H, G·S, D], [1, H, S, D] twice"
            )
        layers = input_shapes[len(FIXED_INPUTS)][0]
        layout = layout_of(attrs, layers=layers, kv_heads=query[1], head_dim=query[3])
        for name, shape in zip(STATE_NAMES, input_shapes[len(FIXED_INPUTS) :], strict=False):
            want = layout.state_specs()[name][0]
            if tuple(shape) != want:
                raise ValueError(f"cache input {name} has shape {list(shape)}, the layout wants {list(want)}")
        if not 0 <= int(attrs["layer"]) < layers:
            raise ValueError(f"layer {attrs['layer']} is outside the cache's {layers} layers")
        return [(ir.DataType.FLOAT, tuple(query))]

    @staticmethod
    def reference(query: np.ndarray, key: np.ndarray, value: np.ndarray, *rest: np.ndarray, **attrs: Any):
        state = dict(zip(STATE_NAMES, rest, strict=False))
        layers, heads, head_dim = state["kv_window_keys"].shape[0], query.shape[1], query.shape[3]
        layout = layout_of(attrs, layers=layers, kv_heads=heads, head_dim=head_dim)
        keys, values = dequantized_cache(layout, state, int(attrs["layer"]))
        cached, tokens = keys.shape[1], key.shape[2]
        keys = np.concatenate([keys, key[0]], axis=1)  # [H, cached + S, D]
        values = np.concatenate([values, value[0]], axis=1)
        if layout.pre_rope:
            cos, sin = rest[len(STATE_NAMES) :]
            keys = rotate(keys, cos[: keys.shape[1]], sin[: keys.shape[1]])
        scores = np.einsum("hrd,htd->hrt", query[0].astype(np.float32), keys) * np.float32(attrs["scale"])
        step = np.arange(query.shape[2]) % tokens  # row g·S + s is token s
        scores = np.where(np.arange(keys.shape[1])[None, :] <= cached + step[:, None], scores, -np.inf)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        return (np.einsum("hrt,htd->hrd", probs, values)[None].astype(np.float32),)


def rotate(keys: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """RoPE in the rotate-half convention: keys [..., T, D], cos/sin [T, D] (token t at position t)."""
    half = keys.shape[-1] // 2
    rotated = np.concatenate([-keys[..., half:], keys[..., :half]], axis=-1)
    return keys * cos + rotated * sin


def layout_of(attrs: dict[str, Any], *, layers: int, kv_heads: int, head_dim: int) -> KVCacheLayout:
    """The cache layout a KVAttention node's attributes and shapes describe."""
    return KVCacheLayout(
        layers=layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
        max_context=int(attrs["max_context"]),
        key_bits=int(attrs["key_bits"]),
        value_bits=int(attrs["value_bits"]),
        key_group=int(attrs["key_group"]),
        value_group=int(attrs["value_group"]),
        residual=int(attrs["residual"]),
        pre_rope=bool(attrs["pre_rope"]),
    )


def layout_attributes(layout: KVCacheLayout) -> dict[str, int]:
    """The node attributes that carry a layout (the inverse of `layout_of`)."""
    names = ("max_context", "key_bits", "value_bits", "key_group", "value_group", "residual")
    return {name: int(getattr(layout, name)) for name in names} | {"pre_rope": int(layout.pre_rope)}
