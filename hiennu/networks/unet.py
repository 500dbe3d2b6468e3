"""3D U-Net built from a :class:`~hiennu.planning.plans.NetworkPlan` (the paper's architecture).

Encoder stage s: two 3x3x3 convolutions, each followed by batch norm and LeakyReLU, then dropout
``dropout_per_stage[s]``; stages after the first start with a max-pool. The last stage is the
bottleneck. Each decoder stage up-samples with a transpose convolution, concatenates the skip
connection, and applies two convolutions (same norm/activation/dropout as the matching encoder
stage). A 1x1x1 convolution gives the logits.

Input ``(B, in_channels, z, y, x)`` with each spatial size divisible by
``plan.downsampling_factor_zyx``; output logits ``(B, out_channels, z, y, x)``. With
``deep_supervision`` in training mode the output is a list: full resolution first, then one
lower-resolution logit map per decoder stage below it.
"""

from __future__ import annotations

import torch
from torch import nn

from hiennu.planning.plans import NetworkPlan


class ConvBlock(nn.Sequential):
    """(conv3d -> batch norm -> LeakyReLU) x 2 -> dropout."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, dropout: float, negative_slope: float):
        pad = kernel_size // 2
        layers: list[nn.Module] = []
        for i in range(2):
            layers += [nn.Conv3d(in_ch if i == 0 else out_ch, out_ch, kernel_size, padding=pad, bias=False),
                       nn.BatchNorm3d(out_ch), nn.LeakyReLU(negative_slope, inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout3d(dropout))
        super().__init__(*layers)


class UNet3D(nn.Module):
    def __init__(self, plan: NetworkPlan):
        super().__init__()
        feats = list(plan.features_per_stage)
        if len(plan.pool_kernel_sizes) != len(feats) - 1:
            raise ValueError("network plan: need one pool kernel per down-sampling step "
                             f"({len(feats) - 1}), got {len(plan.pool_kernel_sizes)}")
        if len(plan.dropout_per_stage) != len(feats):
            raise ValueError(f"network plan: need one dropout value per stage ({len(feats)}), "
                             f"got {len(plan.dropout_per_stage)}")
        self.plan = plan
        k, slope = plan.kernel_size, plan.negative_slope
        self.encoder = nn.ModuleList()
        self.pools = nn.ModuleList()
        in_ch = plan.in_channels
        for s, f in enumerate(feats):
            if s > 0:
                self.pools.append(nn.MaxPool3d(tuple(plan.pool_kernel_sizes[s - 1])))
            self.encoder.append(ConvBlock(in_ch, f, k, plan.dropout_per_stage[s], slope))
            in_ch = f
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        for s in reversed(range(len(feats) - 1)):
            pool = tuple(plan.pool_kernel_sizes[s])
            self.ups.append(nn.ConvTranspose3d(feats[s + 1], feats[s], pool, stride=pool))
            self.decoder.append(ConvBlock(2 * feats[s], feats[s], k, plan.dropout_per_stage[s], slope))
            self.heads.append(nn.Conv3d(feats[s], plan.out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for s, block in enumerate(self.encoder):
            if s > 0:
                x = self.pools[s - 1](x)
            x = block(x)
            skips.append(x)
        skips.pop()
        outputs = []
        for up, block, head in zip(self.ups, self.decoder, self.heads):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
            if self.plan.deep_supervision and self.training:
                outputs.append(head(x))
        if self.plan.deep_supervision and self.training:
            return outputs[::-1]
        return self.heads[-1](x)


def build_network(plan: NetworkPlan) -> UNet3D:
    """The U-Net that ``plan`` describes, freshly initialized (PyTorch defaults)."""
    return UNet3D(plan)
