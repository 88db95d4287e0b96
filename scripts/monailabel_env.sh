#!/usr/bin/env bash
# Creates the separate virtual environment that serves this bundle with MONAI Label 0.8.5.
#
#   bash scripts/monailabel_env.sh [VENV_DIR]        (default: <repo>/.venv-monailabel)
#
# Why a venv of its own: monailabel 0.8.5 depends on numpymaxflow 0.0.7, which requires numpy < 2,
# while the project's main venv (mlflow 3, pandas) is on numpy 2.
#
# What goes in, and why some of monailabel's declared dependencies are left out:
#   * torch==2.13.0, CPU build. Installed first, on its own, and checked afterwards: the script fails
#     if a CUDA build or any nvidia-* package ended up in the venv. Where `pip install torch==2.13.0`
#     would resolve to a CUDA wheel (a machine without a local CPU wheel), point TORCH_INDEX_URL at
#     PyTorch's CPU wheel index.
#   * monailabel==0.8.5 with --no-deps, then its dependencies listed explicitly below, minus:
#       - sam2: a source build against torch (hydra-core, iopath, ...); the monaibundle app only
#         uses it for the optional `sam_2d`/`sam_3d` models, whose checkpoints it downloads at run
#         time. Without it the app logs nothing and simply does not offer SAM.
#       - monai extras gdown, lmdb, mlflow, openslide: model-zoo download, LMDB caching, experiment
#         tracking and pathology (WSI) support; none is used to serve or fine-tune this bundle.
#         mlflow 3 in particular drags in pandas/pyarrow and sits badly with numpy < 2.
#   * monai==1.6.1 (the bundle's own version; monailabel 0.8.5 only asks for monai>=1.4.0) with the
#     extras the bundle and the server import: fire, ignite, itk, nibabel, skimage, pillow, psutil,
#     tqdm, and tensorboard (TensorBoardStatsHandler in the training configs).
#   * torchvision: monailabel.transform.post (imported by every bundle infer task) does
#     `from torchvision.utils import make_grid, save_image`, nothing else of torchvision is used to
#     serve a bundle. torchvision 0.28.0 is the release for torch 2.13, but PyPI only has its CUDA
#     build, whose _C.so links libtorch_cuda.so: with the CPU torch `import torchvision` dies
#     ("operator torchvision::nms does not exist"). So: install torchvision==0.28.0 (from
#     TORCH_INDEX_URL when set, where a CPU build exists), test `import torchvision`, and when it
#     fails replace it by a two-function shim package (make_grid, save_image in pure torch + PIL;
#     version 0.0.0+shim, so version-checked optional imports treat it as absent).
#
# Idempotent: a stamp file in the venv records the requirement set; when it matches and the
# imports work, nothing is installed again. FORCE=1 reinstalls.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-${SPLEEN_KD_MONAILABEL_VENV:-$REPO/.venv-monailabel}}"
PYTHON="${PYTHON:-python3.11}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"

TORCH_SPEC="torch==2.13.0"
# Everything except torch (the first entry must stay monailabel: it is installed with --no-deps).
REQUIREMENTS=(
    "monailabel==0.8.5"
    "monai[fire,ignite,itk,nibabel,skimage,pillow,psutil,tqdm]==1.6.1"
    "numpy<2"
    "pytorch-ignite==0.5.5"
    "tensorboard"
    # what inference.json serves fast with (its `auto` backend is ONNX Runtime when present, else
    # PyTorch eager, 3-4x slower for the student): the same pins as requirements.txt
    "onnx==1.23.2" "onnxruntime==1.32.0" "isal==1.9.1" "connected-components-3d==4.1.1"
    # monailabel 0.8.5's own dependencies (its METADATA), without sam2 and the monai extras above.
    # The web/DICOM stack is pinned to the versions verified with it (a 2024 server on 2026 packages).
    # pydicom<3: pydicom-seg 0.4.1 (imported at server start) needs pydicom._storage_sopclass_uids,
    # which pydicom 3 removed; pynetdicom 3 needs pydicom 3.
    "uvicorn==0.54.0" "pydantic==2.14.3" "pydantic-settings==2.16.3" "python-dotenv>=1.0.1"
    "fastapi==0.165.0" "starlette==1.10.0" "python-multipart==0.0.34" "httpx>=0.27.0" "schedule>=1.2.1"
    "dicomweb-client[gcp]==0.60.1" "timeloop>=1.0.2" "expiringdict>=1.2.2" "expiring_dict>=1.1.0"
    "cachetools>=5.3.3" "watchdog>=4.0.0" "pydicom==2.4.5" "pydicom-seg==0.4.1" "pynetdicom==2.1.1"
    "pynrrd>=1.0.0" "numpymaxflow>=0.0.7" "girder-client>=3.2.3" "ninja>=1.11.1.1" "einops>=0.7.0"
    "pyyaml>=6.0.1" "filelock>=3.11.0" "passlib>=1.7.4" "pyjwt>=2.8.0" "bcrypt>=4.1.2"
    "shapely>=2.0.4" "requests>=2.31.0" "requests-toolbelt>=1.0.0" "urllib3>=2.2.1" "scikit-learn"
    "scipy" "google-auth>=2.29.0"
)

