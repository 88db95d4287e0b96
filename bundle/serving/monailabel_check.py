#!/usr/bin/env python3
"""End-to-end check that this bundle serves spleen auto-segmentation through MONAI Label 0.8.5.

    python bundle/serving/monailabel_check.py --venv .venv-monailabel [--port P] [--image CT.nii.gz]
                                              [--train] [--train-config FILE] [--keep]

What it does (everything on 127.0.0.1, every wait bounded):
  1. Re-runs itself with the MONAI Label venv's Python (created by scripts/monailabel_env.sh).
  2. In a temporary folder: `monailabel apps --download --name monaibundle` (copies the sample
     app shipped inside the monailabel package; no network), a copy of this bundle as
     `<app>/model/spleen_kd` (configs/, bundle/, models/model.pt with its model.json; where the repo has no
     models/model.pt, a freshly initialised student FeatureUNet is saved instead: its mask is
     meaningless, only shape and values are checked), and a studies folder with the CT.
  3. `monailabel start_server --app <app> --studies <studies> --conf models spleen_kd
     --conf zoo_source local` on a free port; waits for /info/ to list spleen_kd.
  4. POST /infer/spleen_kd?output=image twice: uploading the CT (what a script does; the answer
     is in the input's format), and the way 3D Slicer asks (the image by datastore id after
     "Upload Volume"/"Next Sample", params result_extension .nrrd, result_dtype uint8).
     Checks: HTTP 200, an image with the input's shape and affine, values only 0/1 (1 = spleen),
     both answers equal; with --reference-python, equal to the bundle's own inference too.
  5. Training path: POST /train/spleen_kd and waits for the task. It saves a label for two copies
     of the CT (spleen = label 1 of example_seg.nii.gz), trains configs/train.json (or
     --train-config FILE, copied over it) for 1 epoch (val_split 0.5) and, with --train, fails
     unless the task finishes and a new models/model.pt was written; inference is then run again.
     A bundle copy without configs/train.json gets no trainer: reported as UNSUPPORTED.
  6. Stops the server (its whole process group), always.

Exit status: 0 when every check passed, 1 otherwise. The repository itself is never written to.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # runs with the MONAI Label venv's Python, where spleen-kd is not installed
FIXTURES = REPO / "bundle" / "data" / "fixtures"
DEFAULT_IMAGE = FIXTURES / "example_ct_sm.nii.gz"
DEFAULT_LABEL_SOURCE = FIXTURES / "example_seg.nii.gz"
MODEL = "spleen_kd"
SPLEEN = 1  # channel_def of network_data_format.outputs.pred: {"0": "background", "1": "spleen"}
EXCEPTION_LINE = re.compile(r"^[A-Za-z_.]*(Error|Exception)\b.*:")  # "ValueError: ...", "bundle.x.DataError: ..."


def log(msg: str = "") -> None:
    print(msg, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venv", required=True, help="MONAI Label venv (scripts/monailabel_env.sh)")
    p.add_argument("--port", type=int, default=0, help="server port (default: a free ephemeral port)")
    p.add_argument("--image", default=str(DEFAULT_IMAGE), help="CT volume (NIfTI) to segment")
    p.add_argument("--label-source", default=str(DEFAULT_LABEL_SOURCE),
                   help="multi-label segmentation whose label --label-value is the spleen (training path)")
    p.add_argument("--label-value", type=int, default=1, help="spleen value in --label-source (TotalSegmentator: 1)")
    p.add_argument("--train", action="store_true",
                   help="require the training path to work (default: try it, report, do not fail)")
    p.add_argument("--train-config", help="use this file as the bundle copy's configs/train.json")
    p.add_argument("--inference-config",
                   help="use this file as the bundle copy's configs/inference.json (to try a change)")
    p.add_argument("--random-weights", action="store_true",
                   help="serve a freshly initialised student even when the repo has models/model.pt")
    p.add_argument("--reference-python",
                   help="a Python with this bundle's own requirements (e.g. .venv/bin/python): also run "
                        "`monai.bundle run --config_file configs/inference.json` on the CT and require the "
                        "MONAI Label mask to equal the bundle's own mask voxel for voxel")
    p.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for /info/")
    p.add_argument("--infer-timeout", type=float, default=300.0, help="seconds for one infer request")
    p.add_argument("--train-timeout", type=float, default=600.0, help="seconds for the training task")
    p.add_argument("--keep", action="store_true", help="keep the temporary app/studies folder")
    p.add_argument("--workdir", help="use this (new or empty) folder instead of a temporary one")
    return p.parse_args(argv)


def ensure_venv_python(venv: Path) -> None:
    """Re-exec under the venv's interpreter: the checks need nibabel/numpy/torch of that venv."""
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"FAIL: no Python at {python}. Create the venv first: bash scripts/monailabel_env.sh {venv}")
        sys.exit(1)
    if Path(sys.prefix).resolve() != venv.resolve():
        os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


