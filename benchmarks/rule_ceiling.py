"""What the ZADC rule leaves within reach: the best Dice a network that starts from it could score.

hiennu's networks start from the challenge's rule ``ZADC < t`` (``network.rule_prior``). In ``veto`` mode
(the planner's) a network can remove the rule's voxels but hardly add any (at most log 2 logits, a few
hundredths of a z-score past ``t`` at ``k`` = 10), so a case's Dice can never exceed that of the *perfect
veto*, the rule's voxels that are lesion: ``2 |R ∩ G| / (|R ∩ G| + |G|)``. And most of what post-processing
removes are whole components, so the *perfect component filter* (the rule's components that touch the
reference, all of them kept whole) bounds what a lesion filter can do. This script prints, for each
threshold ``t`` (``--thresholds``), over the cases of a raw dataset (``imagesTr``, ``labelsTr``):

- the rule's mean Dice and the share of lesion voxels it finds (voxel sensitivity, pooled over cases);
- the mean Dice of the perfect veto of the rule;
- the mean Dice of the perfect component filter on the rule (26-connected components), and with
  ``--max-adc A`` the same after the ADC cap (voxels with ADC > A dropped first, as the post-processing's cap).

Means are over cases, each case's Dice as :func:`hiennu.masks.dice` (1 when rule and reference are both
empty). These are ceilings computed with the reference, not scores: no model reaches them. Why a script of its
own: it reads only the raw cases, and a reader judging a score goal against the veto design needs the ceiling.
The cases are read by :func:`hiennu.postprocessing.rule_reference.load_rule_cases`, the components kept by
:func:`hiennu.postprocessing.components.keep_components_touching` and the cap applied by
:func:`hiennu.postprocessing.record.apply_postprocessing`, the code the post-processing itself runs.

    python benchmarks/rule_ceiling.py -d BONBID --max-adc 1392
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from hiennu.errors import HiennuError
from hiennu.io.channels import adc_zadc_channels
from hiennu.io.dataset_json import load_dataset_json
from hiennu.masks import dice, rule_mask
from hiennu.paths import raw_root, resolve_dataset
from hiennu.postprocessing.components import keep_components_touching
from hiennu.postprocessing.record import PostProcessing, apply_postprocessing
from hiennu.postprocessing.rule_reference import load_rule_cases

THRESHOLDS = (-3.0, -2.5, -2.0, -1.5, -1.0)


@dataclass
class CaseCeiling:
    """One case at one threshold: Dice of the rule, of its perfect veto and of its perfect component filter
    (without and with the ADC cap), and the lesion voxels found and present."""

    rule: float
    veto: float
    components: float
    components_capped: float | None
    found: int
    lesion: int


def case_ceiling(zadc: np.ndarray, adc: np.ndarray, ref: np.ndarray, threshold: float,
                 max_adc: float | None = None) -> CaseCeiling:
    """The ceilings of one case (arrays (z, y, x) on one grid: raw ZADC, raw ADC, reference mask)."""
    ref = np.asarray(ref) != 0
    rule = rule_mask(zadc, adc, threshold)
    hit = rule & ref
    capped = None
    if max_adc is not None:
        capped = dice(ref, keep_components_touching(apply_postprocessing(rule, PostProcessing(max_adc=max_adc),
                                                                         adc=adc), ref))
    return CaseCeiling(dice(ref, rule), dice(ref, hit), dice(ref, keep_components_touching(rule, ref)), capped,
                       int(hit.sum()), int(ref.sum()))


def ceilings(raw_dir: Path, thresholds: Sequence[float], max_adc: float | None) -> dict[float, list[CaseCeiling]]:
    dataset = load_dataset_json(raw_dir)
    adc_zadc_channels(dataset.channel_names, required=True, source=str(raw_dir / "dataset.json"))
    cases = sorted(p.name[:-len(dataset.file_ending)] for p in (raw_dir / "labelsTr").glob(f"*{dataset.file_ending}"))
    if not cases:
        raise HiennuError(f"{raw_dir / 'labelsTr'} holds no {dataset.file_ending} labels")
    loaded = load_rule_cases(raw_dir, cases)  # raw ZADC, ADC and label, each image checked against its label's grid
    return {t: [case_ceiling(c.zadc, c.adc, c.ref, t, max_adc) for c in loaded.values()] for t in thresholds}


def table(results: dict[float, list[CaseCeiling]], max_adc: float | None) -> str:
    capped = f" | perfect component filter after ADC <= {max_adc:g}" if max_adc is not None else ""
    lines = [f"| ZADC < t | cases | rule Dice | lesion voxels found | perfect veto Dice | perfect component filter{capped} |",
             "|---|---|---|---|---|---|" + ("---|" if max_adc is not None else "")]
    for t, rows in results.items():
        found = sum(r.found for r in rows) / max(sum(r.lesion for r in rows), 1)
        line = (f"| {t:g} | {len(rows)} | {np.mean([r.rule for r in rows]):.3f} | {found:.3f} | "
                f"{np.mean([r.veto for r in rows]):.3f} | {np.mean([r.components for r in rows]):.3f} |")
        if max_adc is not None:
            line += f" {np.mean([r.components_capped for r in rows]):.3f} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--dataset", required=True, help="dataset name or number under $hiennu_raw")
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    parser.add_argument("--max-adc", type=float, default=None, help="ADC cap (10^-6 mm^2/s) for the last column")
    args = parser.parse_args(argv)
    try:
        raw_dir = raw_root() / resolve_dataset(args.dataset, [raw_root()])
        print(table(ceilings(raw_dir, args.thresholds, args.max_adc), args.max_adc))
    except HiennuError as error:
        parser.exit(1, f"rule_ceiling.py: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
