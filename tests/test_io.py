"""Image I/O round trips for every format, geometry records, dataset.json, case discovery, atomic writes."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from hiennu.errors import HiennuError, ImageReadError
from hiennu.io.atomic import write_json, write_npy
from hiennu.io.bonbid_names import bonbid_role
from hiennu.io.cases import discover_cases
from hiennu.io.dataset_json import DatasetJson, load_dataset_json, save_dataset_json
from hiennu.io.image import Geometry, read_image, strip_ending, write_image

OBLIQUE = (0.998, 0.0, 0.0654, 0.0043, 0.9977, -0.0570, -0.0653, 0.0571, 0.9962)


def _geometry(size_xyz=(5, 4, 3)):
    # orthonormalize the direction so every format stores it faithfully
    q, _ = np.linalg.qr(np.array(OBLIQUE).reshape(3, 3).T)
    direction = tuple((q.T * np.sign(np.diag(q))[:, None]).ravel())
    return Geometry(size_xyz, (1.25, 1.5, 4.0), (-10.5, 20.25, 3.0), direction, "32-bit float")


@pytest.mark.parametrize("ending", [".mha", ".nii.gz", ".nii", ".nrrd"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_round_trip_every_format(tmp_path, ending, dtype):
    geo = _geometry()
    arr = (np.arange(60).reshape(3, 4, 5) % 7).astype(dtype)
    path = tmp_path / f"img{ending}"
    write_image(arr, geo, path)
    back, geo2 = read_image(path, dtype=None)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_allclose(geo2.spacing_xyz, geo.spacing_xyz, rtol=1e-6)
    np.testing.assert_allclose(geo2.origin_xyz, geo.origin_xyz, atol=1e-5)
    np.testing.assert_allclose(geo2.direction, geo.direction, atol=1e-6)
    assert geo2.size_zyx == (3, 4, 5)
    assert geo2.spacing_zyx == pytest.approx((4.0, 1.5, 1.25), rel=1e-9)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary file left behind"


def test_array_is_zyx_and_geometry_xyz(tmp_path):
    arr = np.zeros((3, 4, 5), np.float32)
    arr[2, 1, 0] = 1  # z=2, y=1, x=0
    write_image(arr, _geometry(), tmp_path / "a.mha")
    img = sitk.ReadImage(str(tmp_path / "a.mha"))
    assert img.GetSize() == (5, 4, 3)
    assert img.GetPixel(0, 1, 2) == 1


def test_write_rejects_shape_mismatch(tmp_path):
    with pytest.raises(ValueError, match="does not match"):
        write_image(np.zeros((4, 4, 4), np.float32), _geometry(), tmp_path / "a.mha")
    assert list(tmp_path.iterdir()) == []


def test_geometry_differences_name_each_field():
    a = _geometry()
    b = Geometry((5, 4, 4), (1.25, 1.5, 5.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    diffs = " ".join(a.differences(b))
    for word in ("size", "spacing", "origin", "direction"):
        assert word in diffs
    assert Geometry.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="missing.mha: file not found"):
        read_image(tmp_path / "missing.mha")
    (tmp_path / "empty.mha").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.mha: file is empty"):
        read_image(tmp_path / "empty.mha")
    (tmp_path / "junk.mha").write_bytes(b"ObjectType = Image\nNDims = 3\nthis is not an image")
    with pytest.raises(ImageReadError, match="junk.mha: its MetaImage header ends before its ElementDataFile line"):
        read_image(tmp_path / "junk.mha")
    (tmp_path / "x.png").write_bytes(b"abc")
    with pytest.raises(ImageReadError, match="unsupported file ending"):
        read_image(tmp_path / "x.png")


def test_dataset_json_round_trip_and_errors(tmp_path):
    dj = DatasetJson(name="BONBID", num_training=3, file_ending=".nii.gz", licence="CC BY-NC-ND 4.0")
    save_dataset_json(dj, tmp_path)
    assert load_dataset_json(tmp_path) == dj
    raw = json.loads((tmp_path / "dataset.json").read_text())
    assert raw["channel_names"] == {"0": "ADC", "1": "ZADC"} and raw["labels"] == {"background": 0, "lesion": 1}
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(HiennuError, match="not valid JSON"):
        load_dataset_json(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "lesion": 1}}))
    with pytest.raises(HiennuError, match="channel_names"):
        load_dataset_json(tmp_path)
    with pytest.raises(HiennuError, match="dataset.json: not found"):
        load_dataset_json(tmp_path / "nowhere")


def test_discover_cases_reports_gaps(tmp_path):
    img, lab = tmp_path / "imagesTr", tmp_path / "labelsTr"
    img.mkdir(), lab.mkdir()
    for name in ("A_0000.mha", "A_0001.mha", "B_0000.mha", ".hidden_0000.mha", "notes.txt"):
        (img / name).write_bytes(b"x")
    for name in ("A.mha", "C.mha"):
        (lab / name).write_bytes(b"x")
    cases = {c.case_id: c for c in discover_cases(img, 2, lab)}
    assert sorted(cases) == ["A", "B", "C"]
    assert cases["A"].missing_channels == [] and cases["A"].label_file.name == "A.mha"
    assert cases["B"].missing_channels == [1] and cases["B"].label_file is None
    assert cases["C"].missing_channels == [0, 1]
    assert strip_ending("CASE_0000.nii.gz") == "CASE_0000"


def test_atomic_writers(tmp_path):
    write_json({"a": np.float32(1.5), "b": np.arange(2)}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1.5, "b": [0, 1]}
    write_npy(np.ones((2, 3), np.uint8), tmp_path / "x.npy")
    assert np.load(tmp_path / "x.npy", mmap_mode="r").shape == (2, 3)
    with pytest.raises(TypeError):
        write_json({"a": object()}, tmp_path / "y.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.npy"]


def test_bonbid_roles():
    assert bonbid_role("MGHNICU_010-VISIT_01-ADC_ss.mha") == ("ADC", "MGHNICU_010-VISIT_01")
    assert bonbid_role("Zmap_MGHNICU_010-VISIT_01-ADC_smooth2mm_clipped10.nii.gz") == ("ZADC", "MGHNICU_010-VISIT_01")
    assert bonbid_role("MGHNICU_010-VISIT_01_lesion.mha") == ("label", "MGHNICU_010-VISIT_01")
    assert bonbid_role("CASE_0000.mha") is None


def test_real_case_reads_with_geometry(real_bonbid_dir):
    adc = sorted((real_bonbid_dir / "1ADC_ss").glob("*.mha"))[0]
    arr, geo = read_image(adc)
    assert arr.shape == geo.size_zyx and arr.dtype == np.float32
    assert geo.pixel_type == "32-bit float"


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    import os
    mask = os.umask(0o022)
    os.umask(mask)
    write_json({"a": 1}, tmp_path / "p.json")
    mode = (tmp_path / "p.json").stat().st_mode & 0o777
    assert mode == 0o666 & ~mask, oct(mode)


def test_folder_relation_compares_the_folders_on_disk(tmp_path):
    from hiennu.io.folders import AROUND, INSIDE, IS, folder_relation
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "in")
    assert folder_relation(tmp_path / "in", tmp_path / "in" / ".." / "in") == IS
    assert folder_relation(tmp_path / "link", tmp_path / "in") == IS  # a link is its target
    assert folder_relation(tmp_path / "link" / "sub" / "out", tmp_path / "in") == INSIDE
    assert folder_relation(tmp_path, tmp_path / "in") == AROUND
    assert folder_relation(tmp_path / "other", tmp_path / "in") is None


def test_interrupts_are_held_until_the_block_ends_and_ignored_ones_stay_ignored(ctrl_c_delivered):
    """SIGTERM and Ctrl-C raised inside the block reach the handler in place only after the block, once (the first
    received); the handlers are restored; a signal that was ignored is not caught or delivered."""
    import os
    import signal

    from hiennu.io.atomic import interrupts_deferred
    seen, steps = [], []
    previous = signal.signal(signal.SIGTERM, lambda number, _frame: seen.append((number, list(steps))))
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                steps.append("after SIGINT")
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("after SIGTERM")
        assert steps == ["after SIGINT", "after SIGTERM"] and seen == []  # the first one received is delivered
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("inside")
            assert seen == []
        assert seen == [(signal.SIGTERM, ["after SIGINT", "after SIGTERM", "inside"])]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with interrupts_deferred():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("compress", [True, False])
def test_a_cut_off_metaimage_is_one_line_without_itks_own_complaints(tmp_path, capfd, compress):
    """A .mha cut off in its header or its voxels is refused before ITK reads it: ITK's MetaImage reader printed
    several lines of its own to the process's standard error (which -q cannot silence) before its exception."""
    geometry = Geometry((6, 5, 4), (1.0, 1.0, 2.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_image(np.arange(120, dtype=np.float32).reshape(4, 5, 6), geometry, tmp_path / "whole.mha", compress=compress)
    data = (tmp_path / "whole.mha").read_bytes()
    header = data.index(b"ElementDataFile")
    for cut, message in ((header - 5, "its MetaImage header ends before its ElementDataFile line"),
                         (len(data) - 7, "compressed stream ends early" if compress else
                          "its voxel data ends early: 473 of 480 bytes")):
        (tmp_path / "cut.mha").write_bytes(data[:cut])
        capfd.readouterr()
        with pytest.raises(ImageReadError, match=f"cut.mha: .*{message}"):
            read_image(tmp_path / "cut.mha")
        assert capfd.readouterr().err == ""


@pytest.mark.parametrize("ending", [".mha", ".nii.gz"])
def test_a_write_that_does_not_read_back_whole_is_an_error_and_replaces_nothing(tmp_path, monkeypatch, ending):
    """SimpleITK's writers do not report a full disk (the NIfTI writer returns as if all went well): a file that
    does not read back as the array written is an error naming the file, the earlier file stays, and no temporary
    file is left."""
    import hiennu.io.image as image
    geometry = Geometry((6, 5, 4), (1.0, 1.0, 2.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    path = tmp_path / f"mask{ending}"
    write_image(np.zeros((4, 5, 6), np.uint8), geometry, path)
    before = path.read_bytes()
    real = image.sitk.WriteImage

    def cut_short(img, name, useCompression=True):
        real(img, name, useCompression=useCompression)
        with open(name, "r+b") as f:
            f.truncate(len(open(name, "rb").read()) // 2)

    monkeypatch.setattr(image.sitk, "WriteImage", cut_short)
    with pytest.raises(HiennuError, match=f"mask{ending}: writing it failed .*disk or quota full"):
        write_image(np.ones((4, 5, 6), np.uint8), geometry, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]

    def refused(img, name, useCompression=True):
        raise RuntimeError(f"ITK ERROR: MetaImageIO: File cannot be written: {name}\nReason: No space left on device")

    monkeypatch.setattr(image.sitk, "WriteImage", refused)
    with pytest.raises(HiennuError, match=f"mask{ending}: cannot be written \\(No space left on device\\)"):
        write_image(np.ones((4, 5, 6), np.uint8), geometry, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_file_that_cannot_be_written_is_named_not_its_temporary_twin(tmp_path, monkeypatch):
    """A folder that refuses new files, or a write cut short (a full disk), is an error naming the file asked for,
    not the hidden temporary file it is first written to; an error about another file passes through as it is."""
    import errno
    import tempfile

    from hiennu.io.atomic import atomic_path
    real = tempfile.mkstemp

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system", str(tmp_path / ".x.json.abc.tmp.json"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(HiennuError, match=r"x\.json: cannot be written \(Read-only file system\); choose a folder"):
        write_json({}, tmp_path / "x.json")
    monkeypatch.setattr(tempfile, "mkstemp", real)
    with pytest.raises(HiennuError, match=r"y\.json: cannot be written \(No space left on device\)"):
        with atomic_path(tmp_path / "y.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        with atomic_path(tmp_path / "z.json"):
            open(tmp_path / "elsewhere" / "source.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_metaimages_itk_reads_are_read_and_nan_images_are_written(tmp_path):
    """Found reviewing the checks above: an ASCII MetaImage (BinaryData False) and a DimSize written as 4.0 are read
    as ITK reads them, and a float image with NaN or infinities is written in every format (ITK's NIfTI reader turns
    them into 0, which the read-back leaves aside)."""
    values = " ".join(str(v) for v in range(24))
    header = ("ObjectType = Image\nNDims = 3\nBinaryData = False\nDimSize = 4 3 2\nElementType = MET_FLOAT\n"
              "ElementSpacing = 1 1 1\nElementDataFile = LOCAL\n")
    (tmp_path / "ascii.mha").write_text(header + values + "\n")
    array, _ = read_image(tmp_path / "ascii.mha")
    assert array.shape == (2, 3, 4) and array[1, 2, 3] == 23
    (tmp_path / "float_size.mha").write_text(header.replace("DimSize = 4 3 2", "DimSize = 4.0 3 2") + values + "\n")
    assert read_image(tmp_path / "float_size.mha")[0].shape == (2, 3, 4)
    geometry = Geometry((4, 3, 2), (1.0, 1.0, 2.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    image = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    image[0, 0, 0], image[1, 1, 1] = np.nan, np.inf
    for ending in (".mha", ".nii.gz", ".nii", ".nrrd"):
        write_image(image, geometry, tmp_path / f"nan{ending}")
        back, _ = read_image(tmp_path / f"nan{ending}")
        assert np.array_equal(back[np.isfinite(image)], image[np.isfinite(image)]), ending
