"""Typed plans JSON round trip and edits; the U-Net built from a network plan."""

import json

import pytest
import torch

from hiennu.errors import HiennuError
from hiennu.networks.unet import build_network
from hiennu.plans import (ChannelNormalization, Configuration, NetworkPlan, Plans, load_plans,
                          save_plans)


def _plans():
    cfg = Configuration("3d_fullres", [64, 48, 16], "memory",
                        [ChannelNormalization("ADC", "global_zscore", 1400.0, 400.0, 100.0, 3000.0),
                         ChannelNormalization("ZADC", "atlas_zscore", clip_low=-10, clip_high=10)])
    return Plans("Dataset001_BONBID", ["ADC", "ZADC"], {"3d_fullres": cfg})


def test_plans_round_trip_and_user_edit(tmp_path):
    plans = _plans()
    save_plans(plans, tmp_path)
    assert load_plans(tmp_path) == plans
    d = json.loads((tmp_path / "plans.json").read_text())
    d["configurations"]["3d_fullres"]["training"]["batch_size"] = 2
    d["configurations"]["3d_fullres"]["target_size_xyz"] = [32, 32, 16]
    (tmp_path / "plans.json").write_text(json.dumps(d))
    cfg = load_plans(tmp_path).configuration()
    assert cfg.training.batch_size == 2 and cfg.target_size_zyx == (16, 32, 32)
    assert isinstance(cfg.normalization[0], ChannelNormalization)


def test_plans_errors(tmp_path):
    d = _plans().to_dict()
    d["configurations"]["3d_fullres"]["training"]["bacth_size"] = 2
    (tmp_path / "plans.json").write_text(json.dumps(d))
    with pytest.raises(HiennuError, match="bacth_size"):
        load_plans(tmp_path)
    d = _plans().to_dict()
    d["configurations"]["3d_fullres"]["normalization"][0]["scheme"] = "magic"
    (tmp_path / "plans.json").write_text(json.dumps(d))
    with pytest.raises(HiennuError, match="magic"):
        load_plans(tmp_path)
    with pytest.raises(HiennuError, match="no configuration '2d'"):
        _plans().configuration("2d")


def test_unet_shapes_and_topology():
    plan = NetworkPlan(features_per_stage=[4, 8, 16, 32])
    net = build_network(plan)
    x = torch.randn(2, 2, 16, 24, 32)
    assert net(x).shape == (2, 1, 16, 24, 32)
    assert len(net.encoder) == 4 and len(net.decoder) == 3
    assert plan.downsampling_factor_zyx == (8, 8, 8)
    drops = [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout3d)]
    assert drops[:4] == [0.1, 0.1, 0.2, 0.3]


def test_unet_anisotropic_pooling_and_deep_supervision():
    plan = NetworkPlan(features_per_stage=[4, 8, 16], pool_kernel_sizes=[[1, 2, 2], [2, 2, 2]],
                       dropout_per_stage=[0.0, 0.1, 0.2], deep_supervision=True)
    net = build_network(plan)
    outs = net(torch.randn(1, 2, 4, 16, 16))
    assert [tuple(o.shape[2:]) for o in outs] == [(4, 16, 16), (4, 8, 8)]
    net.eval()
    assert net(torch.randn(1, 2, 4, 16, 16)).shape == (1, 1, 4, 16, 16)
    with pytest.raises(ValueError, match="pool kernel"):
        build_network(NetworkPlan(features_per_stage=[4, 8], pool_kernel_sizes=[]))
