"""Tables, paired tests and figures that compare methods (e.g. trainers of the loss study).

Inputs are per-case rows as produced by :func:`hiennu.evaluation.evaluate.evaluate_folders`
(``summary["per_case"]``): ``per_case[method]`` is a list of dicts with ``case_id``, the metric
keys (``dice``, ``masd``, ``nsd`` ...) and, when brain volumes were known, ``band``. NaN metric
values (e.g. MASD with one empty mask) are left out of means and of paired tests.

Figures are drawn on matplotlib's Agg canvas (no display needed, the global backend is left
alone) and written atomically as PNG.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import stats

from hiennu.evaluation.evaluate import summarize
from hiennu.io.atomic import atomic_path, write_text
from hiennu.masks import NO_LESION_BAND, VOLUME_BANDS

DEFAULT_METRICS = ("dice", "masd", "nsd")
CI_METRICS = ("dice", "masd", "nsd")  # shown with their 95 % bootstrap interval
STUDY_METRICS = ("dice", "masd", "nsd", "hd95", "lesion_recall", "lesion_precision")
METRIC_LABELS = {"dice": "Dice", "masd": "MASD (mm)", "nsd": "NSD (2 mm)", "hd95": "HD95 (mm)",
                 "abs_volume_diff_ml": "|ΔV| (ml)", "lesion_recall": "lesion recall",
                 "lesion_precision": "lesion precision"}
BANDS = tuple(b[0] for b in VOLUME_BANDS) + (NO_LESION_BAND,)
# metrics undefined for some cases (exactly one mask empty): the tables show their n, and their mean over
# the cases where every method of the table has them defined (``M_common_*``), so rows compare like with like
COMMON_CASE_METRICS = ("masd",)
EXTRA_LABELS = {"epochs": "epochs to stop", "steps": "steps per fold", "train_min": "training min per fold",
                "train_min_total": "training min, all folds"}


def format_mean_std(mean: float, std: float, digits: int = 3, signed: bool = False) -> str:
    """``"0.500 ± 0.120"`` (``"+0.500 ± 0.120"`` with ``signed``, for differences); ``"n/a"`` for an undefined mean,
    no ``±`` part for an undefined std."""
    if mean is None or math.isnan(mean):
        return "n/a"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    if std is None or math.isnan(std):
        return text
    return f"{text} ± {std:.{digits}f}"


def _values(rows: Sequence[dict], metric: str) -> list[float]:
    return [float("nan") if r.get(metric) is None else float(r[metric]) for r in rows]


def common_cases(per_case: Mapping[str, Sequence[dict]], metric: str) -> set[str]:
    """The case ids that every method of ``per_case`` scored with a defined (not None, not NaN) ``metric``."""
    sets = [{r["case_id"] for r in rows if r.get(metric) is not None and not math.isnan(float(r[metric]))}
            for rows in per_case.values()]
    return set.intersection(*sets) if sets else set()


def method_rows(per_case: Mapping[str, Sequence[dict]], metrics: Sequence[str] = DEFAULT_METRICS,
                extra: Mapping[str, Mapping[str, object]] | None = None) -> list[dict]:
    """One row per method: ``method``, ``num_cases`` and per metric ``M_mean``, ``M_std`` (ddof=1), ``M_n``
    (cases with a defined value), ``M_ci95_low`` and ``M_ci95_high`` (seeded percentile bootstrap of the
    mean, :func:`hiennu.evaluation.evaluate.summarize`). For the metrics of :data:`COMMON_CASE_METRICS`
    also ``M_common_mean``, ``M_common_std`` and ``M_common_n``: over the cases every method has it
    defined (:func:`common_cases`), the same cases in every row.

    ``extra[method][column]`` adds columns: a number is kept as is, a sequence of numbers (e.g.
    epochs to stop, one per fold) becomes ``column_mean`` and ``column_std``.
    """
    rows = []
    common = {m: common_cases(per_case, m) for m in metrics if m in COMMON_CASE_METRICS}
    for method, cases in per_case.items():
        row: dict = {"method": method, "num_cases": len(cases)}
        for m in metrics:
            s = summarize(_values(cases, m))
            row.update({f"{m}_mean": s["mean"], f"{m}_std": s["std"], f"{m}_n": s["n"],
                        f"{m}_ci95_low": s["ci95_low"], f"{m}_ci95_high": s["ci95_high"]})
            if m in COMMON_CASE_METRICS:
                shared = common[m]
                c = summarize(_values([r for r in cases if r["case_id"] in shared], m))
                row.update({f"{m}_common_mean": c["mean"], f"{m}_common_std": c["std"], f"{m}_common_n": len(shared)})
        for column, value in ((extra or {}).get(method) or {}).items():
            if isinstance(value, (list, tuple, np.ndarray)):
                s = summarize(value)
                row.update({f"{column}_mean": s["mean"], f"{column}_std": s["std"]})
            else:
                row[column] = value
        rows.append(row)
    return rows


def _csv_text(rows: Sequence[dict]) -> str:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def format_interval(low: float, high: float, digits: int = 3) -> str:
    """``"[0.410, 0.590]"``; ``""`` when the interval is undefined."""
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return ""
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def _metric_cell(row: dict, m: str, digits: int, with_ci: bool) -> str:
    text = format_mean_std(row[f"{m}_mean"], row[f"{m}_std"], digits)
    interval = format_interval(row.get(f"{m}_ci95_low"), row.get(f"{m}_ci95_high"), digits) if with_ci else ""
    text = f"{text} {interval}" if interval else text
    return f"{text} (n={row[f'{m}_n']})" if m in COMMON_CASE_METRICS and f"{m}_n" in row else text


def _common_cell(row: dict, m: str, digits: int) -> str:
    return format_mean_std(row[f"{m}_common_mean"], row[f"{m}_common_std"], digits)


def _markdown_cells(row: dict, metrics: Sequence[str], extra_columns: Sequence[str], digits: int,
                    ci_metrics: Sequence[str] = ()) -> list[str]:
    cells = [str(row["method"]), str(row["num_cases"])]
    cells += [_metric_cell(row, m, digits, m in ci_metrics) for m in metrics]
    cells += [_common_cell(row, m, digits) for m in _common_metrics(metrics)]
    for column in extra_columns:
        if f"{column}_mean" in row:
            cells.append(format_mean_std(row[f"{column}_mean"], row[f"{column}_std"], 1))
        else:
            value = row.get(column)
            cells.append(f"{value:.{digits}f}" if isinstance(value, float) else ("" if value is None else str(value)))
    return cells


def _common_metrics(metrics: Sequence[str]) -> list[str]:
    return [m for m in metrics if m in COMMON_CASE_METRICS]


def markdown_table(rows: Sequence[dict], metrics: Sequence[str] = DEFAULT_METRICS, digits: int = 3,
                   ci_metrics: Sequence[str] = ()) -> str:
    """Markdown table of :func:`method_rows` output: mean ± std per metric (``[low, high]``, the 95 %
    bootstrap interval of the mean, for ``ci_metrics``; MASD with its n, the cases where it is
    defined), MASD over the cases common to every row (its n in the header), then any extra columns."""
    known = {"method", "num_cases"} | {f"{m}_{s}" for m in metrics
                                       for s in ("mean", "std", "n", "ci95_low", "ci95_high",
                                                 "common_mean", "common_std", "common_n")}
    extra_columns: list[str] = []
    for row in rows:
        for key in row:
            if key in known:
                continue
            name = key[: -len("_mean")] if key.endswith("_mean") else key[: -len("_std")] if key.endswith("_std") else key
            if name not in extra_columns:
                extra_columns.append(name)
    common_n = {m: rows[0].get(f"{m}_common_n", 0) if rows else 0 for m in _common_metrics(metrics)}
    header = (["method", "cases"] + [METRIC_LABELS.get(m, m) + (" [95 % CI]" if m in ci_metrics else "")
                                      for m in metrics]
              + [f"{METRIC_LABELS.get(m, m)}, {common_n[m]} cases common to all rows" for m in common_n]
              + [EXTRA_LABELS.get(c, c) for c in extra_columns])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_markdown_cells(r, metrics, extra_columns, digits, ci_metrics)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_method_table(per_case: Mapping[str, Sequence[dict]], md_path: str | os.PathLike,
                       csv_path: str | os.PathLike, metrics: Sequence[str] = DEFAULT_METRICS,
                       extra: Mapping[str, Mapping[str, object]] | None = None, title: str | None = None,
                       ci_metrics: Sequence[str] = ()) -> list[dict]:
    """Write the mean ± std table per method as Markdown and CSV (atomically); return the rows.

    ci_metrics: metrics whose Markdown cells also show the 95 % bootstrap interval of the mean
    (the CSV always holds ``M_ci95_low`` / ``M_ci95_high``).
    """
    rows = method_rows(per_case, metrics, extra)
    text = (f"# {title}\n\n" if title else "") + markdown_table(rows, metrics, ci_metrics=ci_metrics)
    write_text(text, md_path)
    write_text(_csv_text(rows), csv_path)
    return rows


def band_rows(per_case: Mapping[str, Sequence[dict]], metrics: Sequence[str] = DEFAULT_METRICS) -> list[dict]:
    """:func:`method_rows` per lesion volume band, each row with a ``band`` key (bands with no case left out).

    Cases without a band (brain volume unknown) are not counted in any band.
    """
    rows = []
    for band in BANDS:
        subset = {m: [r for r in cases if r.get("band") == band] for m, cases in per_case.items()}
        if not any(subset.values()):
            continue
        rows += [{"band": band, **row} for row in method_rows(subset, metrics)]
    return rows


def write_band_tables(per_case: Mapping[str, Sequence[dict]], md_path: str | os.PathLike,
                      csv_path: str | os.PathLike, metrics: Sequence[str] = DEFAULT_METRICS,
                      title: str | None = None) -> list[dict]:
    """Write one Markdown table per lesion volume band (and one CSV with a ``band`` column); return the rows."""
    rows = band_rows(per_case, metrics)
    parts = [f"# {title}\n"] if title else []
    for band in BANDS:
        members = [{k: v for k, v in r.items() if k != "band"} for r in rows if r["band"] == band]
        if members:
            parts.append(f"## lesion volume {band} of brain\n\n" if band != NO_LESION_BAND else "## no lesion\n\n")
            parts.append(markdown_table(members, metrics))
    if not rows:
        parts.append("No case has a volume band (brain volumes unknown: evaluate with an images folder).\n")
    write_text("\n".join(parts), md_path)
    write_text(_csv_text(rows) if rows else "band,method\n", csv_path)
    return rows


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (NaN stays NaN and is not counted).

    With the m defined p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted value of
    p_(i) is max over j <= i of min(1, (m - j + 1) * p_(j)); rejecting where it is below alpha
    controls the family-wise error rate at alpha.
    """
    values = [float("nan") if v is None else float(v) for v in p_values]
    defined = sorted((v, i) for i, v in enumerate(values) if not math.isnan(v))
    m = len(defined)
    out = [float("nan")] * len(values)
    running = 0.0
    for rank, (value, index) in enumerate(defined):
        running = max(running, min(1.0, (m - rank) * value))
        out[index] = running
    return out


