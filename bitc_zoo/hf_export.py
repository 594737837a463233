"""Decoder ONNX files in the form Hugging Face tooling writes (optimum's decoder-with-past): input_ids [1, S],
attention_mask [1, past + S], position_ids [1, S] and per-layer past_key_values.N.key / .value
[1, kv_heads, past, head_dim] in; logits [1, S, vocab] and present.N.key / .value (the caches grown by Concat)
out; S and past dynamic. Made with torch.onnx.export around a transformers causal LM, the way optimum does it,
for tests and benchmarks of bitc on the exports users bring."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnx_ir as ir
import torch


class _WithFlatCache(torch.nn.Module):
    """model(input_ids, attention_mask, position_ids, *past) → (logits, *present): the cache as plain tensors."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.layers = model.config.num_hidden_layers

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for layer in range(self.layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def input_names(layers: int) -> list[str]:
    return ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")
    ]


def output_names(layers: int) -> list[str]:
    return ["logits"] + [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def export_decoder_with_past(model: Any, path: str | os.PathLike, max_positions: int = 4096) -> Path:
    """Export a transformers causal LM (eager attention, float32, eval mode) with a dynamic past; returns the path."""
    config = model.config
    layers = config.num_hidden_layers
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    tokens, past = 3, 5
    example = (
        torch.zeros(1, tokens, dtype=torch.int64),
        torch.ones(1, past + tokens, dtype=torch.int64),
        torch.arange(past, past + tokens)[None],
        *(torch.zeros(1, kv_heads, past, head_dim) for _ in range(2 * layers)),
    )
    sequence = torch.export.Dim("sequence_length", min=1, max=max_positions)
    past_length = torch.export.Dim("past_sequence_length", min=1, max=max_positions)
    total = torch.export.Dim("total_sequence_length", min=2, max=2 * max_positions)
    dynamic = ({1: sequence}, {1: total}, {1: sequence}, tuple({2: past_length} for _ in range(2 * layers)))
    with torch.no_grad():
        program = torch.onnx.export(
            _WithFlatCache(model.eval()),
            example,
            dynamo=True,
            input_names=input_names(layers),
            output_names=output_names(layers),
            dynamic_shapes=dynamic,
            opset_version=18,
            verbose=False,
        )
    model_ir = program.model
    for node in model_ir.graph.all_nodes():  # the exporter's stack traces name files on the exporting machine
        node.metadata_props.clear()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ir.save(model_ir, path)
    return path
