"""Issue #12 §5: installing a model whose dataset number is already used by another dataset is refused."""

from __future__ import annotations

import pytest

from hiennu.errors import HiennuError
from hiennu.inference.model_zip import export_model_zip, install_model_zip
from hiennu.paths import resolve_dataset
from test_model_zip import make_model_dir


@pytest.mark.parametrize("root", ["hiennu_results", "hiennu_raw", "hiennu_preprocessed"])
def test_install_refuses_a_dataset_id_used_by_another_dataset(tmp_path, hiennu_roots, root):
    zip_path = export_model_zip(make_model_dir(tmp_path / "elsewhere"), tmp_path / "m.zip")  # Dataset001_Tiny
    (hiennu_roots[root] / "Dataset001_Other").mkdir()
    with pytest.raises(HiennuError, match=r"Dataset001_Tiny has id 001.*already used by .*Dataset001_Other"):
        install_model_zip(zip_path)
    assert not (hiennu_roots["hiennu_results"] / "Dataset001_Tiny").exists()
    assert resolve_dataset("1") == "Dataset001_Other"  # -d 1 stays unambiguous


def test_install_beside_the_same_dataset_is_fine(tmp_path, hiennu_roots):
    zip_path = export_model_zip(make_model_dir(tmp_path / "elsewhere"), tmp_path / "m.zip")
    (hiennu_roots["hiennu_raw"] / "Dataset001_Tiny").mkdir()
    assert install_model_zip(zip_path).is_dir()
    assert resolve_dataset("1") == "Dataset001_Tiny"
