"""ResNet (torchvision bottleneck v1.5, no conv biases) that returns hyperpixel taps, NHWC.

Tap ids follow the official CATs numbering: id 0 is the stem output after the max-pool; id k >= 1
is the output of the k-th bottleneck counted over all stages (1-3 are layer1 of a ResNet-101),
taken after the residual add and BEFORE the block's final ReLU. Only the blocks up to the largest
tap id are built, so parameters that never reach an output do not exist.

Module names mirror torchvision (``conv1``, ``bn1``, ``layer3_12/conv2``, ``downsample_bn``) so
the checkpoint converter is a readable table.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from matchme_jax.models.batchnorm import BatchNorm

EXPANSION = 4
RESNET_STAGE_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


def stage_blocks(backbone: str, backbone_blocks: tuple[int, ...]) -> tuple[int, ...]:
    """Bottlenecks per stage of the whole backbone: `backbone_blocks` for "custom"."""
    if backbone == "custom":
        return tuple(backbone_blocks)
    return RESNET_STAGE_BLOCKS[backbone]


def stem_width(backbone: str, backbone_width: int) -> int:
    """Stem channels: `backbone_width` for "custom", 64 for the torchvision ResNets."""
    return backbone_width if backbone == "custom" else 64


# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), an untruncated normal.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def stage_widths(stage_blocks: Sequence[int], width: int) -> tuple[int, ...]:
    """Bottleneck width of each stage, ``width * 2**i``; a block outputs ``EXPANSION`` x that."""
    return tuple(width * 2**i for i in range(len(stage_blocks)))


def tap_channels(stage_blocks: Sequence[int], width: int) -> tuple[int, ...]:
    """Channels of every tap id: index 0 is the stem, index k the k-th bottleneck."""
    channels = [width]
    for blocks, stage_width in zip(stage_blocks, stage_widths(stage_blocks, width), strict=True):
        channels += [stage_width * EXPANSION] * blocks
    return tuple(channels)


def _conv(
    features: int, kernel: int, stride: int, dtype: jnp.dtype, name: str, dilation: int = 1
) -> nn.Conv:
    pad = dilation * (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation),
        use_bias=False,
        kernel_init=_conv_init,
        dtype=dtype,
        name=name,
    )


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride and dilation here, v1.5) -> 1x1 (x4) bottleneck; returns the pre-ReLU
    sum."""

    width: int
    stride: int
    project_shortcut: bool
    dtype: jnp.dtype = jnp.float32
    dilation: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, use_running_average: bool) -> jnp.ndarray:
        """[B, H, W, Cin] -> [B, H / stride, W / stride, 4 * width], before the final ReLU."""
        bn = BatchNorm
        out = _conv(self.width, 1, 1, self.dtype, "conv1")(x)
        out = nn.relu(bn(dtype=self.dtype, name="bn1")(out, use_running_average))
        out = _conv(self.width, 3, self.stride, self.dtype, "conv2", self.dilation)(out)
        out = nn.relu(bn(dtype=self.dtype, name="bn2")(out, use_running_average))
        out = _conv(self.width * EXPANSION, 1, 1, self.dtype, "conv3")(out)
        out = bn(dtype=self.dtype, name="bn3")(out, use_running_average)
        shortcut = x
        if self.project_shortcut:
            shortcut = _conv(self.width * EXPANSION, 1, self.stride, self.dtype, "downsample_conv")(
                x
            )
            shortcut = bn(dtype=self.dtype, name="downsample_bn")(shortcut, use_running_average)
        return out + shortcut


class ResNet(nn.Module):
    """Bottleneck ResNet that returns the requested taps at their native resolution.

    Attributes:
        stage_blocks: bottlenecks per stage, e.g. (3, 4, 23, 3) for ResNet-101.
        width: stem channels; stage i has bottleneck width ``width * 2**i``.
        tap_ids: strictly increasing tap ids (see the module docstring).
        dtype: compute dtype.
        dilated_stages: stages (1 = layer2, ...) whose stride 2 is replaced by dilation, as
            torchvision's `replace_stride_with_dilation`: such a stage keeps the resolution of
            the one before, its later 3x3 convolutions dilated to see as far as before. The
            parameters are the same, so strided weights load unchanged; with one dilated stage,
            its taps sampled at every other position are the strided network's.
    """

    stage_blocks: tuple[int, ...]
    tap_ids: tuple[int, ...]
    width: int = 64
    dtype: jnp.dtype = jnp.float32
    dilated_stages: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, images: jnp.ndarray, use_running_average: bool) -> list[jnp.ndarray]:
        """Run the backbone up to the last tap.

        Args:
            images: [B, H, W, 3], ImageNet-normalised.
            use_running_average: BatchNorm mode (see ``BatchNorm``).

        Returns:
            One [B, h_k, w_k, C_k] array per tap id, in ``tap_ids`` order.
        """
        x = _conv(self.width, 7, 2, self.dtype, "conv1")(images.astype(self.dtype))
        x = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(x, use_running_average))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        taps = [x] if 0 in self.tap_ids else []
        last = max(self.tap_ids)
        block_id = 0
        dilation = 1
        widths = stage_widths(self.stage_blocks, self.width)
        for stage, (blocks, width) in enumerate(zip(self.stage_blocks, widths, strict=True)):
            previous, stage_stride = dilation, 2 if stage > 0 else 1
            if stage in self.dilated_stages:
                dilation, stage_stride = dilation * stage_stride, 1
            for index in range(blocks):
                block_id += 1
                if block_id > last:
                    return taps
                block = Bottleneck(
                    width=width,
                    stride=stage_stride if index == 0 else 1,
                    project_shortcut=index == 0,
                    dtype=self.dtype,
                    dilation=previous if index == 0 else dilation,
                    name=f"layer{stage + 1}_{index}",
                )
                pre_relu = block(x, use_running_average)
                if block_id in self.tap_ids:
                    taps.append(pre_relu)
                x = nn.relu(pre_relu)
        return taps
