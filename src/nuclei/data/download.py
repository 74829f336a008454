"""`download`: fetch the competition data with the Kaggle CLI and unpack the nested zips."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

from ..errors import DataError

logger = logging.getLogger(__name__)

COMPETITION = "data-science-bowl-2018"
NO_CREDENTIALS = (
    "No Kaggle credentials found. Either put the data in {root} yourself (Kaggle layout: stage1_train/, stage1_test/, "
    "stage1_sample_submission.csv), point DSB_DATA or data.root at it, or create an API token on kaggle.com "
    "(Account > API > Create New Token), save it as ~/.kaggle/kaggle.json (chmod 600) or set KAGGLE_USERNAME and "
    "KAGGLE_KEY, accept the competition rules, and run this stage again."
)


def has_credentials() -> bool:
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config_dir / "kaggle.json").is_file()


def is_complete(root: Path) -> bool:
    return (root / "stage1_train").is_dir() and (root / "stage1_test").is_dir()


def unpack_nested(root: Path) -> None:
    """The competition archive holds one zip per split; each unpacks into a folder named after it."""
    for archive in sorted(root.glob("*.zip")):
        target = root / archive.stem if archive.stem.startswith("stage") and not archive.stem.endswith(".csv") else root
        logger.info("unpacking %s -> %s", archive.name, target)
        with zipfile.ZipFile(archive) as handle:
            handle.extractall(target)
        archive.unlink()


def download(root: str | Path, competition: str = COMPETITION) -> Path:
    root = Path(root)
    if is_complete(root):
        logger.info("data already in %s", root)
        return root
    if not has_credentials():
        raise DataError(NO_CREDENTIALS.format(root=root))
    if shutil.which("kaggle") is None:
        raise DataError("the kaggle command is not installed: pip install -r requirements.txt")
    root.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["kaggle", "competitions", "download", "-c", competition, "-p", str(root)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise DataError(f"kaggle download failed: {result.stderr.strip() or result.stdout.strip()}")
    unpack_nested(root)
    unpack_nested(root)  # a second pass for the zips that were inside the first
    if not is_complete(root):
        raise DataError(f"{root}: download finished but stage1_train/ or stage1_test/ is missing")
    return root
