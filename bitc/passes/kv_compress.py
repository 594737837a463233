"""kv_compress: a decoder's float KV cache → a compressed cache the runtime owns (KIVI, optionally KVQuant's
pre-RoPE keys), with each layer's attention a `KVAttention` node that reads the low-bit codes.

Two export forms are matched, batch 1, one step over S tokens (1 to decode, a chunk of the prompt to prefill):
- a fixed-length cache (`bitc.export_decoder_onnx`): past_keys / past_values inputs [layers, 1, kv_heads, L, D],
  each layer's slice read by a Gather, the step's keys and values written into it by a Where (S tokens placed by
  a 0/1 MatMul), the updated slices stacked into present outputs; a `position` input [1] (the first token's);
- per-layer caches grown by Concat (Hugging Face / optimum exports): past_key_values.N.key / .value inputs
  [1, kv_heads, past, D], present.N.* outputs, GQA repeats by Unsqueeze → Expand → Reshape, an attention_mask
  input and position_ids [1, S]; the cache holds `max_context` tokens (`--kv-max-context`).
Attention is MatMul(q, Kᵀ) · scale → mask → Softmax → MatMul(·, V). The pass replaces the cache inputs with the
compressed state inputs (`bitc.runtime.kv_cache.STATE_NAMES`) and the present outputs with new_keys / new_values
[layers, 1, kv_heads, S, D]: the step returns only what the runtime appends; token s attends causally to the cache
and the step's tokens up to itself, so the mask input goes. The logits come back for one of the S rows, chosen by
a `logits_row` input (the runtime asks for the last).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from bitc import ops
from bitc.errors import BadInputError, CompileError
from bitc.ir.graph_edit import add_initializer, constant
from bitc.ops.kv_attention import KVAttention, layout_attributes
from bitc.passes.options import configure, option
from bitc.passes.registry import register
from bitc.runtime.kv_cache import METADATA_KEY, STATE_NAMES, SUPPORTED_BITS, KVCacheLayout

LOGITS_ROW = "logits_row"
DEFAULT_MAX_CONTEXT = 2048


@dataclass
class CacheAttention:
    """One layer's attention over the cache, as found in the graph."""

    layer: int
    query: ir.Value
    key: ir.Value  # this step's key [1, H, 1, D], after RoPE
    value: ir.Value
    keys_all: ir.Value  # the Where outputs: cache with the step written
    values_all: ir.Value
    past_keys: ir.Value  # the cache inputs the Where updates read
    past_values: ir.Value
    output: ir.Value  # MatMul(probs, V)
    scale: float
    anchor: ir.Node  # the node the replacement goes before


@dataclass
class LayerCache:
    """One layer's attention over its own past_key_values inputs, grown by Concat (Hugging Face exports)."""

    layer: int
    query: ir.Value  # [1, heads, S, D], after RoPE
    key: ir.Value  # this step's keys [1, kv_heads, S, D], after RoPE
    value: ir.Value
    past_key: ir.Value  # graph inputs [1, kv_heads, past, D]
    past_value: ir.Value
    present_key: ir.Value  # Concat(past, new) (a present output)
    present_value: ir.Value
    output: ir.Value  # MatMul(probs, V) [1, heads, S, D]
    scale: float
    anchor: ir.Node


@dataclass
class KVReport:
    layers: int = 0
    layout: dict[str, Any] = field(default_factory=dict)
    bytes_full: int = 0
    bytes_float: int = 0

    def to_json(self) -> dict[str, Any]:
        ratio = self.bytes_float / self.bytes_full if self.bytes_full else 0.0
        return {
            "attention_layers": self.layers,
            "layout": self.layout,
            "cache_bytes_at_max_context": self.bytes_full,
            "float32_cache_bytes_at_max_context": self.bytes_float,
            "compression": round(ratio, 2),
        }


def kv_bits(text: str) -> int | None:
    """--kv-bits: a supported bit width, or 'float' for an uncompressed runtime-owned cache (None)."""
    if text == "float":
        return None
    if text in ("1", "2", "4", "8"):
        return int(text)
    raise BadInputError(f"--kv-bits must be 1, 2, 4, 8 or float, got '{text}'")


