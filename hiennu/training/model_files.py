"""The model folder's shared files, written from the fold that trains.

``TRAINER__PLANS__CONFIG/plans.json`` and ``dataset.json`` are what the predictor reads for every
fold; each fold also keeps the plans it was trained with (``fold_K/plans.json``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json, write_json
from hiennu.log import get_logger
from hiennu.paths import DATASET_FILE, PLANS_FILE, ModelFolder
from hiennu.plans import (PREDICTOR_IGNORED_FIELDS, Configuration, Plans, configuration_differences,
                                   load_plans, save_plans)

log = get_logger(__name__)


def publish_model_files(plans: Plans, config: Configuration, preprocessed_dir: Path, model_dir: Path,
                        fold_dir: Path) -> None:
    """Write the model folder's ``plans.json`` (``plans``: those of ``fold_dir``, trained with their
    configuration ``config``) and ``dataset.json`` (the preprocessed dataset's).

    Other folds whose ``fold_K/plans.json`` now differs are named in a warning: the predictor
    refuses them (their checkpoints record the configuration they were trained with).
    """
    folder = ModelFolder(model_dir)
    shared = folder.plans
    try:
        changed = shared.is_file() and load_plans(shared) != plans
    except HiennuError:  # an edited, invalid shared file: replaced by this fold's valid plans
        changed = True
    save_plans(plans, shared)
    write_json(read_json(preprocessed_dir / DATASET_FILE), folder.dataset_json)
    if not changed:
        return
    stale = []
    for other in sorted(model_dir.glob(f"fold_*/{PLANS_FILE}")):
        if other.parent == fold_dir or not other.parent.name[len("fold_"):].isalnum():
            continue  # this fold, or a folder moved aside (fold_K.replaced-<timestamp>)
        try:
            other_config = load_plans(other).configuration(config.name)
        except HiennuError:
            continue
        if configuration_differences(dataclasses.asdict(other_config), config,
                                     ignore=PREDICTOR_IGNORED_FIELDS):
            stale.append(other.parent.name)
    log.warning("%s now holds the plans of %s%s", shared, fold_dir.name,
                f"; {', '.join(stale)} were trained with other plans and will be refused by the predictor "
                f"until retrained" if stale else "")
