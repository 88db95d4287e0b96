"""Segment the spleen in CT volumes: NIfTI files, folders of them, DICOM series (a folder of slices).

    spleen-kd segment ct.nii.gz -o masks/                      # masks/ct_seg.nii.gz
    spleen-kd segment scans/ dicom_series/ -o masks/ --model models/s1/model.pt
    spleen-kd segment ct.nii.gz -o masks/ --engine monai        # through configs/inference.json

The masks are uint8 NIfTI (1 = spleen) on each input's own grid, named ``<input>_seg.nii.gz`` as
``configs/inference.json`` names them. The model, its slice size, HU window and orientation come from
the checkpoint's description (``model.json`` beside it). The default engine, ``light``, needs neither
MONAI nor PyTorch (ONNX Runtime, numpy, SciPy, nibabel, pydicom) and gives inference.json's masks;
``monai`` runs inference.json itself. Every volume of a list is attempted: one that cannot be read is
reported and skipped, and the command ends with a summary (exit status 1 if any volume failed).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def expand_inputs(paths: list[str]) -> list[str]:
    """Files as given; a folder holding NIfTI files gives each of them; any other folder is a DICOM series."""
    found = []
    for path in paths:
        folder = Path(path)
        if folder.is_dir():
            niftis = sorted(str(p) for p in folder.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
            found += niftis or [str(folder)]
        else:
            found.append(str(path))
    return found


def segment_with_monai(inputs: list[str], out_dir: Path, ckpt: str | None, overrides: dict) -> None:
    """``configs/inference.json`` through ``monai.bundle run``, in this process."""
    from ..workflows import bundle_run, config_files

    extra = {"ckpt_path": str(Path(ckpt).resolve())} if ckpt else {}
    bundle_run("run", config_files("inference"), input_files=inputs, output_dir=str(out_dir.resolve()),
               **extra, **overrides)


def segment_light(inputs: list[str], out_dir: Path, ckpt: str, threads: int, log=print, locate: bool = True,
                  allow_non_ct: bool = False, debug: bool = False):
    """Every input through :class:`bundle.serving.light.LightSegmenter`, volume by volume: one that is
    refused or fails is reported and skipped. Returns the :class:`~bundle.checks.InputReport`."""
    from ..checks import InputReport
    from .light import LightSegmenter, mask_path, read_volume, write_mask

    segmenter = LightSegmenter.for_checkpoint(ckpt, threads=threads, locate=locate)
    report = InputReport(debug=debug)
    for source in inputs:
        start = time.perf_counter()
        try:
            volume = read_volume(source, allow_non_ct)
            mask = segmenter.segment(volume)
            path = write_mask(mask, volume.affine, mask_path(volume.source, out_dir))
        except Exception as error:  # one bad volume must not cost the others
            report.failed(source, error)
            continue
        report.ok(source)
        log(f"{path} ({int(mask.sum())} spleen voxels, {time.perf_counter() - start:.2f} s)")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spleen-kd segment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="NIfTI files, folders of NIfTI files, DICOM series folders")
    parser.add_argument("-o", "--out", required=True, help="folder for the masks (created if absent)")
    parser.add_argument("--model", help="checkpoint with its model.json (default: the shipped models/model.pt)")
    parser.add_argument("--engine", choices=["light", "monai"], default="light",
                        help="light: ONNX Runtime and numpy only (fast to start); monai: configs/inference.json")
    parser.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto", help="monai engine only")
    parser.add_argument("--threads", type=int, default=0, help="0: one per available core")
    parser.add_argument("--whole_volume", action="store_true",
                        help="run the network on every slice (default: a first pass on every 4th slice locates the "
                             "spleen's slab, and only that slab is segmented; slices the network sees are the same)")
    parser.add_argument("--allow_non_ct", action="store_true",
                        help="segment volumes that look empty or not in Hounsfield units, with a warning, instead "
                             "of refusing them")
    parser.add_argument("--debug", action="store_true", help="print the traceback of every refused volume")
    parser.add_argument("--quiet", action="store_true", help="print the summary only")
    args = parser.parse_args(argv)
    from ..checks import InputError, check_output_folder

    try:
        out = check_output_folder(args.out)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    inputs = expand_inputs(args.inputs)
    log = (lambda message: None) if args.quiet else print
    if args.engine == "monai":
        segment_with_monai(inputs, out, args.model, {"backend": args.backend, "threads": args.threads,
                                                     "locate": not args.whole_volume,
                                                     "allow_non_ct": args.allow_non_ct, "debug": args.debug})
        return 0
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if args.model:
        ckpt = args.model
    else:
        from ..workflows import models_dir

        ckpt = str(models_dir() / "model.pt")
    try:
        report = segment_light(inputs, out, ckpt, args.threads, log, locate=not args.whole_volume,
                               allow_non_ct=args.allow_non_ct, debug=args.debug)
    except (FileNotFoundError, ValueError) as error:  # the model: missing, stale or unreadable
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 1 if report.refused else 0
