"""Inference refuses bad input up front, in configs/inference.json and in the light path alike: every case
gets one line that names the file, a list goes on past a bad volume, and the run ends with a summary."""

import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from bundle.checks import InputError, InputReport, check_ct, dicom_series
from conftest import bundle_cli, bundle_run, config_files

EXPECTED = {  # input name -> what its refusal says
    "truncated.nii.gz": "is not a readable NIfTI file",
    "text.nii.gz": "is not a readable NIfTI file",
    "empty.nii.gz": "is empty (0 bytes)",
    "missing.nii.gz": "does not exist",
    "flat.nii.gz": "holds one value (0) everywhere",
    "mr_like.nii.gz": "holds no air",
    "image2d.nii.gz": "a 3D CT volume is expected",
    "image4d.nii.gz": "a 3D CT volume is expected",
    "dicom_truncated": "is not a readable CT slice",
    "dicom_gap": "a slice is missing",
}


@pytest.fixture(scope="module")
def bad_inputs(totalseg_dir, tmp_path_factory):
    """Every kind of bad input of the two tables, made small, and a good CT (the real fixture)."""
    root = tmp_path_factory.mktemp("bad")
    ct = totalseg_dir / "example_ct_sm.nii.gz"
    (root / "truncated.nii.gz").write_bytes(ct.read_bytes()[:1000])
    (root / "text.nii.gz").write_text("not an image\n")
    (root / "empty.nii.gz").write_bytes(b"")
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 20), np.int16), np.eye(4)), root / "flat.nii.gz")
    nib.save(nib.Nifti1Image((rng.random((40, 40, 20)) * 4000).astype(np.float32), np.eye(4)), root / "mr_like.nii.gz")
    nib.save(nib.Nifti1Image((rng.random((64, 64)) * 1000 - 1000).astype(np.float32), np.eye(4)), root / "image2d.nii.gz")
    nib.save(nib.Nifti1Image((rng.random((20, 20, 10, 3)) * 1000 - 1000).astype(np.float32), np.eye(4)),
             root / "image4d.nii.gz")
    series = totalseg_dir / "example_ct_dicom"
    slices = sorted(p.name for p in series.iterdir())
    for name in ("dicom_truncated", "dicom_gap"):
        shutil.copytree(series, root / name)
    (root / "dicom_truncated" / slices[6]).write_bytes((series / slices[6]).read_bytes()[:60000])
    (root / "dicom_gap" / slices[9]).unlink()
    paths = [str(ct)] + [str(root / name) for name in EXPECTED]
    return root, paths


def _reasons(summary: str) -> dict[str, str]:
    """The summary's reason for each refused input of EXPECTED."""
    starts = sorted((summary.index(f"{name} ("), name) for name in EXPECTED if f"{name} (" in summary)
    ends = [start for start, _ in starts[1:]] + [len(summary)]
    return {name: summary[start + len(name) + 2:end] for (start, name), end in zip(starts, ends)}


def _assert_reasons(summary: str) -> None:
    reasons = _reasons(summary)
    assert set(reasons) == set(EXPECTED), summary
    for name, reason in EXPECTED.items():
        assert reason in reasons[name], (name, reasons[name])


