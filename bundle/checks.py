"""What every serving path checks before a network sees a volume, and how a list of volumes reports.

A damaged file, a 2D image, an empty or non-CT volume or a DICOM series with a missing slice gives a
mask that looks like one and means nothing; each is refused here with one line that names the file
and says what to do. Both ``configs/inference.json`` (through :class:`bundle.io.CTReader` and
:class:`bundle.transforms.CheckCTd`, which MONAI Label's infer task runs too) and ``spleen-kd segment``'s
light path use these functions, so the two refuse the same inputs. numpy only: the light path imports it.
"""

from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

MIN_SLICES = 4  # fewer voxels than this along an axis: a 2D image or a single slice, not a volume
AIR_HU = -500.0  # air is about -1000 HU; anything below -500 is air or lung
MIN_AIR_FRACTION = 1e-3  # a CT shows air around the body, in the lungs or the bowel
ALLOW_HINT = "pass --allow_non_ct (config key `allow_non_ct`) to segment it anyway"


class InputError(ValueError):
    """An input that cannot be segmented; the message names the file and says what to do."""


def check_output_folder(out_dir: str | os.PathLike) -> Path:
    """The output folder, created, before any volume is read: an ``InputError`` if it is a file or not writable."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"the output folder '{out}' is a file; give a folder (-o, config key `output_dir`).")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the output folder '{out}' ({error.strerror}); give another one "
                         "(-o, config key `output_dir`).") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"the output folder '{out}' is not writable; give another one (-o, config key `output_dir`).")
    return out


def check_exists(path: str | os.PathLike) -> None:
    path = Path(path)
    if not path.exists():
        raise InputError(f"'{path}' does not exist; check the path.")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"'{path}' is empty (0 bytes); the copy or download did not finish.")


def as_volume(array: np.ndarray, source: str) -> np.ndarray:
    """``array`` (as loaded, channels last) as a 3D volume: one channel is dropped, anything else that is not
    3D is refused."""
    shape = tuple(array.shape)
    if array.ndim == 4 and shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise InputError(f"'{source}' has shape {shape}: a 3D CT volume is expected (a single-channel 4D image "
                         "also works); export the scan as one 3D volume.")
    if min(array.shape) < MIN_SLICES:
        raise InputError(f"'{source}' has shape {shape}: at least {MIN_SLICES} voxels along each axis are needed "
                         "(is it a 2D image or a single slice?); give the whole series.")
    return array


def check_ct(array: np.ndarray, source: str, allow_non_ct: bool = False) -> list[str]:
    """Refuse what cannot be a CT in Hounsfield units: not 3D, too few slices, non-finite values, one value
    everywhere, no air. With ``allow_non_ct`` the last two are warnings (returned and logged) instead."""
    array = as_volume(np.asarray(array), source)
    step = max(1, round((array.size / 2e6) ** (1 / 3)))  # ~2 M voxels decide, in a few milliseconds
    sample = array[::step, ::step, ::step]
    if not np.isfinite(sample).all() or not np.isfinite(array[..., ::max(1, array.shape[2] // 8)]).all():
        raise InputError(f"'{source}' holds NaN or infinite values; it is not a valid CT. Re-export it.")
    low, high = float(sample.min()), float(sample.max())
    problem = None
    if high - low < 1e-3:
        problem = f"'{source}' holds one value ({low:g}) everywhere: it is empty, not a CT"
    elif np.count_nonzero(sample < AIR_HU) < MIN_AIR_FRACTION * sample.size:
        problem = (f"'{source}' holds no air (values {low:g} to {high:g}; a CT in Hounsfield units shows air at "
                   "about -1000): it may be an MR, a label map, or a CT stored without its rescale intercept")
    if problem is None:
        return []
    if not allow_non_ct:
        raise InputError(f"{problem}; {ALLOW_HINT}.")
    message = f"{problem}; segmenting it anyway (allow_non_ct): the mask may mean nothing."
    logger.warning(message)
    return [message]


def dicom_series(folder: str | os.PathLike) -> list:
    """The slices of a DICOM series folder (pydicom datasets with pixel data), ordered along the slice
    normal, after refusing an unreadable or truncated file, mixed slice sizes or orientations, two slices
    at one position, a missing slice (a gap in the spacing) and a series of fewer than MIN_SLICES slices."""
    import pydicom

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InputError(f"'{folder}' is a folder with no files: give a NIfTI file or a DICOM series folder.")
    slices = []
    for file in files:
        try:
            dataset = pydicom.dcmread(str(file))
            expected = int(dataset.Rows) * int(dataset.Columns) * int(dataset.BitsAllocated) // 8 * int(
                getattr(dataset, "SamplesPerPixel", 1))
            pixels = dataset.get("PixelData")
            if pixels is None:
                raise ValueError("no pixel data")
            if not dataset.file_meta.TransferSyntaxUID.is_compressed and len(pixels) < expected:
                raise ValueError(f"{len(pixels)} of {expected} pixel bytes")
            dataset.ImagePositionPatient, dataset.ImageOrientationPatient, dataset.PixelSpacing  # noqa: B018
        except Exception as error:  # pydicom raises many types for a damaged or foreign file
            raise InputError(f"'{file}' in the DICOM series '{folder}' is not a readable CT slice ({error}); it is "
                             "truncated, damaged or not DICOM: replace it, or remove it if it is not a slice.") from None
        slices.append((file, dataset))
    first = slices[0][1]
    for file, dataset in slices[1:]:
        if (dataset.Rows, dataset.Columns) != (first.Rows, first.Columns) or not np.allclose(
                np.asarray(dataset.ImageOrientationPatient, float), np.asarray(first.ImageOrientationPatient, float),
                atol=1e-4):
            raise InputError(f"'{file}' does not match the other slices of '{folder}' (size or orientation): the "
                             "folder mixes series; give one series per folder.")
    orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])

    def position(dataset) -> float:
        return float(np.dot(np.asarray(dataset.ImagePositionPatient, dtype=np.float64), normal))

    slices.sort(key=lambda item: position(item[1]))
    if len(slices) < MIN_SLICES:
        raise InputError(f"the DICOM series '{folder}' has {len(slices)} slice(s): at least {MIN_SLICES} are needed "
                         "(is it a 2D image?); give the whole series.")
    positions = np.array([position(dataset) for _, dataset in slices])
    steps = np.diff(positions)
    typical = float(np.median(steps))
    for i, step in enumerate(steps):
        if step < 1e-3:
            raise InputError(f"'{slices[i][0].name}' and '{slices[i + 1][0].name}' of the DICOM series '{folder}' lie "
                             "at the same position: the folder holds two series or a duplicate; keep one.")
        if abs(step - typical) > 0.01 * typical + 0.01:
            raise InputError(f"the DICOM series '{folder}' has a gap of {step:.2f} mm between '{slices[i][0].name}' and "
                             f"'{slices[i + 1][0].name}' where its slices are {typical:.2f} mm apart: a slice is missing "
                             "or the spacing is not uniform. Export the complete series.")
    return [dataset for _, dataset in slices]


def root_cause(error: BaseException) -> BaseException:
    """The ``InputError`` (or the first error) under MONAI's wrappers ("applying transform ...")."""
    seen, current = [], error
    while current is not None and current not in seen:
        if isinstance(current, InputError):
            return current
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen[-1]


