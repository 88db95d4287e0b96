"""Mutation check: each mutation is applied to a copy of the repository and the tests that should catch it
are run there; the table says which test failed (caught) or that none did (survived).

    python docs/results/mutations.py --out docs/results/mutations.md     # ~4 min on 2 cores
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# (name, file, text to replace, replacement, tests to run)
MUTATIONS = [
    ("the trainer never reports progress (warm-ups stay at 0)", "bundle/engine.py",
     "        engine.composite.set_progress(", "        (lambda *a: None)(",
     "tests/test_engine.py::test_the_trainer_ramps_a_warm_up_term_with_the_progress_it_reports"),
    ("best_model dropped from train_state", "configs/train.json",
     ', "best_model": "@best_model_saver"}', "}",
     "tests/test_resilience.py::test_the_training_state_of_train_json_holds_the_best_model_saver"),
    ("DIST ignores its temperature", "bundle/losses/logit_maps.py",
     "p_s, p_t = torch.sigmoid(student / self.temperature), torch.sigmoid(teacher / self.temperature)",
     "p_s, p_t = torch.sigmoid(student), torch.sigmoid(teacher)",
     "tests/test_kd_losses.py::test_dist_applies_its_temperature_before_the_sigmoid"),
    ("teacher cache keyed on a slice's first 4 KB", "bundle/teacher.py",
     "digest.update(data.numpy().tobytes())", "digest.update(data.numpy().tobytes()[:4096])",
     "tests/test_engine.py::test_teacher_cache_tells_apart_real_sized_slices_that_share_their_first_rows"),
    ("resume loads the training state with weights_only=False", "bundle/checkpoint.py",
     "        state = torch.load(path, map_location=\"cpu\", weights_only=True)\n    except Exception as error:\n"
     "        raise ValueError(f\"training state",
     "        state = torch.load(path, map_location=\"cpu\", weights_only=False)\n    except Exception as error:\n"
     "        raise ValueError(f\"training state",
     "tests/test_resilience.py::test_a_pickled_training_state_is_refused_before_anything_is_restored"),
    ("inference falls back to other readers (LoadImaged with a reader list)", "configs/inference.json",
     '{"_target_": "bundle.io.LoadCTd", "keys": "image"}',
     '{"_target_": "LoadImaged", "keys": "image", "image_only": true, "reader": ["ITKReader", "$bundle.io.NiftiReader()"]}',
     "tests/test_input_checks.py::test_inference_json_refuses_each_bad_volume_and_writes_the_others"),
    ("inference checks no image content (CheckCTd dropped)", "configs/inference.json",
     '{"_target_": "bundle.transforms.CheckCTd", "keys": "image", "allow_non_ct": "$bundle.switches.flag(@allow_non_ct)"},', "",
     "tests/test_input_checks.py::test_inference_json_refuses_each_bad_volume_and_writes_the_others"),
    ("a failing volume stops the list (no CheckedDataset)", "configs/inference.json",
     '"_target_": "bundle.io.CheckedDataset", "data": "@datalist", "transform": "@preprocessing", "report": "@input_report"',
     '"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"',
     "tests/test_input_checks.py::test_inference_json_refuses_each_bad_volume_and_writes_the_others"),
    ("the light path does not check DICOM spacing", "bundle/checks.py",
     "        if abs(step - typical) > 0.01 * typical + 0.01:", "        if False:",
     "tests/test_input_checks.py::test_the_light_path_refuses_the_same_volumes_for_the_same_reasons"),
    ("hand-made splits unchecked", "bundle/data/datalist.py",
     "        check_split(split, path)\n", "",
     "tests/test_split_checks.py::test_a_hand_made_split_that_leaks_is_refused_naming_the_volumes"),
    ("unlabelled images unchecked (CheckCTd dropped from preprocessing_3d)", "configs/train.json",
     '        {"_target_": "bundle.io.LoadCTd", "keys": ["image", "label"], "allow_missing_keys": true},\n'
     '        {"_target_": "bundle.transforms.CheckCTd", "keys": "image", "allow_non_ct": "$bundle.switches.flag(@allow_non_ct)"},',
     '        {"_target_": "bundle.io.LoadCTd", "keys": ["image", "label"], "allow_missing_keys": true},',
     "tests/test_split_checks.py::test_unlabelled_images_get_the_image_checks_of_inference"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="markdown table to write (printed either way)")
    args = parser.parse_args()
    rows = ["| mutation | test that catches it | result |", "| --- | --- | --- |"]
    survived = 0
    control = ("none (control: every test below passes on the unmutated copy)", "bundle/__init__.py", "import importlib",
               "import importlib", " ".join(sorted({m[4] for m in MUTATIONS})))
    for name, file, old, new, tests in [control, *MUTATIONS]:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "repo"
            shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".git", ".venv*", "*.egg-info", "__pycache__",
                                                                      "eval", "runs"))
            target = copy / file
            text = target.read_text()
            if text.count(old) != 1:
                raise SystemExit(f"mutation '{name}': the text to replace occurs {text.count(old)} times in {file}")
            target.write_text(text.replace(old, new))
            # the copy's own package first: conftest asserts the configs are the copy's
            env = {"PYTHONPATH": str(copy), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
            run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests.split()],
                                 cwd=copy, capture_output=True, text=True, env=env)
        caught = run.returncode != 0
        if name.startswith("none"):
            if caught:
                raise SystemExit(f"the tests fail on the unmutated copy:\n{run.stdout[-3000:]}")
            continue
        survived += not caught
        rows.append(f"| {name} | `{tests.split('::')[-1]}` | {'caught' if caught else '**survived**'} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows) + "\n"
    if args.out:
        Path(args.out).write_text(table)
    print(table)
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
