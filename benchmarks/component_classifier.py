"""A small 3D CNN trained on the ZADC rule's components themselves, scored as the judge of judged-rule.

The judged-rule post-processing keeps or drops each component of the rule ``ZADC < -2`` by a logistic filter on
three hand-made features and a network's mean probability over the component. benchmarks/component_judgment.py
found that no segmentation network trained here ranks the components much better than their volume (results.md,
session 37). This script asks the question directly (recipe 32 of results.md, session 38): for each fold ``k`` of a
trained model's split,

- every 26-connected component of the rule in the brain (no ADC cap) of every case is cut out: a crop of
  :data:`CROP` samples at :data:`STEP_MM` mm (z, y, x) centred on its centroid, five channels (ADC / 1000 clipped
  to [0, 3] and ZADC / 5 clipped to [-2, 2], trilinear; the component, the rest of the rule and the brain,
  nearest), and six numbers (the filter's three hand-made features and the centroid's place in the brain's
  bounding box, z, y and the distance of x from the middle); a component is a lesion when it shares a voxel with
  the reference;
- a :class:`Judge` is trained on the other folds' components (balanced binary cross-entropy, mirroring in x,
  shifts of up to :data:`SHIFT` samples, ADC scaled by 0.9-1.1) and scores fold ``k``'s (mean of the crop and its
  x-mirror);
- each score is painted on its component's voxels (0 elsewhere) and written as fold ``k``'s ``CASE.npz`` of a new
  model folder ``OUT`` beside the source model, whose validation masks and records are hard links of the source's.

So the package's own judged-rule post-processing (``benchmarks/postprocessing_cv.py -m OUT --candidates
judged-rule``) and ``benchmarks/component_judgment.py -m OUT`` score the CNN's judgment unchanged. The script also
prints the nested Dice of the CNN deciding alone (recipe 33): after each fold's ADC cap, the components scoring
>= 0.5 are kept.

Why hand-written: no library of the design card classifies an image's connected components; torch trains the net,
scipy cuts the crops and labels the components, the package computes the features, the cap and the Dice. The
output folder is written as ``OUT.partial`` and renamed when complete; an existing ``OUT`` is never overwritten.

    python benchmarks/component_classifier.py -d BONBID -m TrainerDiceFocal__hiennuPlans__3d_fullres \\
        -o CompCNN__hiennuPlans__3d_fullres
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from hiennu.ensembling.cv_probabilities import collect_model_cv
from hiennu.errors import HiennuError
from hiennu.io.dataset_json import load_dataset_json
from hiennu.io.image import read_image
from hiennu.inference.folder_prediction import write_probabilities
from hiennu.masks import brain_mask, dice, rule_mask
from hiennu.paths import ModelFolder, raw_root, resolve_dataset, results_root
from hiennu.postprocessing.candidates import FIXED_CAP_QUANTILE
from hiennu.postprocessing.lesion_filter import FEATURES, FEATURES_WITH_PROBABILITY, component_features
from hiennu.postprocessing.record import PostProcessing
from hiennu.postprocessing.selection import CaseImages, caps_from, load_cases

CROP = (16, 32, 32)          # samples (z, y, x) the network sees
STEP_MM = (3.0, 2.5, 2.5)    # mm between samples (z, y, x): a 48 x 80 x 80 mm window
SHIFT = 2                    # samples of random shift each way in training; crops are cut SHIFT wider
CHANNELS = 5
SCALARS = len(FEATURES) + 3
EPOCHS = 30
BATCH = 32
DECISION = 0.5               # the balanced loss's break-even, for the CNN deciding alone
FOLDS = (0, 1, 2, 3, 4)


@dataclass
class CaseComponents:
    """One case's rule components: ``labels`` (int32 (z, y, x), 0 = none, components from 1), ``crops`` (float32
    (n, CHANNELS, *CROP + 2 SHIFT)), ``scalars`` (float64 (n, SCALARS)) and ``lesion`` (bool (n,))."""

    labels: np.ndarray
    crops: np.ndarray
    scalars: np.ndarray
    lesion: np.ndarray


def case_components(c: CaseImages) -> CaseComponents:
    """The rule's components of one case, cut out as the module docstring says."""
    rule = rule_mask(c.zadc, c.adc)
    brain = brain_mask(c.adc)
    labels, features = component_features(rule, brain, c.spacing_zyx, FEATURES)
    n = features.shape[0]
    shape = tuple(s + 2 * SHIFT for s in CROP)
    if n == 0:
        return CaseComponents(labels, np.zeros((0, CHANNELS) + shape, np.float32), np.zeros((0, SCALARS)),
                              np.zeros(0, bool))
    index = np.arange(1, n + 1)
    lesion = np.asarray(ndimage.maximum(c.ref, labels, index), float) > 0
    centroids = np.asarray(ndimage.center_of_mass(labels > 0, labels, index), float).reshape(n, 3)
    where = np.nonzero(brain)
    low = np.array([a.min() for a in where], float)
    span = np.maximum(np.array([a.max() for a in where], float) - low, 1.0)
    place = (centroids - low) / span
    place[:, 2] = np.abs(place[:, 2] - 0.5)
    offsets_mm = np.stack(np.meshgrid(*[(np.arange(s) - (s - 1) / 2.0) * step for s, step in zip(shape, STEP_MM)],
                                      indexing="ij"))
    steps = offsets_mm / np.asarray(c.spacing_zyx, float)[:, None, None, None]
    images = [(np.clip(c.adc / 1000.0, 0.0, 3.0), 1), (np.clip(c.zadc / 5.0, -2.0, 2.0), 1)]
    crops = np.zeros((n, CHANNELS) + shape, np.float32)
    for i in range(n):
        coords = centroids[i][:, None, None, None] + steps
        masks = [labels == i + 1, rule & (labels != i + 1), brain]
        for ch, (image, order) in enumerate(images + [(m.astype(np.float32), 0) for m in masks]):
            crops[i, ch] = ndimage.map_coordinates(image, coords, order=order, mode="constant", cval=0.0)
    return CaseComponents(labels, crops, np.concatenate([features, place], axis=1), lesion)


