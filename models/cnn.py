"""A small ResNet-style CNN (eval mode): the convolution / batch-norm reference model.

stem: conv3x3 + BatchNorm + ReLU, max pool 3x3/2; stages of basic residual blocks, each
stage after the first opening with a stride-2 block whose shortcut is conv1x1/2 + BatchNorm;
adaptive average pool to 1x1, linear head. Batch-norm running statistics and affine
parameters are random, so a compiler that drops or mis-folds batch norm gets wrong numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.registry import register_model, seeded

WEIGHT_SEED = 0


@dataclass(frozen=True)
class ResNetConfig:
    """Sizes of the CNN and of its example input `(batch, in_channels, image_size, image_size)`."""

    widths: tuple[int, ...]
    blocks_per_stage: int
    num_classes: int
    batch: int
    image_size: int
    in_channels: int = 3


CONFIGS: dict[str, ResNetConfig] = {
    "resnet-tiny": ResNetConfig(widths=(16, 32), blocks_per_stage=1, num_classes=10, batch=2, image_size=32),
    "resnet-small": ResNetConfig(widths=(32, 64, 128, 256), blocks_per_stage=2, num_classes=100, batch=2, image_size=128),
}


class BasicBlock(nn.Module):
    """relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x)); a strided or widening block
    takes a conv1x1 + BatchNorm shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + shortcut)


class ResNet(nn.Module):
    """ResNet-style classifier: (B, C, H, W) -> logits (B, num_classes)."""

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_channels, cfg.widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(cfg.widths[0]),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        blocks = []
        in_ch = cfg.widths[0]
        for stage, width in enumerate(cfg.widths):
            for i in range(cfg.blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_ch, width, stride))
                in_ch = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(in_ch, cfg.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(x))
        return self.head(self.pool(x).flatten(1))


def build_resnet(cfg: ResNetConfig, seed: int = WEIGHT_SEED) -> ResNet:
    """A `ResNet` in eval mode with deterministic weights and random batch-norm statistics."""
    with seeded(seed):
        model = ResNet(cfg)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.normal_(0.0, 0.2)
                    module.running_var.uniform_(0.5, 2.0)
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.normal_(0.0, 0.2)
    return model.eval()


def example_inputs(cfg: ResNetConfig) -> tuple[Tensor]:
    """A fresh random image batch for `cfg`."""
    return (torch.randn(cfg.batch, cfg.in_channels, cfg.image_size, cfg.image_size),)


@register_model("resnet-tiny")
def resnet_tiny():
    """ResNet with 2 stages (16, 32 channels) on 2x3x32x32: for tests."""
    cfg = CONFIGS["resnet-tiny"]
    return build_resnet(cfg), example_inputs(cfg)


@register_model("resnet-small")
def resnet_small():
    """ResNet-18-shaped at half width (32..256 channels, 2 blocks a stage) on 2x3x128x128."""
    cfg = CONFIGS["resnet-small"]
    return build_resnet(cfg), example_inputs(cfg)
