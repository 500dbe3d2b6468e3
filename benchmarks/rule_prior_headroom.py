"""How much can a network on top of the ZADC rule prior gain, on the grid it trains on?

The rule prior (``network.rule_prior``) starts a model at ``ZADC < -2``; in ``veto`` mode the network may
only lower the rule's logits (raise them by at most log 2). That is the right constraint when the
rule over-calls, as it does in native geometry. This script measures whether it also holds on the
configuration's *training grid* (brain crop, resampled spacing), where the loss is computed:

1. For every case of the dataset, the rule against the reference on the preprocessed grid and in
   native geometry: voxels of the reference, of the rule, the rule's false positives (FP) and false
   negatives (FN), the Dice of the rule, its voxel recall and the Dice of a perfect veto (every FP removed,
   no FN recovered: about the ceiling of a veto network, which raises the rule's logits by log 2 at most);
   and the untrained prior model's prediction (the rule on the grid, back to native geometry with the
   plans' ``prediction_interpolation``) against the reference. Trilinear values between thick native
   slices smooth the z-map, lesion borders fall above the threshold, and FN grows on the grid;
   ``image_interpolation: nearest`` avoids that.
2. On ``--batches`` training batches as the trainer samples them (augmented patches), the training
   loss of the rule prior, of the best a veto can do (every FP set to -20 logits, every FN raised by
   the veto's log 2), and of the reference itself (+-20 logits).
3. With ``--fit-steps S``, the trainer's own optimizer step repeated S times on the first batch:
   the loss every 5 steps, i.e. how fast the network can fit one fixed batch at all.

Usage (the BONBID dev set as converted and preprocessed in results.md)::

    python benchmarks/rule_prior_headroom.py -d BONBID -p VetoK10Lr3 --batches 8 --fit-steps 30

Needs the plans ``-p`` to have ``network.rule_prior``. Prints Markdown tables; changes nothing.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from hiennu.geometry.cropping import CropRecord, restore_to_native
from hiennu.io.dataset_json import load_dataset_json
from hiennu.io.image import read_image
from hiennu.masks import dice, rule_mask
from hiennu.paths import raw_root, resolve_dataset
from hiennu.training.data import load_preprocessed_case
from hiennu.training.options import TrainingOptions
from hiennu.training.trainers import get_trainer_class


def counts(rule: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Voxel counts of the reference, the rule, FP (rule, not reference), FN (reference, not rule), the Dice;
    and, for a case with a lesion, the rule's voxel recall and the Dice of a perfect veto (the rule's voxels
    inside the reference: what a veto network could reach at best); NaN for a case without one."""
    rule, ref = rule.astype(bool), ref.astype(bool)
    n_ref, hit = int(ref.sum()), int((rule & ref).sum())
    return {"ref": n_ref, "rule": int(rule.sum()), "fp": int((rule & ~ref).sum()),
            "fn": int((ref & ~rule).sum()), "dice": dice(rule, ref),
            "recall": hit / n_ref if n_ref else math.nan,
            "veto_dice": 2 * hit / (hit + n_ref) if n_ref else math.nan}


def grid_and_native(trainer, raw_dir, ending: str, zadc_channel: int, adc_channel: int,
                    threshold: float) -> list[tuple[str, dict, dict, dict]]:
    """(case, counts on the preprocessed grid, counts in native geometry, counts of the untrained prior
    model's prediction back in native geometry) for every case of the fold's split."""
    rows = []
    net = trainer.network.eval()
    for case in sorted(trainer.train_cases + trainer.val_cases):
        data, seg, props = load_preprocessed_case(trainer.case_dir, case)
        grid = counts(np.asarray(data[zadc_channel]) < threshold, np.asarray(seg[0]) > 0)
        zadc, _ = read_image(raw_dir / "imagesTr" / f"{case}_{zadc_channel:04d}{ending}", dtype=np.float32)
        adc, _ = read_image(raw_dir / "imagesTr" / f"{case}_{adc_channel:04d}{ending}", dtype=np.float32)
        ref, _ = read_image(raw_dir / "labelsTr" / f"{case}{ending}", dtype=np.uint8)
        with torch.no_grad():
            prob = torch.sigmoid(net.rule_logits(torch.from_numpy(np.array(data))[None]))[0, 0].numpy()
        back = restore_to_native(prob, CropRecord.from_dict(props["crop"]), trainer.config.prediction_interpolation)
        prior = back >= 0.5  # as the predictor thresholds it (no brain mask inside the box)
        rows.append((case, grid, counts(rule_mask(zadc, adc, threshold), ref > 0), counts(prior, ref > 0)))
    return rows


