"""Binarizing a small YOLOv5-style detector: Focus stem, C3 blocks with residual adds, SPPF, an upsample + Concat
neck and a Detect head (1×1 convs → Reshape → Transpose → Sigmoid, grid/anchor arithmetic, Concat of 3 scales).

Its head has a one-channel objectness conv per scale (decoupled heads, single class): a binary conv with a single
output channel, whose CPU schedule used to fail ("zip() argument 2 is shorter than argument 1")."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn


class Conv(nn.Module):
    """Conv → BN → SiLU (YOLOv5's Conv); `k` odd, 'same' padding."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class C3(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True) -> None:
        super().__init__()
        c = c2 // 2
        self.cv1, self.cv2, self.cv3 = Conv(c1, c), Conv(c1, c), Conv(2 * c, c2)
        self.m1, self.m2, self.shortcut = Conv(c, c), Conv(c, c, 3), shortcut

    def forward(self, x):
        y = self.cv1(x)
        z = self.m2(self.m1(y))
        return self.cv3(torch.cat([y + z if self.shortcut else z, self.cv2(x)], 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int) -> None:
        super().__init__()
        self.cv1, self.cv2, self.pool = Conv(c1, c1 // 2), Conv(2 * c1, c2), nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat([x, y1, y2, self.pool(y2)], 1))


class Detect(nn.Module):
    """Per scale: box conv (4 per anchor) and a one-channel objectness conv, decoded against a grid and anchors."""

    def __init__(self, channels: tuple[int, ...], strides: tuple[int, ...] = (8, 16, 32)) -> None:
        super().__init__()
        self.box = nn.ModuleList(nn.Conv2d(c, 4, 1) for c in channels)
        self.obj = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in channels)
        self.strides = strides
        self.register_buffer("anchors", torch.linspace(8, 64, 2 * len(channels)).view(len(channels), 1, 2))

    def forward(self, xs):
        out = []
        for i, x in enumerate(xs):
            bs, _, ny, nx = x.shape
            y = torch.cat([self.box[i](x), self.obj[i](x)], 1).view(bs, 1, 5, ny, nx).permute(0, 1, 3, 4, 2)
            y = y.sigmoid()
            gy, gx = torch.meshgrid(torch.arange(ny).float(), torch.arange(nx).float(), indexing="ij")
            grid = torch.stack((gx, gy), 2).view(1, 1, ny, nx, 2)
            xy = (y[..., :2] * 2 - 0.5 + grid) * self.strides[i]
            wh = (y[..., 2:4] * 2) ** 2 * self.anchors[i].view(1, 1, 1, 1, 2)
            out.append(torch.cat((xy, wh, y[..., 4:]), -1).view(bs, -1, 5))
        return torch.cat(out, 1)


class TinyYolo(nn.Module):
    def __init__(self, w: int = 16) -> None:
        super().__init__()
        self.stem = Conv(12, w, 3)  # after the Focus space-to-depth
        self.p3 = nn.Sequential(Conv(w, 2 * w, 3, 2), C3(2 * w, 2 * w), Conv(2 * w, 4 * w, 3, 2), C3(4 * w, 4 * w))
        self.p4 = nn.Sequential(Conv(4 * w, 8 * w, 3, 2), C3(8 * w, 8 * w))
        self.p5 = nn.Sequential(Conv(8 * w, 8 * w, 3, 2), SPPF(8 * w, 8 * w))
        self.lat5, self.top4 = Conv(8 * w, 4 * w), C3(12 * w, 4 * w, shortcut=False)
        self.lat4, self.out3 = Conv(4 * w, 2 * w), C3(6 * w, 2 * w, shortcut=False)
        self.down3, self.out4 = Conv(2 * w, 2 * w, 3, 2), C3(4 * w, 4 * w, shortcut=False)
        self.down4, self.out5 = Conv(4 * w, 4 * w, 3, 2), C3(8 * w, 8 * w, shortcut=False)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.detect = Detect((2 * w, 4 * w, 8 * w))

    def forward(self, x):
        x = torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        p5 = self.p5(p4)
        a = self.lat5(p5)
        c = self.lat4(self.top4(torch.cat([self.up(a), p4], 1)))
        o3 = self.out3(torch.cat([self.up(c), p3], 1))
        o4 = self.out4(torch.cat([self.down3(o3), c], 1))
        o5 = self.out5(torch.cat([self.down4(o4), a], 1))
        return self.detect([o3, o4, o5])


def tiny_yolo(seed: int = 0) -> nn.Module:
    """Seeded weights and BN statistics away from the identity, so folding BN changes the weights."""
    torch.manual_seed(seed)
    model = TinyYolo().eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model


@pytest.mark.slow
def test_binarized_yolo_style_detector_compiles_and_matches_the_binarized_model(tmp_path):
    import onnx_ir as ir

    import bitc
    from bitc.frontend import normalize
    from bitc.passes import run_pipeline
    from bitc.passes.verify import run_onnxruntime
    from bitc_zoo.export import export_onnx

    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    path = export_onnx(tiny_yolo(), (x,), tmp_path / "yolo.onnx")
    result = bitc.compile(path, tmp_path / "yolo.bitc", binarize=True)

    lowered = next(p for p in result.manifest["passes"] if p["name"] == "lower_binary")["details"]
    assert lowered["lowered"] >= 40 and not lowered["skipped"]
    one_channel = [n for n in ir.load(path).graph if n.op_type == "Conv" and n.inputs[1].shape[0] == 1]
    assert len(one_channel) == 3  # the objectness convs (the last one stays float as the last layer)

    source = normalize(ir.load(path), source="yolo.onnx")
    prefix = ["fold_constants", "simplify", "eliminate_identity", "fold_batchnorm", "binarize"]
    binarized, _ = run_pipeline(source, prefix)
    name = binarized.graph.inputs[0].name
    expected = run_onnxruntime(binarized, {name: x.numpy()})[0]
    got = bitc.load(tmp_path / "yolo.bitc").run({name: x.numpy()})
    got = got if isinstance(got, np.ndarray) else next(iter(got.values()))
    assert got.shape == expected.shape == (1, 84, 5)
    # float rounding (TVM vs onnxruntime) may flip the sign of an activation within 1e-6 of 0 on another CPU and
    # move the boxes that see it; everything else must agree
    close = np.isclose(got, expected, rtol=1e-4, atol=1e-3 * np.abs(expected).max())
    assert close.mean() >= 0.95, f"{(~close).sum()} of {close.size} outputs differ"
