"""Brevitas BNN-PYNQ models (TFC/SFC/LFC MLPs, CNV) and a small BNN trained on scikit-learn's digits, exported
as QONNX: the QONNX inputs bitc must take. Needs `brevitas` (and scikit-learn for the digits model).

Pretrained weights are not available offline: BNN-PYNQ models get seeded random weights and BatchNorm statistics
(gamma of both signs, so BN + sign folding meets flipped channels); the digits model is trained here in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def bnn_pynq(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """`name` as brevitas_examples spells it (tfc_1w1a, cnv_2w2a, ...): the model in eval mode and an input."""
    from brevitas_examples.bnn_pynq.models import model_with_cfg

    torch.manual_seed(seed)
    model, cfg = model_with_cfg(name, pretrained=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d) or type(module).__name__ == "TensorNorm":
                shape = module.running_mean.shape
                module.running_mean.copy_(4 * torch.rand(shape, generator=generator) - 2)
                module.running_var.copy_(0.5 + 3.5 * torch.rand(shape, generator=generator))
                module.weight.copy_(3 * torch.rand(shape, generator=generator) - 1.5)
                module.bias.copy_(torch.rand(shape, generator=generator) - 0.5)
    shape = (1, 1, 28, 28) if cfg.get("MODEL", "ARCH") == "FC" else (1, 3, 32, 32)
    return model.eval(), torch.rand(shape, generator=generator)


def export_qonnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> Path:
    """brevitas.export.export_qonnx, without the stale external-data file its dynamo path leaves beside it."""
    from brevitas.export import export_qonnx as brevitas_export

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    brevitas_export(model, input_t=example, export_path=str(path))
    stale = path.with_name(path.name + ".data")
    if stale.exists():
        import onnx

        if not any(
            t.data_location == onnx.TensorProto.EXTERNAL
            for t in onnx.load(path, load_external_data=False).graph.initializer
        ):
            stale.unlink()
    return path


def digits_bnn(epochs: int = 30, hidden: int = 256, seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """A W1A1 MLP (64 → hidden → hidden → 10, BN + binary activations, TensorNorm head) trained on the digits.

    Returns the eval-mode model and {"x_test", "y_test", "accuracy"} (a held-out quarter of the 1797 digits)."""
    from brevitas.nn import QuantIdentity, QuantLinear
    from brevitas_examples.bnn_pynq.models.common import CommonActQuant, CommonWeightQuant
    from brevitas_examples.bnn_pynq.models.tensor_norm import TensorNorm
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    torch.manual_seed(seed)
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        (x / 16.0).astype(np.float32), y, test_size=0.25, random_state=seed, stratify=y
    )

    class DigitsBNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = [QuantIdentity(act_quant=CommonActQuant, bit_width=1)]
            width = 64
            for _ in range(2):
                layers += [
                    QuantLinear(width, hidden, bias=False, weight_quant=CommonWeightQuant, weight_bit_width=1),
                    nn.BatchNorm1d(hidden),
                    QuantIdentity(act_quant=CommonActQuant, bit_width=1),
                ]
                width = hidden
            layers += [QuantLinear(width, 10, bias=False, weight_quant=CommonWeightQuant, weight_bit_width=1)]
            self.layers = nn.Sequential(*layers, TensorNorm())
            for module in self.modules():
                if isinstance(module, QuantLinear):
                    nn.init.uniform_(module.weight.data, -1, 1)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.layers(2.0 * images - 1.0)

    model = DigitsBNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    inputs, labels = torch.tensor(x_train), torch.tensor(y_train)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(inputs))
        for start in range(0, len(inputs), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs[batch]), labels[batch]).backward()
            optimizer.step()
            for module in model.modules():
                if isinstance(module, QuantLinear):
                    module.weight.data.clamp_(-1, 1)
        schedule.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(torch.tensor(x_test)).argmax(1).numpy() == y_test).mean())
    return model, {"x_test": x_test, "y_test": y_test, "accuracy": accuracy}
