"""Model export / install: round trips, half precision, and each attack on an untrusted zip."""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from hiennu.errors import HiennuError
from hiennu.inference.model_registry import default_checkpoint, model_checkpoint, read_default_model
from hiennu.inference.model_zip import (MANIFEST, ModelZipError, export_model_zip, install_model_zip, load_model_zip,
                                        verify_model_zip)
from hiennu.networks.unet import build_network
from hiennu.plans import NetworkPlan, load_plans, save_plans
from helpers import MODEL, good_members, make_model_dir, zip_with


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["network_weights"]


def test_export_load_round_trip(tmp_path):
    model_dir = make_model_dir(tmp_path / "results")
    out = export_model_zip(model_dir, tmp_path / "m.zip")
    contents = verify_model_zip(out)
    assert (contents.model, contents.folds, contents.half_precision) == (MODEL, ["0", "1"], False)
    assert contents.checkpoint == "checkpoint_final.pth"  # the default, as nnU-Net ships
    loaded = load_model_zip(out)
    assert loaded.configuration == "3d_fullres" and loaded.dataset.channel_names == ["ADC", "ZADC"]
    for fold in ("0", "1"):
        original = _weights(model_dir / f"fold_{fold}" / "checkpoint_final.pth")
        assert original.keys() == loaded.weights[fold].keys()
        assert all(torch.equal(original[k], loaded.weights[fold][k]) for k in original)
    with zipfile.ZipFile(out) as zf:  # optimizer state is not exported
        ckpt = torch.load(io.BytesIO(zf.read(f"{MODEL}/fold_0/checkpoint_final.pth")), weights_only=True)
    assert set(ckpt) == {"network_weights", "epoch", "trainer_name"}
    assert len(load_model_zip(out, folds=[1]).weights) == 1


def test_half_precision_export(tmp_path):
    model_dir = make_model_dir(tmp_path / "results", folds=(0,))
    full = export_model_zip(model_dir, tmp_path / "full.zip")
    half = export_model_zip(model_dir, tmp_path / "half.zip", half=True)
    assert half.stat().st_size < 0.7 * full.stat().st_size
    with zipfile.ZipFile(half) as zf:
        stored = torch.load(io.BytesIO(zf.read(f"{MODEL}/fold_0/checkpoint_final.pth")), weights_only=True)
    w = stored["network_weights"]
    assert all(v.dtype == torch.float16 for v in w.values() if v.is_floating_point())
    assert any(v.dtype == torch.int64 for v in w.values())  # num_batches_tracked untouched
    loaded = load_model_zip(half).weights["0"]
    original = _weights(model_dir / "fold_0" / "checkpoint_final.pth")
    for k, v in original.items():
        if v.is_floating_point():
            assert loaded[k].dtype == torch.float32
            torch.testing.assert_close(loaded[k], v, rtol=1e-3, atol=1e-4)


def test_export_refuses_missing_fold_or_checkpoint(tmp_path):
    model_dir = make_model_dir(tmp_path / "results", folds=(0,), checkpoint="checkpoint_best.pth")
    with pytest.raises(HiennuError, match=r"no checkpoint_best\.pth for fold\(s\) 3; folds with checkpoint_best\.pth: 0"):
        export_model_zip(model_dir, tmp_path / "m.zip", folds=[3], checkpoint="checkpoint_best.pth")
    with pytest.raises(HiennuError, match="checkpoint_final.pth"):
        export_model_zip(model_dir, tmp_path / "m.zip", checkpoint="checkpoint_final.pth")
    with pytest.raises(HiennuError, match="no checkpoint_final.pth.*--checkpoint best"):
        export_model_zip(model_dir, tmp_path / "m.zip")          # the default is final, as in nnU-Net
    assert not (tmp_path / "m.zip").exists()
    assert verify_model_zip(export_model_zip(model_dir, tmp_path / "m.zip", checkpoint="checkpoint_best.pth")) \
        .checkpoint == "checkpoint_best.pth"


