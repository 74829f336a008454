"""Submit to Kaggle and keep `submissions/leaderboard.csv`: one row per submission file with every score we know."""
from __future__ import annotations

import io
import logging
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .atomic import atomic_write_text
from .data.download import NO_CREDENTIALS, has_credentials
from .errors import DataError

logger = logging.getLogger(__name__)

COLUMNS = ["time", "file", "experiments", "folds", "tta", "postprocess", "oof_map", "local_score",
           "public_score", "private_score", "submitted", "message"]


def read_board(path: Path) -> pd.DataFrame:
    if not Path(path).is_file():
        return pd.DataFrame(columns=COLUMNS)
    board = pd.read_csv(path)
    return board.reindex(columns=COLUMNS)


def record(path: Path, row: dict) -> pd.DataFrame:
    """Add or update the row of `row['file']`; the file is rewritten atomically."""
    board = read_board(path)
    row = {**{c: None for c in COLUMNS}, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **row}
    board = board[board["file"] != row["file"]]
    board = pd.concat([board, pd.DataFrame([row], columns=COLUMNS)], ignore_index=True) if len(board) else \
        pd.DataFrame([row], columns=COLUMNS)
    atomic_write_text(path, board.to_csv(index=False))
    return board


def submit(csv: Path, message: str, competition: str) -> None:
    """`kaggle competitions submit`; on any refusal the message says why, and the CSV stays where it is."""
    if not has_credentials():
        raise DataError(NO_CREDENTIALS.format(root="data/") + f" The submission file is kept: {csv}")
    result = subprocess.run(["kaggle", "competitions", "submit", "-c", competition, "-f", str(csv), "-m", message],
                            capture_output=True, text=True)
    if result.returncode != 0 or "error" in result.stdout.lower():
        raise DataError(f"Kaggle refused {csv}: {(result.stderr or result.stdout).strip()} (the file is kept)")
    logger.info("submitted %s: %s", csv, result.stdout.strip())


def fetch_scores(competition: str) -> pd.DataFrame:
    """Public and private scores of our submissions, by file name, from `kaggle competitions submissions`."""
    result = subprocess.run(["kaggle", "competitions", "submissions", "-c", competition, "--csv"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise DataError(f"could not fetch submissions: {(result.stderr or result.stdout).strip()}")
    frame = pd.read_csv(io.StringIO(result.stdout))
    return frame.rename(columns={"fileName": "file", "publicScore": "public_score", "privateScore": "private_score"})


def merge_scores(board: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Copy Kaggle's latest public/private score onto each row with the same file name."""
    latest = scores.drop_duplicates("file", keep="first").set_index("file")
    board = board.copy()
    names = board["file"].map(lambda f: Path(str(f)).name)
    for column in ("public_score", "private_score"):
        if column in latest:
            fetched = pd.to_numeric(names.map(latest[column]), errors="coerce")
            board[column] = fetched.fillna(pd.to_numeric(board[column], errors="coerce"))
    return board


def sorted_table(board: pd.DataFrame) -> str:
    keys = [c for c in ("private_score", "public_score", "local_score", "oof_map") if board[c].notna().any()]
    ordered = board.sort_values(keys, ascending=False, na_position="last") if keys else board
    shown = ["time", "file", "experiments", "oof_map", "local_score", "public_score", "private_score"]
    return ordered[shown].to_string(index=False)
