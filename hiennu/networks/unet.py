"""U-Net built from a :class:`~hiennu.plans.NetworkPlan` (the paper's architecture), 3D or 2D.

Encoder stage s: two 3x3x3 convolutions, each followed by a norm (batch norm as in the paper, or
instance norm for small patch batches, ``plan.norm``) and LeakyReLU, then dropout
``dropout_per_stage[s]``; stages after the first start with a max-pool. The last stage is the
bottleneck. Each decoder stage up-samples with a transpose convolution, concatenates the skip
connection, and applies two convolutions (same norm/activation/dropout as the matching encoder
stage). A 1x1x1 convolution gives the logits.

Input ``(B, in_channels, z, y, x)`` with each spatial size divisible by
``plan.downsampling_factor_zyx``; output logits ``(B, out_channels, z, y, x)``.

``plan.spatial_dims`` 2 (nnU-Net's ``2d``) builds the same network from 2D layers (3x3 convolutions,
``(y, x)`` pool kernels, the z entry of each kernel being 1) and runs it on every slice: the input's z
axis is folded into the batch, so the interface stays ``(B, C, z, y, x)`` in and out and the same
sliding window, losses and predictor serve both; one slice deep in training, every slice of a case at
once in prediction. With
``deep_supervision`` in training mode the output is a list: full resolution first, then one
lower-resolution logit map per decoder stage below it.

``plan.context_slices`` c > 0 (2D only, "2.5D") gives each slice its c neighbours on either side as extra
input channels: the 2D network's first convolution takes ``in_channels * (2c + 1)`` channels, stacked by
slice offset (-c first, each offset with every input channel) so a slice can tell a one-slice speck from a
lesion that goes on. In training mode the outer c slices of the input on either side are context only and
the output has ``z - 2c`` slices (the trainer's target is cropped to match); in eval mode (validation,
prediction) the input is first padded by c zero slices on either side, so the output has all z slices and a
case of one slice still predicts. Zero is what a training patch holds beyond its case's brain box (the patch is
padded with zeros there, and normalization puts every voxel outside the brain at 0), so an edge slice sees the
same missing neighbours in prediction as in training.

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
import platform

import torch
import torch.nn.functional as F
from torch import nn

from hiennu.plans import NetworkPlan


def _cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled()


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters, same state dict) that runs in float32 under CPU autocast when its input is
    thinner than its kernel along some axis (a 2-voxel-deep input of a 3x3x3 kernel, say); in bfloat16 otherwise.

    Why: on a CPU with native bfloat16 (AVX512-BF16; torch 2.13 with oneDNN 3.12, where it was measured) the
    bfloat16 backward of a 3x3x3 convolution whose input is 2 voxels deep (and has about 12 or more channels)
    reads memory it never wrote: its gradients are wrong (relative error about 1 against float32), differ from
    run to run, and are NaN or infinite whenever the freed memory it reads held such values, so a ``cpu_bf16``
    training step diverged at random (``tests/test_cpu_bf16.py``). Depths 1, 3 and more, thin y or x axes,
    1x1x1 and transposed convolutions and pooling were measured correct; the guard is a little wider than the
    failure (any axis thinner than the kernel) because such inputs only occur at the bottleneck of a small grid
    (16 slices pooled three times), where float32 costs next to nothing. Forward, CUDA and float32 runs are
    unchanged by this guard (the input is only cast under CPU autocast).

    Without autograd (validation, prediction), in float32 on a CPU, it calls oneDNN's convolution
    (``aten.mkldnn_convolution``) itself. Why: for a batch of one, torch's dispatcher sends a 3D convolution to
    its slow reference kernel (``slow_conv3d``) whenever batch x channels x depth x height is at most 20480: seven
    of the fifteen convolutions of a planned ``3d_fullres`` window (the first, with 2 input channels, and most of
    the deeper stages, 1 x 64 x 12 x 22 say) and every one of a small volume. oneDNN computes the same sums 2-12x
    faster there, the window's whole forward 1.4x (a 2-core AVX2 EPYC, torch 2.13;
    ``benchmarks/bench_inference_convolutions.py``). Training (autograd on), other
    dtypes, CUDA, ``padding="same"`` and CPUs other than x86-64 keep torch's own dispatch, and so does an input
    oneDNN refuses.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and _cpu_autocast_enabled():
            if any(size < k for size, k in zip(x.shape[2:], self.kernel_size)):
                with torch.autocast("cpu", enabled=False):
                    return super().forward(x.float())
        elif _onednn_applies(self, x):
            try:
                return torch.ops.aten.mkldnn_convolution(x, self.weight, self.bias, list(self.padding),
                                                         list(self.stride), list(self.dilation), self.groups)
            except RuntimeError:  # a oneDNN build that refuses this input: torch's own dispatch decides
                pass
        return super().forward(x)


_X86_64 = platform.machine().lower() in {"x86_64", "amd64"}


def _onednn_applies(conv: nn.Conv3d, x: torch.Tensor) -> bool:
    """Whether a float32 CPU convolution without autograd goes straight to oneDNN (see :class:`Conv3d`); on x86-64
    only, where it was measured (on an ARM CPU torch's build and its choice of kernel differ)."""
    return (_X86_64 and x.device.type == "cpu" and x.dtype == torch.float32 and conv.weight.dtype == torch.float32
            and not torch.is_grad_enabled() and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


class _InstanceNormByGroups:
    """Instance norm that, without autograd in float32 on a CPU, computes its statistics with ``F.group_norm``
    (one group per channel: the same formula, per sample and channel over the spatial axes, biased variance,
    ``eps`` inside the square root, then the affine weight and bias). Same parameters, same state dict.

    Why: on a CPU torch's instance norm (batch norm over the input viewed as one sample of batch x channels) is
    3-5x slower than its group norm kernel on the same tensor: 9.4 against 3.1 ms for a full-resolution norm of a
    ``3d_fullres`` window (16 x 48 x 88 x 72), 5.2 against 1.1 ms for one of a ``2d`` case's slices (30 x 12 x 96
    x 80), values within 1e-6 (a 2-core AVX2 EPYC, torch 2.13; benchmarks.md, "One window over the case").
    Training (autograd on: its numbers stay the ones results.md reports), other dtypes, running statistics and
    CUDA keep torch's instance norm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _group_norm_applies(self, x):  # type: ignore[arg-type]
            return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)  # type: ignore[attr-defined]
        return super().forward(x)  # type: ignore[misc]


def _group_norm_applies(norm: nn.modules.instancenorm._InstanceNorm, x: torch.Tensor) -> bool:
    """Whether an instance norm computes by group norm (see :class:`_InstanceNormByGroups`): float32 on a CPU without
    autograd, affine, no running statistics."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled() and norm.affine
            and not norm.track_running_stats)


class InstanceNorm3d(_InstanceNormByGroups, nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` with the CPU inference path of :class:`_InstanceNormByGroups`."""


class InstanceNorm2d(_InstanceNormByGroups, nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` with the CPU inference path of :class:`_InstanceNormByGroups`."""


_LAYERS = {3: (Conv3d, nn.ConvTranspose3d, nn.MaxPool3d, nn.Dropout3d, nn.BatchNorm3d, InstanceNorm3d),
           2: (nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d, nn.Dropout2d, nn.BatchNorm2d, InstanceNorm2d)}


def make_norm(kind: str, channels: int, spatial_dims: int = 3) -> nn.Module:
    """``batch`` -> BatchNorm, ``instance`` -> InstanceNorm with affine parameters (nnU-Net's choice), 2D or 3D."""
    batch, instance = _LAYERS[spatial_dims][4:]
    if kind == "batch":
        return batch(channels)
    if kind == "instance":
        return instance(channels, affine=True)
    raise ValueError(f"network plan: unknown norm {kind!r}; choose 'batch' or 'instance'")


class ConvBlock(nn.Sequential):
    """(conv -> norm -> LeakyReLU) x 2 -> dropout, in ``spatial_dims`` dimensions."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, dropout: float, negative_slope: float,
                 norm: str = "batch", spatial_dims: int = 3):
        conv, dropout_layer = _LAYERS[spatial_dims][0], _LAYERS[spatial_dims][3]
        pad = kernel_size // 2
        layers: list[nn.Module] = []
        for i in range(2):
            layers += [conv(in_ch if i == 0 else out_ch, out_ch, kernel_size, padding=pad, bias=False),
                       make_norm(norm, out_ch, spatial_dims), nn.LeakyReLU(negative_slope, inplace=True)]
        if dropout > 0:
            layers.append(dropout_layer(dropout))
        super().__init__(*layers)


class UNet(nn.Module):
    def __init__(self, plan: NetworkPlan):
        super().__init__()
        feats = list(plan.features_per_stage)
        if len(plan.pool_kernel_sizes) != len(feats) - 1:
            raise ValueError("network plan: need one pool kernel per down-sampling step "
                             f"({len(feats) - 1}), got {len(plan.pool_kernel_sizes)}")
        if len(plan.dropout_per_stage) != len(feats):
            raise ValueError(f"network plan: need one dropout value per stage ({len(feats)}), "
                             f"got {len(plan.dropout_per_stage)}")
        dims = plan.spatial_dims
        if dims not in _LAYERS:
            raise ValueError(f"network plan: spatial_dims must be 2 or 3, got {dims}")
        if dims == 2 and any(int(k[0]) != 1 for k in plan.pool_kernel_sizes):
            raise ValueError(f"network plan: a 2D network cannot pool along z; pool kernels "
                             f"{plan.pool_kernel_sizes} need z = 1")
        context = int(plan.context_slices)
        if context < 0:
            raise ValueError(f"network plan: context_slices must be 0 or more, got {plan.context_slices}")
        if context and dims != 2:
            raise ValueError(f"network plan: context_slices {context} needs a 2D network (spatial_dims 2); "
                             f"a 3D network sees its neighbours already")
        conv, transpose, pool_layer = _LAYERS[dims][:3]
        self.plan = plan
        k, slope = plan.kernel_size, plan.negative_slope
        self.encoder = nn.ModuleList()
        self.pools = nn.ModuleList()
        in_ch = plan.in_channels * (2 * context + 1)
        for s, f in enumerate(feats):
            if s > 0:
                self.pools.append(pool_layer(self._kernel(plan.pool_kernel_sizes[s - 1])))
            self.encoder.append(ConvBlock(in_ch, f, k, plan.dropout_per_stage[s], slope, plan.norm, dims))
            in_ch = f
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        for s in reversed(range(len(feats) - 1)):
            pool = self._kernel(plan.pool_kernel_sizes[s])
            self.ups.append(transpose(feats[s + 1], feats[s], pool, stride=pool))
            self.decoder.append(ConvBlock(2 * feats[s], feats[s], k, plan.dropout_per_stage[s], slope, plan.norm,
                                          dims))
            self.heads.append(conv(feats[s], plan.out_channels, 1))
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

    def _kernel(self, kernel_zyx: list[int]) -> tuple[int, ...]:
        """A (z, y, x) pool kernel as this network's layers take it ((y, x) in 2D)."""
        kernel = tuple(int(v) for v in kernel_zyx)
        return kernel[1:] if self.plan.spatial_dims == 2 else kernel

    def rule_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The prior ``k * (t - x[:, c])``, at most ``rule_prior_cap`` when set, as ``(B, 1, *spatial)`` logits.
        With context slices ``x`` is the stacked input and ``c`` the centre slice's channel."""
        c = self.plan.rule_prior_channel + int(self.plan.context_slices) * self.plan.in_channels
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
        if self.plan.spatial_dims == 3:
            return self._forward(x)
        if x.dim() != 5:
            raise ValueError(f"expected a (B, C, z, y, x) input, got shape {tuple(x.shape)}")
        x = self._with_context(x)
        b, c, z, h, w = x.shape
        out = self._forward(x.transpose(1, 2).reshape(b * z, c, h, w))
        unfold = lambda t: t.reshape(b, z, *t.shape[1:]).transpose(1, 2)  # noqa: E731
        return [unfold(t) for t in out] if isinstance(out, list) else unfold(out)

    def _with_context(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, z, y, x)`` -> ``(B, C * (2c + 1), z', y, x)``: each output slice with its c neighbours either
        side as channels (offset -c first); z' = z - 2c in training, z in eval (c zero slices added either side, as
        training pads a patch beyond its case)."""
        context = int(self.plan.context_slices)
        if not context:
            return x
        if not self.training:
            x = F.pad(x, (0, 0, 0, 0, context, context))
        depth = x.shape[2] - 2 * context
        if depth < 1:
            raise ValueError(f"a training input needs more than 2 x context_slices ({context}) slices, got "
                             f"{x.shape[2]}: set patch_size_zyx[0] to at least {2 * context + 1}")
        return torch.cat([x[:, :, i:i + depth] for i in range(2 * context + 1)], dim=1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
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


UNet3D = UNet  # the name of earlier versions


def build_network(plan: NetworkPlan) -> UNet:
    """The U-Net that ``plan`` describes (2D or 3D), freshly initialized (PyTorch defaults)."""
    return UNet(plan)
