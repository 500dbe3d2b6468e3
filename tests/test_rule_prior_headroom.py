"""benchmarks/rule_prior_headroom.py: the rule's counts, voxel recall and the Dice of a perfect veto (by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import load_benchmark


def test_counts_recall_and_the_dice_of_a_perfect_veto():
    counts = load_benchmark("rule_prior_headroom").counts
    ref = np.zeros((2, 4, 4), bool)
    ref[0, :2, :2] = True  # 4 voxels
    rule = np.zeros_like(ref)
    rule[0, :2, :1] = True  # 2 of them ...
    rule[1, 3, :] = True  # ... and 4 false positives
    c = counts(rule, ref)
    assert (c["ref"], c["rule"], c["fp"], c["fn"]) == (4, 6, 4, 2)
    assert c["dice"] == pytest.approx(2 * 2 / (6 + 4))
    assert c["recall"] == pytest.approx(0.5)
    assert c["veto_dice"] == pytest.approx(2 * 2 / (2 + 4))  # the rule's 2 true voxels against the 4 of the lesion


def test_a_case_without_a_lesion_has_no_recall_or_veto_ceiling():
    counts = load_benchmark("rule_prior_headroom").counts
    c = counts(np.ones((2, 2, 2), bool), np.zeros((2, 2, 2), bool))
    assert math.isnan(c["recall"]) and math.isnan(c["veto_dice"])
    assert c["fp"] == 8 and c["fn"] == 0