# --------------------------------------------------------------------------------------------- HTTP
def http(method: str, url: str, *, fields: dict | None = None, files: dict | None = None,
         json_body=None, timeout: float = 30.0):
    """(status, content_type, body bytes). fields/files -> multipart/form-data."""
    headers = {}
    data = None
    if json_body is not None:
        data = json.dumps(json_body).encode()
        headers["Content-Type"] = "application/json"
    elif fields is not None or files is not None:
        boundary = uuid.uuid4().hex
        parts = []
        for name, value in (fields or {}).items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        for name, path in (files or {}).items():
            path = Path(path)
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
                         f'Content-Type: application/octet-stream\r\n\r\n'.encode() + path.read_bytes() + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        data = b"".join(parts)
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------- set-up
def build_app(work: Path, venv: Path, image: Path, train_config: str | None, inference_config: str | None,
              force_random: bool = False) -> tuple[Path, Path, bool]:
    """monaibundle sample app + a copy of this bundle as model/spleen_kd. Returns (app, bundle, random)."""
    apps = work / "apps"
    cmd = [str(venv / "bin" / "python"), "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle",
           "--output", str(apps)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=work)
    app = apps / "monaibundle"
    if r.returncode != 0 or not (app / "main.py").exists():
        raise RuntimeError(f"`monailabel apps --download --name monaibundle` failed:\n{r.stdout}\n{r.stderr}")
    log(f"app: {app} (monaibundle sample app of monailabel, copied by `monailabel apps --download`)")

    bundle = app / "model" / MODEL
    (bundle / "models").mkdir(parents=True)
    shutil.copytree(REPO / "configs", bundle / "configs")
    shutil.copytree(REPO / "bundle", bundle / "bundle", ignore=shutil.ignore_patterns("__pycache__"))
    if train_config:
        shutil.copy(train_config, bundle / "configs" / "train.json")
        log(f"configs/train.json of the bundle copy: {train_config}")
    if inference_config:
        shutil.copy(inference_config, bundle / "configs" / "inference.json")
        log(f"configs/inference.json of the bundle copy: {inference_config}")
    random_weights = force_random or not (REPO / "models" / "model.pt").is_file()
    if random_weights:
        save_random_student(bundle, image)
        why = "--random-weights" if force_random else "NOT in the repo"
        log(f"models/model.pt: {why} -> a freshly initialised (random-weight) student was saved; "
            "the mask is meaningless, only its shape and values are checked")
    else:
        for name in ("model.pt", "model.json"):
            if (REPO / "models" / name).is_file():
                shutil.copy(REPO / "models" / name, bundle / "models" / name)
        log(f"models/model.pt: copied from {REPO / 'models' / 'model.pt'}, with its description")
    log(f"bundle: {bundle}")
    return app, bundle, random_weights


RANDOM_STUDENT = """
import sys, torch
from monai.bundle import ConfigParser
bundle, image = sys.argv[1:3]
parser = ConfigParser()
parser.read_config(bundle + "/configs/inference.json")
parser["bundle_root"] = bundle
torch.manual_seed(0)
net = parser.get_parsed_content("network_def", instantiate=True).eval()
state = net.state_dict()
heads = [k for k, v in state.items() if k.endswith("bias") and v.numel() == 1]
if heads:
    x = parser.get_parsed_content("preprocessing")({"image": image})["image"]
    slices = x.as_tensor().permute(3, 0, 1, 2)[::2]  # [D, C, H, W], every other slice
    with torch.no_grad():
        y = net(slices)
    y = y[0] if isinstance(y, (tuple, list)) else y
    state[heads[-1]] -= torch.quantile(y.flatten().float(), 0.8)
torch.save(state, bundle + "/models/model.pt")
"""