def test_install_and_default(tmp_path, hiennu_roots):
    out = export_model_zip(make_model_dir(tmp_path / "elsewhere"), tmp_path / "m.zip")
    target = install_model_zip(out, make_default=True)
    root = hiennu_roots["hiennu_results"]
    assert target == root / MODEL
    assert (target / "plans.json").is_file() and (target / "fold_1" / "checkpoint_final.pth").is_file()
    assert read_default_model() == target
    # the installed folder holds only the exported checkpoint, and hiennu_predict's default finds it
    assert not (target / "fold_1" / "checkpoint_best.pth").exists()
    assert default_checkpoint(target) == "checkpoint_final.pth" == model_checkpoint(None)
    assert model_checkpoint("best") == "checkpoint_best.pth"
    older = make_model_dir(tmp_path / "older", checkpoint="checkpoint_best.pth")  # exported before final was default
    assert default_checkpoint(older) == "checkpoint_best.pth"
    with pytest.raises(HiennuError, match="give 'final', 'best' or a file name"):
        model_checkpoint("latest.pt")
    other = export_model_zip(make_model_dir(tmp_path / "other", seed=7), tmp_path / "other.zip")
    with pytest.raises(HiennuError, match="already exists.*--overwrite"):
        install_model_zip(other)
    assert torch.equal(_weights(target / "fold_0" / "checkpoint_final.pth")["encoder.0.0.weight"],
                       load_model_zip(out).weights["0"]["encoder.0.0.weight"])  # the refused install wrote nothing
    assert install_model_zip(other, overwrite=True) == target
    assert all(torch.equal(v, load_model_zip(other).weights["1"][k])
               for k, v in _weights(target / "fold_1" / "checkpoint_final.pth").items())
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no staging or backup left behind
    umask = os.umask(0)  # staged and renamed into place: the mode a plain mkdir gives, not tempfile's 0700
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask


def test_install_over_the_folder_it_was_exported_from_keeps_its_history(tmp_path, hiennu_roots):
    """export then install --default on the training machine: the README's sequence. The training folder
    already holds the model, so it is kept as it is (progress, validation, the optimizer state) and made
    the default; a folder whose plans or weights differ is still refused without --overwrite."""
    model_dir = make_model_dir(hiennu_roots["hiennu_results"])
    (model_dir / "fold_0" / "validation").mkdir()
    (model_dir / "fold_0" / "progress.json").write_text("{}")
    out = export_model_zip(model_dir, tmp_path / "m.zip")
    assert install_model_zip(out, make_default=True) == model_dir
    assert read_default_model() == model_dir
    assert (model_dir / "fold_0" / "validation").is_dir() and (model_dir / "fold_0" / "progress.json").is_file()
    assert "optimizer_state" in torch.load(model_dir / "fold_0" / "checkpoint_best.pth", weights_only=True)
    plans = load_plans(model_dir)
    plans.configuration().training.batch_size += 1
    save_plans(plans, model_dir / "plans.json")
    with pytest.raises(HiennuError, match="already exists.*--overwrite"):
        install_model_zip(out)


