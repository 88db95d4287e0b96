"""Speed and cost of every network, side by side in one run; medians of several repeats.

    python scripts/benchmark.py --json eval/benchmark.json

Per model (T1, T2, S1, S2, S1-fast at paper widths) and slice size (256, 512): parameters, FLOPs
per slice, slices/s for torch eager, torch with inference optimisations (inference_mode +
channels_last, optionally torch.compile) and ONNX Runtime, and the peak resident memory of a
process that only runs that model. Then the seconds to segment a 512×512×100 CT volume end to end
with ``configs/inference.json`` (load, preprocess, slice-by-slice inference, inversion to the input
space, largest component, save), and the training side: iterations/s of a plain student step vs a
KD step (teacher computed, and teacher cached). CUDA is measured too when present.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {
    "T1": ("FeatureUNet", dict(channels=[64, 128, 256, 512], bottleneck=1024, convs_per_block=2, reconstruction=True)),
    "T2": ("MultiTaskUNETR", dict(feature_size=32)),
    "S1": ("FeatureUNet", dict(channels=[16, 32], bottleneck=64, convs_per_block=1)),
    "S2": ("FeatureUNet", dict(channels=[16, 32, 64], bottleneck=128, convs_per_block=1)),
    "S1-fast": ("FeatureUNet", dict(channels=[16, 32], bottleneck=64, convs_per_block=1, stem_stride=2)),
}
TEACHERS = ("T1", "T2")


def build(name: str, size: int):
    import bundle.networks as networks

    cls, kwargs = MODELS[name]
    if cls == "MultiTaskUNETR":
        kwargs = {**kwargs, "img_size": size}
    return getattr(networks, cls)(**kwargs)


def _median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_model(name: str, size: int, batch: int, repeats: int, device: str, use_compile: bool) -> dict:
    """Runs in its own process so that its peak memory is its own."""
    import resource

    import torch

    from bundle.metrics import flops_per_slice
    from bundle.networks import count_parameters

    torch.manual_seed(0)
    network = build(name, size).eval().to(device)
    x = torch.rand(batch, 1, size, size, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    result = {"model": name, "size": size, "device": device, "batch": batch,
              "params": count_parameters(network), "flops_per_slice": flops_per_slice(network, size)}

    def eager():
        with torch.no_grad():
            network(x)
        sync()

    result["eager_slices_per_s"] = batch / _median_seconds(eager, repeats)

    optimized = network.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    if use_compile:
        optimized = torch.compile(optimized)

    def fast():
        with torch.inference_mode(), torch.autocast(device, enabled=device == "cuda"):
            optimized(x_cl)
        sync()

    result["optimized_slices_per_s"] = batch / _median_seconds(fast, repeats, warmup=2 if use_compile else 1)
    result["optimized"] = "inference_mode+channels_last" + ("+compile" if use_compile else "") + (
        "+amp" if device == "cuda" else "")

    if device == "cpu":
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.onnx"
            torch.onnx.export(network.to(memory_format=torch.contiguous_format), (x[:1],), str(path),
                              input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "batch"}}, dynamo=False)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            array = x.numpy()
            result["onnxruntime_slices_per_s"] = batch / _median_seconds(lambda: session.run(None, {"x": array}), repeats)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _in_child(fn, *args):
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def _idle_rss_mb() -> float:
    import resource

    import torch  # noqa: F401  (the baseline includes torch, as every measurement does)

    import bundle  # noqa: F401

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def volume_seconds(models: list[str], shape=(512, 512, 100), repeats: int = 3) -> list[dict]:
    """End-to-end ``configs/inference.json`` on a synthetic CT volume, per model (random weights: the
    work done is the same whatever the weights, except the largest-component step)."""
    import nibabel as nib
    import numpy as np
    import torch
    from monai.bundle import ConfigWorkflow

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        volume = rng.normal(40, 30, size=shape).astype(np.int16)
        image = Path(tmp) / "ct_512x512x100.nii.gz"
        nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 2.0, 1.0])), image)
        for name in models:
            cls, kwargs = MODELS[name]
            ckpt = Path(tmp) / f"{name}.pt"
            torch.manual_seed(0)
            torch.save(build(name, 256).state_dict(), ckpt)
            workflow = ConfigWorkflow(config_file=str(ROOT / "configs/inference.json"), workflow_type="infer",
                                      meta_file=str(ROOT / "configs/metadata.json"), logging_file=False,
                                      input_files=[str(image)], ckpt_path=str(ckpt), output_dir=str(Path(tmp) / name),
                                      network_def={"_target_": f"bundle.networks.{cls}", **kwargs,
                                                   **({"img_size": 256} if cls == "MultiTaskUNETR" else {})},
                                      device="cpu", amp=False)
            workflow.initialize()
            evaluator = workflow.parser.get_parsed_content("evaluator")
            seconds = _median_seconds(evaluator.run, repeats=repeats if name not in TEACHERS else 1, warmup=0)
            results.append({"model": name, "volume": "x".join(map(str, shape)), "seconds": seconds,
                            "slice_size": 256, "largest_component": True})
    return results


def training_steps(device: str, iterations: int = 20, size: int = 96, batch: int = 16) -> dict:
    """Iterations/s of the real trainer: plain student vs KD (seg + InfoNCE(encoder) + PMD) at demo sizes."""
    import torch
    from ignite.engine import Events
    from torch.utils.data import DataLoader

    from bundle.engine import CompositeLoss, ComposedLossTrainer, LossTerm, TeacherCache
    from bundle.losses.contrastive import InfoNCEFeatureLoss
    from bundle.losses.prediction_map import PredictionMapDistillation
    from bundle.networks import FeatureUNet
    from monai.losses import DiceCELoss

    g = torch.Generator().manual_seed(0)
    slices = [{"image": torch.rand(1, size, size, generator=g), "label": (torch.rand(1, size, size, generator=g) > 0.8).float()}
              for _ in range(batch * 4)]
    loader = DataLoader(slices, batch_size=batch, shuffle=False)

    def run(kind: str) -> float:
        torch.manual_seed(0)
        student = FeatureUNet(channels=(16, 32), bottleneck=64)
        terms = {"seg": LossTerm(DiceCELoss(sigmoid=True), ["student.seg", "batch.label"])}
        teacher, cache = None, None
        if kind != "student":
            teacher = FeatureUNet(channels=(16, 32, 64, 128), bottleneck=256, convs_per_block=2, reconstruction=True)
            terms["infonce_encoder"] = LossTerm(InfoNCEFeatureLoss(32, 128), ["student.encoder", "teacher.encoder"], 0.5)
            terms["pmd"] = LossTerm(PredictionMapDistillation(), ["student.seg", "teacher.seg"])
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


def markdown(report: dict) -> str:
    from bundle.report import markdown_table

    rows = []
    for r in report["models"]:
        rows.append([r["model"], r["device"], r["size"], f"{r['params']:,}", f"{r['flops_per_slice'] / 1e9:.2f}",
                     f"{r['eager_slices_per_s']:.1f}", f"{r['optimized_slices_per_s']:.1f}",
                     f"{r.get('onnxruntime_slices_per_s', float('nan')):.1f}", f"{r['peak_rss_mb']:.0f}"])
    text = [f"Hardware: {report['hardware']}", "",
            markdown_table(["model", "device", "slice", "params", "GFLOPs/slice", "eager slices/s",
                            "optimized slices/s", "ONNX Runtime slices/s", "peak RSS MB"], rows), "",
            f"Idle process (python + torch + bundle): {report['idle_rss_mb']:.0f} MB RSS.", ""]
    for speed in report.get("speedups", []):
        text.append(f"- {speed}")
    text.append("")
    text.append(markdown_table(["model", "volume", "seconds end to end"],
                               [[v["model"], v["volume"], f"{v['seconds']:.2f}"] for v in report["volume"]]))
    for t in report["training"]:
        text += ["", f"Training step ({t['device']}, {t['slice_size']}², batch {t['batch']}): student "
                     f"{t['student_it_per_s']:.2f} it/s, KD {t['kd_it_per_s']:.2f} it/s "
                     f"({t['kd_over_student']:.2f}× the student step), KD with cached teacher "
                     f"{t['kd_cached_it_per_s']:.2f} it/s ({t['kd_cached_over_student']:.2f}×)."]
    return "\n".join(text) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="output JSON; a markdown table is written beside it (.md)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also torch.compile the optimized path")
    parser.add_argument("--volume_models", nargs="+", default=["S1", "S1-fast", "T1"])
    args = parser.parse_args(argv)

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report = {"hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible, "
                          f"torch {torch.__version__} using {torch.get_num_threads()} threads"
                          + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""),
              "idle_rss_mb": _in_child(_idle_rss_mb), "models": []}
    for device in devices:
        for size in args.sizes:
            for name in args.models:
                batch = 2 if name in TEACHERS and device == "cpu" else 8
                repeats = max(2, args.repeats // 2) if name in TEACHERS and device == "cpu" else args.repeats
                result = _in_child(measure_model, name, size, batch, repeats, device, args.compile)
                report["models"].append(result)
                print(json.dumps(result), flush=True)
    speedups = []
    for device in devices:
        for size in args.sizes:
            by_name = {r["model"]: r for r in report["models"] if r["device"] == device and r["size"] == size}
            for student in ("S1", "S1-fast"):
                if student in by_name and "T1" in by_name:
                    best = max(by_name[student].get(k, 0) for k in ("eager_slices_per_s", "optimized_slices_per_s",
                                                                      "onnxruntime_slices_per_s"))
                    teacher = max(by_name["T1"].get(k, 0) for k in ("eager_slices_per_s", "optimized_slices_per_s",
                                                                     "onnxruntime_slices_per_s"))
                    speedups.append(f"{student} vs T1 ({device}, {size}²), best backend each: {best / teacher:.1f}× "
                                    f"the slices/s")
    report["speedups"] = speedups
    report["volume"] = volume_seconds(args.volume_models)
    report["training"] = [training_steps(device) for device in devices]
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
