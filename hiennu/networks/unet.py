"""3D U-Net built from a :class:`~hiennu.plans.NetworkPlan` (the paper's architecture).

Encoder stage s: two 3x3x3 convolutions, each followed by a norm (batch norm as in the paper, or
instance norm for small patch batches, ``plan.norm``) and LeakyReLU, then dropout
``dropout_per_stage[s]``; stages after the first start with a max-pool. The last stage is the
bottleneck. Each decoder stage up-samples with a transpose convolution, concatenates the skip
connection, and applies two convolutions (same norm/activation/dropout as the matching encoder
stage). A 1x1x1 convolution gives the logits.

Input ``(B, in_channels, z, y, x)`` with each spatial size divisible by
``plan.downsampling_factor_zyx``; output logits ``(B, out_channels, z, y, x)``. With
``deep_supervision`` in training mode the output is a list: full resolution first, then one
lower-resolution logit map per decoder stage below it.

With ``plan.rule_prior`` the full-resolution logits get ``k * (t - x[:, c])`` added: the
challenge's ZADC < t rule as a logit prior (``c`` the ZADC channel, on its atlas z-score scale;
``k`` a learnable scale, initialised to ``plan.rule_prior_scale``). The output convolutions then start
at zero, so the untrained network predicts exactly the rule and training learns corrections to it. In ``veto``
mode (``plan.rule_prior_mode``) the correction ``n`` enters as ``prior - softplus(n) + log 2``
(zero at ``n = 0``): it may lower the rule's logits without bound but raise them by at most log 2,
so the network mostly removes what the rule over-calls. ``plan.rule_prior_cap`` (when set) bounds
the prior from above, ``min(k (t - x[:, c]), cap)``, so that the rule's voxels are not saturated
and a Dice loss can still move them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hiennu.plans import NetworkPlan


def make_norm(kind: str, channels: int) -> nn.Module:
    """``batch`` -> BatchNorm3d, ``instance`` -> InstanceNorm3d with affine parameters (nnU-Net's choice)."""
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    raise ValueError(f"network plan: unknown norm {kind!r}; choose 'batch' or 'instance'")


class ConvBlock(nn.Sequential):
    """(conv3d -> norm -> LeakyReLU) x 2 -> dropout."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, dropout: float, negative_slope: float,
                 norm: str = "batch"):
        pad = kernel_size // 2
        layers: list[nn.Module] = []
        for i in range(2):
            layers += [nn.Conv3d(in_ch if i == 0 else out_ch, out_ch, kernel_size, padding=pad, bias=False),
                       make_norm(norm, out_ch), nn.LeakyReLU(negative_slope, inplace=True)]
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
            self.encoder.append(ConvBlock(in_ch, f, k, plan.dropout_per_stage[s], slope, plan.norm))
            in_ch = f
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        for s in reversed(range(len(feats) - 1)):
            pool = tuple(plan.pool_kernel_sizes[s])
            self.ups.append(nn.ConvTranspose3d(feats[s + 1], feats[s], pool, stride=pool))
            self.decoder.append(ConvBlock(2 * feats[s], feats[s], k, plan.dropout_per_stage[s], slope, plan.norm))
            self.heads.append(nn.Conv3d(feats[s], plan.out_channels, 1))
        if plan.rule_prior:
            if plan.rule_prior_mode not in ("add", "veto"):
                raise ValueError(f"network plan: unknown rule_prior_mode {plan.rule_prior_mode!r}; choose 'add' or 'veto'")
            if not 0 <= plan.rule_prior_channel < plan.in_channels:
                raise ValueError(f"network plan: rule_prior_channel {plan.rule_prior_channel} is not one of the "
                                 f"{plan.in_channels} input channels")
            self.rule_scale = nn.Parameter(torch.tensor(float(plan.rule_prior_scale)))
            for head in self.heads:
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def rule_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The prior ``k * (t - x[:, c])``, at most ``rule_prior_cap`` when set, as ``(B, 1, z, y, x)`` logits."""
        c = self.plan.rule_prior_channel
        prior = self.rule_scale * (self.plan.rule_prior_threshold - x[:, c:c + 1])
        if self.plan.rule_prior_cap is not None:
            prior = prior.clamp(max=self.plan.rule_prior_cap)
        return prior

    def _with_prior(self, out: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        if prior is None:
            return out
        if self.plan.rule_prior_mode == "veto":
            return prior - F.softplus(out) + math.log(2.0)
        return prior + out

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        prior = self.rule_logits(x) if self.plan.rule_prior else None
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
            outputs = outputs[::-1]
            outputs[0] = self._with_prior(outputs[0], prior)
            return outputs
        return self._with_prior(self.heads[-1](x), prior)


def build_network(plan: NetworkPlan) -> UNet3D:
    """The U-Net that ``plan`` describes, freshly initialized (PyTorch defaults)."""
    return UNet3D(plan)