def wilcoxon_vs_reference(per_case: Mapping[str, Sequence[dict]], reference: str,
                          metrics: Sequence[str] = DEFAULT_METRICS) -> list[dict]:
    """Paired two-sided Wilcoxon signed-rank test of each method against ``reference``, per metric.

    Pairs are the cases both methods scored with a defined value. Rows: ``method``, ``reference``,
    ``metric``, ``n_pairs``, ``mean_difference`` and ``median_difference`` (method minus
    reference), ``statistic``, ``p_value`` (NaN when there is no pair; 1.0 when
    every difference is zero) and ``p_holm``: Holm-corrected over the family of one metric's tests
    (every method against the reference), :func:`holm_adjust`.
    """
    if reference not in per_case:
        raise ValueError(f"reference method {reference!r} not among {sorted(per_case)}")
    ref_by_case = {r["case_id"]: r for r in per_case[reference]}
    rows = []
    for method, cases in per_case.items():
        if method == reference:
            continue
        for metric in metrics:
            pairs = [(float(r[metric]), float(ref_by_case[r["case_id"]][metric])) for r in cases
                     if r["case_id"] in ref_by_case and r.get(metric) is not None
                     and ref_by_case[r["case_id"]].get(metric) is not None
                     and not math.isnan(float(r[metric])) and not math.isnan(float(ref_by_case[r["case_id"]][metric]))]
            row = {"method": method, "reference": reference, "metric": metric, "n_pairs": len(pairs),
                   "mean_difference": float("nan"), "median_difference": float("nan"),
                   "statistic": float("nan"), "p_value": float("nan")}
            if pairs:
                x, y = np.array(pairs).T
                diff = x - y
                row.update(mean_difference=float(diff.mean()), median_difference=float(np.median(diff)))
                if np.all(diff == 0):
                    row.update(statistic=0.0, p_value=1.0)
                else:
                    result = stats.wilcoxon(x, y)
                    row.update(statistic=float(result.statistic), p_value=float(result.pvalue))
            rows.append(row)
    for metric in metrics:
        family = [r for r in rows if r["metric"] == metric]
        for row, adjusted in zip(family, holm_adjust([r["p_value"] for r in family])):
            row["p_holm"] = adjusted
    return rows