@register("kv_compress", phase="kv", renames_outputs=True)
class KVCompress(ir.passes.InPlacePass):
    """Compress a decoder's KV cache (KIVI keys per channel, values per token, float window); runtime-owned.

    `bits` for keys and values (1, 2, 4 or 8; None keeps a float cache, still runtime-owned and copy-free),
    `key_bits` / `value_bits` override it (1-bit keys with per-channel scale: key_bits=1), `key_group` tokens
    per key scale, `value_group` channels per value scale (0: the whole head), `residual` newest tokens kept
    float, `pre_rope` quantizes keys before the rotary embedding (the kernel rotates them).
    """

    @dataclass(frozen=True)
    class Options:
        bits: int | None = option(
            4,
            "key and value bits: 1, 2, 4 or 8 (KIVI); none keeps a float cache",
            flag="--kv-bits",
            metavar="B|float",
            parse=lambda text: {"bits": kv_bits(text)},
            flag_help="compress a decoder's KV cache to B bits (1, 2, 4, 8; KIVI) or keep it float, "
            "runtime-owned either way",
        )
        key_bits: int | None = option(
            None, "key bits, overriding bits (1: 1-bit keys)", flag="--kv-key-bits", metavar="B"
        )
        value_bits: int | None = option(None, "value bits, overriding bits")
        key_group: int = option(
            32, "tokens per key scale (a multiple of 32/bits; default 32)", flag="--kv-group", metavar="G"
        )
        value_group: int = option(
            0,
            "channels per value scale (0: the head)",
            flag="--kv-value-group",
            metavar="C",
            flag_help="channels per value scale (default: the head)",
        )
        residual: int = option(128, "newest tokens kept in float (default 128)", flag="--kv-residual", metavar="R")
        pre_rope: bool = option(False, "quantize keys before the rotary embedding", flag="--kv-pre-rope", const=True)
        max_context: int = option(
            DEFAULT_MAX_CONTEXT,
            "tokens the cache holds when the export's past length is dynamic (per-layer caches grown by Concat)",
            flag="--kv-max-context",
            metavar="N",
        )

        def __post_init__(self) -> None:
            for name in ("key_bits", "value_bits"):
                value = int(getattr(self, name) or self.bits or 8)
                if value not in SUPPORTED_BITS:
                    raise BadInputError(f"kv_compress: {name} must be one of {SUPPORTED_BITS}, got {value}")

        @staticmethod
        def shorthand(bits: int) -> dict[str, Any]:
            """`bitc.compile(kv_compress=2)`: a bare number is the bit width."""
            return {"bits": int(bits)}

    def __init__(self, **options: Any) -> None:
        super().__init__()
        o = self.options = configure(self, options)
        self.float_cache = o.bits is None and o.key_bits is None and o.value_bits is None
        self.key_bits = int(o.key_bits or o.bits or 8)
        self.value_bits = int(o.value_bits or o.bits or 8)
        self.key_group, self.value_group = int(o.key_group), int(o.value_group)
        self.residual, self.pre_rope = int(o.residual), bool(o.pre_rope)
        self.max_context = int(o.max_context)
        if self.max_context < 1:
            raise BadInputError(f"kv_compress: max_context must be >= 1, got {self.max_context}")
        self.report = KVReport()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.report = KVReport()
        graph = model.graph
        layer_caches = find_layer_caches(graph)
        if layer_caches:
            return self._compress_layer_caches(model, layer_caches)
        found = find_cache_attention(graph)
        past_keys, past_values = _cache_inputs(found)
        layers, batch, heads, length, head_dim = (int(d) for d in past_keys.shape)
        if batch != 1:
            raise CompileError(
                f"kv_compress: the cache input '{past_keys.name}' has batch {batch}; decoding is batch 1"
            )
        if sorted(a.layer for a in found) != list(range(layers)):
            raise CompileError(f"kv_compress: {len(found)} attention layers read a cache of {layers} layers")
        layout = self._layout(
            graph,
            layers,
            heads,
            head_dim,
            length,
            position=_position_input(graph, past_keys, past_values).name or "position",
        )
        state = _add_state_inputs(graph, layout)
        rope = _rope_tables(graph, found) if layout.pre_rope else ()
        for attention in found:
            key = _unrotated(graph, attention) if layout.pre_rope else attention.key
            node = ir.node(
                KVAttention.name,
                [attention.query, key, attention.value, *state, *rope],
                attributes={"layer": attention.layer, "scale": attention.scale, **layout_attributes(layout)},
                domain=ops.DOMAIN,
                name=f"kv_attention_{attention.layer}",
            )
            graph.insert_before(attention.anchor, node)
            ops.infer_shapes(node)
            ir.convenience.replace_all_uses_with(attention.output, node.outputs[0])
            _emit_new_entries(graph, attention, key, layout)
        graph.inputs.remove(past_keys)
        graph.inputs.remove(past_values)
        return self._finish(model, layout, len(found))

    def _layout(self, graph: ir.Graph, layers: int, heads: int, head_dim: int, length: int, **names: Any):
        return KVCacheLayout(
            layers=layers,
            kv_heads=heads,
            head_dim=head_dim,
            max_context=length,
            key_bits=self.key_bits,
            value_bits=self.value_bits,
            key_group=self.key_group,
            value_group=self.value_group,
            residual=max(self.residual, length) if self.float_cache else self.residual,
            pre_rope=self.pre_rope,
            input_ids=graph.inputs[0].name or "input_ids",
            logits=graph.outputs[0].name or "logits",
            logits_row=LOGITS_ROW if _last_projection(graph) is not None else "",
            **names,
        )

    def _finish(self, model: ir.Model, layout: KVCacheLayout, layers: int) -> ir.passes.PassResult:
        if layout.logits_row:
            _logits_of_one_row(model.graph, layout.logits_row)
        common.RemoveUnusedNodesPass()(model)
        model.opset_imports[ops.DOMAIN] = ops.DOMAIN_VERSION
        model.metadata_props[METADATA_KEY] = layout.to_metadata()
        self.report.layers = layers
        self.report.layout = layout.to_json()
        self.report.bytes_full = layout.cache_bytes(layout.max_context)
        self.report.bytes_float = layout.float_cache_bytes(layout.max_context)
        return ir.passes.PassResult(model, True)

    def _compress_layer_caches(self, model: ir.Model, found: list[LayerCache]) -> ir.passes.PassResult:
        """Per-layer past_key_values inputs grown by Concat (Hugging Face / optimum exports): each layer's
        attention becomes a KVAttention over the runtime's cache, the present outputs become new_keys /
        new_values stacked over layers, and the inputs only the cache and its mask read (past caches,
        attention_mask) leave the graph."""
        graph = model.graph
        if self.pre_rope:
            raise CompileError(
                "kv_compress: pre_rope needs the rotary tables as constants; this decoder computes them at run time"
            )
        first = found[0]
        heads, head_dim = int(first.past_key.shape[1]), int(first.past_key.shape[3])
        positions = _position_ids_input(graph, found)
        layout = self._layout(
            graph, len(found), heads, head_dim, self.max_context, position=positions.name, position_ids=True
        )
        state = _add_state_inputs(graph, layout)
        new_entries: list[tuple[ir.Value, ir.Value]] = []
        for attention in found:
            query_heads, tokens = int(attention.query.shape[1]), int(attention.key.shape[2])
            groups = query_heads // heads
            grouped = _reshaped(graph, attention.anchor, attention.query, [1, heads, groups * tokens, head_dim])
            node = ir.node(
                KVAttention.name,
                [grouped, attention.key, attention.value, *state],
                attributes={"layer": attention.layer, "scale": attention.scale, **layout_attributes(layout)},
                domain=ops.DOMAIN,
                name=f"kv_attention_{attention.layer}",
            )
            graph.insert_before(attention.anchor, node)
            ops.infer_shapes(node)
            per_head = _reshaped(graph, attention.anchor, node.outputs[0], [1, query_heads, tokens, head_dim])
            ir.convenience.replace_all_uses_with(attention.output, per_head)
            new_entries.append((attention.key, attention.value))
        for attention in found:
            for present in (attention.present_key, attention.present_value):
                if present in graph.outputs:
                    graph.outputs.remove(present)
        for index, name in enumerate((layout.new_keys, layout.new_values)):
            graph.outputs.append(_stacked(graph, [entry[index] for entry in new_entries], name))
        for attention in found:
            graph.inputs.remove(attention.past_key)
            graph.inputs.remove(attention.past_value)
        common.RemoveUnusedNodesPass()(model)
        _drop_unused_inputs(graph, keep={layout.input_ids, layout.position, *STATE_NAMES})
        return self._finish(model, layout, len(found))


