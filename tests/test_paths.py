"""Root folders and dataset-name resolution."""

import pytest

from hiennu import paths
from hiennu.errors import DatasetNotFoundError


def test_default_roots_are_under_cwd(tmp_path, monkeypatch):
    for env in ("hiennu_raw", "hiennu_preprocessed", "hiennu_results"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.chdir(tmp_path)
    assert paths.raw_root() == tmp_path / "hiennu_raw"
    assert paths.preprocessed_root() == tmp_path / "hiennu_preprocessed"
    assert paths.results_root() == tmp_path / "hiennu_results"


def test_resolve_by_name_folder_and_number(hiennu_roots):
    (hiennu_roots["hiennu_raw"] / "Dataset007_BONBID").mkdir()
    (hiennu_roots["hiennu_raw"] / "Dataset012_Other").mkdir()
    for ident in ("BONBID", "bonbid", "Dataset007_BONBID", "7", "007", 7):
        assert paths.resolve_dataset(ident) == "Dataset007_BONBID"
    assert paths.raw_dataset_dir("Other").name == "Dataset012_Other"


def test_unknown_dataset_lists_known_ones(hiennu_roots):
    (hiennu_roots["hiennu_raw"] / "Dataset007_BONBID").mkdir()
    with pytest.raises(DatasetNotFoundError, match="Dataset007_BONBID") as e:
        paths.resolve_dataset("Nope")
    assert "unknown dataset 'Nope'" in str(e.value)


def test_ambiguous_name_is_refused(hiennu_roots):
    (hiennu_roots["hiennu_raw"] / "Dataset001_BONBID").mkdir()
    (hiennu_roots["hiennu_results"] / "Dataset002_BONBID").mkdir()
    with pytest.raises(DatasetNotFoundError, match="ambiguous"):
        paths.resolve_dataset("BONBID")


def test_folder_names():
    assert paths.dataset_folder_name(3, "BONBID") == "Dataset003_BONBID"
    assert paths.parse_dataset_folder_name("Dataset003_BONBID") == (3, "BONBID")
    assert paths.parse_dataset_folder_name("BONBID") is None
    assert paths.model_dir_name("TrainerDice", "hiennuPlans", "3d_fullres") == "TrainerDice__hiennuPlans__3d_fullres"
    with pytest.raises(DatasetNotFoundError):
        paths.dataset_folder_name(1000, "X")
    with pytest.raises(DatasetNotFoundError):
        paths.dataset_folder_name(1, "bad name")


def test_model_folder_name_is_built_and_parsed_in_one_place():
    name = paths.model_dir_name("TrainerDice", "Wide", "3d_fullres")
    assert paths.parse_model_dir_name(name) == paths.ModelDirName("TrainerDice", "Wide", "3d_fullres")
    for bad in ("TrainerDice__3d_fullres", "a__b__c__d", "a____c", "TrainerDice"):
        assert paths.parse_model_dir_name(bad) is None


def test_an_ensemble_name_longer_than_a_file_name_may_be_is_refused_saying_what_to_do(tmp_path):
    """Seven 3d_fullres models of BONBID make a name over 255 bytes, more than the file system takes, so it is
    refused before anything is written (it is also where the members are read back from, so it is not shortened)."""
    from hiennu.errors import HiennuError
    members = [paths.model_dir_name("TrainerDiceFocal", plans, "3d_fullres")
               for plans in ("hiennuPlans", "SEED1", "SEED2", "NARROW", "S200", "S200SEED1", "K1")]
    fits = paths.ensemble_dir_name(members[:5])
    assert len(fits) <= paths.MAX_FILE_NAME_BYTES and paths.parse_ensemble_dir_name(fits) == sorted(members[:5])
    (tmp_path / fits).mkdir()  # and the file system takes it
    with pytest.raises(HiennuError, match=r"an ensemble of 7 models would be named ensemble___.*\(\d+ bytes\), longer "
                                          r"than the 255 a file name may have; ensemble fewer models"):
        paths.ensemble_dir_name(members)
    long_name = "___".join(["ensemble", *sorted(members)])
    with pytest.raises(OSError):  # what the refusal stands in for
        (tmp_path / long_name).mkdir()
