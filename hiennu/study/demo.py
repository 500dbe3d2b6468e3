"""The end-to-end demo on the embedded synthetic dataset (CPU, a few minutes).

Makes the data, plans and preprocesses, runs a small loss study (trains each trainer on the
chosen folds, predicts their validation cases in native geometry, scores them against the two
ZADC rules), then predicts a separate synthetic test set with the TrainerTverskyHDT model and
scores it with ``hiennu_evaluate``'s library call. Everything lands in one folder
(``hiennu_demo_output/`` by default) with its own raw/preprocessed/results roots, so the demo
never touches the user's datasets.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from hiennu.datasets.synthetic import make_synthetic_dataset
from hiennu.errors import HiennuError
from hiennu.evaluation.evaluate import evaluate_folders
from hiennu.inference.baseline import ZadcThresholdBaseline
from hiennu.inference.predictor import Predictor
from hiennu.log import get_logger
from hiennu.paths import dataset_folder_name, model_dir_name, parse_model_dir_name, results_root, use_roots
from hiennu.pipeline.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
from hiennu.plans import DEFAULT_CONFIGURATION, PLANS_NAME
from hiennu.study.loss_study import LossStudyOptions, run_loss_study
from hiennu.training.options import TrainingOptions
from hiennu.training.trainers import get_trainer_class

log = get_logger(__name__)

DEMO_DATASET_ID = 990
DEMO_DATASET_NAME = "SyntheticDemo"
MARKER = ".hiennu_demo"
TEST_CASE_PREFIX = "SYNTEST"


@dataclass
class DemoOptions:
    """Size of the demo. The defaults finish in a few minutes on 2 CPU cores.

    The demo trains the planner's ``3d_fullres`` (brain crop, planned spacing, CPU-sized patches,
    the ZADC rule as a veto prior). trainers: the last one predicts the held-out cases.
    epochs / iterations_per_epoch: None takes the plans' CPU schedule. target_size_xyz: forces a
    grid on the whole-volume configurations only (unused by ``3d_fullres``).
    """

    output_dir: Path = Path("hiennu_demo_output")
    num_cases: int = 20
    test_cases: int = 4
    preset: str = "small"
    trainers: Sequence[str] = ("TrainerTverskyHDT", "TrainerDiceFocal")
    folds: Sequence[int] = (0,)
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    target_size_xyz: Sequence[int] | None = None
    device: str | None = "cpu"
    num_processes: int = 2
    num_workers: int = 0
    seed: int = 0


@dataclass
class DemoResult:
    output_dir: Path
    study_report: Path
    study_figures: list[Path]
    predictions: Path
    evaluation: Path
    test_scores: dict
    seconds: dict = field(default_factory=dict)
    model_dir: Path | None = None  # the model that predicted the test cases
    dataset: str = ""
    rule_scores: dict = field(default_factory=dict)  # ZADC < -2 on the same held-out cases

    def prediction_hint(self) -> list[str]:
        """How to predict with the demo's models afterwards (its results root is not the default one)."""
        if self.model_dir is None:
            return []
        results, trainer = self.model_dir.parent.parent, parse_model_dir_name(self.model_dir.name).trainer
        return [f"export hiennu_results={results}",
                f"hiennu_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d {self.dataset} -tr {trainer}",
                f"or, without the export: hiennu_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -m {self.model_dir}"]


def prepare_output_dir(path: Path) -> Path:
    """Empty a previous demo folder (recognised by its marker) or create a new one; refuse anything else."""
    path = Path(path).resolve()
    if path.exists():
        if not (path / MARKER).is_file():
            if any(path.iterdir()):
                raise HiennuError(f"{path} exists and was not made by hiennu_demo; choose another --output "
                                  f"folder (the demo empties its folder before each run)")
        else:
            shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("made by hiennu_demo; emptied on the next demo run\n")
    return path