# ---------------------------------------------------------------------------------------------------- matching


def find_cache_attention(graph: ir.Graph) -> list[CacheAttention]:
    """Every Softmax whose scores read a cache update (Where(slot, new, Gather(past, layer))); an error naming
    what is missing when the graph has none."""
    found = [a for node in graph if node.op_type == "Softmax" and (a := _match(node)) is not None]
    if not found:
        raise CompileError(
            "kv_compress: no attention over a KV cache found (want past_keys/past_values inputs [layers, 1, H, L, D] "
            "read by Gather, updated by Where, then MatMul(q, Kᵀ) → Softmax → MatMul(·, V))"
        )
    return found


def find_layer_caches(graph: ir.Graph) -> list[LayerCache]:
    """Every attention over a per-layer cache (Concat(past input, new) along tokens, maybe repeated for GQA by
    Unsqueeze → Expand → Reshape), ordered by the past inputs' order; [] when the graph has none. A graph where
    only some cache inputs are matched is refused (a partly compressed cache would be wrong)."""
    found = [a for node in graph if node.op_type == "Softmax" and (a := _match_layer_cache(node)) is not None]
    if not found:
        return []
    pasts = [v for v in graph.inputs if v.shape is not None and len(v.shape) == 4 and v.dtype == ir.DataType.FLOAT]
    order = {value: index for index, value in enumerate(pasts)}
    found.sort(key=lambda a: order[a.past_key])
    matched = {v for a in found for v in (a.past_key, a.past_value)}
    if matched != set(pasts) or len(matched) != 2 * len(found):
        missing = [v.name for v in pasts if v not in matched]
        raise CompileError(
            f"kv_compress: {len(found)} attention layers read per-layer caches, but the cache inputs {missing[:4]} "
            "are not read by a matched attention (or two layers share one)"
        )
    shapes = {(int(a.past_key.shape[1]), int(a.past_key.shape[3]), int(a.key.shape[2])) for a in found}
    if len(shapes) != 1:
        raise CompileError(f"kv_compress: the layers' caches differ in heads / head size / tokens: {sorted(shapes)}")
    for index, attention in enumerate(found):
        attention.layer = index
    return found