def paired_test_across_metrics(per_case: Mapping[str, Sequence[dict]], method: str, reference: str,
                               metrics: Sequence[str] = DEFAULT_METRICS) -> list[dict]:
    """Paired two-sided Wilcoxon signed-rank test of ``method`` against ``reference`` on each metric, over
    the cases both scored with a defined value (``n_pairs`` per row), Holm-corrected across the metrics
    (one family: "is the method different on any of them"). Rows as :func:`wilcoxon_vs_reference`'s."""
    for name in (method, reference):
        if name not in per_case:
            raise ValueError(f"paired test: method {name!r} not among {sorted(per_case)}")
    rows = wilcoxon_vs_reference({method: per_case[method], reference: per_case[reference]}, reference, metrics)
    for row, adjusted in zip(rows, holm_adjust([r["p_value"] for r in rows])):
        row["p_holm"] = adjusted
    return rows


def write_wilcoxon_table(rows: Sequence[dict], md_path: str | os.PathLike, csv_path: str | os.PathLike,
                         title: str | None = None) -> None:
    """Write :func:`wilcoxon_vs_reference` rows as Markdown and CSV (atomically)."""
    header = ["method", "vs", "metric", "pairs", "mean diff", "median diff", "W", "p", "p (Holm)"]
    lines = ([f"# {title}\n"] if title else []) + [
        "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        cells = [r["method"], r["reference"], METRIC_LABELS.get(r["metric"], r["metric"]), str(r["n_pairs"]),
                 f"{r['mean_difference']:+.4f}", f"{r['median_difference']:+.4f}", f"{r['statistic']:.1f}",
                 "n/a" if math.isnan(r["p_value"]) else f"{r['p_value']:.4g}",
                 "n/a" if math.isnan(r.get("p_holm", float("nan"))) else f"{r['p_holm']:.4g}"]
        lines.append("| " + " | ".join(cells) + " |")
    write_text("\n".join(lines) + "\n", md_path)
    write_text(_csv_text(rows) if rows else "method,reference,metric\n", csv_path)