def _written(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_inference_json_refuses_each_bad_volume_and_writes_the_others(fitted_student, bad_inputs, tmp_path, capsys):
    _, ckpt, _ = fitted_student
    _, paths = bad_inputs
    with pytest.raises(SystemExit) as stop:
        bundle_run("run", config_files("inference"), input_files=paths, ckpt_path=str(ckpt),
                   output_dir=str(tmp_path / "out"), onnx_path=str(tmp_path / "model.onnx"))
    assert stop.value.code == 1
    assert _written(tmp_path / "out") == ["example_ct_sm_seg.nii.gz"]
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith(f"{len(paths)} volumes: 1 written, {len(EXPECTED)} refused: ")
    _assert_reasons(summary)


def test_the_light_path_refuses_the_same_volumes_for_the_same_reasons(fitted_student, bad_inputs, tmp_path, capsys):
    from bundle.cli import main

    _, ckpt, _ = fitted_student
    _, paths = bad_inputs
    assert main(["segment", *paths, "-o", str(tmp_path / "out"), "--model", str(ckpt), "--quiet"]) == 1
    assert _written(tmp_path / "out") == ["example_ct_sm_seg.nii.gz"]
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    _assert_reasons(summary)


def test_the_command_line_ends_non_zero_with_one_summary_line_and_no_traceback(fitted_student, bad_inputs, tmp_path):
    _, ckpt, _ = fitted_student
    root, _ = bad_inputs
    good = str(fitted_student[1].parent / "good.nii.gz")
    shutil.copy(bad_inputs[1][0], good)
    command = bundle_cli("run", config_files("inference"), input_files=[str(root / "text.nii.gz"), good],
                         ckpt_path=str(ckpt), output_dir=str(tmp_path / "out"), onnx_path=str(tmp_path / "m.onnx"))
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr + out.stdout
    assert out.stdout.strip().splitlines()[-1].startswith("2 volumes: 1 written, 1 refused: text.nii.gz (")
    assert _written(tmp_path / "out") == ["good_seg.nii.gz"]


@pytest.mark.parametrize("engine", ["monai", "light"])
def test_an_output_folder_that_is_a_file_or_cannot_be_made_stops_before_any_volume_is_read(engine, fitted_student,
                                                                                          tmp_path, capsys):
    from bundle.cli import main

    _, ckpt, _ = fitted_student
    blocker = tmp_path / "masks"
    blocker.write_text("")
    for out, message in ((blocker, "masks' is a file"), (blocker / "sub", "cannot create the output folder")):
        absent = str(tmp_path / "never_read.nii.gz")  # reading it would be a different error
        if engine == "light":
            assert main(["segment", absent, "-o", str(out), "--model", str(ckpt)]) == 2
            assert message in capsys.readouterr().err
        else:
            with pytest.raises(SystemExit, match=message):
                bundle_run("run", config_files("inference"), input_files=[absent], ckpt_path=str(ckpt),
                           output_dir=str(out), onnx_path=str(tmp_path / "model.onnx"))


@pytest.mark.parametrize("engine", ["monai", "light"])
def test_allow_non_ct_segments_an_mr_like_volume_with_a_warning(engine, fitted_student, bad_inputs, tmp_path, caplog,
                                                                capfd):
    from bundle.cli import main

    _, ckpt, _ = fitted_student
    root, _ = bad_inputs
    source = str(root / "mr_like.nii.gz")
    if engine == "light":
        assert main(["segment", source, "-o", str(tmp_path), "--model", str(ckpt), "--allow_non_ct", "--quiet"]) == 0
    else:
        bundle_run("run", config_files("inference"), input_files=[source], ckpt_path=str(ckpt), allow_non_ct=True,
                   output_dir=str(tmp_path), onnx_path=str(tmp_path / "model.onnx"))
    assert (tmp_path / "mr_like_seg.nii.gz").is_file()
    captured = capfd.readouterr()  # the MONAI run logs to stdout through configs/logging.conf's handler
    logged = caplog.text + captured.out + captured.err
    assert "holds no air" in logged and "segmenting it anyway" in logged


def test_a_single_channel_4d_ct_is_a_volume(totalseg_dir, fitted_student, tmp_path):
    from bundle.serving.light import LightSegmenter, read_volume

    ct = nib.load(totalseg_dir / "example_ct_sm.nii.gz")
    path = tmp_path / "ct4d.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(ct.dataobj)[..., None], ct.affine), path)
    volume = read_volume(path)
    assert volume.array.shape == ct.shape
    mask = LightSegmenter.for_checkpoint(fitted_student[1]).segment(volume)
    bundle_run("run", config_files("inference"), input_files=[str(path)], ckpt_path=str(fitted_student[1]),
               output_dir=str(tmp_path / "monai"), onnx_path=str(tmp_path / "model.onnx"))
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "monai" / "ct4d_seg.nii.gz").dataobj), mask)


def test_check_ct_accepts_a_real_ct_and_a_ct_with_little_air_in_view(totalseg_dir):
    ct = np.asarray(nib.load(totalseg_dir / "example_ct_sm.nii.gz").dataobj, dtype=np.float32)
    assert check_ct(ct, "ct") == []
    body = np.full((64, 64, 16), 40.0, np.float32)
    body[:4] = -1000.0  # a small field of view: air in a few columns only
    assert check_ct(body, "small_fov") == []
    body[:4] = -200.0
    with pytest.raises(InputError, match="'small_fov' holds no air"):
        check_ct(body, "small_fov")
    body[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        check_ct(body, "nan", allow_non_ct=True)


def test_a_dicom_series_with_two_slices_at_one_position_is_refused(totalseg_dir, tmp_path):
    series = tmp_path / "series"
    shutil.copytree(totalseg_dir / "example_ct_dicom", series)
    first = sorted(series.iterdir())[0]
    shutil.copy(first, series / "copy_of_first")
    with pytest.raises(InputError, match="lie at the same position"):
        dicom_series(series)
    assert len(dicom_series(totalseg_dir / "example_ct_dicom")) == 20


def test_the_report_names_volumes_a_worker_skipped_without_telling_the_main_process():
    report = InputReport()
    report.expect([{"image": "/data/a.nii.gz"}, {"image": "/data/b.nii.gz"}])
    report.ok("/data/a.nii.gz")
    assert report.summary().startswith("2 volumes: 1 written, 1 refused: b.nii.gz (refused in a data loader worker")
    with pytest.raises(SystemExit):
        report.finish()
