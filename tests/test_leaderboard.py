"""submissions/leaderboard.csv bookkeeping (no network: Kaggle's answers are given as tables)."""
import os

import numpy as np
import pandas as pd
import pytest

from nuclei import atomic
from nuclei.leaderboard import COLUMNS, merge_scores, read_board, record, sorted_table


def test_missing_board_reads_empty(tmp_path):
    board = read_board(tmp_path / "leaderboard.csv")
    assert list(board.columns) == COLUMNS and len(board) == 0


def test_record_adds_then_updates_by_file(tmp_path):
    path = tmp_path / "leaderboard.csv"
    record(path, {"file": "submissions/a.csv", "experiments": "paper_v1", "oof_map": 0.41})
    record(path, {"file": "submissions/b.csv", "experiments": "paper_v9", "oof_map": 0.45})
    board = read_board(path)
    assert board["file"].tolist() == ["submissions/a.csv", "submissions/b.csv"]
    assert list(board.columns) == COLUMNS
    assert board["time"].notna().all()

    record(path, {"file": "submissions/a.csv", "experiments": "paper_v1", "oof_map": 0.43, "submitted": True})
    board = read_board(path)
    assert len(board) == 2 and board["file"].is_unique
    row = board.set_index("file").loc["submissions/a.csv"]
    assert row["oof_map"] == pytest.approx(0.43) and bool(row["submitted"])
    assert board.set_index("file").loc["submissions/b.csv", "oof_map"] == pytest.approx(0.45)


def test_record_keeps_the_old_board_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "leaderboard.csv"
    record(path, {"file": "a.csv", "oof_map": 0.4})
    before = path.read_bytes()

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(OSError):
        record(path, {"file": "b.csv", "oof_map": 0.5})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["leaderboard.csv"]


def test_unknown_row_keys_are_not_written(tmp_path):
    path = tmp_path / "leaderboard.csv"
    record(path, {"file": "a.csv", "surprise": 1})
    assert list(pd.read_csv(path).columns) == COLUMNS


def test_merge_scores_by_file_name():
    board = pd.DataFrame([
        {"file": "submissions/a.csv", "public_score": np.nan, "private_score": np.nan},
        {"file": "submissions/b.csv", "public_score": 0.30, "private_score": 0.31},
        {"file": "submissions/c.csv", "public_score": np.nan, "private_score": np.nan},
    ]).reindex(columns=COLUMNS)
    # Kaggle lists the newest submission first; a file sent twice keeps its latest scores.
    scores = pd.DataFrame([
        {"file": "a.csv", "public_score": "0.512", "private_score": "0.498"},
        {"file": "b.csv", "public_score": "0.40", "private_score": None},
        {"file": "a.csv", "public_score": "0.100", "private_score": "0.100"},
        {"file": "zzz.csv", "public_score": "0.9", "private_score": "0.9"},
    ])
    merged = merge_scores(board, scores).set_index("file")
    assert merged.loc["submissions/a.csv", "public_score"] == pytest.approx(0.512)
    assert merged.loc["submissions/a.csv", "private_score"] == pytest.approx(0.498)
    assert merged.loc["submissions/b.csv", "public_score"] == pytest.approx(0.40)
    assert merged.loc["submissions/b.csv", "private_score"] == pytest.approx(0.31)  # unknown on Kaggle: kept
    assert np.isnan(merged.loc["submissions/c.csv", "public_score"])
    assert "zzz.csv" not in merged.index and len(merged) == 3
    assert np.isnan(board.loc[0, "public_score"])  # the input board is not modified


def test_merge_then_record_round_trip(tmp_path):
    path = tmp_path / "leaderboard.csv"
    record(path, {"file": "submissions/a.csv", "oof_map": 0.4})
    merged = merge_scores(read_board(path), pd.DataFrame([{"file": "a.csv", "public_score": 0.5,
                                                            "private_score": 0.45}]))
    atomic.atomic_write_text(path, merged.to_csv(index=False))
    board = read_board(path)
    assert board.loc[0, "private_score"] == pytest.approx(0.45)
    table = sorted_table(board)
    assert "submissions/a.csv" in table and "0.45" in table


def test_sorted_table_ranks_by_private_score():
    board = pd.DataFrame([
        {"file": "low.csv", "private_score": 0.2},
        {"file": "high.csv", "private_score": 0.6},
        {"file": "none.csv", "private_score": np.nan},
    ]).reindex(columns=COLUMNS)
    lines = sorted_table(board).splitlines()
    assert [next(name for name in ("high", "low", "none") if name in line) for line in lines[1:]] == \
        ["high", "low", "none"]
