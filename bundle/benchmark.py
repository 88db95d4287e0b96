"""Speed and cost of every network and of ``configs/inference.json`` end to end, in one run.

    spleen-kd benchmark --json eval/benchmark.json [--cli] [--int8]

Writes one JSON (schema below) and a markdown table beside it (``.md``), and prints the table.

    {"schema": 3, "repeats",
     "hardware": {"cpu", "cores_visible", "threads", "torch", "onnxruntime", "monai", "gpu",
                  "load_average_before", "load_average_after"},
     "models": [{"model", "backend", "device", "size", "batch", "params", "flops_per_slice",
                 "slices_per_s", "peak_rss_mb"}],          # one row per model × backend × size
     "volume": {"<model>[ int8]": {"backend", "shape", "weights", "foreground_fraction", "total_s",
                                    "stages_s": {"read", "preprocess", "model", "invert", "postprocess", "write"},
                                    "list": {"volumes", "num_workers", "per_volume_s"},
                                    "light": {"engine", "per_volume_s"}}},   # students: spleen-kd segment's path
     "ratios": {"S1/T1", "S1-fast/T1", "backend", "size", "basis"},   # same backend, same run
     "cli": {"<student>": {"runs", "light": {"command", "wall_s", "user_s", "sys_s"}, "monai": {...},
                           "monai_over_light", "import_monai_s"}},   # with --cli: the two commands in turn
     "training": [...]}                                               # unless --no_training

Backends: ``torch`` (eager, ``no_grad``), ``onnx`` (ONNX Runtime fp32, what ``inference.json`` uses on
a CPU), ``onnx-int8`` (static int8 calibrated on real CT, students, with ``--int8``); on CUDA
``torch`` and ``torch-amp``. Every model row runs in its own process, so its peak RSS is its own.
Volume: a 512×512×100 CT made from the real fixture CT (upsampled, with noise; synthetic random
HU if the fixture is absent), segmented by the workflow of ``configs/inference.json`` with the
default backend; ``total_s`` is ``evaluator.run()`` in a process that has already loaded
everything (the median of ``--repeats``), ``stages_s`` the same transforms timed one by one, ``list`` the
seconds per volume when four copies are segmented as one list of files (with inference.json's
``num_workers``; students only, else null).
Weights are random unless ``--checkpoint S1=path.pt`` is given: speed does not depend on them,
except the largest-component step, which sees a larger foreground (``foreground_fraction``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .data.assets import EXAMPLE_CT as FIXTURE_CT
from .workflows import bundle_root, located

ROOT = bundle_root()

MODELS = {
    "T1": ("FeatureUNet", dict(channels=[64, 128, 256, 512], bottleneck=1024, convs_per_block=2, reconstruction=True)),
    "T2": ("MultiTaskUNETR", dict(feature_size=32)),
    "S1": ("FeatureUNet", dict(channels=[16, 32], bottleneck=64, convs_per_block=1)),
    "S2": ("FeatureUNet", dict(channels=[16, 32, 64], bottleneck=128, convs_per_block=1)),
    "S1-fast": ("FeatureUNet", dict(channels=[16, 32], bottleneck=64, convs_per_block=1, stem_stride=2)),
}
TEACHERS = ("T1", "T2")
STUDENTS = ("S1", "S2", "S1-fast")
STAGES = ("read", "preprocess", "model", "invert", "postprocess", "write")


def network_def(name: str, size: int) -> dict:
    cls, kwargs = MODELS[name]
    return {"_target_": f"bundle.networks.{cls}", **kwargs, **({"img_size": size} if cls == "MultiTaskUNETR" else {})}


def build(name: str, size: int):
    from monai.bundle import ConfigParser

    return ConfigParser(network_def(name, size)).get_parsed_content()


def weights_file(name: str, checkpoint: str | None, tmp: Path) -> Path:
    """The trained checkpoint given for ``name``, else seed-0 random weights, written to ``tmp`` once."""
    if checkpoint:
        return Path(checkpoint)
    import torch

    path = tmp / f"{name}.pt"
    if not path.is_file():
        torch.manual_seed(0)
        torch.save(build(name, 256).state_dict(), path)
    return path


def _median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def calibration_slices(size: int):
    from .serving.quantize import calibration_slices as slices

    if not FIXTURE_CT.is_file():
        raise SystemExit(f"--int8 calibrates on the real CT fixture, which is not at {FIXTURE_CT}.")
    return slices([FIXTURE_CT], slice_size=size, max_slices=64)


def measure_model(name: str, backend: str, size: int, batch: int, repeats: int) -> dict:
    """Slices/s of one model on one backend; runs in its own process so that its peak memory is its own."""
    import torch

    from .serving.backend import export_onnx, use_threads
    from .metrics import flops_per_slice
    from .networks import count_parameters

    device = "cuda" if backend.endswith("cuda") else "cpu"
    threads = use_threads()
    torch.manual_seed(0)
    network = build(name, size).eval()
    x = torch.rand(batch, 1, size, size)
    result = {"model": name, "backend": backend, "device": device, "size": size, "batch": batch,
              "params": count_parameters(network), "flops_per_slice": flops_per_slice(network, size), "threads": threads}
    if backend.startswith("torch"):
        network, x = network.to(device), x.to(device)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

        def run():
            with torch.no_grad(), torch.autocast(device, enabled="amp" in backend):
                network(x)
            sync()
    else:
        from .serving.backend import OnnxRuntimeNetwork

        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(network, Path(tmp) / "model.onnx", size, key="benchmark")
            if backend == "onnx-int8":
                from .serving.quantize import quantize_int8

                path = quantize_int8(path, Path(tmp) / "model.int8.onnx", calibration_slices(size))
            session = OnnxRuntimeNetwork(path, threads=threads)

        def run():
            session(x)
    result["slices_per_s"] = batch / _median_seconds(run, repeats)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _in_child(fn, *args):
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def make_ct(path: Path, shape=(512, 512, 100)) -> Path:
    """A CT of ``shape`` in HU (int16): the real fixture CT upsampled, plus noise, so that it compresses
    like a CT; random HU in a body outline when the fixture is absent."""
    import nibabel as nib
    import numpy as np
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    if FIXTURE_CT.is_file():
        source = torch.from_numpy(np.asarray(nib.load(FIXTURE_CT).dataobj, dtype=np.float32))[None, None]
        volume = F.interpolate(source, size=shape, mode="trilinear", align_corners=False)[0, 0].numpy()
        volume += rng.normal(0, 15, size=shape).astype(np.float32)
    else:
        x, y = np.mgrid[:shape[0], :shape[1]]
        body = ((x - shape[0] / 2) / (0.43 * shape[0])) ** 2 + ((y - shape[1] / 2) / (0.31 * shape[1])) ** 2 < 1
        volume = np.where(body[..., None], rng.normal(40, 30, shape), -1000)
    nib.save(nib.Nifti1Image(np.clip(volume, -1024, 3071).astype(np.int16), np.diag([0.8, 0.8, 2.0, 1.0])), path)
    return path


def _stage(transform, before_model: bool) -> str:
    name = type(transform).__name__
    if name == "LoadImaged":
        return "read"
    if name == "SaveImaged":
        return "write"
    if name == "Invertd":
        return "invert"
    return "preprocess" if before_model else "postprocess"


def volume_seconds(name: str, image: Path, tmp: Path, repeats: int, checkpoint: str | None, int8: bool,
                   list_volumes: int = 4) -> dict:
    """``configs/inference.json`` on ``image``: the evaluator's total and every stage, in this (loaded) process,
    and the seconds per volume when ``list_volumes`` copies of it are given as one list of files."""
    import numpy as np
    import torch
    from monai.bundle import ConfigWorkflow

    ckpt = weights_file(name, checkpoint, tmp)
    out_dir = tmp / f"out-{name}{'-int8' if int8 else ''}"
    overrides = {"input_files": [str(image)], "ckpt_path": str(ckpt), "output_dir": str(out_dir),
                 "network_def": network_def(name, 256), "onnx_path": str(tmp / f"{name}.onnx")}
    if int8:
        from .checkpoint import load_weights
        from .serving.backend import export_onnx
        from .serving.quantize import quantize_int8

        export_onnx(load_weights(build(name, 256), ckpt), tmp / f"{name}.onnx", 256)
        overrides["onnx_path"] = str(quantize_int8(tmp / f"{name}.onnx", tmp / f"{name}.int8.onnx", calibration_slices(256)))
    def workflow_for(files: list[Path]):
        workflow = ConfigWorkflow(config_file=located("inference"), workflow_type="infer",
                                  meta_file=str(ROOT / "configs" / "metadata.json"), logging_file=False,
                                  **{**overrides, "input_files": [str(f) for f in files]})
        workflow.initialize()
        return workflow.parser

    parser = workflow_for([image])
    network, inferer = parser.get_parsed_content("network"), parser.get_parsed_content("inferer")
    preprocessing, postprocessing = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("postprocessing")
    evaluator = parser.get_parsed_content("evaluator")
    evaluator.run()  # warm-up (and ONNX export)
    runs = repeats if name not in TEACHERS else 1
    total = _median_seconds(evaluator.run, runs, warmup=0)
    stage_runs = []
    for _ in range(runs):
        seconds = dict.fromkeys(STAGES, 0.0)
        data = {"image": str(image)}
        for transform in preprocessing.transforms:
            start = time.perf_counter()
            data = transform(data)
            seconds[_stage(transform, True)] += time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            data["pred"] = inferer(data["image"][None], network)[0]
        seconds["model"] += time.perf_counter() - start
        for transform in postprocessing.transforms:
            start = time.perf_counter()
            data = transform(data)
            seconds[_stage(transform, False)] += time.perf_counter() - start
        stage_runs.append(seconds)
    # a list of files in one run, as a user or a server segments them (students only:
    # a teacher's minute per volume would not change by it)
    list_volumes = 0 if name in TEACHERS else list_volumes
    copies = []
    for i in range(list_volumes):
        copies.append(tmp / f"list{i}" / image.name)
        copies[-1].parent.mkdir(exist_ok=True)
        if not copies[-1].exists():
            copies[-1].symlink_to(image)
    if copies:
        listed = workflow_for(copies)
        listed_seconds = _median_seconds(listed.get_parsed_content("evaluator").run, max(1, repeats // 2), warmup=0)
    size = int(parser.get_parsed_content("slice_size"))
    precision = getattr(inferer.served(network, (size, size)), "precision", None)  # what the inferer chose
    return {"model": name, "backend": "torch" if precision is None else "onnx" if precision == "fp32" else f"onnx-{precision}",
            "shape": "x".join(map(str, np.asarray(data["pred"]).shape[1:])),
            "weights": str(checkpoint) if checkpoint else "random",
            "foreground_fraction": float(np.asarray(data["pred"]).mean()), "total_s": total,
            "stages_s": {k: statistics.median(run[k] for run in stage_runs) for k in STAGES},
            "list": {"volumes": list_volumes, "num_workers": listed.get_parsed_content("num_workers"),
                     "per_volume_s": listed_seconds / list_volumes} if copies else None}


def served_copy(name: str, ckpt: Path, out: Path, slice_size: int = 256) -> Path:
    """``ckpt`` with its ``model.json`` and ONNX export in ``out``, as the shipped model lies in ``models/``:
    what ``spleen-kd segment --model`` reads."""
    import shutil

    from .checkpoint import load_weights
    from .networks import from_definition
    from .serving import model_info
    from .serving.backend import export_onnx

    out.mkdir(parents=True, exist_ok=True)
    served = out / "model.pt"
    shutil.copyfile(ckpt, served)
    own = model_info.read(ckpt)
    if own.get("checkpoint_sha256") == model_info.sha256(ckpt):  # a described checkpoint keeps its description
        shutil.copyfile(model_info.info_path(ckpt), model_info.info_path(served))  # (slice size, window ...),
        slice_size = int(own["slice_size"])  # as inference.json reads it: both paths then run the same model
        network = load_weights(from_definition(own["network_def"]), served)
    else:
        network = load_weights(build(name, slice_size), served)
        model_info.write(served, network, slice_size=slice_size)
    info = model_info.read(served)
    export_onnx(network, served.with_suffix(".onnx"), slice_size, description=info)
    return served


def _timed(command: list[str]) -> tuple[float, float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def cli_seconds(name: str, image: Path, ckpt: Path, out_dir: Path, repeats: int) -> dict:
    """The one-volume commands a user types, each in a fresh process, run in turn (A B A B ...) so that the
    ratio holds when the machine's speed drifts: ``spleen-kd segment`` (the light path) and
    ``monai.bundle run`` with ``configs/inference.json``, on the same weights, ONNX model and volume."""
    served = served_copy(name, ckpt, out_dir / f"{name}-model")
    light = [sys.executable, "-m", "bundle.cli", "segment", str(image), "-o", str(out_dir / "light"), "--model",
             str(served), "--quiet"]
    monai = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
             "--input_files", str(image), "--ckpt_path", str(served), "--output_dir", str(out_dir / "monai")]
    subprocess.run(light, cwd=ROOT, check=True, capture_output=True)  # warm the file cache
    subprocess.run(monai, cwd=ROOT, check=True, capture_output=True)
    runs = {"light": [], "monai": []}
    for _ in range(repeats):
        runs["light"].append(_timed(light))
        runs["monai"].append(_timed(monai))
    imports = [_timed([sys.executable, "-c", "import monai"])[0] for _ in range(repeats)]
    median = lambda rows, i: statistics.median(r[i] for r in rows)  # noqa: E731
    return {"runs": repeats,
            "light": {"command": f"spleen-kd segment {image.name} -o masks/ --model <{name}>",
                      "wall_s": median(runs["light"], 0), "user_s": median(runs["light"], 1),
                      "sys_s": median(runs["light"], 2)},
            "monai": {"command": f"python -m monai.bundle run --config_file configs/inference.json --input_files "
                                 f"{image.name} --ckpt_path <{name}>",
                      "wall_s": median(runs["monai"], 0), "user_s": median(runs["monai"], 1),
                      "sys_s": median(runs["monai"], 2)},
            "monai_over_light": statistics.median(m[0] / l[0] for m, l in zip(runs["monai"], runs["light"])),
            "import_monai_s": statistics.median(imports)}


def light_volume_seconds(name: str, image: Path, ckpt: Path, out_dir: Path, repeats: int) -> dict:
    """Seconds per volume of the light path in a process that has loaded the model (a list of files)."""
    from .serving.light import LightSegmenter, mask_path, read_volume, write_mask

    segmenter = LightSegmenter.for_checkpoint(served_copy(name, ckpt, out_dir / f"{name}-loaded"))

    def one():
        volume = read_volume(str(image))
        write_mask(segmenter.segment(volume), volume.affine, mask_path(volume.source, out_dir))

    return {"engine": "light", "per_volume_s": _median_seconds(one, repeats)}


def training_steps(device: str, iterations: int = 20, size: int = 96, batch: int = 16) -> dict:
    """Iterations/s of the real trainer: plain student vs KD (seg + InfoNCE(encoder) + PMD) at demo sizes."""
    import torch
    from ignite.engine import Events
    from torch.utils.data import DataLoader

    from .engine import ComposedLossTrainer
    from .losses.composite import CompositeLoss, LossTerm
    from .losses.contrastive import InfoNCEFeatureLoss
    from .losses.prediction_map import PredictionMapDistillation
    from .networks import FeatureUNet
    from .teacher import TeacherCache
    from monai.losses import DiceCELoss

    g = torch.Generator().manual_seed(0)
    slices = [{"image": torch.rand(1, size, size, generator=g), "label": (torch.rand(1, size, size, generator=g) > 0.8).float()}
              for _ in range(batch * 4)]
    loader = DataLoader(slices, batch_size=batch, shuffle=False)

    def run(kind: str) -> float:
        torch.manual_seed(0)
        student = FeatureUNet(channels=(16, 32), bottleneck=64)
        terms = {"seg": LossTerm(DiceCELoss(sigmoid=True), ["network.seg", "batch.label"])}
        teacher, cache = None, None
        if kind != "student":
            teacher = FeatureUNet(channels=(16, 32, 64, 128), bottleneck=256, convs_per_block=2, reconstruction=True)
            terms["infonce_encoder"] = LossTerm(InfoNCEFeatureLoss(32, 128), ["network.encoder", "teacher.encoder"], 0.5)
            terms["pmd"] = LossTerm(PredictionMapDistillation(), ["network.seg", "teacher.seg"])
            cache = TeacherCache() if kind == "kd_cached" else None
        loss = CompositeLoss(terms)
        optimizer = torch.optim.AdamW(list(student.parameters()) + list(loss.parameters()), 1e-3)
        trainer = ComposedLossTrainer(device=torch.device(device), max_epochs=1 + iterations // len(loader),
                                      train_data_loader=loader, network=student, optimizer=optimizer,
                                      loss_function=loss, teacher=teacher, teacher_cache=cache, decollate=False,
                                      amp=device == "cuda")
        stamps = []
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: stamps.append(time.perf_counter()))
        trainer.run()  # the first epoch warms up (and fills the cache); the rest is timed
        return (trainer.state.iteration - len(loader)) / (stamps[-1] - stamps[0])

    result = {kind: run(kind) for kind in ("student", "kd", "kd_cached")}
    return {"device": device, "slice_size": size, "batch": batch,
            "student_it_per_s": result["student"], "kd_it_per_s": result["kd"], "kd_cached_it_per_s": result["kd_cached"],
            "kd_over_student": result["student"] / result["kd"],
            "kd_cached_over_student": result["student"] / result["kd_cached"]}


def hardware() -> dict:
    import monai
    import onnxruntime
    import torch

    from .serving.runtime import available_cores

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores_visible": available_cores(), "threads": available_cores(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "monai": monai.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "load_average_before": list(os.getloadavg())}


def ratios(report: dict, size: int, backend: str) -> dict:
    rows = {r["model"]: r for r in report["models"] if r["size"] == size and r["backend"] == backend}
    out = {"backend": backend, "size": size, "basis": "slices/s, same backend, same run"}
    for student in ("S1", "S1-fast"):
        if student in rows and "T1" in rows:
            out[f"{student}/T1"] = rows[student]["slices_per_s"] / rows["T1"]["slices_per_s"]
    return out


def markdown(report: dict) -> str:
    from .report import markdown_table

    hw = report["hardware"]
    text = [f"Hardware: {hw['cpu']}, {hw['cores_visible']} cores visible, {hw['threads']} threads; torch {hw['torch']}, "
            f"ONNX Runtime {hw['onnxruntime']}, MONAI {hw['monai']}" + (f", GPU {hw['gpu']}" if hw["gpu"] else ", no GPU")
            + f". Load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in hw['load_average_before'])}; after: "
            f"{', '.join(f'{v:.2f}' for v in hw['load_average_after'])}.", ""]
    rows = [[r["model"], r["backend"], r["size"], f"{r['params']:,}", f"{r['flops_per_slice'] / 1e9:.2f}",
             f"{r['slices_per_s']:.1f}", f"{r['peak_rss_mb']:.0f}"] for r in report["models"]]
    text += [markdown_table(["model", "backend", "slice", "params", "GFLOPs/slice", "slices/s", "peak RSS MB"], rows), ""]
    ratio = report["ratios"]
    text += [f"- {k}: {v:.1f}× the slices/s ({ratio['backend']}, {ratio['size']}²)" for k, v in ratio.items() if "/" in k and k != "basis"]
    text.append("")
    rows = [[name, v["backend"], v["shape"], f"{v['total_s']:.2f}", *(f"{v['stages_s'][s]:.2f}" for s in STAGES),
             f"{v['list']['per_volume_s']:.2f}" if v["list"] else "", f"{v['foreground_fraction']:.3f}"] for name, v in report["volume"].items()]
    text.append(markdown_table(["model", "backend", "volume", "total s", *STAGES, "s/volume in a list of 4",
                                "mask fraction"], rows))
    for name, v in report["volume"].items():
        if "light" in v:
            text += ["", f"{name}, light path (`spleen-kd segment`) in a loaded process: {v['light']['per_volume_s']:.2f} s "
                         f"per volume (read, segment, write; median of {report.get('repeats', 'several')})."]
    for name, cli in report.get("cli", {}).items():
        for engine in ("light", "monai"):
            run = cli[engine]
            text += ["", f"`{run['command']}` ({name}, fresh process): {run['wall_s']:.2f} s wall, {run['user_s']:.2f} s "
                         f"user, {run['sys_s']:.2f} s system (median of {cli['runs']})."]
        text += [f"MONAI path / light path, wall, pair by pair: {cli['monai_over_light']:.1f}×; `python -c \"import "
                 f"monai\"` alone: {cli['import_monai_s']:.2f} s wall."]
    for t in report.get("training", []):
        text += ["", f"Training step ({t['device']}, {t['slice_size']}², batch {t['batch']}): student "
                     f"{t['student_it_per_s']:.2f} it/s, KD {t['kd_it_per_s']:.2f} it/s "
                     f"({t['kd_over_student']:.2f}× the student step), KD with cached teacher "
                     f"{t['kd_cached_it_per_s']:.2f} it/s ({t['kd_cached_over_student']:.2f}×)."]
    return "\n".join(text) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="spleen-kd benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="output JSON; a markdown table is written beside it (.md)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[256])
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--volume_models", nargs="+", default=["S1", "S1-fast", "T1"], choices=list(MODELS))
    parser.add_argument("--volume_shape", nargs=3, type=int, default=[512, 512, 100])
    parser.add_argument("--checkpoint", nargs="*", default=[], metavar="MODEL=PATH",
                        help="trained weights for a volume model (random otherwise)")
    parser.add_argument("--int8", action="store_true", help="also int8 ONNX Runtime for the students")
    parser.add_argument("--cli", action="store_true", help="also time the one-volume command line (S1, S1-fast)")
    parser.add_argument("--no_training", action="store_true", help="skip the training-step figures")
    args = parser.parse_args(argv)
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)

    import torch

    report = {"schema": 3, "hardware": hardware(), "repeats": args.repeats, "models": [], "volume": {}}
    backends = list(args.backends) + (["torch-cuda", "torch-amp-cuda"] if torch.cuda.is_available() else [])
    for size in args.sizes:
        for name in args.models:
            for backend in backends + (["onnx-int8"] if args.int8 and name in STUDENTS else []):
                batch = 2 if name in TEACHERS and "cuda" not in backend else 16
                repeats = max(2, args.repeats // 2) if name in TEACHERS else args.repeats
                result = _in_child(measure_model, name, backend, size, batch, repeats)
                report["models"].append(result)
                print(json.dumps(result), flush=True)
    report["ratios"] = ratios(report, args.sizes[0], "onnx" if "onnx" in args.backends else args.backends[0])
    from .serving.backend import use_threads
    from .serving.runtime import use_fast_gzip

    use_threads()
    use_fast_gzip()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        image = make_ct(tmp / f"ct_{'x'.join(map(str, args.volume_shape))}.nii.gz", tuple(args.volume_shape))
        for name in args.volume_models:
            report["volume"][name] = volume_seconds(name, image, tmp, args.repeats, checkpoints.get(name), False)
            print(json.dumps(report["volume"][name]), flush=True)
        if args.int8:
            for name in [n for n in args.volume_models if n in STUDENTS]:
                report["volume"][f"{name} int8"] = volume_seconds(name, image, tmp, args.repeats, checkpoints.get(name), True)
                print(json.dumps(report["volume"][f"{name} int8"]), flush=True)
        for name in [n for n in args.volume_models if n in STUDENTS]:
            light = _in_child(light_volume_seconds, name, image, weights_file(name, checkpoints.get(name), tmp),
                              tmp / "out-light", args.repeats)
            report["volume"][name]["light"] = light
            print(json.dumps({name: light}), flush=True)
        if args.cli:
            report["cli"] = {}
            for name in ("S1", "S1-fast"):
                report["cli"][name] = cli_seconds(name, image, weights_file(name, checkpoints.get(name), tmp),
                                                  tmp / "out-cli", max(1, args.repeats // 2))
                print(json.dumps(report["cli"][name]), flush=True)
    if not args.no_training:
        report["training"] = [training_steps(device) for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])]
    report["hardware"]["load_average_after"] = list(os.getloadavg())
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
