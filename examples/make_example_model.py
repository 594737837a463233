"""Regenerate examples/resnet18_small.onnx: a ResNet-18 at width 16 on 64×64 images, 10 classes, seeded weights.

python examples/make_example_model.py      (needs the torch extra: pip install -e ".[torch]")
"""

from pathlib import Path

import torch

from bitc.zoo import cnn
from bitc.zoo.export import export_onnx

if __name__ == "__main__":
    model = cnn.resnet18(num_classes=10, width=16, seed=0)
    path = export_onnx(
        model,
        (torch.randn(1, 3, 64, 64),),
        Path(__file__).with_name("resnet18_small.onnx"),
        input_names=["image"],
        output_names=["logits"],
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
