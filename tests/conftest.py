"""Shared fixtures: the real CT fixtures beside the repository and a small phantom dataset."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``<repo>/../shared``, which holds the real CT fixtures (data/totalseg_ct) and the schemas."""
    path = REPO.parent / "shared"
    if not path.is_dir():
        pytest.skip(f"the shared folder beside the repository ({path}) is absent: no real CT fixtures here")
    return path


@pytest.fixture(scope="session")
def totalseg_dir(shared_dir) -> Path:
    """Real CT scans with TotalSegmentator label maps (1 = spleen), NIfTI and a DICOM series."""
    path = shared_dir / "data" / "totalseg_ct"
    if not path.is_dir():
        pytest.skip(f"the real CT fixtures are not at {path}")
    return path


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Eight small phantom volumes (64×64×24 at 5×5×10 mm) in the MSD layout; treat as read-only."""
    from bundle.data.phantoms import make_phantom_dataset

    out = tmp_path_factory.mktemp("phantoms")
    make_phantom_dataset(out, cases=8, seed=0, shape=(64, 64, 24), spacing=(5.0, 5.0, 10.0))
    return out