def _match_layer_cache(softmax: ir.Node) -> LayerCache | None:
    attend = _weighted_values(softmax)
    if attend is None:
        return None
    scores, scale = _unmasked_scores(softmax.inputs[0])
    qk = _producer(scores, "MatMul")
    if qk is None:
        return None
    query, query_scale = _scaled(qk.inputs[0])
    transposed, key_scale = _scaled(qk.inputs[1])
    source = _transposed_source(transposed)
    keys = _concat_cache(source) if source is not None else None
    values = _concat_cache(attend.inputs[1])
    if keys is None or values is None or not _static(query, attend.outputs[0], keys[2], values[2]):
        return None
    heads, kv_heads = int(query.shape[1]), int(keys[1].shape[1])
    if len(query.shape) != 4 or query.shape[0] != 1 or heads % kv_heads or keys[2].shape != values[2].shape:
        return None
    scale *= query_scale * key_scale
    return LayerCache(
        layer=0,
        query=query,
        key=keys[2],
        value=values[2],
        past_key=keys[1],
        past_value=values[1],
        present_key=keys[0],
        present_value=values[0],
        output=attend.outputs[0],
        scale=scale,
        anchor=attend,
    )


def _weighted_values(softmax: ir.Node) -> ir.Node | None:
    """The MatMul(probs, V) that reads the softmax, directly or through PyTorch SDPA's guard Where(IsNaN(p), 0,
    p) (rows that are all masked: none here, the runtime's cache always holds the token itself)."""
    probs = softmax.outputs[0]
    consumers = [use.node for use in probs.uses()]
    if len(consumers) == 2 and {node.op_type for node in consumers} == {"IsNaN", "Where"}:
        where = next(node for node in consumers if node.op_type == "Where")
        isnan = next(node for node in consumers if node.op_type == "IsNaN")
        zero = constant(where.inputs[1])
        if where.inputs[0] is not isnan.outputs[0] or where.inputs[2] is not probs or zero is None or zero.any():
            return None
        probs = where.outputs[0]
        consumers = [use.node for use in probs.uses()]
    if len(consumers) != 1 or consumers[0].op_type != "MatMul" or consumers[0].inputs[0] is not probs:
        return None
    return consumers[0]