STAMP="$VENV/.spleen-kd-monailabel"
WANT="$(printf '%s\n' "$TORCH_SPEC" "${REQUIREMENTS[@]}" | sha256sum | cut -c1-16)"

check() {
    "$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import sys

import monai
import monailabel
import numpy
import torch
import torchvision  # noqa: F401  (monailabel.transform.post imports it)
from torchvision.utils import make_grid, save_image  # noqa: F401
import monailabel.app  # noqa: F401  (the server's FastAPI app: every endpoint and datastore)
from monailabel.tasks.infer.bundle import BundleInferTask  # noqa: F401
from monailabel.tasks.train.bundle import BundleTrainTask  # noqa: F401

problems = []
if monailabel.__version__ != "0.8.5":
    problems.append(f"monailabel {monailabel.__version__} != 0.8.5")
if not numpy.__version__.startswith("1."):
    problems.append(f"numpy {numpy.__version__} is not < 2")
if torch.version.cuda is not None:
    problems.append(f"torch {torch.__version__} is a CUDA build (cuda {torch.version.cuda}); want the CPU build")
nvidia = sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith("nvidia-"))
if nvidia:
    problems.append(f"CUDA packages installed: {nvidia}")
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, monai {monai.__version__}, "
      f"monailabel {monailabel.__version__}, numpy {numpy.__version__}")
if problems:
    print("PROBLEMS: " + "; ".join(problems), file=sys.stderr)
    sys.exit(1)
EOF
}

install_torchvision_shim() {
    local site
    site="$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
    mkdir -p "$site/torchvision" "$site/torchvision-0.0.0+shim.dist-info"
    cat >"$site/torchvision/__init__.py" <<'PY'
"""Stand-in for torchvision in the spleen-kd MONAI Label venv (written by scripts/monailabel_env.sh).

PyPI's torchvision 0.28.0 is a CUDA build that cannot be imported next to the CPU torch 2.13.
MONAI Label 0.8.5 only needs ``torchvision.utils.make_grid`` and ``save_image``; nothing else is
provided. ``pip install torchvision`` replaces this package.
"""

__version__ = "0.0.0+shim"

from . import utils  # noqa: E402,F401
PY
    cat >"$site/torchvision/utils.py" <<'PY'
"""make_grid and save_image with torchvision's signatures, in pure torch + PIL."""

import math

import numpy as np
import torch
from PIL import Image


def make_grid(tensor, nrow=8, padding=2, normalize=False, value_range=None, scale_each=False, pad_value=0.0):
    if isinstance(tensor, (list, tuple)):
        tensor = torch.stack(list(tensor), dim=0)
    tensor = torch.as_tensor(tensor)
    if tensor.dim() == 2:  # H, W
        tensor = tensor.unsqueeze(0)
    if tensor.dim() == 3:  # C, H, W
        tensor = tensor.unsqueeze(0) if tensor.size(0) in (1, 3) else tensor.unsqueeze(1)
    if tensor.size(1) == 1:
        tensor = torch.cat((tensor, tensor, tensor), 1)
    if normalize:
        tensor = tensor.clone().float()

        def _norm(t, low, high):
            t.clamp_(min=low, max=high)
            t.sub_(low).div_(max(high - low, 1e-5))

        if scale_each:
            for t in tensor:
                _norm(t, *(value_range or (float(t.min()), float(t.max()))))
        else:
            _norm(tensor, *(value_range or (float(tensor.min()), float(tensor.max()))))
    if tensor.size(0) == 1:
        return tensor.squeeze(0)
    nmaps = tensor.size(0)
    xmaps = min(nrow, nmaps)
    ymaps = int(math.ceil(float(nmaps) / xmaps))
    height, width = int(tensor.size(2) + padding), int(tensor.size(3) + padding)
    grid = tensor.new_full((tensor.size(1), height * ymaps + padding, width * xmaps + padding), pad_value)
    k = 0
    for y in range(ymaps):
        for x in range(xmaps):
            if k >= nmaps:
                break
            grid.narrow(1, y * height + padding, height - padding).narrow(
                2, x * width + padding, width - padding).copy_(tensor[k])
            k += 1
    return grid


def save_image(tensor, fp, format=None, **kwargs):
    grid = make_grid(tensor, **kwargs)
    array = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to("cpu", torch.uint8).numpy()
    Image.fromarray(np.ascontiguousarray(array)).save(fp, format=format)
PY
    printf 'Metadata-Version: 2.1\nName: torchvision\nVersion: 0.0.0+shim\nSummary: make_grid/save_image stand-in (spleen-kd scripts/monailabel_env.sh)\n' \
        >"$site/torchvision-0.0.0+shim.dist-info/METADATA"
    echo "spleen-kd" >"$site/torchvision-0.0.0+shim.dist-info/INSTALLER"
    printf 'torchvision/__init__.py,,\ntorchvision/utils.py,,\ntorchvision-0.0.0+shim.dist-info/METADATA,,\ntorchvision-0.0.0+shim.dist-info/INSTALLER,,\ntorchvision-0.0.0+shim.dist-info/RECORD,,\n' \
        >"$site/torchvision-0.0.0+shim.dist-info/RECORD"
}

