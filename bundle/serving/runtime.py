"""Process settings and ONNX Runtime sessions for segmenting volumes; no PyTorch, no MONAI, so the light
serving path (:mod:`bundle.serving.light`) starts in a fraction of a second."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

ONNX_KEY = "spleen_kd_source"  # ONNX metadata: the weights (and slice size) the model was exported from
ONNX_DESCRIPTION = "spleen_kd_model"  # ONNX metadata: the model.json of the checkpoint it was exported from
ONNX_PRECISION = "spleen_kd_precision"  # ONNX metadata: "int8" for statically quantized models


def available_cores() -> int:
    """Cores this process may run on (``taskset``/cgroup cpusets count, the machine's total does not)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class OnnxModel:
    """An ONNX Runtime session on the CPU with what the bundle wrote into the model's metadata.

    ``threads``: intra-op threads (0: one per available core). ``spinning``: let idle threads busy-wait
    for work; off by default, because between batches the CPU is needed by the pre- and post-processing
    and by whatever else runs on the machine."""

    def __init__(self, path: str | os.PathLike, threads: int = 0, spinning: bool = False):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model '{self.path}' does not exist; export it with `spleen-kd export "
                                    "--ckpt models/model.pt` (or run configs/inference.json once, which exports it).")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or available_cores()
        options.inter_op_num_threads = 1  # one chain of convolutions: nothing to run side by side
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ONNX Runtime raises its own types for a damaged or foreign file
            raise ValueError(f"ONNX model '{self.path}' cannot be loaded ({type(error).__name__}: {error}); "
                             "export it again with `spleen-kd export`.") from None
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = tuple(self.session.get_inputs()[0].shape)
        self.version = ort.__version__
        self.threads = options.intra_op_num_threads
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.precision = self.metadata.get(ONNX_PRECISION, "fp32")

    def __call__(self, batch):
        """``[B, 1, H, W]`` float32 numpy -> logits ``[B, 1, H, W]``."""
        return self.session.run(None, {self.input_name: batch})[0]


def keep_freed_memory() -> bool:
    """Large arrays from the heap, and freed memory kept for the next ones (glibc's ``mallopt``; True if set).

    By default glibc maps every array above 32 MB afresh and unmaps it when freed, so each of the dozen
    volume-sized arrays of a segmentation is faulted in page by page: about 0.7 s of system time per
    512×512×100 volume on 2 cores, more than the model. The cost: the process keeps its peak memory
    instead of returning it between volumes. Not glibc (macOS, musl): nothing is changed."""
    import ctypes

    try:
        process = ctypes.CDLL(None)  # the symbols already loaded, libc's among them
    except OSError:
        return False
    if not hasattr(process, "gnu_get_libc_version") or not hasattr(process, "mallopt"):
        return False
    mallopt = process.mallopt
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def gzip_open_isal(filename: str, mode: str = "rb", compresslevel: int = 1, mtime: int = 0, keep_open: bool = False):
    """nibabel's gzip opener on ISA-L: 2–3× faster, same bytes for readers (levels above 3 become 3)."""
    from isal import igzip

    modestr = mode if "b" in mode else mode + "b"
    fileobj = open(filename, modestr)
    stream = igzip.IGzipFile(filename="", mode=modestr, compresslevel=min(int(compresslevel), 3), fileobj=fileobj,
                             mtime=mtime)
    stream.myfileobj = fileobj  # closed with the stream, as in nibabel's own opener
    return stream


def use_fast_gzip() -> bool:
    """Register :func:`gzip_open_isal` for ``.gz`` in nibabel (its documented extension point) when
    ``isal`` is installed; True if it did. Affects every nibabel read and write in this process."""
    if importlib.util.find_spec("isal") is None:
        return False
    from nibabel.openers import ImageOpener

    ImageOpener.compress_ext_map[".gz"] = (gzip_open_isal, ("mode", "compresslevel", "mtime", "keep_open"))
    return True


def process_settings() -> str:
    """:func:`keep_freed_memory` and :func:`use_fast_gzip`, described for the log."""
    return (f"{'freed memory kept' if keep_freed_memory() else 'default allocator'}, "
            f"gzip through {'ISA-L' if use_fast_gzip() else 'zlib'}")