def _scaled(value: ir.Value) -> tuple[ir.Value, float]:
    """(x, c) for Mul(x, c) with a one-element constant c (SDPA scales q and Kᵀ by √scale each), else (value, 1)."""
    if (node := _producer(value, "Mul")) is not None:
        factor = constant(node.inputs[1])
        if factor is not None and factor.size == 1:
            return node.inputs[0], float(factor.reshape(()))
    return value, 1.0


def _transposed_source(value: ir.Value) -> ir.Value | None:
    """The [1, H, L, D] tensor (or GQA repeat) whose last two axes `value` swaps, through a chain of Transposes
    and Reshapes (one Transpose(0, 1, 3, 2), or SDPA's reshape to 3-D, transpose, reshape back, maybe merged with
    the repeat's reshape): the chain is run on an index tensor to check it is exactly that transpose."""
    chain: list[ir.Node] = []
    node = value.producer()
    while node is not None and node.op_type in ("Transpose", "Reshape") and node.domain in ("", "ai.onnx"):
        chain.append(node)
        node = node.inputs[0].producer()
    for length in range(1, len(chain) + 1):  # the shortest chain back to a 4-D tensor that it transposes
        source = chain[length - 1].inputs[0]
        if _swaps_last_axes(chain[:length], source, value):
            return source
    return None


def _swaps_last_axes(chain: list[ir.Node], source: ir.Value, value: ir.Value) -> bool:
    """Whether Transposes / Reshapes `chain` (last applied first in the list) map `source` [1, H, L, D] (or GQA's
    repeat [1, kv_heads, groups, L, D], read as [1, H, L, D]) to its transpose [1, H, D, L], run on an index
    tensor."""
    if not _static(source, value) or len(source.shape) not in (4, 5):
        return False
    shape = [int(d) for d in source.shape]
    indices = np.arange(int(np.prod(shape))).reshape(shape)
    result = indices
    if len(shape) == 5:  # GQA's repeat [1, kv_heads, groups, L, D], its reshape to heads folded into the chain
        indices = indices.reshape(shape[0], shape[1] * shape[2], shape[3], shape[4])
    for step in reversed(chain):
        if step.op_type == "Transpose":
            perm = list(step.attributes.get_ints("perm", list(range(result.ndim))[::-1]))
            if len(perm) != result.ndim:
                return False
            result = np.transpose(result, perm)
        else:
            target = constant(step.inputs[1])
            if target is None or (step.attributes.get_int("allowzero", 0) and 0 in target):
                return False
            dims = [result.shape[i] if d == 0 else int(d) for i, d in enumerate(target.reshape(-1))]
            try:
                result = result.reshape(dims)
            except ValueError:
                return False
    expected = np.swapaxes(indices, -1, -2)
    return result.shape == expected.shape and np.array_equal(result, expected)


def _concat_cache(value: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value] | None:
    """(Concat output, past input, new entries) behind the keys or values an attention reads: Concat(past, new)
    along the token axis of [1, kv_heads, tokens, D], under a GQA repeat (Unsqueeze → Expand → Reshape)."""
    node = value.producer()
    while node is not None and node.op_type in ("Reshape", "Expand", "Unsqueeze") and node.domain in ("", "ai.onnx"):
        node = node.inputs[0].producer()
    if node is None or node.op_type != "Concat" or len(node.inputs) != 2:
        return None
    past, new = node.inputs
    if past is None or new is None or not past.is_graph_input() or past.shape is None or len(past.shape) != 4:
        return None
    if node.attributes.get_int("axis", 0) not in (2, -2) or past.shape[0] != 1:
        return None
    return node.outputs[0], past, new


def _static(*values: ir.Value) -> bool:
    return all(v.shape is not None and all(isinstance(d, int) for d in v.shape) for v in values)


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx") else None


def _match(softmax: ir.Node) -> CacheAttention | None:
    consumers = [use.node for use in softmax.outputs[0].uses()]
    if len(consumers) != 1 or consumers[0].op_type != "MatMul" or consumers[0].inputs[0] is not softmax.outputs[0]:
        return None
    attend = consumers[0]
    scores, scale = _unmasked_scores(softmax.inputs[0])
    qk = _producer(scores, "MatMul")
    transpose = _producer(qk.inputs[1], "Transpose") if qk is not None else None
    if transpose is None or list(transpose.attributes.get_ints("perm", [])) != [0, 1, 3, 2]:
        return None
    keys = _cache_update(transpose.inputs[0])
    values = _cache_update(attend.inputs[1])
    if keys is None or values is None or keys[2] != values[2]:
        return None
    return CacheAttention(
        layer=keys[2],
        query=qk.inputs[0],
        key=keys[0],
        value=values[0],
        keys_all=transpose.inputs[0],
        values_all=attend.inputs[1],
        past_keys=keys[1],
        past_values=values[1],
        output=attend.outputs[0],
        scale=scale,
        anchor=attend,
    )