class InputReport:
    """Which volumes of a list were written and which refused, and the summary that ends the run.

    The light path calls :meth:`ok` and :meth:`failed` itself; in ``configs/inference.json``
    :class:`bundle.io.CheckedDataset` reports what it skips, :meth:`attach` counts the masks the evaluator
    wrote, and :meth:`finish` ends the run. A volume skipped in a DataLoader worker (``num_workers`` > 0)
    is logged there; the summary still names it."""

    def __init__(self, debug: bool = False):
        self.debug, self.expected, self.written, self.refused = debug, [], [], []

    def expect(self, entries: list[dict]) -> list[dict]:
        self.expected = [str(entry["image"]) for entry in entries]
        return entries

    def ok(self, source: str) -> None:
        self.written.append(str(source))

    def failed(self, source: str, error: BaseException) -> None:
        cause = root_cause(error)
        reason = str(cause) if isinstance(cause, InputError) else f"{type(cause).__name__}: {cause}"
        self.refused.append((str(source), reason))
        logger.error("refused: %s", reason)
        if self.debug:
            logger.error("".join(traceback.format_exception(error)))

    def attach(self, engine) -> None:
        """Count every volume whose iteration completed (postprocessing, and so the mask's writing, is done by then)."""
        from ignite.engine import Events

        def written(engine) -> None:
            batch = engine.state.batch
            for item in batch if isinstance(batch, list) else [batch]:
                names = getattr(item.get("image"), "meta", {}).get("filename_or_obj")
                for name in names if isinstance(names, (list, tuple)) else [names]:
                    self.ok(name)

        engine.add_event_handler(Events.ITERATION_COMPLETED, written)

    def _all_refused(self) -> list[tuple[str, str]]:
        done = {os.path.abspath(s) for s in self.written} | {os.path.abspath(s) for s, _ in self.refused}
        unseen = [(s, "refused in a data loader worker; its message is in the log above")
                  for s in self.expected if os.path.abspath(s) not in done]
        return self.refused + unseen

    def summary(self) -> str:
        refused = self._all_refused()
        total = max(len(self.expected), len(self.written) + len(refused))
        text = f"{total} volume{'s' if total != 1 else ''}: {len(self.written)} written"
        if refused:
            text += f", {len(refused)} refused: " + "; ".join(
                f"{Path(source).name} ({_short(reason)})" for source, reason in refused)
        return text

    def finish(self) -> None:
        """Print the summary; exit with status 1 if any volume was refused (SystemExit passes through
        ``monai.bundle run`` untouched, so the shell sees the status and this one line)."""
        print(self.summary())
        if self._all_refused():
            raise SystemExit(1)


def _short(reason: str) -> str:
    """The reason up to its advice, without the file name it starts with (the summary names the file)."""
    if reason.startswith("'") and "' " in reason[1:]:
        reason = reason[reason.index("' ", 1) + 2:]
    depth = 0
    for i, char in enumerate(reason):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == ";" and depth == 0:
            return reason[:i]
    return reason
