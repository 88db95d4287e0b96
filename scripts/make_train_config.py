"""Write configs/train.json, the self-contained training config MONAI Label runs.

MONAI Label runs ``configs/train.json`` from its own working directory, where the
``%configs/common.json`` macros of the other configs cannot resolve; so train.json is
configs/student.json with those macros expanded, and two MONAI Label conventions: the best
checkpoint goes to ``models/model.pt`` (what inference loads) and the resumable training state
stays in a sub-folder (MONAI Label offers every ``models/*.pt``). Regenerate after editing
student.json or common.json: ``python scripts/make_train_config.py`` (a test checks it is current).
"""

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_config() -> dict:
    from monai.bundle import ConfigParser

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        parser = ConfigParser()
        parser.read_config("configs/student.json")
        parser.resolve_macro_and_relative_ids()
        config = parser.get()
    finally:
        os.chdir(cwd)
    config.pop("_meta_", None)
    config.update({"run_name": "monailabel", "ckpt_dir": "$@bundle_root + '/models'",
                   "train_state_dir": "$@bundle_root + '/models/monailabel'", "val_interval": 1, "epochs": 50})
    return config


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    out = ROOT / "configs" / "train.json"
    out.write_text(json.dumps(train_config(), indent=4) + "\n")
    print(f"wrote {out}")