def _left_by_a_killed_process(parent: Path, prefix: str, holds_original: bool) -> Path:
    """A staging folder of ``prefix`` made by a process that was then killed with SIGKILL."""
    import signal
    import subprocess
    import sys
    script = ("import os, signal, sys; from hiennu.io.atomic import staging_dir; "
              f"d = staging_dir(sys.argv[1], {prefix!r}, holds_original={holds_original}); (d / 'fold_0').mkdir(); "
              "print(d.name, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    run = subprocess.run([sys.executable, "-c", script, str(parent)], capture_output=True, text=True)
    assert run.returncode == -signal.SIGKILL
    return parent / run.stdout.strip()


def test_an_install_sweeps_a_killed_installs_staging_and_never_a_moved_aside_original(tmp_path, hiennu_roots):
    """Killed between moving the installed model aside and renaming the new one in, the moved-aside folder holds
    the only copy of the old model: a later install must leave it; the half-unpacked staging goes."""
    out = export_model_zip(make_model_dir(tmp_path / "elsewhere"), tmp_path / "m.zip")
    target = install_model_zip(out)
    original = _left_by_a_killed_process(target.parent, ".hiennu-replaced-", True)
    unpacked = _left_by_a_killed_process(target.parent, ".hiennu-installing-", False)
    other = export_model_zip(make_model_dir(tmp_path / "other", seed=7), tmp_path / "other.zip")
    assert install_model_zip(other, overwrite=True) == target
    assert (original / "fold_0").is_dir() and not unpacked.exists()


# ------------------------------------------------------------------------------------------ attacks

class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_that_would_run_code_is_refused(tmp_path, hiennu_roots):
    marker = tmp_path / "code_ran"
    members = good_members(tmp_path)
    buffer = io.BytesIO()
    net = build_network(NetworkPlan(features_per_stage=[4, 8, 16], pool_kernel_sizes=[[2, 2, 2]] * 2,
                                    dropout_per_stage=[0, 0, 0]))
    torch.save({"network_weights": net.state_dict(), "payload": _RunsCode(marker)}, buffer)
    members[f"{MODEL}/fold_0/checkpoint_best.pth"] = buffer.getvalue()
    evil = zip_with(tmp_path / "evil.zip", members)  # manifest hashes are right: only weights_only guards
    verify_model_zip(evil)
    with pytest.raises(HiennuError, match=r"refused.*weights_only=True"):
        load_model_zip(evil)
    with pytest.raises(HiennuError, match="refused"):
        install_model_zip(evil)
    assert not marker.exists()
    assert not any(hiennu_roots["hiennu_results"].iterdir())


@pytest.mark.parametrize("bad_name", ["../escaped.txt", "/tmp/absolute.txt", f"{MODEL}/../../../up.txt",
                                      "C:/windows.txt", f"{MODEL}\\..\\x.txt"])
def test_path_traversal_is_refused_before_extraction(tmp_path, hiennu_roots, bad_name):
    members = good_members(tmp_path)
    members[bad_name] = b"owned"
    evil = zip_with(tmp_path / "evil.zip", members)
    with pytest.raises(ModelZipError, match="unsafe name"):
        install_model_zip(evil)
    assert not any(hiennu_roots["hiennu_results"].iterdir())
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/absolute.txt").exists()


def test_symlink_member_is_refused(tmp_path, hiennu_roots):
    members = good_members(tmp_path)
    evil = zip_with(tmp_path / "evil.zip", members)
    with zipfile.ZipFile(evil, "a") as zf:
        info = zipfile.ZipInfo(f"{MODEL}/fold_0/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ModelZipError, match="symbolic link"):
        install_model_zip(evil)
    assert not any(hiennu_roots["hiennu_results"].iterdir())


def test_tampered_file_is_refused(tmp_path, hiennu_roots):
    members = good_members(tmp_path)
    good = zip_with(tmp_path / "good2.zip", members)
    manifest = json.loads(zipfile.ZipFile(good).read(MANIFEST))
    plans = json.loads(members[f"{MODEL}/plans.json"])
    plans["configurations"]["3d_fullres"]["min_component_voxels"] = 100000
    members[f"{MODEL}/plans.json"] = json.dumps(plans).encode()
    evil = zip_with(tmp_path / "evil.zip", members, manifest)
    with pytest.raises(ModelZipError, match=r"plans.json does not match its SHA-256"):
        install_model_zip(evil)
    with pytest.raises(ModelZipError, match="SHA-256"):
        load_model_zip(evil)
    assert not any(hiennu_roots["hiennu_results"].iterdir())


@pytest.mark.parametrize("member", ["plans.json", MANIFEST])
def test_corrupted_compressed_data_is_refused_by_name(tmp_path, hiennu_roots, member):
    """A byte flipped inside a deflated member (a damaged download) is refused as corrupted, naming the zip, not
    raised as zlib's or zipfile's own error; the manifest's own damage makes the zip unreadable as a rule zip too."""
    from hiennu.inference.model_zip import is_ensemble_zip, is_rule_zip
    path = export_model_zip(make_model_dir(tmp_path / "src", folds=(0,)), tmp_path / "m.zip")
    name = MANIFEST if member == MANIFEST else f"{MODEL}/{member}"
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    assert info.compress_type == zipfile.ZIP_DEFLATED
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0xFF
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelZipError, match=r"bad\.zip: refused: its data is corrupted .*get a fresh copy"):
        verify_model_zip(bad)
    with pytest.raises(ModelZipError, match="its data is corrupted"):
        install_model_zip(bad)
    assert not is_rule_zip(bad) and not is_ensemble_zip(bad)
    assert not any(hiennu_roots["hiennu_results"].iterdir())


def test_missing_manifest_and_unlisted_files_are_refused(tmp_path, hiennu_roots):
    members = good_members(tmp_path)
    with pytest.raises(ModelZipError, match="no manifest.json"):
        install_model_zip(zip_with(tmp_path / "nomanifest.zip", members, manifest=None))
    good = zip_with(tmp_path / "good2.zip", members)
    manifest = json.loads(zipfile.ZipFile(good).read(MANIFEST))
    members[f"{MODEL}/fold_0/extra.py"] = b"import os"
    with pytest.raises(ModelZipError, match="not listed"):
        install_model_zip(zip_with(tmp_path / "extra.zip", members, manifest))
    (tmp_path / "notazip.zip").write_bytes(b"PK garbage")
    with pytest.raises(ModelZipError, match="not a readable zip"):
        verify_model_zip(tmp_path / "notazip.zip")
    assert not any(hiennu_roots["hiennu_results"].iterdir())


def test_export_and_install_commands(tmp_path, hiennu_roots):
    from hiennu.cli import export_model, install_model
    make_model_dir(hiennu_roots["hiennu_results"], folds=(0, 1))
    out = tmp_path / "shared" / "model.zip"
    assert export_model.main(["-d", "Tiny", "-tr", "TrainerTest", "-c", "3d_fullres", "-f", "1", "--half",
                              "-o", str(out)]) == 0
    assert verify_model_zip(out).folds == ["1"] and verify_model_zip(out).half_precision
    assert export_model.main(["-d", "Tiny", "-tr", "Nope", "-o", str(tmp_path / "x.zip")]) == 1
    assert not (tmp_path / "x.zip").exists()
    assert install_model.main([str(out)]) == 1  # same model already installed
    assert install_model.main([str(out), "--overwrite", "--default"]) == 0
    installed = hiennu_roots["hiennu_results"] / MODEL
    assert read_default_model() == installed
    assert [p.name for p in installed.iterdir() if p.name.startswith("fold_")] == ["fold_1"]


def test_without_folds_named_the_numbered_folds_are_used_and_an_unfinished_one_is_named(tmp_path):
    """nnU-Net's spellings gave other models than nnU-Net: with no -f, fold_all joined the five folds, a fold still
    training was left out of an export without a word, and it switched every fold's prediction to checkpoint_best."""
    from hiennu.inference.model_registry import default_folds, select_folds
    from hiennu.inference.predictor import Predictor
    done = make_model_dir(tmp_path / "done", folds=(0, 1, 2, "all"))
    assert default_folds(done) == ["0", "1", "2"]
    assert verify_model_zip(export_model_zip(done, tmp_path / "d.zip")).folds == ["0", "1", "2"]
    assert Predictor.from_path(done, device="cpu").folds == ["0", "1", "2"]
    assert Predictor.from_path(done, ["all"], device="cpu").folds == ["all"]
    only_all = make_model_dir(tmp_path / "only_all", folds=("all",))
    assert default_folds(only_all) == ["all"]
    training = make_model_dir(tmp_path / "training", folds=(0, 1, 2))
    (training / "fold_2" / "checkpoint_final.pth").unlink()  # fold 2 still training: best only
    assert default_checkpoint(training) == "checkpoint_final.pth"
    unfinished = r"fold\(s\) 2 hold no checkpoint_final\.pth \(training not finished\?\), fold\(s\) 0, 1 do.*-f 0 1"
    with pytest.raises(HiennuError, match=unfinished):
        Predictor.from_path(training, device="cpu")
    with pytest.raises(HiennuError, match=unfinished + r".*--checkpoint best\|final"):
        export_model_zip(training, tmp_path / "t.zip")
    assert not (tmp_path / "t.zip").exists()
    assert Predictor.from_path(training, ["0", "1"], device="cpu").folds == ["0", "1"]
    assert default_checkpoint(training, ["2"]) == "checkpoint_best.pth"  # a fold with best alone: the old default
    assert select_folds(training, None, "checkpoint_best.pth", "-chk NAME") == ["0", "1", "2"]
    # a finished fold_all beside a numbered fold still training: the numbered one is named, not used with best
    mixed = make_model_dir(tmp_path / "mixed", folds=("all",))
    make_model_dir(tmp_path / "mixed", folds=(0,), checkpoint=("checkpoint_best.pth", "checkpoint_latest.pth"))
    assert default_checkpoint(mixed) == "checkpoint_final.pth"
    with pytest.raises(HiennuError, match=r"fold\(s\) 0 hold no checkpoint_final\.pth .*fold\(s\) all do.*-f all"):
        Predictor.from_path(mixed, device="cpu")
    # a zip exported with fold_all among its folds predicts with the same folds as once installed
    old = export_model_zip(done, tmp_path / "old.zip", folds=["0", "1", "2", "all"])
    assert Predictor.from_path(old, device="cpu").folds == ["0", "1", "2"]
    assert Predictor.from_path(old, ["all"], device="cpu").folds == ["all"]


@pytest.mark.parametrize("call", [1, 2, 3, 4])
@pytest.mark.parametrize("after", [False, True])
def test_an_interrupted_overwrite_leaves_the_installed_model_as_it_was(tmp_path, hiennu_roots, monkeypatch, call, after):
    """Ctrl-C or SIGTERM may land before or right after any rename of the swap (before its bookkeeping): the
    installed model is then put back whole, and the next install goes through."""
    import hiennu.inference.model_zip as model_zip
    out = export_model_zip(make_model_dir(tmp_path / "a"), tmp_path / "a.zip")
    target = install_model_zip(out)
    before = _weights(target / "fold_0" / "checkpoint_final.pth")
    other = export_model_zip(make_model_dir(tmp_path / "b", seed=7), tmp_path / "b.zip")
    real, calls = os.replace, []

    def interrupted(src, dst):
        calls.append(src)
        if len(calls) == call and not after:
            raise KeyboardInterrupt
        real(src, dst)
        if len(calls) == call:
            raise KeyboardInterrupt

    monkeypatch.setattr(model_zip.os, "replace", interrupted)
    try:
        install_model_zip(other, overwrite=True)
    except KeyboardInterrupt:
        interrupted_swap = True
    else:
        interrupted_swap = False  # the swap took fewer renames than `call`: installed whole
    monkeypatch.setattr(model_zip.os, "replace", real)
    now = _weights(target / "fold_0" / "checkpoint_final.pth")
    if interrupted_swap and call <= 2:  # the swap's two renames: the old model is back
        assert all(torch.equal(now[k], before[k]) for k in before)
    else:  # interrupted while the old copy is removed: the new model stays
        assert all(torch.equal(now[k], load_model_zip(other).weights["0"][k]) for k in now)
    assert install_model_zip(other, overwrite=True) == target
    if call <= 2:  # undone: nothing of the swap is left beside the model
        left = [p.name for p in target.parent.iterdir() if p.name != target.name and p.name.startswith(".hiennu-")]
        assert not [n for n in left if n.startswith(".hiennu-replaced-")], left


@pytest.mark.parametrize("when", ["swap", "old copy"])
def test_a_signal_during_the_swap_is_held_until_it_is_done(tmp_path, hiennu_roots, monkeypatch, when,
                                                           ctrl_c_delivered):
    """A real Ctrl-C landing while the folders are renamed (or right after the swap, before the old copy is renamed
    for removal) is delivered once the renames are done: the new model is in place, no hidden copy of the old one
    is left beside it (it was never removed, since it cannot be told from an original whose swap failed), and the
    command still ends with KeyboardInterrupt."""
    import signal
    import hiennu.inference.model_zip as model_zip
    target = install_model_zip(export_model_zip(make_model_dir(tmp_path / "a"), tmp_path / "a.zip"))
    other = export_model_zip(make_model_dir(tmp_path / "b", seed=7), tmp_path / "b.zip")
    real_replace, real_staging, swapped = os.replace, model_zip.staging_dir, []

    def replace(src, dst):
        real_replace(src, dst)
        if Path(dst) == target:  # the new model just renamed in
            swapped.append(dst)
            if when == "swap":
                os.kill(os.getpid(), signal.SIGINT)

    def staging(parent, prefix, **kwargs):
        if when == "old copy" and swapped and prefix == ".hiennu-installing-":  # after the swap, before the rename
            os.kill(os.getpid(), signal.SIGINT)
        return real_staging(parent, prefix, **kwargs)

    monkeypatch.setattr(model_zip.os, "replace", replace)
    monkeypatch.setattr(model_zip, "staging_dir", staging)
    with pytest.raises(KeyboardInterrupt):
        install_model_zip(other, overwrite=True)
    monkeypatch.setattr(model_zip.os, "replace", real_replace)
    monkeypatch.setattr(model_zip, "staging_dir", real_staging)
    now = _weights(target / "fold_0" / "checkpoint_final.pth")
    assert all(torch.equal(now[k], load_model_zip(other).weights["0"][k]) for k in now)
    assert not [p.name for p in target.parent.iterdir() if p.name.startswith(".hiennu-")]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_installed_default_predicts_as_its_zip_or_is_refused(tmp_path, hiennu_roots, capsys):
    """A folder that holds the zip's weights but more folds or another default checkpoint would, as the default,
    predict otherwise than the zip: --default is refused (naming the folds and checkpoints), --overwrite installs
    exactly the zip, and without --default a warning says how to predict as the zip does."""
    model_dir = make_model_dir(hiennu_roots["hiennu_results"], folds=(0, 1))  # training folder: best and final
    best = export_model_zip(model_dir, tmp_path / "best.zip", checkpoint="checkpoint_best.pth")
    with pytest.raises(HiennuError, match="predicts with folds 0, 1 and checkpoint_final.pth, the zip with folds 0, "
                                          "1 and checkpoint_best.pth"):
        install_model_zip(best, make_default=True)
    fold0 = export_model_zip(model_dir, tmp_path / "fold0.zip", folds=[0])
    with pytest.raises(HiennuError, match="-f 0 -chk checkpoint_final.pth"):
        install_model_zip(fold0, make_default=True)
    capsys.readouterr()
    assert install_model_zip(fold0) == model_dir
    assert "predict from it with -f 0" in capsys.readouterr().err and (model_dir / "fold_1").is_dir()
    assert install_model_zip(fold0, overwrite=True, make_default=True) == model_dir
    assert sorted(p.name for p in model_dir.iterdir() if p.name.startswith("fold_")) == ["fold_0"]
    assert read_default_model() == model_dir
    everything = export_model_zip(model_dir, tmp_path / "all.zip")  # now the folder predicts as its zip
    assert install_model_zip(everything, make_default=True) == model_dir



def test_a_zip_with_fold_all_installs_as_the_default_of_the_folder_it_came_from(tmp_path, hiennu_roots):
    """fold_all travels in the zip but neither it nor the folder predicts with it by default; its weights are still
    compared before the folder is taken as holding the zip's model."""
    model_dir = make_model_dir(hiennu_roots["hiennu_results"], folds=(0, 1, "all"))
    out = export_model_zip(model_dir, tmp_path / "m.zip", folds=[0, 1, "all"])
    assert install_model_zip(out, make_default=True) == model_dir
    other = make_model_dir(tmp_path / "other", folds=(0, 1, "all"), seed=7)
    torch.save(torch.load(model_dir / "fold_0" / "checkpoint_final.pth", weights_only=True),
               other / "fold_0" / "checkpoint_final.pth")
    torch.save(torch.load(model_dir / "fold_1" / "checkpoint_final.pth", weights_only=True),
               other / "fold_1" / "checkpoint_final.pth")
    differs_in_all = export_model_zip(other, tmp_path / "other.zip", folds=[0, 1, "all"])
    with pytest.raises(HiennuError, match="already exists and holds another model"):
        install_model_zip(differs_in_all)


def test_export_never_writes_into_a_folder_it_exports_from(tmp_path):
    model_dir = make_model_dir(tmp_path / "results")
    checkpoint = model_dir / "fold_0" / "checkpoint_final.pth"
    before = checkpoint.read_bytes()
    for out in (checkpoint, model_dir / "model.zip", model_dir / "fold_1" / "x.zip"):
        with pytest.raises(HiennuError, match="lies inside .* which it is exported from"):
            export_model_zip(model_dir, out)
    assert checkpoint.read_bytes() == before and not (model_dir / "model.zip").exists()
    assert export_model_zip(model_dir, model_dir.parent / "model.zip").is_file()  # beside it is fine