def save_png(figure: Figure, path: str | os.PathLike) -> None:
    """Write ``figure`` as a PNG at its own dpi, tightly cropped, atomically."""
    FigureCanvasAgg(figure)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=figure.dpi, bbox_inches="tight")


def plot_progress_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike,
                         title: str | None = None) -> None:
    """Side-by-side panels, one per method, each with its curves (series name -> value per epoch).

    Panels share the y axis so methods compare at a glance; a NaN value leaves a gap.
    """
    if not curves:
        raise ValueError("no curves to plot")
    n = len(curves)
    figure = Figure(figsize=(4.0 * n, 3.2), dpi=100)
    axes = figure.subplots(1, n, sharey=True, squeeze=False)[0]
    for ax, (method, series) in zip(axes, curves.items()):
        for name, values in series.items():
            ax.plot(np.arange(len(values)), np.asarray(values, dtype=float), label=name)
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7)
    if title:
        figure.suptitle(title)
    save_png(figure, path)


def plot_dice_boxplot(per_case: Mapping[str, Sequence[dict]], path: str | os.PathLike, metric: str = "dice",
                      title: str | None = None) -> None:
    """Box plot of the per-case ``metric`` (default Dice), one box per method (NaN values left out),
    with every case drawn as a dot over its box and the mean as a triangle."""
    methods = [m for m in per_case if any(not math.isnan(v) for v in _values(per_case[m], metric))]
    if not methods:
        raise ValueError(f"no method has a defined {metric} value to plot")
    data = [np.array([v for v in _values(per_case[m], metric) if not math.isnan(v)]) for m in methods]
    figure = Figure(figsize=(max(4.0, 1.3 * len(methods) + 1.5), 4.2), dpi=100)
    ax = figure.subplots()
    ax.boxplot(data, showmeans=True, widths=0.6)
    rng = np.random.default_rng(0)
    for i, values in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, values.size), values, s=9, alpha=0.5, color="C0", zorder=3)
    ax.set_xticks(range(1, len(methods) + 1))
    ax.set_xticklabels([m.replace("rule: ", "rule:\n") for m in methods], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} per case")
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    save_png(figure, path)