def batch_losses(trainer, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[dict[str, float]]:
    """The training loss of the rule prior, of the best veto and of the reference, per batch."""
    net = trainer.network.eval()
    out = []
    with torch.no_grad():
        for data, target in batches:
            prior = net.rule_logits(data).float()
            rule, ref = prior > 0, target > 0.5
            veto = prior.clone()
            veto[rule & ~ref] = -20.0
            veto[ref & ~rule] += math.log(2.0)
            perfect = torch.where(ref, 20.0, -20.0)
            out.append({"rule": float(trainer.loss(prior, target)), "veto": float(trainer.loss(veto, target)),
                        "perfect": float(trainer.loss(perfect, target)), "ref": int(ref.sum()),
                        "fp": int((rule & ~ref).sum()), "fn": int((ref & ~rule).sum())})
    return out


def fit_one_batch(trainer, batch: tuple[torch.Tensor, torch.Tensor], steps: int) -> tuple[list[float], float]:
    """The segmentation loss over ``steps`` repeated training steps on one batch, and the seconds taken."""
    trainer.network.train()
    started = time.perf_counter()
    losses = [float(trainer._train_step(*batch).detach()) for _ in range(steps)]
    return losses, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-d", "--dataset", required=True)
    ap.add_argument("-p", "--plans-name", required=True, help="plans identifier with network.rule_prior")
    ap.add_argument("-c", "--configuration", default=None)
    ap.add_argument("--trainer", default="TrainerDiceFocal")
    ap.add_argument("--fold", type=int, default=0, help="fold whose training cases the batches come from")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--fit-steps", type=int, default=0)
    args = ap.parse_args()

    options = TrainingOptions(dataset=args.dataset, configuration=args.configuration, fold=args.fold,
                              plans_name=args.plans_name, num_workers=0, device="cpu")
    trainer = get_trainer_class(args.trainer)(options)
    plan = trainer.config.network
    if not plan.rule_prior:
        raise SystemExit(f"plans {args.plans_name}: network.rule_prior is off; nothing to measure")
    raw_dir = raw_root() / resolve_dataset(args.dataset)
    ending = load_dataset_json(raw_dir).file_ending
    adc_channel = 1 - plan.rule_prior_channel if plan.in_channels == 2 else 0

    rows = grid_and_native(trainer, raw_dir, ending, plan.rule_prior_channel, adc_channel, plan.rule_prior_threshold)
    print(f"## The rule ZADC < {plan.rule_prior_threshold:g} against the reference, {len(rows)} cases "
          f"(configuration {args.configuration or 'of the plans'}: training grid vs native geometry)\n")
    print("| geometry | reference voxels | rule voxels | FP | FN | FN / reference | mean Dice of the rule | "
          "mean voxel recall of the rule (cases with a lesion) | mean Dice of a perfect veto (cases with a lesion) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, name in ((1, "training grid"), (2, "native"), (3, "untrained prior model, back to native")):
        ref, rule = sum(r[k]["ref"] for r in rows), sum(r[k]["rule"] for r in rows)
        fp, fn = sum(r[k]["fp"] for r in rows), sum(r[k]["fn"] for r in rows)
        print(f"| {name} | {ref} | {rule} | {fp} | {fn} | {fn / max(ref, 1):.3f} | "
              f"{np.mean([r[k]['dice'] for r in rows]):.3f} | {np.nanmean([r[k]['recall'] for r in rows]):.3f} | "
              f"{np.nanmean([r[k]['veto_dice'] for r in rows]):.3f} |")
    more_fn = sum(r[1]["fn"] > r[1]["fp"] for r in rows if r[1]["ref"])
    print(f"\ncases with a lesion where FN > FP on the grid: {more_fn} of {sum(1 for r in rows if r[1]['ref'])}\n")

    loader = trainer.build_batches()
    try:
        it = loader.epoch(0, args.batches)
        batches = [next(it) for _ in range(args.batches)]
    finally:
        loader.close()
    print(f"## Training loss ({args.trainer}) on {args.batches} training batches of fold {args.fold}\n")
    print("| batch | reference voxels | FP | FN | rule prior | best veto | reference |")
    print("|---|---|---|---|---|---|---|")
    stats = batch_losses(trainer, batches)
    for i, s in enumerate(stats):
        print(f"| {i} | {s['ref']} | {s['fp']} | {s['fn']} | {s['rule']:.4f} | {s['veto']:.4f} | {s['perfect']:.4f} |")
    print(f"| mean | | | | {np.mean([s['rule'] for s in stats]):.4f} | {np.mean([s['veto'] for s in stats]):.4f} | "
          f"{np.mean([s['perfect'] for s in stats]):.4f} |")

    if args.fit_steps:
        losses, seconds = fit_one_batch(trainer, batches[0], args.fit_steps)
        print(f"\n## {args.fit_steps} steps on batch 0 (mode {plan.rule_prior_mode}, cap {plan.rule_prior_cap}, "
              f"lr {trainer.training.learning_rate:g}): {seconds:.0f} s\n")
        print("loss every 5 steps: " + ", ".join(f"{v:.4f}" for v in losses[::5]) + f"; last {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
