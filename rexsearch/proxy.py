"""The proxy of a config designed for 224x224, trained on 32x32 images (CIFAR's size).

Rule: channels, kernels, expansions, SE and activations are unchanged; the classifier gets
``num_classes`` outputs (the data set's classes); and stride-2 layers become stride 1,
earliest first (the stem, then the first stride-2 block, ...), until the total downsampling is at most
``resolution / min_feature`` (default 32 / 2 = 16). For the ReXNet and MobileNetV2
presets at 32x32 that removes the stem's stride only, so the last feature map is 2x2
instead of 1x1 and the network keeps its four downsampling stages. (Removing one more
stride, for a 4x4 map, would quadruple the proxy's MACs again: 120.6M instead of 33.5M
for rexnet-1.0, too slow for proxy training on CPUs.) The budget is always computed on
the target config at its resolution; the proxy's MACs are recorded next to it.
"""

from __future__ import annotations

from dataclasses import replace

from rexsearch.config import ReXNetConfig

#: CIFAR's image size: the resolution every proxy is trained and its rank measured at.
PROXY_RESOLUTION = 32
#: The default proxy's classifier width: CIFAR-100's classes (the default data set); a run on
#: another data set passes that set's class count.
PROXY_CLASSES = 100


def proxy_config(
    config: ReXNetConfig,
    resolution: int = PROXY_RESOLUTION,
    num_classes: int = PROXY_CLASSES,
    min_feature: int = 2,
) -> ReXNetConfig:
    """``config`` adapted to ``resolution``x``resolution`` inputs (see the module docstring)."""
    max_stride = max(1, resolution // min_feature)
    stem_stride = config.stem_stride
    strides = [b.stride for b in config.blocks]
    total = stem_stride
    for s in strides:
        total *= s
    if total > max_stride and stem_stride == 2:
        stem_stride = 1
        total //= 2
    for i, s in enumerate(strides):
        if total <= max_stride:
            break
        if s == 2:
            strides[i] = 1
            total //= 2
    blocks = tuple(replace(b, stride=s) for b, s in zip(config.blocks, strides, strict=True))
    name = f"{config.name}@proxy{resolution}" if config.name else None
    return replace(config, blocks=blocks, stem_stride=stem_stride, num_classes=num_classes, name=name)
