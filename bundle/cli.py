"""``spleen-kd``: the bundle's console command. Each subcommand is a module's ``main(argv)``, imported only
when it runs, so ``spleen-kd segment`` starts without loading what training needs.

    spleen-kd demo --out demo_out
    spleen-kd segment ct.nii.gz dicom_folder/ -o masks/
    spleen-kd train kd --config pretrained --out runs/mine --dataset_dir data/Task09_Spleen
    spleen-kd <command> --help
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {  # name: (module, what it does)
    "demo": ("bundle.demo", "the offline end-to-end demo: data, baseline and KD student, evaluation, report"),
    "synthesize": ("bundle.data.synthesize", "write synthetic CT (or phantoms) in the MSD layout"),
    "train": ("bundle.commands", "train a workflow (teacher, student, kd) with the bundle configs"),
    "grid": ("bundle.experiments", "an experiment grid over seeds: train, evaluate, paired tests (resumable)"),
    "evaluate": ("bundle.commands", "per-volume metrics on a test split, or Dice on the real CT fixtures"),
    "segment": ("bundle.serving.segment", "segment CT volumes (NIfTI files, folders, DICOM series)"),
    "benchmark": ("bundle.benchmark", "speed and memory of the networks and of segmenting a volume"),
    "export": ("bundle.commands", "export a checkpoint to ONNX (with its description) for serving"),
    "quantize": ("bundle.serving.quantize", "int8 ONNX model calibrated on real CT"),
    "compare": ("bundle.compare", "compare MLflow runs: mean ± std over seeds, paired tests"),
    "prepare-data": ("bundle.data.download", "download MSD Task09_Spleen (checksum-verified) and write the splits"),
    "measure-hu": ("bundle.data.hu_measure", "measure per-structure HU on real labelled CT for the generator"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [__doc__.strip(), "", "commands:"]
    lines += [f"  {name.ljust(width)}  {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"spleen-kd {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"spleen-kd: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    entry = getattr(module, "main") if COMMANDS[name][0] != "bundle.commands" else getattr(module, name)
    result = entry(rest)
    return result if isinstance(result, int) else 0


def run() -> None:
    """The console entry point (``[project.scripts]``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