class Judge(nn.Module):
    """Three 3x3x3 convolution stages (8, 16, 32 channels, batch norm, ReLU, max-pooling by 2), the mean and the
    maximum of the last stage, the standardized scalars beside them, and two dense layers (32 units, dropout 0.3)
    to one logit that the component is a lesion. Input ``(batch, CHANNELS, *CROP)`` and ``(batch, SCALARS)``."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        width_in = CHANNELS
        for width in (8, 16, 32):
            layers += [nn.Conv3d(width_in, width, 3, padding=1), nn.BatchNorm3d(width), nn.ReLU(inplace=True),
                       nn.MaxPool3d(2)]
            width_in = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(2 * width_in + SCALARS, 32), nn.ReLU(inplace=True), nn.Dropout(0.3),
                                  nn.Linear(32, 1))

    def forward(self, crops: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        f = self.features(crops)
        return self.head(torch.cat([f.mean(dim=(2, 3, 4)), f.amax(dim=(2, 3, 4)), scalars], dim=1)).squeeze(1)


def centre(crops: np.ndarray) -> np.ndarray:
    """The unshifted :data:`CROP` window of crops cut :data:`SHIFT` wider (last three axes z, y, x)."""
    return crops[..., SHIFT:SHIFT + CROP[0], SHIFT:SHIFT + CROP[1], SHIFT:SHIFT + CROP[2]]


def augmented_batch(crops: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A training batch: each crop shifted by up to :data:`SHIFT` samples per axis, mirrored in x with probability
    0.5, its ADC channel scaled by 0.9-1.1."""
    out = np.empty((len(crops), CHANNELS) + CROP, np.float32)
    for j, crop in enumerate(crops):
        dz, dy, dx = rng.integers(0, 2 * SHIFT + 1, size=3)
        window = crop[:, dz:dz + CROP[0], dy:dy + CROP[1], dx:dx + CROP[2]]
        out[j] = window[..., ::-1] if rng.random() < 0.5 else window
        out[j, 0] *= rng.uniform(0.9, 1.1)
    return out


