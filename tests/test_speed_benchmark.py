"""spleen-kd benchmark writes its documented schema, with ratios from the same backend and run."""

import json
import subprocess
import sys


def test_benchmark_writes_the_documented_schema(tmp_path, request):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, "-m", "bundle.cli", "benchmark", "--json", str(out),
                    "--models", "S1", "T1", "--backends", "onnx", "--sizes", "64", "--repeats", "1",
                    "--volume_models", "S1-fast", "--volume_shape", "96", "96", "6", "--no_training", "--cli"],
                   cwd=tmp_path, check=True, capture_output=True)  # from any directory
    report = json.loads(out.read_text())
    assert {"cpu", "cores_visible", "threads", "torch", "onnxruntime", "load_average_before",
            "load_average_after"} <= set(report["hardware"])
    rows = {(r["model"], r["backend"]): r for r in report["models"]}
    assert set(rows) == {("S1", "onnx"), ("T1", "onnx")}
    for row in rows.values():
        assert {"model", "backend", "size", "params", "flops_per_slice", "slices_per_s", "peak_rss_mb"} <= set(row)
        assert row["slices_per_s"] > 0 and row["peak_rss_mb"] > 0 and row["size"] == 64
    assert rows[("S1", "onnx")]["params"] == 56849
    assert rows[("T1", "onnx")]["flops_per_slice"] > 40 * rows[("S1", "onnx")]["flops_per_slice"]
    ratios = report["ratios"]
    assert ratios["backend"] == "onnx"
    assert ratios["S1/T1"] == rows[("S1", "onnx")]["slices_per_s"] / rows[("T1", "onnx")]["slices_per_s"]
    volume = report["volume"]["S1-fast"]
    assert volume["backend"] == "onnx" and volume["shape"] == "96x96x6"
    assert set(volume["stages_s"]) == {"read", "preprocess", "model", "invert", "postprocess", "write"}
    assert all(v >= 0 for v in volume["stages_s"].values()) and volume["total_s"] > 0
    assert volume["list"]["volumes"] == 4 and volume["list"]["per_volume_s"] > 0
    assert volume["list"]["num_workers"] == 0  # read in the main process: a worker was slower on 2 cores
    assert volume["light"]["engine"] == "light" and volume["light"]["per_volume_s"] > 0
    for name in ("S1", "S1-fast"):  # the two one-volume commands, timed in turn
        cli = report["cli"][name]
        assert cli["light"]["command"].startswith("spleen-kd segment") and "monai.bundle" in cli["monai"]["command"]
        assert cli["light"]["wall_s"] > 0 and cli["monai"]["wall_s"] > 0 and cli["monai_over_light"] > 0
    table = out.with_suffix(".md").read_text()
    assert "S1/T1" in table and "Load average" in table and "light path" in table
