"""Bundle metadata validates offline against MONAI's schema; every config is valid JSON."""

import json
import subprocess
import sys

from conftest import META_FILE, REPO, TEST_DATA


def test_metadata_verifies_against_the_bundle_schema(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", META_FILE,
         "--filepath", str(TEST_DATA / "meta_schema_20240725.json")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "metadata is verified with no error" in result.stdout + result.stderr


def test_every_config_is_json_and_the_output_channel_is_the_spleen():
    for path in sorted((REPO / "configs").rglob("*.json")):
        json.loads(path.read_text())
    meta = json.loads((REPO / "configs/metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"]["1"] == "spleen"