def _unmasked_scores(value: ir.Value) -> tuple[ir.Value | None, float]:
    """Skip the mask (Where(mask, s, fill) or Add(s, mask)) and a constant scale (Mul / Div): (scores, scale)."""
    if (where := _producer(value, "Where")) is not None:
        value = where.inputs[1]
    elif (add := _producer(value, "Add")) is not None and constant(add.inputs[1]) is None:
        value = add.inputs[0]
    for op_type, invert in (("Mul", False), ("Div", True)):
        if (node := _producer(value, op_type)) is not None:
            factor = constant(node.inputs[1])
            if factor is not None and factor.size == 1:
                number = float(factor.reshape(()))
                return node.inputs[0], 1.0 / number if invert else number
    return value, 1.0


def _cache_update(value: ir.Value) -> tuple[ir.Value, ir.Value, int] | None:
    """Where(slot, new, Gather(past, layer)) → (new, past input, layer); `new` is the step's keys or values
    [1, H, S, D] themselves (one token, broadcast over the slots) or placed into the slots by a MatMul with a
    0/1 [.., L, S] matrix (S tokens)."""
    where = _producer(value, "Where")
    gather = _producer(where.inputs[2], "Gather") if where is not None else None
    if gather is None or gather.attributes.get_int("axis", 0) != 0:
        return None
    past, index = gather.inputs[0], constant(gather.inputs[1])
    if not past.is_graph_input() or index is None or index.size != 1 or past.shape is None or len(past.shape) != 5:
        return None
    new = where.inputs[1]
    if (placed := _producer(new, "MatMul")) is not None and _is_placement(placed.inputs[0], past):
        new = placed.inputs[1]
    elif new.shape is None or len(new.shape) != 4 or new.shape[2] != 1:
        return None
    if new.shape is None or len(new.shape) != 4 or not all(isinstance(d, int) for d in new.shape):
        return None
    return new, past, int(index.reshape(()))


def _is_placement(value: ir.Value, past: ir.Value) -> bool:
    """A run-time [1, 1, L, S] 0/1 matrix that puts S new tokens into the L cache slots: (a reshape of) a Cast of
    Equal(slot indices 0..L-1, position + 0..S-1)."""
    shape, slots = value.shape, int(past.shape[3])
    if shape is None or len(shape) != 4 or shape[2] != slots or not isinstance(shape[3], int):
        return False
    node = value.producer()
    while node is not None and node.op_type in ("Unsqueeze", "Reshape", "Cast"):
        node = node.inputs[0].producer()
    if node is None or node.op_type != "Equal":
        return False
    sides = [constant(v) for v in node.inputs]
    indices = next((c for c in sides if c is not None), None)
    others = [v for v, c in zip(node.inputs, sides, strict=True) if c is None]
    if indices is None or len(others) != 1 or not np.array_equal(indices.reshape(-1), np.arange(slots)):
        return False
    tokens = int(shape[3])
    positions = others[0].producer()
    while positions is not None and positions.op_type in ("Unsqueeze", "Reshape"):
        positions = positions.inputs[0].producer()
    offsets = positions if positions is not None and positions.op_type == "Add" else None
    steps = [constant(v) for v in offsets.inputs] if offsets is not None else []
    return tokens == 1 or any(c is not None and np.array_equal(c.reshape(-1), np.arange(tokens)) for c in steps)


def _cache_inputs(found: list[CacheAttention]) -> tuple[ir.Value, ir.Value]:
    pasts = {(a.past_keys, a.past_values) for a in found}
    if len(pasts) != 1:
        raise CompileError(f"kv_compress: the attention layers read {len(pasts)} different cache input pairs")
    return pasts.pop()


