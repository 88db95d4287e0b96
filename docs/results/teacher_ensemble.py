"""Is an ensemble of the three trained T1-128 teachers a better teacher than one? Made teacher_ensemble.json and .md.

    python docs/results/teacher_ensemble.py --out docs/results/teacher_ensemble

Fixed before its run; a measurement that decides nothing (an ensemble teacher would change what the students distil
from and needs its own student study). Members: the three seeds of the shipped teacher's recipe that the
teacher_choice study trained (seed 0 models/teacher/model.pt, the shipped teacher; seed 1
runs/teacher_s1/eval_ckpt/model.pt; seed 2 runs/teacher_choice/T1-128-s2/served/model.pt), nothing retrained; their
segmentation logits averaged (bundle.networks.MeanLogitEnsemble, one checkpoint with the members' weights and the
shipped teacher's preprocessing), evaluated as each seed was: spleen-kd evaluate teacher --config pretrained on the
36 test volumes of split0-f50, spleen-kd evaluate --real on the two fixtures. Reported: paired t-test (Wilcoxon
beside it, Holm over the two) over the 36 volumes, the ensemble against the shipped teacher (seed 0) and against
the seed-average of the three single teachers (their per-volume Dice from teacher_choice.json).
"""
import argparse
import json
import subprocess
from pathlib import Path

import torch

from bundle.checkpoint import load_weights
from bundle.networks import MeanLogitEnsemble, from_definition
from bundle.serving import model_info
from bundle.stats import paired_comparisons, read_volume_metrics

MEMBERS = {"0": "models/teacher/model.pt", "1": "runs/teacher_s1/eval_ckpt/model.pt",
           "2": "runs/teacher_choice/T1-128-s2/served/model.pt"}
SPLIT = "runs/shipped/datalists/split0-f50.json"
OUT = Path("runs/teacher_ensemble")
PAIRS = [("ensemble", "shipped teacher (seed 0)"), ("ensemble", "single teachers (mean of seeds 0-2)")]

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True, help="output stem: writes STEM.json and STEM.md")
stem = Path(parser.parse_args().out)

shipped = model_info.read(MEMBERS["0"])
members = [load_weights(from_definition(shipped["network_def"]), path, role=f"teacher seed {seed}")
           for seed, path in MEMBERS.items()]
ensemble = MeanLogitEnsemble(members)
ckpt = OUT / "models" / "teacher" / "model.pt"
ckpt.parent.mkdir(parents=True, exist_ok=True)
torch.save(ensemble.state_dict(), ckpt)
model_info.write(ckpt, ensemble, **{k: shipped[k] for k in model_info.DEFAULTS if k != "network_def"}, name="teacher ensemble",
                 provenance={"members": MEMBERS, "recipe": "mean of the members' segmentation logits"})

definition = repr(model_info.network_definition(ensemble))  # a Python literal, as the command line reads it
subprocess.run(["spleen-kd", "evaluate", "teacher", "--config", "pretrained", "--out", str(OUT), "--dataset_dir",
                "data/pretrained", "--datalist_file", SPLIT, "--teacher_def", definition], check=True)
subprocess.run(["spleen-kd", "evaluate", "--real", "--ckpt", str(ckpt), "--json", str(OUT / "real_ct.json")], check=True)

seeds = json.loads(Path("docs/results/teacher_choice.json").read_text())["arms"]["T1-128"]["seeds"]
ensemble_dice = {case: round(m["dice"], 4) for case, m in read_volume_metrics(OUT / "eval/teacher/test/metrics.csv").items()}
per_volume = {"ensemble": ensemble_dice, "shipped teacher (seed 0)": seeds["0"]["test_dice_per_volume"],
              "single teachers (mean of seeds 0-2)": {
                  case: sum(seeds[s]["test_dice_per_volume"][case] for s in MEMBERS) / len(MEMBERS) for case in ensemble_dice}}
comparisons = paired_comparisons(per_volume, PAIRS)
real = json.loads((OUT / "real_ct.json").read_text())[str(ckpt)]["subjects"]
results = {"command": __doc__.strip().split("\n\n")[1].strip(), "protocol": __doc__.strip().split("\n\n")[2].replace("\n", " "),
           "hardware": "2-core Intel Xeon, no GPU", "members": MEMBERS,
           "test_dice_mean": {arm: round(sum(d.values()) / len(d), 4) for arm, d in per_volume.items()},
           "single_teachers_test_dice": {s: round(sum(seeds[s]["test_dice_per_volume"].values()) / len(ensemble_dice), 4)
                                         for s in MEMBERS},
           "real_ct": {"ensemble": {s: r["dice"] for s, r in real.items()},
                       **{f"seed {s}": seeds[s]["real_ct"] for s in MEMBERS}},
           "comparisons": comparisons, "test_dice_per_volume": per_volume["ensemble"]}
stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
lines = ["| teacher | synthetic test Dice (36 volumes) | `example_ct_sm` | DICOM series |", "| --- | --- | --- | --- |"]
for s in MEMBERS:
    lines.append(f"| T1-128 seed {s}{' (shipped)' if s == '0' else ''} | {results['single_teachers_test_dice'][s]:.3f} | "
                 f"{seeds[s]['real_ct']['example_ct_sm']:.3f} | {seeds[s]['real_ct']['example_ct_dicom']:.3f} |")
lines.append(f"| ensemble of the three (mean logit) | {results['test_dice_mean']['ensemble']:.3f} | "
             f"{real['example_ct_sm']['dice']:.3f} | {real['example_ct_dicom']['dice']:.3f} |")
lines += ["", "| comparison (per volume) | gain | p (paired t) | p (Wilcoxon) | p (Holm) |", "| --- | --- | --- | --- | --- |"]
lines += [f"| {pair} | {c['gain']:+.3f} | {c['p_t']:.2g} | {c['p_wilcoxon']:.2g} | {c['p_holm']:.2g} |" for pair, c in comparisons.items()]
stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
