"""int8 student for ONNX Runtime: static quantization calibrated on real CT slices.

    spleen-kd quantize --onnx models/model.onnx --out models/model.int8.onnx --images ct1.nii.gz ct2.nii.gz
    python -m monai.bundle run --config_file configs/inference.json --onnx_path models/model.int8.onnx --input_files ...

Calibration slices go through the preprocessing of ``configs/inference.json`` (orientation, HU
window, resize), so the activation ranges are those the model meets when it serves. The fp32
model is the one :func:`bundle.serving.backend.onnx_for` exports from the checkpoint; the int8 model
keeps its source tag, so inference uses it only with that checkpoint.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from onnxruntime.quantization import CalibrationDataReader

from .runtime import ONNX_PRECISION


def calibration_slices(images: Sequence[str | os.PathLike], slice_size: int = 256, max_slices: int = 64,
                       config_file: str | os.PathLike | None = None) -> np.ndarray:
    """Up to ``max_slices`` axial slices ``[N, 1, S, S]`` (float32), evenly spread over ``images``,
    preprocessed by the ``preprocessing`` of ``config_file``."""
    from monai.bundle import ConfigParser

    if not images:
        raise ValueError("calibration needs at least one CT image (NIfTI file or DICOM folder); pass --images.")
    for image in images:
        if not Path(image).exists():
            raise FileNotFoundError(f"calibration image '{image}' does not exist.")
    from ..workflows import located

    parser = ConfigParser()
    parser.read_config(str(config_file or located("inference")))
    parser["slice_size"] = slice_size
    preprocessing = parser.get_parsed_content("preprocessing", instantiate=True)
    volumes = [np.asarray(preprocessing({"image": str(image)})["image"])[0] for image in images]
    slices = np.concatenate([np.moveaxis(volume, -1, 0) for volume in volumes])[:, None].astype(np.float32)
    keep = np.unique(np.linspace(0, len(slices) - 1, min(max_slices, len(slices))).round().astype(int))
    return np.ascontiguousarray(slices[keep])


class SliceBatches(CalibrationDataReader):
    """ONNX Runtime ``CalibrationDataReader`` over slices, ``batch`` at a time."""

    def __init__(self, slices: np.ndarray, input_name: str = "x", batch: int = 8):
        self.slices, self.input_name, self.batch = slices, input_name, batch
        self._batches: Iterator[np.ndarray] | None = None

    def get_next(self) -> dict | None:
        if self._batches is None:
            self._batches = (self.slices[i:i + self.batch] for i in range(0, len(self.slices), self.batch))
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._batches = None


def quantize_int8(onnx_in: str | os.PathLike, onnx_out: str | os.PathLike, slices: np.ndarray) -> Path:
    """Static QDQ quantization: int8 weights per channel, uint8 activations, MinMax ranges from ``slices``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    from ..files import atomic_open

    source = onnx.load(str(onnx_in))
    metadata = {p.key: p.value for p in source.metadata_props}
    if metadata.get(ONNX_PRECISION) == "int8":
        raise ValueError(f"'{onnx_in}' is already quantized; pass the fp32 model.")
    reader = SliceBatches(slices, input_name=source.graph.input[0].name)
    with tempfile.TemporaryDirectory() as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(onnx_in), str(prepared))
        quantize_static(str(prepared), str(quantized), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        model = onnx.load(str(quantized))
    onnx.helper.set_model_props(model, {**metadata, ONNX_PRECISION: "int8", "calibration_slices": str(len(slices))})
    with atomic_open(onnx_out, "wb") as stream:
        stream.write(model.SerializeToString())
    return Path(onnx_out)


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", required=True, help="fp32 model (models/model.onnx, written by the first ONNX inference run)")
    parser.add_argument("--out", required=True, help="where to write the int8 model")
    parser.add_argument("--images", nargs="+", required=True, help="CT volumes to calibrate on (NIfTI or DICOM folders)")
    parser.add_argument("--slice_size", type=int, default=256)
    parser.add_argument("--max_slices", type=int, default=64)
    args = parser.parse_args(argv)
    if not Path(args.onnx).is_file():
        raise SystemExit(f"fp32 ONNX model '{args.onnx}' does not exist: run inference once with --backend onnx "
                         "(it exports models/model.onnx from the checkpoint).")
    out = quantize_int8(args.onnx, args.out, calibration_slices(args.images, args.slice_size, args.max_slices))
    print(f"int8 model written to {out}")
    return out


if __name__ == "__main__":
    main()
