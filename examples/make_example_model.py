"""Regenerate the bundled example models (seeded weights):

- examples/bireal18_small.onnx: Bi-Real-Net-18 at width 16 on 128×128 images, 10 classes — binary 3×3 convs
  (Where-sign activations, ±α weights) with real-valued shortcuts: what `bitc compile` turns into packed kernels;
- examples/resnet18_small.onnx: a float ResNet-18 at width 16 on 64×64 images, 10 classes.

python examples/make_example_model.py      (needs the torch extra: pip install -e ".[torch]")
"""

import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # bitc_zoo: the repository's reference models
from bitc_zoo import bnn, cnn
from bitc_zoo.export import export_onnx

if __name__ == "__main__":
    here = Path(__file__).parent
    models = {
        "bireal18_small.onnx": (bnn.bireal_net18(num_classes=10, width=16, seed=0), 128),
        "resnet18_small.onnx": (cnn.resnet18(num_classes=10, width=16, seed=0), 64),
    }
    for name, (model, size) in models.items():
        example = (torch.randn(1, 3, size, size),)
        path = export_onnx(model, example, here / name, input_names=["image"], output_names=["logits"])
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
