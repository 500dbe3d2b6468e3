"""The record of an ensemble of configurations: ``members.json`` in its :class:`~hiennu.paths.EnsembleFolder`.

::

    {"members": ["TRAINER__PLANS__2d", "TRAINER__PLANS__3d_fullres"],   # model folder names, sorted
     "folds": [0, 1, 2, 3, 4],                                          # every member predicts with these folds
     "checkpoint": "checkpoint_final.pth"}                              # from each fold_K/

The members are model folders of one dataset, beside the ``ensembles/`` folder (``DatasetNNN_Name/NAME``);
the folder's own name (``ensemble___M1___M2``, or for an ensemble too large to list in a file name
``ensemble___N-models-DIGEST``, a digest of the members: :func:`hiennu.paths.ensemble_dir_name`) is made from the
same members, and a record that disagrees with it is refused. ``hiennu_find_best_configuration`` writes it when it scores the ensemble; a model zip
of an ensemble carries it with the folds and checkpoint it exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json_file
from hiennu.paths import EnsembleFolder, ensemble_dir_name, is_ensemble_dir_name, parse_model_dir_name

FOLD_ALL = "all"


@dataclass(frozen=True)
class EnsembleMembers:
    """members: model folder names ``TRAINER__PLANS__CONFIG`` (sorted, two or more, all different);
    folds: fold names (``"0"`` ... or ``"all"``) each member predicts with; checkpoint: the file in each fold."""

    members: tuple[str, ...]
    folds: tuple[str, ...]
    checkpoint: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(sorted(str(m) for m in self.members)))
        object.__setattr__(self, "folds", tuple(str(f) for f in self.folds))
        ensemble_dir_name(list(self.members))  # two or more different TRAINER__PLANS__CONFIG names, or raise

    @property
    def dir_name(self) -> str:
        """``ensemble___M1___M2`` (or its digest form): the name of the ensemble folder these members belong in."""
        return ensemble_dir_name(list(self.members))

    def to_dict(self) -> dict[str, Any]:
        return {"members": list(self.members), "folds": [int(f) if f.isdigit() else f for f in self.folds],
                "checkpoint": self.checkpoint}

    @classmethod
    def from_dict(cls, d: Any, source: str) -> "EnsembleMembers":
        fix = "re-run hiennu_find_best_configuration to write it again"
        if not isinstance(d, dict) or set(d) != {"members", "folds", "checkpoint"}:
            raise HiennuError(f"{source}: expected an object with exactly 'members', 'folds' and 'checkpoint'; {fix}")
        members, folds, checkpoint = d["members"], d["folds"], d["checkpoint"]
        if (not isinstance(members, list) or len(members) < 2 or len(set(map(str, members))) != len(members)
                or not all(isinstance(m, str) and parse_model_dir_name(m) for m in members)):
            raise HiennuError(f"{source}: 'members' must list two or more different model folder names "
                              f"TRAINER__PLANS__CONFIG, got {members!r}; {fix}")
        if (not isinstance(folds, list) or not folds or len(set(map(str, folds))) != len(folds)
                or not all((isinstance(f, int) and not isinstance(f, bool) and f >= 0) or f == FOLD_ALL
                           for f in folds)):
            raise HiennuError(f"{source}: 'folds' must list fold numbers (or \"all\"), got {folds!r}; {fix}")
        if (not isinstance(checkpoint, str) or not checkpoint.startswith("checkpoint_")
                or not checkpoint.endswith(".pth") or "/" in checkpoint or "\\" in checkpoint):
            raise HiennuError(f"{source}: 'checkpoint' must be a file name checkpoint_NAME.pth, got {checkpoint!r}; "
                              f"{fix}")
        return cls(tuple(members), tuple(str(f) for f in folds), checkpoint)


def load_ensemble_members(ensemble_dir: str | Path) -> EnsembleMembers:
    """The ``members.json`` of an ensemble folder, checked against the folder's name."""
    folder = EnsembleFolder(Path(ensemble_dir))
    record = EnsembleMembers.from_dict(
        read_json_file(folder.members, "an ensemble folder needs it; re-run hiennu_find_best_configuration",
                       "re-run hiennu_find_best_configuration to write it again"), str(folder.members))
    if record.dir_name != folder.path.name:
        raise HiennuError(f"{folder.members}: names members {', '.join(record.members)}, but its folder is "
                          f"{folder.path.name}; re-run hiennu_find_best_configuration to write it again")
    return record


def is_ensemble_dir(path: str | Path) -> bool:
    """Whether ``path`` is an ensemble folder (``ensemble___M1___M2`` or ``ensemble___N-models-DIGEST`` holding
    ``members.json``)."""
    folder = EnsembleFolder(Path(path))
    return folder.path.is_dir() and is_ensemble_dir_name(folder.path.name) and folder.members.is_file()


def check_ensemble_complete(path: str | Path, command: str | None = None) -> None:
    """Refuse an ensemble folder left half-written by an interrupted ``hiennu_find_best_configuration`` (its masks
    or post-processing without ``members.json``, which is written last): read as no ensemble at all, it predicted
    and exported without the post-processing chosen for it. command: the run that completes it."""
    folder = EnsembleFolder(Path(path))
    if (folder.path.is_dir() and is_ensemble_dir_name(folder.path.name) and not folder.members.is_file()
            and any(folder.path.iterdir())):
        raise HiennuError(f"{folder.path}: half-written by an interrupted hiennu_find_best_configuration (no "
                          f"members.json); run it again{': ' + command if command else ''}, or delete the folder")


def member_dirs(ensemble_dir: str | Path, record: EnsembleMembers | None = None) -> list[Path]:
    """The member model folders of an ensemble folder: ``DatasetNNN_Name/NAME`` beside its ``ensembles/``."""
    ensemble_dir = Path(ensemble_dir)
    record = record or load_ensemble_members(ensemble_dir)
    return [ensemble_dir.parent.parent / name for name in record.members]
