"""The compressed KV cache: its layout, its quantizers and the state a decoder session keeps between steps.

One definition shared by the compiler (the `kv_compress` pass writes a `KVCacheLayout` into the model), the
`KVAttention` op's numpy reference (which dequantizes with these functions) and the runtime (which quantizes with
them). Numpy only: the runtime must not import the compiler.

KIVI's scheme: keys are quantized per channel over groups of `key_group` tokens (outlier channels keep their own
range), values per token over groups of `value_group` channels; asymmetric codes of `bits` bits with float16 scale
and zero (x ≈ scale · code + zero). The newest tokens wait in a float32 window; whenever the window holds
`residual + key_group` tokens, its oldest `key_group` are quantized and leave it, so the newest `residual` tokens
are always exact. Key codes are packed along tokens (a uint32 word holds 32/bits tokens of one channel: the
attention kernel computes 32/bits scores per word without a horizontal sum); value codes along channels (a word
holds 32/bits channels of one token: the weighted sum of values runs along channels).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass
from typing import Any

import numpy as np

WORD_BITS = 32
SUPPORTED_BITS = (1, 2, 4, 8)
METADATA_KEY = "bitc.kv_cache"
FLOAT_BITS = 32

MAX_STATE_BYTES = 2**36  # a manifest's layout whose cache state is larger than this is refused

# State inputs of a compressed decoder, in graph order after its token and position inputs.
STATE_NAMES = (
    "kv_key_codes",
    "kv_key_scales",
    "kv_key_zeros",
    "kv_value_codes",
    "kv_value_scales",
    "kv_value_zeros",
    "kv_window_keys",
    "kv_window_values",
    "kv_lengths",
)


@dataclass(frozen=True)
class KVCacheLayout:
    """Everything the pass, the kernels and the runtime agree on. `max_context` counts every token a session can
    hold (prompt and generated); the window has room for `residual + key_group` tokens."""

    layers: int
    kv_heads: int
    head_dim: int
    max_context: int
    key_bits: int
    value_bits: int
    key_group: int = 32
    value_group: int = 0  # 0: one group per token (all head_dim channels)
    residual: int = 128
    pre_rope: bool = False
    input_ids: str = "input_ids"
    position: str = "position"
    logits: str = "logits"
    logits_row: str = ""  # an input choosing the one row of a step's S tokens whose logits it returns ("": none)
    position_ids: bool = False  # the position input holds every step token's position [1, S], not the first [1]
    new_keys: str = "new_keys"
    new_values: str = "new_values"

    def __post_init__(self) -> None:
        for name in ("key_bits", "value_bits"):
            if getattr(self, name) not in SUPPORTED_BITS:
                raise ValueError(f"{name} must be one of {SUPPORTED_BITS}, got {getattr(self, name)}")
        per_word = WORD_BITS // self.key_bits
        if self.key_group <= 0 or self.key_group % per_word:
            raise ValueError(
                f"key_group must be a positive multiple of {per_word} tokens (a word of {self.key_bits}-bit codes), "
                f"got {self.key_group}"
            )
        step = max(16, WORD_BITS // self.value_bits)  # a word's channels, and a kernel vector, in one group
        if self.value_group < 0 or (self.value_group and (self.head_dim % self.value_group or self.value_group % step)):
            raise ValueError(
                f"value_group must be 0 or a multiple of {step} dividing head_dim {self.head_dim}, "
                f"got {self.value_group}"
            )
        if self.head_dim % 16:
            raise ValueError(f"head_dim must be a multiple of 16, got {self.head_dim}")
        if self.residual < 0:
            raise ValueError(f"residual must be >= 0, got {self.residual}")
        if self.max_context < 1:
            raise ValueError(f"max_context must be >= 1, got {self.max_context}")

    # -------------------------------------------------------------------------------------------- geometry

    @property
    def window(self) -> int:
        """Slots of the float window: it flushes when full, so it never holds more than this after a step."""
        return self.residual + self.key_group

    @property
    def window_slots(self) -> int:
        """The window's allocated slots: `window` rounded up to 16, so kernels read it in whole vectors."""
        return -(-self.window // 16) * 16

    @property
    def quantized_capacity(self) -> int:
        """Token slots of the quantized store (a whole number of key groups, at least one)."""
        groups = -(-max(self.max_context - self.residual, 0) // self.key_group)
        return max(groups, 1) * self.key_group

    @property
    def value_groups(self) -> int:
        return 1 if self.value_group == 0 else self.head_dim // self.value_group

    @property
    def value_words(self) -> int:
        return -(-self.head_dim * self.value_bits // WORD_BITS)

    @property
    def quantizes(self) -> bool:
        """Whether any token ever leaves the float window (a float cache is a window as long as the context)."""
        return self.split(self.max_context - 1)[0] > 0

    def state_specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Shape and dtype of each state input, by name."""
        heads, d, tq, w = self.layers, self.head_dim, self.quantized_capacity, self.window_slots
        lh = (heads, self.kv_heads)
        return {
            "kv_key_codes": ((*lh, tq * self.key_bits // WORD_BITS, d), "uint32"),
            "kv_key_scales": ((*lh, tq // self.key_group, d), "float16"),
            "kv_key_zeros": ((*lh, tq // self.key_group, d), "float16"),
            "kv_value_codes": ((*lh, tq, self.value_words), "uint32"),
            "kv_value_scales": ((*lh, tq, self.value_groups), "float16"),
            "kv_value_zeros": ((*lh, tq, self.value_groups), "float16"),
            "kv_window_keys": ((*lh, d, w), "float32"),  # channel-major: the kernel reads tokens as vector lanes
            "kv_window_values": ((*lh, w, d), "float32"),
            "kv_lengths": ((2,), "int64"),
        }

    def split(self, tokens: int) -> tuple[int, int]:
        """(quantized, window) token counts when `tokens` are cached."""
        quantized = self.key_group * (max(tokens - self.residual, 0) // self.key_group)
        return quantized, tokens - quantized

    def cache_bytes(self, tokens: int) -> int:
        """Bytes that hold `tokens` cached tokens: codes, scales and zeros of the quantized ones (whole words
        and groups), the window's float32 slots in use."""
        quantized, window = self.split(tokens)
        per_head = (
            quantized * self.key_bits // WORD_BITS * self.head_dim * 4  # key codes
            + quantized // self.key_group * self.head_dim * 2 * 2  # key scales + zeros, float16
            + quantized * self.value_words * 4
            + quantized * self.value_groups * 2 * 2
            + window * self.head_dim * 4 * 2  # window keys + values
        )
        return per_head * self.layers * self.kv_heads

    def float_cache_bytes(self, tokens: int) -> int:
        """Bytes of the same tokens in a float32 cache (keys and values)."""
        return tokens * self.head_dim * 4 * 2 * self.layers * self.kv_heads

    # ------------------------------------------------------------------------------------------------ json

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KVCacheLayout:
        """A layout read from a manifest: every field of its own type (TypeError otherwise), every count positive,
        and a cache state small enough to allocate (ValueError otherwise), so a forged one fails here."""
        if not isinstance(data, Mapping):
            raise TypeError(f"the KV cache layout is an object, got {type(data).__name__}")
        fields = {key: value for key, value in data.items() if key in cls.__dataclass_fields__}
        for key, value in fields.items():
            default = cls.__dataclass_fields__[key].default  # fields without a default are counts
            kind = int if default is MISSING else type(default)
            if type(value) is not kind:
                raise TypeError(f"KV cache '{key}' must be {kind.__name__}, got {type(value).__name__}")
        for key in ("layers", "kv_heads", "head_dim"):
            if fields.get(key, 1) < 1:
                raise ValueError(f"KV cache '{key}' must be >= 1, got {fields[key]}")
        layout = cls(**fields)
        state = sum(math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in layout.state_specs().values())
        if state > MAX_STATE_BYTES:
            raise ValueError(f"its state would take {state:,} bytes (more than {MAX_STATE_BYTES // 2**30} GiB)")
        return layout

    def to_metadata(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


# ---------------------------------------------------------------------------------------------------- codes


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes (uint, < 2**bits) [..., n] with n a multiple of 32/bits → uint32 words [..., n·bits/32], the
    first code in the lowest bits."""
    per_word = WORD_BITS // bits
    grouped = codes.astype(np.uint32).reshape(*codes.shape[:-1], -1, per_word)
    shifts = (np.arange(per_word, dtype=np.uint32) * bits).astype(np.uint32)
    return np.bitwise_or.reduce(grouped << shifts, axis=-1).astype(np.uint32)


def _unpack(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """uint32 words [..., w] → the first `count` codes [..., count] (float32)."""
    per_word = WORD_BITS // bits
    shifts = (np.arange(per_word, dtype=np.uint32) * bits).astype(np.uint32)
    codes = (words[..., None] >> shifts) & np.uint32((1 << bits) - 1)
    return codes.reshape(*words.shape[:-1], words.shape[-1] * per_word)[..., :count].astype(np.float32)


def _scale_zero(low: np.ndarray, high: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """float16 scale and zero of an asymmetric range; a flat range gets scale 0 (every code decodes to zero)."""
    finfo = np.finfo(np.float16)
    zero = np.clip(low, finfo.min, finfo.max).astype(np.float16)
    scale = np.clip((high - zero.astype(np.float32)) / ((1 << bits) - 1), 0, finfo.max).astype(np.float16)
    return scale, zero


def _codes(x: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int) -> np.ndarray:
    """Nearest codes of x for the stored (float16) scale and zero."""
    s, z = scale.astype(np.float32), zero.astype(np.float32)
    safe = np.where(s > 0, s, 1.0)
    return np.clip(np.rint((x - z) / safe), 0, (1 << bits) - 1).astype(np.uint32)


def quantize_keys(keys: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One key group per channel: keys [..., G, D] float → codes [..., G·bits/32, D] uint32 (packed along
    tokens), scales and zeros [..., D] float16."""
    keys = keys.astype(np.float32)
    scale, zero = _scale_zero(keys.min(axis=-2), keys.max(axis=-2), bits)
    codes = _codes(keys, scale[..., None, :], zero[..., None, :], bits)
    return np.ascontiguousarray(_pack(np.swapaxes(codes, -1, -2), bits).swapaxes(-1, -2)), scale, zero


def dequantize_keys(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, bits: int, group: int) -> np.ndarray:
    """codes [..., T·bits/32, D], scales/zeros [..., T/G, D] → keys [..., T, D] float32."""
    tokens = codes.shape[-2] * WORD_BITS // bits
    values = np.swapaxes(_unpack(np.swapaxes(codes, -1, -2), bits, tokens), -1, -2)
    s = np.repeat(scales.astype(np.float32), group, axis=-2)
    z = np.repeat(zeros.astype(np.float32), group, axis=-2)
    return values * s + z


def quantize_values(values: np.ndarray, bits: int, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per token: values [..., T, D] float → codes [..., T, ⌈D·bits/32⌉] uint32 (packed along channels), scales
    and zeros [..., T, D/group] float16 (group 0: the whole row)."""
    values = values.astype(np.float32)
    d = values.shape[-1]
    size = group or d
    grouped = values.reshape(*values.shape[:-1], d // size, size)
    scale, zero = _scale_zero(grouped.min(axis=-1), grouped.max(axis=-1), bits)
    codes = _codes(grouped, scale[..., None], zero[..., None], bits).reshape(values.shape)
    padded = -(-d * bits // WORD_BITS) * WORD_BITS // bits
    codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], padded - d), np.uint32)], axis=-1)
    return _pack(codes, bits), scale, zero


def dequantize_values(
    codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, bits: int, group: int, head_dim: int
) -> np.ndarray:
    """codes [..., T, words], scales/zeros [..., T, D/group] → values [..., T, D] float32."""
    size = group or head_dim
    values = _unpack(codes, bits, head_dim)
    s = np.repeat(scales.astype(np.float32), size, axis=-1)
    z = np.repeat(zeros.astype(np.float32), size, axis=-1)
    return values * s + z


# ---------------------------------------------------------------------------------------------------- state


class KVCacheState:
    """The cache arrays of one sequence, updated in place (the compiled model reads them without copies)."""

    def __init__(self, layout: KVCacheLayout, allocate: Any = np.zeros):
        self.layout = layout
        self.arrays = {name: allocate(shape, np.dtype(dtype)) for name, (shape, dtype) in layout.state_specs().items()}
        self.tokens = 0

    @property
    def quantized(self) -> int:
        return int(self.arrays["kv_lengths"][0])

    @property
    def windowed(self) -> int:
        return int(self.arrays["kv_lengths"][1])

    def reset(self) -> None:
        """Forget every token (the arrays keep their memory; stale slots are never read)."""
        self.arrays["kv_lengths"][:] = 0
        self.tokens = 0

    def append(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Add one token's keys and values [layers, kv_heads, D]; quantize the window's oldest group when full."""
        layout, arrays = self.layout, self.arrays
        if self.tokens >= layout.max_context:
            raise ValueError(f"the KV cache is full ({layout.max_context} tokens)")
        slot = self.windowed
        arrays["kv_window_keys"][:, :, :, slot] = keys
        arrays["kv_window_values"][:, :, slot, :] = values
        self.tokens += 1
        arrays["kv_lengths"][1] = slot + 1
        if slot + 1 == layout.window:
            self._flush()

    def _flush(self) -> None:
        layout, arrays = self.layout, self.arrays
        group, start = layout.key_group, self.quantized
        keys = np.swapaxes(arrays["kv_window_keys"][:, :, :, :group], -1, -2)
        values = arrays["kv_window_values"][:, :, :group, :]
        codes, scales, zeros = quantize_keys(keys, layout.key_bits)
        first_row = start * layout.key_bits // WORD_BITS
        arrays["kv_key_codes"][:, :, first_row : first_row + codes.shape[2]] = codes
        arrays["kv_key_scales"][:, :, start // group] = scales
        arrays["kv_key_zeros"][:, :, start // group] = zeros
        codes, scales, zeros = quantize_values(values, layout.value_bits, layout.value_group)
        arrays["kv_value_codes"][:, :, start : start + group] = codes
        arrays["kv_value_scales"][:, :, start : start + group] = scales
        arrays["kv_value_zeros"][:, :, start : start + group] = zeros
        keep = layout.window - group
        arrays["kv_window_keys"][..., :keep] = arrays["kv_window_keys"][..., group : layout.window].copy()
        arrays["kv_window_values"][:, :, :keep] = arrays["kv_window_values"][:, :, group : layout.window].copy()
        arrays["kv_lengths"][:] = (start + group, keep)

    def dequantized(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values [kv_heads, tokens, D] of one layer as the attention sees them (for tests and the
        op's reference)."""
        return dequantized_cache(self.layout, self.arrays, layer)

    def nbytes_in_use(self) -> int:
        return self.layout.cache_bytes(self.tokens)


def dequantized_cache(
    layout: KVCacheLayout, arrays: Mapping[str, np.ndarray], layer: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keys and values [kv_heads, quantized + window tokens, D] of `layer` from the state arrays."""
    quantized, windowed = (int(n) for n in arrays["kv_lengths"])
    rows = quantized * layout.key_bits // WORD_BITS
    groups = quantized // layout.key_group
    keys = dequantize_keys(
        arrays["kv_key_codes"][layer, :, :rows],
        arrays["kv_key_scales"][layer, :, :groups],
        arrays["kv_key_zeros"][layer, :, :groups],
        layout.key_bits,
        layout.key_group,
    )
    values = dequantize_values(
        arrays["kv_value_codes"][layer, :, :quantized],
        arrays["kv_value_scales"][layer, :, :quantized],
        arrays["kv_value_zeros"][layer, :, :quantized],
        layout.value_bits,
        layout.value_group,
        layout.head_dim,
    )
    window_keys = np.swapaxes(arrays["kv_window_keys"][layer, :, :, :windowed], -1, -2)
    window_values = arrays["kv_window_values"][layer, :, :windowed]
    return np.concatenate([keys, window_keys], axis=1), np.concatenate([values, window_values], axis=1)
