"""Issue #12 §5: installing a model whose dataset number is already used by another dataset is refused."""

from __future__ import annotations

import pytest

from hiennu.errors import HiennuError
from hiennu.inference.model_zip import export_model_zip, install_model_zip
from hiennu.paths import resolve_dataset
from helpers import MODEL, good_members, make_model_dir, zip_with


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


@pytest.mark.parametrize("extra, words", [
    ("fold_0/checkpoint_best.pth/inner.txt", "is a file but also the folder of"),
    ("PLANS.json", "differ only in letter case"),
])
def test_zip_whose_members_clash_is_refused_before_extraction(tmp_path, hiennu_roots, extra, words):
    from hiennu.inference.model_zip import ModelZipError

    members = good_members(tmp_path)
    members[f"{MODEL}/{extra}"] = b"x"
    evil = zip_with(tmp_path / "clash.zip", members)
    with pytest.raises(ModelZipError, match=f"members clash.*{words}"):
        install_model_zip(evil)
    assert not any(hiennu_roots["hiennu_results"].iterdir())
