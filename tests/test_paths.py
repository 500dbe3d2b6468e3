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


def test_an_ensemble_too_large_to_list_in_a_file_name_is_named_by_a_digest_of_its_members(tmp_path):
    """Seven 3d_fullres models of BONBID would make a listing name over 255 bytes, more than the file system takes:
    the name is then ensemble___7-models-H, H a function of the members only, which the file system takes."""
    import hashlib
    members = [paths.model_dir_name("TrainerDiceFocal", plans, "3d_fullres")
               for plans in ("hiennuPlans", "SEED1", "SEED2", "NARROW", "S200", "S200SEED1", "K1")]
    fits = paths.ensemble_dir_name(members[:5])
    assert len(fits) <= paths.MAX_FILE_NAME_BYTES and paths.parse_ensemble_dir_name(fits) == sorted(members[:5])
    assert paths.is_ensemble_dir_name(fits)
    long_name = "___".join(["ensemble", *sorted(members)])
    with pytest.raises(OSError):  # why the listing is not used
        (tmp_path / long_name).mkdir()
    digest = hashlib.sha256("\n".join(sorted(members)).encode()).hexdigest()[:16]
    name = paths.ensemble_dir_name(members)
    assert name == f"ensemble___7-models-{digest}" == paths.ensemble_dir_name(list(reversed(members)))
    assert paths.ensemble_dir_name(members[1:] + ["TrainerDiceFocal__SEED3__3d_fullres"]) != name
    assert paths.parse_ensemble_dir_name(name) is None and paths.is_ensemble_dir_name(name)
    for not_one in ("ensemble___7-models-xyz", "ensemble___7-models-" + "0" * 15, "models-" + digest,
                    "TrainerDiceFocal__SEED1__3d_fullres", "ensemble___TrainerDiceFocal__SEED1__3d_fullres"):
        assert not paths.is_ensemble_dir_name(not_one), not_one
    (tmp_path / name).mkdir()  # the file system takes it


def test_an_ambiguous_number_asks_for_the_folder_name_only(hiennu_roots):
    (hiennu_roots["hiennu_raw"] / "Dataset081_A").mkdir()
    (hiennu_roots["hiennu_raw"] / "Dataset081_B").mkdir()
    with pytest.raises(DatasetNotFoundError, match="give the full folder name\\.$"):
        paths.resolve_dataset("81")
    (hiennu_roots["hiennu_results"] / "Dataset082_A").mkdir()
    with pytest.raises(DatasetNotFoundError, match="give the full folder name or the number\\.$"):
        paths.resolve_dataset("A")


@pytest.mark.parametrize("where, searched, words", [
    ("hiennu_raw", "hiennu_results", "it has no trained model yet; run hiennu_plan_and_preprocess -d 5, then "
                                     "hiennu_train 5"),
    ("hiennu_preprocessed", "hiennu_results", "it has no trained model yet; run hiennu_train 5 TRAINER FOLD"),
    ("hiennu_raw", "hiennu_preprocessed", "it has not been planned and preprocessed yet; run hiennu_plan_and_preprocess"),
    ("hiennu_preprocessed", "hiennu_raw", "its raw data are not under .*hiennu_raw; point hiennu_raw at"),
])
def test_a_dataset_found_at_another_stage_says_which_step_is_missing(hiennu_roots, where, searched, words):
    (hiennu_roots[where] / "Dataset005_X").mkdir()
    with pytest.raises(DatasetNotFoundError, match=f"dataset '5' is not under .*{searched}, but Dataset005_X is in .*{where}: {words}"):
        paths.resolve_dataset("5", [hiennu_roots[searched]])


def test_train_command_says_what_each_fix_needs_and_moves_a_trained_fold_aside_to_start_over(tmp_path):
    """The hiennu_train line in an error must work when pasted: hiennu_train refuses to start over in a folder that
    holds a training, so a retraining moves the fold folder aside first; an unfinished one is continued."""
    from hiennu.paths import CONTINUE, RETRAIN, TRAIN, VALIDATE, train_command
    model = tmp_path / "Dataset001_Tiny" / "TrainerX__K1__2d"
    assert train_command(model, 0) == "hiennu_train Tiny TrainerX 0 -c 2d -p K1 --npz"
    assert train_command(model, 0, RETRAIN) == "hiennu_train Tiny TrainerX 0 -c 2d -p K1 --npz"  # nothing to move
    (model / "fold_0").mkdir(parents=True)
    assert train_command(model, 0, TRAIN) == "hiennu_train Tiny TrainerX 0 -c 2d -p K1 --npz"
    assert train_command(model, 0, RETRAIN, npz=False) == (f"mv {model / 'fold_0'} {model / 'fold_0'}.old && "
                                                           f"hiennu_train Tiny TrainerX 0 -c 2d -p K1")
    assert train_command(model, 0, CONTINUE) == "hiennu_train Tiny TrainerX 0 -c 2d -p K1 --continue --npz"
    assert train_command(model, 3, VALIDATE, best=True) == "hiennu_train Tiny TrainerX 3 -c 2d -p K1 --val --npz " \
                                                             "--checkpoint best"
    assert train_command(model, 3, TRAIN, best=True, dataset="BONBID") == "hiennu_train BONBID TrainerX 3 -c 2d -p K1 --npz"
    spaced = tmp_path / "my results" / "Dataset002_Two" / "TrainerX__hiennuPlans__3d_fullres"
    (spaced / "fold_all").mkdir(parents=True)
    assert train_command(spaced, "all", RETRAIN).startswith(f"mv '{spaced / 'fold_all'}' '{spaced / 'fold_all'}.old' && "
                                                            f"hiennu_train Two TrainerX all -c 3d_fullres --npz")
    with pytest.raises(ValueError, match="mode must be one of"):
        train_command(model, 0, "resume")
    seeded = tmp_path / "Dataset003_Three" / "split_seed_2" / "TrainerX__hiennuPlans__2d"  # another split's folds
    assert train_command(seeded, 1, VALIDATE, best=True) == ("hiennu_train Three TrainerX 1 -c 2d --val --npz "
                                                             "--checkpoint best --split-seed 2")


def test_train_command_names_the_users_own_trainer_module_as_a_fold_records_it(tmp_path):
    """A pasted line for a trainer of the user's own module needs --trainer-module: hiennu_train finds only
    built-in trainers without it. The module comes from a fold's debug.json; built-in and __main__ trainers, and a
    folder without a readable record, get none."""
    import json

    from hiennu.paths import VALIDATE, recorded_trainer_module, train_command
    model = tmp_path / "Dataset001_Tiny" / "MyTrainer__hiennuPlans__2d"
    assert recorded_trainer_module(model) is None
    (model / "fold_0").mkdir(parents=True)
    (model / "fold_0" / "debug.json").write_text("{not json")
    assert train_command(model, 0, VALIDATE) == "hiennu_train Tiny MyTrainer 0 -c 2d --val --npz"
    (model / "fold_1").mkdir()
    (model / "fold_1" / "debug.json").write_text(json.dumps({"trainer_module": "lab.trainers"}))
    assert recorded_trainer_module(model) == "lab.trainers"
    assert train_command(model, 3) == "hiennu_train Tiny MyTrainer 3 -c 2d --trainer-module lab.trainers --npz"
    for builtin in ("hiennu.training.trainers", "__main__"):
        (model / "fold_1" / "debug.json").write_text(json.dumps({"trainer_module": builtin}))
        assert train_command(model, 1, VALIDATE) == "hiennu_train Tiny MyTrainer 1 -c 2d --val --npz"
