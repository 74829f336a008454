"""Shared test setup: import the package from src/ and find the real data when DSB_DATA is set."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SHARED = ROOT.parent / "shared" / "data"


def _data_root() -> Path | None:
    env = os.environ.get("DSB_DATA")
    root = Path(env) if env else SHARED / "dsb2018"
    return root if (root / "stage1_train").is_dir() else None


@pytest.fixture(scope="session")
def dsb_root() -> Path:
    root = _data_root()
    if root is None:
        pytest.skip("real DSB2018 data not found (set DSB_DATA)")
    return root


@pytest.fixture(scope="session")
def external_root() -> Path:
    root = Path(os.environ.get("DSB_EXTERNAL", SHARED / "external"))
    if not (root / "monuseg").is_dir():
        pytest.skip("external samples not found (set DSB_EXTERNAL)")
    return root