def brain_box_yx(image: np.ndarray, margin: int = 4) -> tuple[slice, slice]:
    """In-plane (y, x) slices of the bounding box of ``image != 0`` over all of ``image`` (z, y, x),
    widened by ``margin`` voxels and clipped to the image; the whole plane when the image is all zero."""
    nonzero = np.asarray(image) != 0
    if not nonzero.any():
        return slice(0, image.shape[1]), slice(0, image.shape[2])
    out = []
    for axis, size in ((1, image.shape[1]), (2, image.shape[2])):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(nonzero.any(axis=other))
        out.append(slice(max(0, int(hits[0]) - margin), min(size, int(hits[-1]) + 1 + margin)))
    return out[0], out[1]


def default_slice(reference: np.ndarray) -> int:
    """The axial (z) slice with the most lesion voxels of ``reference`` (z, y, x); the middle slice if none."""
    per_slice = np.asarray(reference != 0).reshape(reference.shape[0], -1).sum(axis=1)
    return int(np.argmax(per_slice)) if per_slice.any() else reference.shape[0] // 2


def plot_slices(adc: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                predictions: Mapping[str, Mapping[str, np.ndarray]], path: str | os.PathLike,
                slices: Mapping[str, int] | None = None,
                spacing_zyx: Mapping[str, Sequence[float]] | None = None, title: str | None = None,
                channel_name: str = "ADC", margin: int = 4) -> None:
    """Grid of axial slices: one row per case, a ground-truth column, then one column per method.

    Each panel shows the image slice (``adc[case]``, the channel named ``channel_name``, which the
    figure names) in grey, cropped to the brain (:func:`brain_box_yx`: the in-plane bounding box of
    the image's non-zero voxels with ``margin`` voxels around), the ground truth as a green contour
    and (method columns) the method's mask as a contour in the method's colour. All arrays are
    (z, y, x) on the case's native grid; ``slices[case]`` is the z index (default:
    :func:`default_slice`); ``spacing_zyx[case]`` sets the in-plane aspect ratio.
    """
    cases = list(reference)
    if not cases:
        raise ValueError("no cases to plot")
    methods = list(predictions)
    palette = ("C1", "C3", "C0", "C4", "C6", "C8", "C9", "C5", "C7")  # C2 (green) is the ground truth's
    colours = [palette[i % len(palette)] for i in range(len(methods))]
    n_cols = 1 + len(methods)
    figure = Figure(figsize=(2.6 * n_cols, 2.6 * len(cases)), dpi=100)
    axes = figure.subplots(len(cases), n_cols, squeeze=False)
    for row, case in enumerate(cases):
        ref = np.asarray(reference[case]) != 0
        z = (slices or {}).get(case, default_slice(ref))
        volume = np.asarray(adc[case], dtype=np.float32)
        if ref.shape != volume.shape:
            raise ValueError(f"case {case}: reference shape {ref.shape} differs from the image's {volume.shape}")
        box = (slice(None),) + brain_box_yx(volume, margin)
        image = volume[z][box[1:]]
        ref = ref[box]
        aspect = 1.0
        if spacing_zyx is not None and case in spacing_zyx:
            aspect = float(spacing_zyx[case][1]) / float(spacing_zyx[case][2])
        brain = image[image != 0]
        vmax = float(np.percentile(brain, 99.5)) if brain.size else 1.0
        for col in range(n_cols):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=0, vmax=vmax, aspect=aspect, interpolation="nearest")
            if ref[z].any():
                ax.contour(ref[z].astype(np.float32), levels=[0.5], colors="C2", linewidths=1.0)
            if col > 0:
                mask = np.asarray(predictions[methods[col - 1]][case]) != 0
                if mask.shape != volume.shape:
                    raise ValueError(f"case {case}: {methods[col - 1]} mask shape {mask.shape} differs from "
                                     f"the image's {volume.shape}")
                mask = mask[box]
                if mask[z].any():
                    ax.contour(mask[z].astype(np.float32), levels=[0.5], colors=colours[col - 1], linewidths=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"ground truth on {channel_name}" if col == 0 else methods[col - 1], fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{case}\nz={z}", fontsize=8)
    handles = [Line2D([], [], color="0.5", lw=6, label=f"image: {channel_name} (cropped to the brain)"),
               Line2D([], [], color="C2", label="ground truth")]
    handles += [Line2D([], [], color=c, label=m) for m, c in zip(methods, colours)]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8,
                  bbox_to_anchor=(0.5, -0.02))
    if title:
        figure.suptitle(title)
    save_png(figure, path)