def demo_model_dir(dataset: str, trainer: str) -> Path:
    """The model folder the demo predicts with: ``trainer``'s, named by its class (``MODULE:CLASS`` too, as the
    study names its folders)."""
    return results_root() / dataset / model_dir_name(get_trainer_class(trainer).__name__, PLANS_NAME,
                                                      DEFAULT_CONFIGURATION)


def run_demo(opts: DemoOptions) -> DemoResult:
    dataset = dataset_folder_name(DEMO_DATASET_ID, DEMO_DATASET_NAME)
    # every option checked before the output folder is emptied or anything is made (folds, trainers, seed ...)
    training = TrainingOptions(dataset=dataset, epochs=opts.epochs, iterations_per_epoch=opts.iterations_per_epoch,
                               num_workers=opts.num_workers, device=opts.device, seed=opts.seed)
    study_options = LossStudyOptions(
        dataset=dataset, trainers=opts.trainers, folds=opts.folds, training=training, reference=opts.trainers[0],
        figure_cases=3, num_processes=opts.num_processes, output_dir=Path(opts.output_dir) / "loss_study")
    for trainer in opts.trainers:
        get_trainer_class(trainer)
    out = prepare_output_dir(opts.output_dir)
    study_options.output_dir = out / "loss_study"
    seconds: dict[str, float] = {}
    with use_roots(out / "hiennu_raw", out / "hiennu_preprocessed", out / "hiennu_results"):
        t = time.perf_counter()
        make_synthetic_dataset(DEMO_DATASET_ID, num_cases=opts.num_cases, seed=opts.seed, preset=opts.preset,
                               name=DEMO_DATASET_NAME)
        test_dir = make_synthetic_dataset(out / "test_cases", num_cases=opts.test_cases, seed=opts.seed + 1000,
                                          preset=opts.preset, name="SyntheticDemoTest",
                                          case_prefix=TEST_CASE_PREFIX)  # not the training cases' names
        seconds["make data"] = time.perf_counter() - t

        t = time.perf_counter()
        plan_and_preprocess(dataset, PlanAndPreprocessOptions(
            configurations=[DEFAULT_CONFIGURATION], num_processes=opts.num_processes,
            target_size_xyz=opts.target_size_xyz))
        seconds["plan and preprocess"] = time.perf_counter() - t

        t = time.perf_counter()
        study = run_loss_study(study_options)
        seconds["train + loss study"] = time.perf_counter() - t

        t = time.perf_counter()
        model_dir = demo_model_dir(dataset, opts.trainers[-1])
        predictor = Predictor.from_model_dir(model_dir, folds=list(study_options.folds), device=opts.device)
        predictions = out / "test_predictions"
        predictor.predict_folder(test_dir / "imagesTr", predictions)
        seconds["predict test cases"] = time.perf_counter() - t

        t = time.perf_counter()
        evaluation = out / "test_evaluation" / "summary.json"
        summary = evaluate_folders(test_dir / "labelsTr", predictions, output_json=evaluation,
                                   images_dir=test_dir / "imagesTr", num_processes=opts.num_processes)
        rule_dir = out / "test_rule_zadc"
        ZadcThresholdBaseline(channel_names=predictor.channel_names).predict_folder(test_dir / "imagesTr", rule_dir)
        rule = evaluate_folders(test_dir / "labelsTr", rule_dir, output_json=out / "test_evaluation" / "rule_zadc.json",
                                images_dir=test_dir / "imagesTr", num_processes=opts.num_processes)
        seconds["evaluate"] = time.perf_counter() - t
    scores = {m: summary["metrics"][m]["mean"] for m in ("dice", "masd", "nsd")}
    rule_scores = {m: rule["metrics"][m]["mean"] for m in ("dice", "masd", "nsd")}
    return DemoResult(out, study.output_dir / "report.md",
                      [study.output_dir / "progress.png", study.output_dir / "slices.png",
                       study.output_dir / "dice_boxplot.png"],
                      predictions, evaluation, scores, seconds, model_dir, dataset, rule_scores)
