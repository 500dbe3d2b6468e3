"""``dataset.json`` of a raw dataset, in nnU-Net v2's format.

Example::

    {"name": "BONBID", "channel_names": {"0": "ADC", "1": "ZADC"},
     "labels": {"background": 0, "lesion": 1}, "numTraining": 37, "file_ending": ".mha"}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json_file, write_json
from hiennu.io.image import IMAGE_ENDINGS

BONBID_CHANNELS = ("ADC", "ZADC")
BONBID_LABELS = {"background": 0, "lesion": 1}


@dataclass
class DatasetJson:
    """Typed view of ``dataset.json``.

    channel_names: one name per input channel, in channel-file order (``_0000``, ``_0001`` ...).
    labels: label name -> integer value; hiennu segments one foreground label.
    """

    name: str
    channel_names: list[str] = field(default_factory=lambda: list(BONBID_CHANNELS))
    labels: dict[str, int] = field(default_factory=lambda: dict(BONBID_LABELS))
    num_training: int = 0
    file_ending: str = ".mha"
    description: str = ""
    reference: str = ""
    licence: str = ""

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    def to_dict(self) -> dict:
        d = {"name": self.name,
             "channel_names": {str(i): n for i, n in enumerate(self.channel_names)},
             "labels": dict(self.labels),
             "numTraining": self.num_training,
             "file_ending": self.file_ending}
        for key in ("description", "reference", "licence"):
            if getattr(self, key):
                d[key] = getattr(self, key)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "dataset.json") -> "DatasetJson":
        try:
            if not isinstance(d, dict):
                raise TypeError(f"the file holds {type(d).__name__}, not an object")
            channels = d["channel_names"]
            if not isinstance(channels, dict) or not isinstance(d["labels"], dict):
                raise TypeError("'channel_names' and 'labels' must be objects")
            names = [channels[str(i)] for i in range(len(channels))]
            if not all(isinstance(n, str) for n in names):
                raise TypeError("channel names must be text")
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in d["labels"].values()):
                raise TypeError("label values must be whole numbers")
            labels = {str(k): int(v) for k, v in d["labels"].items()}
        except (KeyError, TypeError, ValueError) as e:
            raise HiennuError(f"{source}: malformed ({e!r}); it needs 'channel_names' as "
                              f"{{\"0\": \"ADC\", \"1\": \"ZADC\"}} and 'labels' as "
                              f"{{\"background\": 0, \"lesion\": 1}}") from None
        num_training = d.get("numTraining", 0)
        if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 0:
            raise HiennuError(f"{source}: numTraining is {num_training!r}; it must be a whole number >= 0 (the "
                              f"count of cases in imagesTr/), e.g. \"numTraining\": 37")
        for key in ("name", "description", "reference", "licence", "license"):
            if key in d and not isinstance(d[key], str):
                raise HiennuError(f"{source}: {key} is {d[key]!r}; it must be text")
        ending = d.get("file_ending", ".mha")
        if not isinstance(ending, str) or ending not in IMAGE_ENDINGS:
            raise HiennuError(f"{source}: file_ending {ending!r} is not one of {', '.join(IMAGE_ENDINGS)}")
        if sorted(labels.values()) != [0, 1]:
            raise HiennuError(f"{source}: labels must be background 0 and one lesion label 1, got {labels}")
        return cls(name=str(d.get("name", "")), channel_names=names, labels=labels,
                   num_training=num_training, file_ending=ending,
                   description=d.get("description", ""), reference=d.get("reference", ""),
                   licence=d.get("licence", d.get("license", "")))


def load_dataset_json(path: str | os.PathLike) -> DatasetJson:
    """Load ``dataset.json`` (a file, or the dataset folder holding it)."""
    path = Path(path)
    if path.suffix != ".json":
        path = path / "dataset.json"
    d = read_json_file(path, "every raw dataset folder needs one (hiennu_convert_bonbid and "
                             "hiennu_make_synthetic write it)", "fix the file")
    return DatasetJson.from_dict(d, source=str(path))


def save_dataset_json(dj: DatasetJson, path: str | os.PathLike) -> None:
    path = Path(path)
    if path.is_dir():
        path = path / "dataset.json"
    write_json(dj.to_dict(), path)