def train_and_score(train: CaseComponents, test: CaseComponents, seed: int = 0, epochs: int = EPOCHS,
                    log=print) -> np.ndarray:
    """Train a :class:`Judge` on ``train``'s components and return its probabilities for ``test``'s (float32 (n,));
    the scalars are standardized by ``train``'s mean and SD. Both hold both kinds of component, or
    :class:`HiennuError`."""
    if train.lesion.all() or not train.lesion.any():
        raise HiennuError("the training components are all lesions or all false ones; a judge cannot be trained")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean, sd = train.scalars.mean(0), train.scalars.std(0) + 1e-6
    train_scalars = torch.tensor((train.scalars - mean) / sd, dtype=torch.float32)
    target = torch.tensor(train.lesion, dtype=torch.float32)
    net = Judge()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    balance = torch.tensor(float((~train.lesion).sum()) / float(train.lesion.sum()))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=balance)
    n = len(train.lesion)
    for epoch in range(epochs):
        net.train()
        total = 0.0
        order = rng.permutation(n)
        for start in range(0, n, BATCH):
            batch = order[start:start + BATCH]
            if len(batch) < 2:      # batch norm needs two samples
                continue
            optimizer.zero_grad()
            loss = loss_fn(net(torch.from_numpy(augmented_batch(train.crops[batch], rng)), train_scalars[batch]),
                           target[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            log(f"    epoch {epoch + 1}: training loss {total / n:.4f}")
    net.eval()
    with torch.no_grad():
        crops = torch.from_numpy(np.ascontiguousarray(centre(test.crops)))
        scalars = torch.tensor((test.scalars - mean) / sd, dtype=torch.float32)
        logits = (net(crops, scalars) + net(torch.flip(crops, dims=(4,)), scalars)) / 2
    return torch.sigmoid(logits).numpy().astype(np.float32)


def pooled(parts: Sequence[CaseComponents]) -> CaseComponents:
    """Several cases' components as one set (labels are not pooled: an empty array)."""
    return CaseComponents(np.zeros(0, np.int32), np.concatenate([p.crops for p in parts]),
                          np.concatenate([p.scalars for p in parts]), np.concatenate([p.lesion for p in parts]))


def painted(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each component's score on its voxels, 0 elsewhere; float32, the shape of ``labels``."""
    table = np.zeros(len(scores) + 1, np.float32)
    table[1:] = scores
    return table[labels]


def own_decision_dice(cases: dict[str, CaseImages], fold_of: dict[str, int],
                      threshold: float = DECISION) -> dict[str, float]:
    """Recipe 33: each case's Dice when, after the ADC cap of the other folds' lesions
    (:data:`FIXED_CAP_QUANTILE`), the rule's components whose mean score (the case's ``probabilities``) is at
    least ``threshold`` are kept. An empty mask of a lesion-free case scores 1."""
    out = {}
    for fold in sorted(set(fold_of.values())):
        caps = caps_from(cases, [c for c in cases if fold_of[c] != fold], (FIXED_CAP_QUANTILE,))
        capped_rule = PostProcessing(start_from_rule=True, max_adc=caps[0] if caps else None)
        for case in sorted(c for c in cases if fold_of[c] == fold):
            c = cases[case]
            labels, x = component_features(c.postprocessed(capped_rule), brain_mask(c.adc), c.spacing_zyx,
                                           FEATURES_WITH_PROBABILITY, c.probabilities)
            keep = np.concatenate([[False], x[:, 3] >= threshold])
            out[case] = float(dice(c.ref, keep[labels]))
    return out


def write_judged_model(source: Path, out: Path, dataset: str, seed: int = 0, epochs: int = EPOCHS,
                       log=print, folds: Sequence[int] = FOLDS) -> tuple[dict[str, CaseImages], dict[str, int]]:
    """Train one judge per fold of ``source``'s split and write the model folder ``out`` (see the module
    docstring). ``out`` must not exist; it appears only when every fold is written. Returns the cases read, each
    with its judge's scores as ``probabilities``, and the fold that held each out."""
    if out.exists():
        raise HiennuError(f"{out} exists; choose another -o or remove it (it is never overwritten)")
    cv = collect_model_cv(source, folds, dataset)
    raw = raw_root() / dataset
    ending = load_dataset_json(raw).file_ending
    cases = load_cases({c: raw / "labelsTr" / f"{c}{ending}" for c in cv.fold_of}, raw, cv.fold_of)
    start = time.time()
    parts = {case: case_components(c) for case, c in cases.items()}
    log(f"{len(parts)} cases, {sum(len(p.lesion) for p in parts.values())} components "
        f"({sum(int(p.lesion.sum()) for p in parts.values())} lesion), cut in {time.time() - start:.0f} s")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    shutil.copytree(source, partial, copy_function=os.link, ignore=shutil.ignore_patterns("*.npz", "*.pth"))
    try:
        for fold in cv.folds:
            tic = time.time()
            train = pooled([parts[c] for c in sorted(parts) if cv.fold_of[c] != fold])
            held_out = cv.cases_of(fold)
            log(f"fold {fold}: {len(train.lesion)} training components ({int(train.lesion.sum())} lesion)")
            try:
                scores = train_and_score(train, pooled([parts[c] for c in held_out]), seed + fold, epochs, log)
            except HiennuError as error:
                raise HiennuError(f"fold {fold}: {error}") from None
            first = 0
            for case in held_out:
                n = len(parts[case].lesion)
                prob = painted(parts[case].labels, scores[first:first + n])
                first += n
                geometry = read_image(raw / "labelsTr" / f"{case}{ending}", dtype=None)[1]
                write_probabilities(prob, geometry, ModelFolder(partial).validation_probabilities(fold, case))
                cases[case] = replace(cases[case], probabilities=prob)
            log(f"fold {fold}: {len(held_out)} cases scored in {time.time() - tic:.0f} s")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    partial.rename(out)
    return cases, cv.fold_of


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--dataset", required=True, help="dataset name or number")
    parser.add_argument("-m", "--model", required=True,
                        help="the model folder (TRAINER__PLANS__CONFIG, trained with --npz) whose split and "
                             "validation masks the judge's folder takes")
    parser.add_argument("-o", "--out", required=True, help="name of the new model folder beside it")
    parser.add_argument("-f", "--folds", type=int, nargs="+", default=list(FOLDS))
    parser.add_argument("--seed", type=int, default=0, help="seed of fold 0's judge (fold k: seed + k)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args(argv)
    try:
        dataset = resolve_dataset(args.dataset, [raw_root()])
        source = Path(args.model) if Path(args.model).is_dir() else results_root() / dataset / args.model
        out = source.parent / args.out
        cases, fold_of = write_judged_model(source, out, dataset, args.seed, args.epochs,
                                            log=lambda s: print(s, flush=True), folds=args.folds)
        scores = own_decision_dice(cases, fold_of)
        print(f"wrote {out}\nthe judge deciding alone (score >= {DECISION} after each fold's ADC cap), nested Dice "
              f"over {len(scores)} cases: {np.mean(list(scores.values())):.4f}")
    except HiennuError as error:
        parser.exit(1, f"component_classifier.py: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