if [[ "${FORCE:-0}" != "1" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && VERSIONS="$(check 2>/dev/null)"; then
    echo "MONAI Label venv already set up: $VENV"
    echo "$VERSIONS" | tail -1
    exit 0
fi

START=$(date +%s)
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "+ $PYTHON -m venv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)

# 1. torch, CPU build, alone (nothing later may replace it: the constraint below pins it).
if [[ -n "$TORCH_INDEX_URL" ]]; then
    echo "+ pip install $TORCH_SPEC --index-url $TORCH_INDEX_URL"
    "${PIP[@]}" "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
else
    echo "+ pip install $TORCH_SPEC"
    "${PIP[@]}" "$TORCH_SPEC"
fi

# 2. monailabel without its declared dependencies (keeps sam2 and monai's heavy extras out), then
#    the explicit list. numpy<2 and the installed torch are held by a constraints file.
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
"$VENV/bin/python" -c "import torch; print('torch==' + torch.__version__)" >"$CONSTRAINTS"
echo "numpy<2" >>"$CONSTRAINTS"
echo "+ pip install --no-deps monailabel==0.8.5"
"${PIP[@]}" --no-deps "monailabel==0.8.5"
echo "+ pip install -c <torch, numpy<2> ${REQUIREMENTS[*]:1}"
# SAM2_BUILD_CUDA=0: should sam2 ever be pulled in (it is not listed here), build it without CUDA.
SAM2_BUILD_CUDA=0 "${PIP[@]}" -c "$CONSTRAINTS" "${REQUIREMENTS[@]:1}"

# 3. torchvision (see the header): the real one if it imports, else the shim.
TV_SPEC="torchvision==0.28.0"
if [[ -n "$TORCH_INDEX_URL" ]]; then
    "${PIP[@]}" -c "$CONSTRAINTS" --no-deps "$TV_SPEC" --index-url "$TORCH_INDEX_URL" || true
else
    "${PIP[@]}" -c "$CONSTRAINTS" --no-deps "$TV_SPEC" || true
fi
if ! "$VENV/bin/python" -c "import torchvision.utils" >/dev/null 2>&1; then
    echo "torchvision 0.28.0 does not import with the CPU torch (CUDA-only build); installing the shim"
    "$VENV/bin/python" -m pip uninstall -y -q torchvision || true
    install_torchvision_shim
fi

check
echo "$WANT" >"$STAMP"
END=$(date +%s)
echo "MONAI Label venv ready: $VENV (install took $((END - START)) s)"
echo "Start the server:  $VENV/bin/python -m monailabel.main start_server --help   (see docs/monai_label.md)"
