"""Where the data shipped inside the package lies: the generator's anatomy, the HU statistics and the
real CT fixtures. Nothing here reads outside the package, so a clone or a wheel stands alone."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DATA = Path(__file__).resolve().parent
SOURCES = PACKAGE_DATA / "sources"
TOTALSEG_SOURCES = SOURCES / "totalseg"  # TotalSegmentator v2 dataset subjects (CC BY 4.0)
MSD_SPLEEN_MASKS = SOURCES / "msd_spleen"  # 40 manually traced MSD Task09 spleen masks (CC BY-SA 4.0)
HU_STATS_FILE = PACKAGE_DATA / "hu_stats.json"
FIXTURES = PACKAGE_DATA / "fixtures"  # real CT with TotalSegmentator labels (Apache-2.0); never trained on

# Leave-subject-out default: the three dataset subjects with a spleen. The maps of the real CTs that
# transfer is measured on (fixtures/example_seg*.nii.gz) are not among them.
DEFAULT_SOURCES = tuple(TOTALSEG_SOURCES / f"{s}_labels.nii.gz" for s in ("s0001", "s0004", "s0006"))
DEFAULT_SPLEEN_MASKS = tuple(sorted(MSD_SPLEEN_MASKS.glob("spleen_*.nii.gz"),
                                    key=lambda p: int(p.name.split("_")[1].split(".")[0])))
# Real CT whose tissues (no spleen in view) give the generator's HU for fat, muscle, bone, lung, air.
HU_REFERENCE_SCANS = tuple((s, TOTALSEG_SOURCES / f"{s}_ct.nii.gz", TOTALSEG_SOURCES / f"{s}_labels.nii.gz")
                           for s in ("s0002", "s0003"))
# The real labelled CT fixtures: subject -> (image, label map; spleen = 1)
REAL_CASES = {
    "example_ct_sm": (FIXTURES / "example_ct_sm.nii.gz", FIXTURES / "example_seg.nii.gz"),
    "example_ct_dicom": (FIXTURES / "example_ct_dicom", FIXTURES / "example_seg_dicom.nii.gz"),
}
EXAMPLE_CT = FIXTURES / "example_ct.nii.gz"  # 122×101×112, no label: calibration and benchmarks
