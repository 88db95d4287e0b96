"""Shared fixtures: the real CT fixtures beside the repository and a small phantom dataset."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = REPO.parent / "shared"
    if not (path / "data" / "totalseg_ct").is_dir():
        pytest.skip(f"the real CT fixtures are not at {path}/data/totalseg_ct (the shared folder beside the repo)")
    return path


@pytest.fixture(scope="session")
def totalseg(shared_dir) -> Path:
    return shared_dir / "data" / "totalseg_ct"


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Eight small phantom volumes in the MSD layout (shared, read-only by convention)."""
    from bundle.data.phantoms import make_phantom_dataset

    out = tmp_path_factory.mktemp("phantoms")
    make_phantom_dataset(out, cases=8, seed=0, shape=(64, 64, 24), spacing=(5.0, 5.0, 10.0))
    return out