def _position_ids_input(graph: ir.Graph, found: list[LayerCache]) -> ir.Value:
    """The position_ids input [1, S] (int) of a decoder with per-layer caches: the runtime fills it with each
    step token's position."""
    tokens = int(found[0].key.shape[2])
    candidates = [
        v
        for v in graph.inputs[1:]
        if v.dtype is not None
        and v.dtype.is_integer()
        and v.shape is not None
        and [int(d) if isinstance(d, int) else None for d in v.shape] == [1, tokens]
        and "mask" not in (v.name or "")
    ]
    if len(candidates) != 1:
        raise CompileError(
            f"kv_compress: a decoder with per-layer caches needs one position_ids input [1, {tokens}] (int); "
            f"inputs are {[v.name for v in graph.inputs]}"
        )
    return candidates[0]


def _position_input(graph: ir.Graph, *caches: ir.Value) -> ir.Value:
    others = [v for v in graph.inputs if v not in caches and v is not graph.inputs[0]]
    if len(graph.inputs) != 4 or len(others) != 1:
        raise CompileError(
            f"kv_compress: want inputs (input_ids, position, past_keys, past_values), got "
            f"{[v.name for v in graph.inputs]}"
        )
    return others[0]


# ---------------------------------------------------------------------------------------------------- rewrite


def _last_projection(graph: ir.Graph) -> ir.Node | None:
    """The MatMul that makes the logits output from the hidden states [1, S, hidden] (the vocabulary head)."""
    node = _producer(graph.outputs[0], "MatMul")
    if node is None or node.inputs[0] is None or node.inputs[0].shape is None or len(node.inputs[0].shape) != 3:
        return None
    return node


def _logits_of_one_row(graph: ir.Graph, name: str) -> None:
    """Give the step an input `name` (int64 [1]) that picks the one token row whose logits it returns: a session
    needs the next-token logits of the last prompt token only, and the vocabulary head is a fifth of a small
    model's prefill work. The head reads Gather(hidden, row, axis 1); the logits become [1, 1, vocab]."""
    head = _last_projection(graph)
    assert head is not None
    row = ir.Value(name=name, shape=ir.Shape([1]), type=ir.TensorType(ir.DataType.INT64))
    graph.inputs.append(row)
    hidden = head.inputs[0]
    gather = ir.node("Gather", [hidden, row], attributes={"axis": 1}, name="kv_logits_row")
    graph.insert_before(head, gather)
    gather.outputs[0].dtype = hidden.dtype
    gather.outputs[0].shape = ir.Shape([hidden.shape[0], 1, hidden.shape[2]])
    head.replace_input_with(0, gather.outputs[0])
    logits = graph.outputs[0]
    logits.shape = ir.Shape([logits.shape[0], 1, logits.shape[2]])


def _reshaped(graph: ir.Graph, before: ir.Node, value: ir.Value, shape: list[int]) -> ir.Value:
    """Reshape(value, shape) inserted before `before`."""
    target = add_initializer(graph, np.array(shape, np.int64), f"{value.name}_shape")
    node = ir.node("Reshape", [value, target])
    graph.insert_before(before, node)
    node.outputs[0].shape, node.outputs[0].dtype = ir.Shape(shape), value.dtype
    return node.outputs[0]


def _stacked(graph: ir.Graph, values: list[ir.Value], name: str) -> ir.Value:
    """Concat of Unsqueeze(value, 0) over `values`, appended to the graph: [len(values), *shape]."""
    axes = add_initializer(graph, np.array([0], np.int64), f"{name}_axes")
    parts = []
    for value in values:
        node = ir.node("Unsqueeze", [value, axes])
        graph.append(node)
        node.outputs[0].shape, node.outputs[0].dtype = ir.Shape([1, *value.shape]), value.dtype
        parts.append(node.outputs[0])
    concat = ir.node("Concat", parts, attributes={"axis": 0})
    graph.append(concat)
    out = concat.outputs[0]
    out.name, out.dtype, out.shape = name, values[0].dtype, ir.Shape([len(values), *values[0].shape])
    return out


def _drop_unused_inputs(graph: ir.Graph, keep: set[str]) -> None:
    """Remove graph inputs nothing reads any more (the attention mask once the attention is the cache's); an
    input still read that the runtime cannot feed is refused."""
    for value in list(graph.inputs):
        if value.name in keep or value.name == LOGITS_ROW:
            continue
        if value.uses():
            raise CompileError(
                f"kv_compress: input '{value.name}' is still read after the cache was compressed; the runtime "
                "feeds only the token ids, their positions and the cache"
            )
        graph.inputs.remove(value)