def save_random_student(bundle: Path, image: Path) -> None:
    """A freshly initialised student (the configured `network_def`), saved as models/model.pt.

    A random net's logits usually share one sign over the whole volume (an all-0 or all-1 mask, which
    would make the orientation/inversion checks vacuous), so the output bias is shifted to put the
    threshold at the 80th percentile of the logits on this CT: the mask then has both values and a
    shape that follows the image, and MONAI Label's mask can be compared voxel for voxel with the
    bundle's own inference. Runs in the bundle copy's folder, whose ``bundle`` package the configs import.
    """
    subprocess.run([sys.executable, "-c", RANDOM_STUDENT, str(bundle), str(image)], cwd=bundle, check=True,
                   timeout=300)


def image_ext(path: Path) -> str:
    return ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix


def build_studies(work: Path, image: Path) -> tuple[Path, str, str]:
    """Studies folder with the CT and a second copy (training needs a train and a validation case)."""
    studies = work / "studies"
    studies.mkdir()
    name = image.name
    ext = image_ext(image)
    stem = name[: -len(ext)]
    shutil.copy(image, studies / name)
    shutil.copy(image, studies / f"{stem}_copy{ext}")
    return studies, stem, f"{stem}_copy"


# --------------------------------------------------------------------------------------------- server
class Server:
    def __init__(self, venv: Path, app: Path, studies: Path, port: int, work: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = work / "server.log"
        cmd = [str(venv / "bin" / "python"), "-m", "monailabel.main", "start_server", "--app", str(app),
               "--studies", str(studies), "--conf", "models", MODEL, "--conf", "zoo_source", "local",
               "--conf", "sam2", "false", "--host", "127.0.0.1", "--port", str(port)]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the bundle copy, not the repo
        env["MONAI_LABEL_SESSION_PATH"] = str(work / "sessions")
        # the server leaves temporary files behind (its logging config, among others): in the work folder,
        # they go when it goes
        (work / "tmp").mkdir(exist_ok=True)
        env["TMPDIR"] = str(work / "tmp")
        self.cmd = cmd
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=work, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def first_error(self, since: int) -> str:
        """The first exception line logged after byte ``since``: of a chain of exceptions Python
        prints the root cause first (e.g. the bundle's DataError before MONAI's wrappers)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        return next((line.strip() for line in lines if EXCEPTION_LINE.match(line)), "")

    def last_error(self) -> str:
        """The last exception line of the server log, with the source line that raised it."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        for i in range(len(lines) - 1, -1, -1):
            if EXCEPTION_LINE.match(lines[i]):
                where = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].lstrip().startswith("File ")), "")
                return f"{lines[i].strip()}  [{where}]"
        return ""

    def wait_info(self, timeout: float) -> dict:
        deadline = time.time() + timeout
        last = ""
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before it was ready:\n{self.tail()}")
            try:
                status, _, body = http("GET", f"{self.url}/info/", timeout=5)
                if status == 200:
                    info = json.loads(body)
                    if MODEL in info.get("models", {}):
                        return info
                    last = f"/info/ lists models {list(info.get('models', {}))}"
                else:
                    last = f"/info/ answered {status}"
            except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as e:
                last = str(e)
            time.sleep(1)
        raise RuntimeError(f"no {MODEL} in /info/ after {timeout:.0f} s ({last}):\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the server and the training subprocess it spawned
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        self._log.close()


# --------------------------------------------------------------------------------------------- checks
_LOADER = None


def load_volume(path: Path):
    """(array [H, W, D], RAS affine, on-disk dtype) of a NIfTI or NRRD file, read the way MONAI reads it."""
    global _LOADER
    import contextlib
    import io

    import numpy as np

    if _LOADER is None:
        from monai.transforms import LoadImage

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            _LOADER = LoadImage(image_only=True)  # its constructor chats about optional DICOM decoders
    img = _LOADER(str(path))
    return np.asarray(img), np.asarray(img.affine), stored_dtype(path)


def stored_dtype(path: Path) -> str:
    """The voxel type written in the file's header (MONAI's loader converts to float32)."""
    if path.name.endswith(".nrrd"):
        with open(path, "rb") as f:
            for line in f.read(4096).split(b"\n"):
                if line.startswith(b"type:"):
                    return {"unsigned char": "uint8", "uchar": "uint8", "uint8": "uint8"}.get(
                        line[5:].strip().decode(), line[5:].strip().decode())
        return "unknown"
    import nibabel as nib

    return str(nib.load(str(path)).get_data_dtype())


def check_mask(path: Path, image: Path) -> dict:
    import numpy as np

    ref, ref_affine, _ = load_volume(image)
    data, affine, dtype = load_volume(path)
    values = sorted(float(v) for v in np.unique(data))
    return {
        "shape": tuple(int(s) for s in data.shape),
        "input_shape": tuple(int(s) for s in ref.shape),
        "affine_matches": bool(np.allclose(affine, ref_affine, atol=1e-3)),
        "values": values,
        "spleen_voxels": int((data == SPLEEN).sum()),
        "dtype": dtype,
        "data": data,
    }


def infer(server: Server, work: Path, image: Path, image_id: str | None, timeout: float, tag: str,
          params: dict | None = None) -> dict:
    url = f"{server.url}/infer/{MODEL}?output=image"
    params = params or {}
    form = {"params": json.dumps(params)}
    t0 = time.time()
    if image_id is None:
        status, ctype, body = http("POST", url, fields=form, files={"file": image}, timeout=timeout)
    else:
        status, ctype, body = http("POST", url + f"&image={image_id}", fields=form, timeout=timeout)
    seconds = time.time() - t0
    if status != 200:
        time.sleep(1)  # the server logs the traceback after it has answered
        raise RuntimeError(f"infer ({tag}) answered HTTP {status} ({body[:300].decode(errors='replace')}); "
                           f"server: {server.last_error()}")
    ext = params.get("result_extension") or image_ext(image)  # default: the input's format
    out = work / f"mask_{tag}{ext}"
    out.write_bytes(body)
    if ext == ".nrrd":
        ok = body[:4] == b"NRRD"
    else:
        ok = body[:2] == b"\x1f\x8b" or body[344:348] in (b"n+1\x00", b"ni1\x00")
    if not ok:
        raise RuntimeError(f"infer ({tag}) returned {ctype} ({len(body)} bytes), not a {ext} image: {body[:200]!r}")
    result = check_mask(out, image)
    result["seconds"] = seconds
    result["file"] = out
    result["tag"] = tag
    return result


def report_mask(tag: str, r: dict) -> list[str]:
    problems = []
    log(f"  [{tag}] {r['seconds']:.1f} s, shape {r['shape']} (input {r['input_shape']}), dtype {r['dtype']}, "
        f"values {r['values']}, spleen voxels {r['spleen_voxels']}, affine matches input: {r['affine_matches']}")
    if r["shape"] != r["input_shape"]:
        problems.append(f"{tag}: shape {r['shape']} != input shape {r['input_shape']}")
    if not set(r["values"]) <= {0.0, 1.0}:
        problems.append(f"{tag}: values {r['values']} are not a subset of {{0, 1}}")
    if not r["affine_matches"]:
        problems.append(f"{tag}: the mask's affine differs from the input's")
    return problems


def compare_with_bundle_run(python: str, bundle: Path, image: Path, work: Path, served: dict,
                            timeout: float) -> list[str]:
    """The bundle's own inference (`monai.bundle run`, in the bundle copy, same weights) vs. MONAI Label."""

    if not image.name.endswith((".nii", ".nii.gz")):
        log(f"  [bundle run] skipped: configs/inference.json globs *.nii* and {image.name} is not NIfTI")
        return []
    src, out = work / f"reference_in_{served['tag']}", work / f"reference_out_{served['tag']}"
    src.mkdir()
    shutil.copy(image, src / image.name)
    cmd = [python, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
           "--input_dir", str(src), "--output_dir", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    t0 = time.time()
    r = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, timeout=timeout, env=env)
    masks = sorted(out.glob("*.nii*")) if out.exists() else []
    if r.returncode != 0 or not masks:
        return [f"`{' '.join(cmd)}` failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}"]
    ref = load_volume(masks[0])[0]
    same = ref.shape == served["data"].shape and bool((ref == served["data"]).all())
    log(f"  [bundle run] {time.time() - t0:.1f} s ({python}), shape {tuple(ref.shape)}, "
        f"spleen voxels {int((ref == SPLEEN).sum())}; equal to the MONAI Label mask: {same}")
    return [] if same else ["the MONAI Label mask differs from the bundle's own `monai.bundle run` mask"]


# ------------------------------------------------------------------------------------------- training
def try_training(server: Server, bundle: Path, work: Path, image_ids: list[str], args,
                 info: dict) -> tuple[str, list[str]]:
    """Returns (status line, problems). Problems only count with --train."""
    has_config = (bundle / "configs" / "train.json").is_file()
    listed = MODEL in info.get("trainers", {})
    log(f"  configs/train.json in the bundle: {has_config}; /info/ trainers: {list(info.get('trainers', {}))}")

    if has_config and listed:
        try:
            label = make_label(work, args)
        except Exception as e:  # noqa: BLE001
            return "FAILED", [f"no training label: {type(e).__name__}: {e}"]
        for image_id in image_ids:
            status, _, body = http("PUT", f"{server.url}/datastore/label?image={image_id}&tag=final",
                                   fields={"params": "{}"}, files={"label": label}, timeout=60)
            if status != 200:
                return "FAILED", [f"saving the label of {image_id}: HTTP {status} {body[:500]!r}"]
        log(f"  labels saved for {image_ids} (spleen = {args.label_value} of {Path(args.label_source).name} -> 1)")

    model_pt = bundle / "models" / "model.pt"
    before = model_pt.stat().st_mtime_ns if model_pt.exists() else None
    request = {"max_epochs": 1, "val_split": 0.5, "device": "cpu", "multi_gpu": False, "pretrained": True}
    t0, log_offset = time.time(), server.log_size()
    status, _, body = http("POST", f"{server.url}/train/{MODEL}", json_body=request, timeout=60)
    if status != 200:
        line = f"POST /train/{MODEL} answered HTTP {status}: {body[:500].decode(errors='replace')}"
        return ("UNSUPPORTED" if not has_config else "FAILED"), [line]
    task = json.loads(body)
    log(f"  POST /train/{MODEL} {json.dumps(request)} -> {task.get('status')} (task {task.get('id')})")

    deadline = time.time() + args.train_timeout
    while time.time() < deadline:
        status, _, body = http("GET", f"{server.url}/train/?all=true", timeout=30)
        tasks = [t for t in json.loads(body) if t.get("id") == task.get("id")] if status == 200 else []
        if tasks and tasks[0].get("status") not in ("SUBMITTED", "RUNNING"):
            break
        time.sleep(2)
    else:
        http("DELETE", f"{server.url}/train/", timeout=30)
        return "FAILED", [f"training did not finish in {args.train_timeout:.0f} s"]
    seconds = time.time() - t0
    final = tasks[0]
    details = final.get("details", [])
    (work / "train_task.log").write_text("\n".join(details))
    errors = [d for d in details if "Error" in d or "Exception" in d]
    log(f"  training task: {final.get('status')} after {seconds:.0f} s (log: {work / 'train_task.log'})")
    if not has_config:
        msg = errors[-1] if errors else (details[-1] if details else "no details")
        return "UNSUPPORTED", [f"the bundle has no configs/train.json, so the monaibundle app adds no trainer; "
                               f"the task ends {final.get('status')}: {msg.strip()[:400]}"]
    after = model_pt.stat().st_mtime_ns if model_pt.exists() else None
    problems = []
    if final.get("status") != "DONE" or any("Traceback" in d for d in details):
        cause = server.first_error(log_offset)
        problems.append(f"training task {final.get('status')}" + (f", first error in the server log: {cause}" if cause else "")
                        + "\n" + "\n".join(details[-25:]))
    if after is None or after == before:
        problems.append("training did not write a new models/model.pt (the model MONAI Label serves)")
    return ("WORKS" if not problems else "FAILED"), problems


def make_label(work: Path, args) -> Path:
    import nibabel as nib
    import numpy as np

    src = nib.load(args.label_source)
    data = (np.asanyarray(src.dataobj) == args.label_value).astype(np.uint8)
    if not data.any():
        raise RuntimeError(f"{args.label_source} has no voxel of value {args.label_value}")
    out = work / "spleen_label.nii.gz"
    nib.save(nib.Nifti1Image(data, src.affine), str(out))
    return out


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    args = parse_args(argv)
    venv = Path(args.venv).absolute()
    if args.reference_python:
        args.reference_python = str(Path(args.reference_python).absolute())
    ensure_venv_python(venv)

    import monai
    import monailabel
    import numpy
    import torch

    image = Path(args.image).absolute()
    if not image.is_file():
        log(f"FAIL: no CT at {image}")
        return 1
    if args.workdir:
        work = Path(args.workdir).absolute()
        work.mkdir(parents=True, exist_ok=True)
        if any(work.iterdir()):
            log(f"FAIL: --workdir {work} is not empty")
            return 1
    else:
        work = Path(tempfile.mkdtemp(prefix="spleen-kd-monailabel-"))
    log(f"MONAI Label smoke test: monailabel {monailabel.__version__}, monai {monai.__version__}, "
        f"torch {torch.__version__}, numpy {numpy.__version__}; work dir {work}")

    problems: list[str] = []
    server = None
    train_status, train_notes = "NOT RUN", []
    t_start = time.time()
    try:
        app, bundle, random_weights = build_app(work, venv, image, args.train_config, args.inference_config,
                                               args.random_weights)
        studies, image_id, copy_id = build_studies(work, image)
        port = args.port or free_port()
        server = Server(venv, app, studies, port, work)
        log(f"server: {' '.join(server.cmd)}")
        t0 = time.time()
        info = server.wait_info(args.startup_timeout)
        model_info = info["models"][MODEL]
        log(f"server ready in {time.time() - t0:.1f} s at {server.url}; {MODEL}: type {model_info.get('type')}, "
            f"labels {model_info.get('labels')}, dimension {model_info.get('dimension')}, "
            f"version {model_info.get('version')}")
        if model_info.get("labels") != {"spleen": SPLEEN}:
            problems.append(f"/info/ labels of {MODEL}: {model_info.get('labels')}, expected {{'spleen': {SPLEEN}}}")
        if model_info.get("type") != "segmentation":
            problems.append(f"/info/ type of {MODEL}: {model_info.get('type')}, expected segmentation")

        log(f"inference: POST /infer/{MODEL}?output=image with {image}")
        upload = infer(server, work, image, None, args.infer_timeout, "upload")
        problems += report_mask("upload", upload)
        # 3D Slicer's request: the image by datastore id, {"result_extension": ".nrrd", "result_dtype": "uint8"}
        by_id = infer(server, work, image, image_id, args.infer_timeout, "slicer",
                      params={"result_extension": ".nrrd", "result_dtype": "uint8"})
        problems += report_mask("slicer", by_id)
        if "uint8" not in by_id["dtype"]:
            problems.append(f"slicer: the mask is {by_id['dtype']}, not the uint8 that was asked for")
        if upload["shape"] == by_id["shape"] and not (upload["data"] == by_id["data"]).all():
            problems.append("the upload and slicer-style masks differ")

        if args.reference_python:
            problems += compare_with_bundle_run(args.reference_python, bundle, image, work, upload,
                                                args.infer_timeout)

        log("training path:")
        train_status, train_notes = try_training(server, bundle, work, [image_id, copy_id], args, info)
        if train_status == "WORKS":
            retrained = infer(server, work, image, None, args.infer_timeout, "after-training")
            train_problems = report_mask("after-training", retrained)
            if args.reference_python and not train_problems:
                train_problems = compare_with_bundle_run(args.reference_python, bundle, image, work, retrained,
                                                         args.infer_timeout)
            if train_problems:
                train_status, train_notes = "FAILED", train_problems
        for note in train_notes:
            log(f"  {note}")
        if args.train and train_status != "WORKS":
            problems.append(f"training path {train_status}")
    except Exception as e:  # noqa: BLE001 - every failure is reported, then the server is stopped
        problems.append(f"{type(e).__name__}: {e}")
    finally:
        if server is not None:
            server.stop()
            log(f"server stopped (exit code {server.proc.returncode})")

    log("")
    log("SUMMARY")
    if server is not None and "upload" in locals():
        log(f"  inference: mask {upload['shape']} for input {upload['input_shape']}, values {upload['values']}, "
            f"{upload['seconds']:.1f} s per request (upload), {by_id['seconds']:.1f} s (slicer-style)"
            + (" [random-weight student]" if random_weights else ""))
    log(f"  training path: {train_status}")
    log(f"  total {time.time() - t_start:.0f} s")
    if problems:
        log("  FAILED:")
        for p in problems:
            log(f"   - {p}")
        if server is not None:
            log(f"  server log: {server.log_path}")
            text = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
            if "'str' object has no attribute 'update'" in text and "spatial/dictionary.py" in text:
                log("  HINT: MONAI Label puts an 'image_path' string into the data dict; monai's Spacingd updates "
                    "every 'image_*' key as a meta dict and fails on it. Make Spacingd in configs/inference.json "
                    "conditional (see docs/monai_label.md, 'Known incompatibility').")
    else:
        log("  PASSED")
    if args.keep or problems or args.workdir:
        log(f"  kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
