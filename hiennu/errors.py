"""Exception types shared by every stage.

Every error a user can cause (bad files, unknown datasets, wrong options) is a
:class:`HiennuError`; the command-line tools print its message and exit non-zero
instead of showing a traceback.
"""


class HiennuError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""


class DatasetNotFoundError(HiennuError):
    """A dataset name, number or folder that does not resolve to a dataset."""


class DataIntegrityError(HiennuError):
    """One or more problems in the files of a dataset (each problem names case and file)."""

    def __init__(self, problems: list[str], header: str = "dataset integrity check failed"):
        self.problems = list(problems)
        lines = [f"{header} ({len(self.problems)} problem(s)):"] + [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class ImageReadError(HiennuError):
    """A file that cannot be read as an image (missing, empty, corrupt, unsupported)."""


class WriteError(HiennuError):
    """A file that could not be written whole (a full disk or quota, a folder that refuses new files); nothing was
    replaced. Its message names the file asked for, not the temporary file it was first written to."""