def _add_state_inputs(graph: ir.Graph, layout: KVCacheLayout) -> list[ir.Value]:
    """The cache state as graph inputs, in `STATE_NAMES` order (the order KVAttention reads them in)."""
    values, specs = [], layout.state_specs()
    for name in STATE_NAMES:
        shape, dtype = specs[name]
        value = ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(ir.DataType.from_numpy(np.dtype(dtype))))
        graph.inputs.append(value)
        values.append(value)
    return values


def _emit_new_entries(graph: ir.Graph, attention: CacheAttention, key: ir.Value, layout: KVCacheLayout) -> None:
    """The present outputs stacked the updated caches (Unsqueeze → Concat); stack this step's key and value
    instead, and name the outputs new_keys / new_values."""
    for updated, new, name in (
        (attention.keys_all, key, layout.new_keys),
        (attention.values_all, attention.value, layout.new_values),
    ):
        stacks = [use.node for use in updated.uses() if use.node.op_type == "Unsqueeze"]
        outputs = [
            use.node.outputs[0]
            for stack in stacks
            for use in stack.outputs[0].uses()
            if use.node.op_type == "Concat" and use.node.outputs[0].is_graph_output()
        ]
        if len(stacks) != 1 or len(outputs) != 1:
            raise CompileError(
                f"kv_compress: layer {attention.layer}'s updated cache does not reach a stacked present output"
            )
        stacks[0].replace_input_with(0, new)
        outputs[0].name = name
        outputs[0].shape = ir.Shape([layout.layers, 1, layout.kv_heads, int(new.shape[2]), layout.head_dim])


def _rotation(key: ir.Value) -> tuple[ir.Value, ir.Node, np.ndarray, np.ndarray] | None:
    """key = Transpose(x·cos + rotate_half(x)·sin) with cos/sin gathered from constant tables at the position →
    (x, the Transpose, cos table, sin table)."""
    transpose = _producer(key, "Transpose")
    rotation = _producer(transpose.inputs[0], "Add") if transpose is not None else None
    if rotation is None:
        return None
    raw = cos = sin = None
    for term in rotation.inputs:
        product = _producer(term, "Mul")
        if product is None:
            return None
        tables = [_table_behind(v) for v in product.inputs]
        if sum(t is not None for t in tables) != 1:
            return None
        table = next(t for t in tables if t is not None)
        other = next(v for v, t in zip(product.inputs, tables, strict=True) if t is None)
        if _producer(other, "Concat") is not None:
            sin = table
        else:
            raw, cos = other, table
    if raw is None or cos is None or sin is None:
        return None
    return raw, transpose, cos, sin


def _table_behind(value: ir.Value | None) -> np.ndarray | None:
    """The constant [positions, D] table behind `Unsqueeze(Gather(table, position))` (or a GatherND of its rows)."""
    node = value.producer() if value is not None else None
    while node is not None and node.op_type in ("Unsqueeze", "Reshape", "Expand"):
        node = node.inputs[0].producer()
    if node is not None and node.op_type in ("Gather", "GatherND") and (table := constant(node.inputs[0])) is not None:
        return table if table.ndim == 2 else None
    return None


def _unrotated(graph: ir.Graph, attention: CacheAttention) -> ir.Value:
    """Pre-RoPE keys: the step's key before the rotation, transposed like the rotated one."""
    parts = _rotation(attention.key)
    if parts is None:
        raise CompileError(
            f"kv_compress: pre_rope: layer {attention.layer}'s key is not Transpose(x·cos + rotate_half(x)·sin)"
        )
    raw, transpose, _, _ = parts
    node = ir.node("Transpose", [raw], attributes={"perm": list(transpose.attributes.get_ints("perm"))})
    graph.insert_before(attention.anchor, node)
    node.outputs[0].shape, node.outputs[0].dtype = attention.key.shape, attention.key.dtype
    return node.outputs[0]


def _rope_tables(graph: ir.Graph, found: list[CacheAttention]) -> tuple[ir.Value, ...]:
    """cos and sin tables of the keys' rotation (the same in every layer), as initializers the nodes read."""
    parts = _rotation(found[0].key)
    if parts is None:
        raise CompileError("kv_compress: pre_rope: the keys' rotation (x·cos + rotate_half(x)·sin) was not found")
    _, _, cos, sin = parts
    return (
        add_initializer(graph, cos.astype(np.float32), "kv_rope_cos"),
        add_initializer(graph, sin.astype(np.float32), "kv_rope_sin"),
    )
