"""build_model(config) -> nn.Module: the ReXNet block, stem and head as design.md fixes them.

Module names are part of the checkpoint contract (``rexsearch`` layout):
``stem.conv``/``stem.bn``, ``blocks.N.conv_exp|conv_dw|conv_pwl.conv|bn``,
``blocks.N.se.fc1|bn|fc2``, ``head.conv``/``head.bn``, ``classifier``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rexsearch.config import ACTIVATIONS, BlockConfig, ReXNetConfig

# In place only where the backward needs the activation's output (ReLU, ELU, leaky ReLU).
# SiLU, ReLU6, hardswish and mish differentiate through their input, so autograd would
# clone the input of an in-place call on every training step: out of place is faster.
_ACTIVATION_FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "identity": nn.Identity,
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
    "elu": lambda: nn.ELU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "softplus": nn.Softplus,
    "hardswish": nn.Hardswish,
    "gelu": nn.GELU,
    "mish": nn.Mish,
    "tanh": nn.Tanh,
}
if tuple(_ACTIVATION_FACTORIES) != ACTIVATIONS:  # config.py names what model.py must build
    raise ImportError(
        f"rexsearch.model builds the activations {tuple(_ACTIVATION_FACTORIES)}, but rexsearch.config "
        f"allows {ACTIVATIONS}; the two lists must match"
    )


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by its config name (``silu``, ``relu6``, ...)."""
    try:
        return _ACTIVATION_FACTORIES[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}") from None


class ConvBNAct(nn.Module):
    """Conv (no bias) + BatchNorm + optional activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = make_activation(activation) if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """ReXNet's SE: pool, 1x1 conv (bias) to ``channels // ratio``, BN, ReLU, 1x1 conv, sigmoid."""

    def __init__(self, channels: int, ratio: int) -> None:
        super().__init__()
        mid = channels // ratio
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, mid, 1, bias=True)
        self.bn = nn.BatchNorm2d(mid)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(mid, channels, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.act(self.bn(self.fc1(self.pool(x))))))
        return x * s


class ReXBlock(nn.Module):
    """Inverted bottleneck with ReXNet's partial residual (or identity / none)."""

    def __init__(self, block: BlockConfig, config: ReXNetConfig) -> None:
        super().__init__()
        self.in_channels = block.in_channels
        self.use_shortcut = config.uses_shortcut(block)
        dw = block.dw_channels
        if block.has_expand:
            self.conv_exp = ConvBNAct(block.in_channels, dw, activation=config.block_activation(block))
        else:
            self.conv_exp = nn.Identity()
        self.conv_dw = ConvBNAct(dw, dw, block.kernel, block.stride, groups=dw)
        self.se = SqueezeExcite(dw, config.se_ratio) if block.se else nn.Identity()
        self.act_dw = make_activation(config.block_dw_activation(block))
        self.conv_pwl = ConvBNAct(dw, block.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_pwl(self.act_dw(self.se(self.conv_dw(self.conv_exp(x)))))
        if self.use_shortcut:
            if out.shape[1] == self.in_channels:
                out = out + x
            else:
                out[:, : self.in_channels] += x
        return out


class ReXNet(nn.Module):
    """A network built from a :class:`ReXNetConfig` (see :func:`build_model`)."""

    def __init__(self, config: ReXNetConfig) -> None:
        super().__init__()
        self.config = config
        self.stem = ConvBNAct(3, config.stem_channels, 3, config.stem_stride, activation=config.activation)
        self.blocks = nn.Sequential(*(ReXBlock(b, config) for b in config.blocks))
        self.head = ConvBNAct(
            config.blocks[-1].out_channels,
            config.penultimate_channels,
            activation=config.activation,
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.penultimate_channels, config.num_classes)
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate feature map (after the head conv, before pooling)."""
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.forward_features(x)).flatten(1)
        return self.classifier(self.dropout(x))


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs, unit BN, small normal classifier: the usual CNN init."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def build_model(config: ReXNetConfig) -> ReXNet:
    """A freshly initialised network for ``config`` (pure function of the config)."""
    return ReXNet(config)
