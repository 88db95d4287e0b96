"""MONAI Label 0.8.5 serves this bundle: a real server on 127.0.0.1, a real CT, the returned mask checked.

Runs bundle/serving/monailabel_check.py against the MONAI Label venv (its own venv: monailabel 0.8.5 needs
numpy < 2). Skipped when that venv does not exist; create it with `bash scripts/monailabel_env.sh`
(default `.venv-monailabel` in the repo root, or point SPLEEN_KD_MONAILABEL_VENV at one).

The smoke script also runs the bundle's own `monai.bundle run` inference with this interpreter and
requires MONAI Label's mask to be equal voxel for voxel. The training path (POST /train/spleen_kd, which
runs the self-contained configs/train.json, the baseline student) is required to work as well.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _venv() -> Path:
    return Path(os.environ.get("SPLEEN_KD_MONAILABEL_VENV") or REPO / ".venv-monailabel").absolute()


def test_monailabel_serves_spleen_kd(totalseg_dir, tmp_path):
    venv = _venv()
    if not (venv / "bin" / "python").exists():
        pytest.skip(f"no MONAI Label venv at {venv}: create it with `bash scripts/monailabel_env.sh` "
                    "(about 2 minutes) or set SPLEEN_KD_MONAILABEL_VENV")
    ct = totalseg_dir / "example_ct_sm.nii.gz"
    cmd = [sys.executable, str(REPO / "bundle" / "serving" / "monailabel_check.py"), "--venv", str(venv),
           "--image", str(ct), "--reference-python", sys.executable,
           "--startup-timeout", "90", "--infer-timeout", "60", "--train-timeout", "90", "--train"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400, env=env)
    out = r.stdout + r.stderr
    summary = out[out.rfind("SUMMARY"):] if "SUMMARY" in out else out[-6000:]
    assert r.returncode == 0, f"MONAI Label smoke test failed ({r.returncode}):\n{summary}"
    assert "PASSED" in summary
    assert "mask (122, 101, 30) for input (122, 101, 30)" in summary
