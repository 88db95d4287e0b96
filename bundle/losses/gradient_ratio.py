"""How hard each distillation term pulls on the student, relative to the segmentation loss.

For a fresh student (the run's seeded initialisation) and a trained teacher, on training batches of the
real pipeline, prints for every term of ``loss_terms`` the ratio of the norm of its *weighted* gradient to
the segmentation gradient's — on the first convolution (which feeds every skip connection) and on all
student parameters — and the cosine between the two. A ratio far above 1 means the term, not the spleen,
decides what the early layers learn.

    python -m bundle.losses.gradient_ratio --config_file "['configs/train.json','configs/kd.json','configs/demo.json']" \\
        --teacher_ckpt runs/proof/models/teacher-T1/model.pt --dataset_dir runs/proof/phantoms --json eval/gradients.json
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.utils import set_determinism

from ..workflows import bundle_root, config_files

KD_CONFIGS = config_files("kd", "demo")

TERMS = ("pmd", "cwd", "dist", "infonce_encoder", "infonce_bottleneck", "infonce_decoder", "mse_encoder")


def measure(parser: ConfigParser, terms: tuple[str, ...], batches: int) -> dict:
    network = parser.get_parsed_content("network")
    teacher = parser.get_parsed_content("teacher")
    loader = parser.get_parsed_content("train#dataloader")
    seg = parser.get_parsed_content("seg_term")
    chosen = {name: parser.get_parsed_content(f"loss_terms#{name}") for name in terms}
    params = [p for p in network.parameters() if p.requires_grad]
    first = next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d)).weight
    sums = {name: {"first_conv": 0.0, "all": 0.0, "cosine_all": 0.0} for name in terms}
    network.train()
    for step, batch in zip(range(batches), loader):
        image, label = batch["image"].as_tensor(), batch["label"].as_tensor()
        with torch.no_grad():
            teacher_out = teacher(image, return_features=True)
        network_out = network(image, return_features=True)
        sources = {"network": network_out, "teacher": teacher_out, "batch": {"image": image, "label": label}}
        reference = torch.autograd.grad(seg.weight * seg(sources), params, retain_graph=True)
        ref_first = torch.autograd.grad(seg.weight * seg(sources), first, retain_graph=True)[0]
        ref_all = torch.cat([g.flatten() for g in reference])
        for name, term in chosen.items():
            value = term.weight * term(sources)
            grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])
            first_grad = grads[[i for i, p in enumerate(params) if p is first][0]]
            sums[name]["first_conv"] += float(first_grad.norm() / ref_first.norm())
            sums[name]["all"] += float(flat.norm() / ref_all.norm())
            sums[name]["cosine_all"] += float(torch.nn.functional.cosine_similarity(flat, ref_all, dim=0))
    n = min(batches, len(loader))
    return {name: {k: v / n for k, v in values.items()} | {"weight": chosen[name].weight} for name, values in sums.items()}


def main(argv=None) -> dict:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--config_file", default=str(KD_CONFIGS), help="config files, relative to the working directory")
    cli.add_argument("--teacher_ckpt", required=True)
    cli.add_argument("--dataset_dir", required=True)
    cli.add_argument("--datalist_file", help="default: <dataset_dir>/../gradient_datalist.json")
    cli.add_argument("--terms", nargs="+", default=list(TERMS))
    cli.add_argument("--batches", type=int, default=6)
    cli.add_argument("--json", help="write the ratios here")
    args = cli.parse_args(argv)
    files = ast.literal_eval(args.config_file) if args.config_file.startswith("[") else [args.config_file]
    parser = ConfigParser()
    parser.read_config(files)
    parser.update({"bundle_root": str(bundle_root()), "dataset_dir": args.dataset_dir, "teacher_ckpt": args.teacher_ckpt, "amp": False,
                   "datalist_file": args.datalist_file or str(Path(args.dataset_dir).parent / "gradient_datalist.json")})
    set_determinism(seed=parser.get_parsed_content("seed"))
    ratios = measure(parser, tuple(args.terms), args.batches)
    print(f"{'term':22s} {'weight':>7s} {'|g|/|g_seg| conv1':>18s} {'|g|/|g_seg| all':>16s} {'cos(g, g_seg)':>14s}")
    for name, r in ratios.items():
        print(f"{name:22s} {r['weight']:7.3g} {r['first_conv']:18.3f} {r['all']:16.3f} {r['cosine_all']:14.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"config_file": files, "teacher_ckpt": args.teacher_ckpt,
                                               "batches": args.batches, "ratios": ratios}, indent=2))
    return ratios


if __name__ == "__main__":
    main()
