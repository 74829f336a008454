"""Stratified K-fold split, and the committed folds/folds.csv pinned to the code."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nuclei.errors import DataError
from nuclei.folds import read_folds, stratified_folds, write_folds

COMMITTED = Path(__file__).resolve().parents[1] / "folds" / "folds.csv"
COUNTS = {"fluorescence": 23, "histology": 7, "brightfield": 3}


def sample_ids(seed: int = 0) -> tuple[list[str], list[str]]:
    types = [kind for kind, n in COUNTS.items() for _ in range(n)]
    ids = [f"id{i:03d}" for i in range(len(types))]
    order = np.random.default_rng(seed).permutation(len(ids))
    return [ids[i] for i in order], [types[i] for i in order]


def test_every_id_exactly_once():
    ids, types = sample_ids()
    folds = stratified_folds(ids, types, k=5)
    assert sorted(folds["image_id"]) == sorted(ids)
    assert list(folds.columns) == ["image_id", "fold", "type"]
    assert set(folds["fold"]) == set(range(5))
    assert dict(zip(folds["image_id"], folds["type"])) == dict(zip(ids, types))


def test_each_fold_gets_its_share_of_each_type():
    ids, types = sample_ids()
    k = 5
    folds = stratified_folds(ids, types, k=k)
    for kind, n in COUNTS.items():
        per_fold = folds[folds["type"] == kind]["fold"].value_counts().reindex(range(k), fill_value=0)
        assert set(per_fold) <= {n // k, -(-n // k)}, (kind, per_fold.tolist())
    sizes = folds["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 1


def test_same_seed_same_csv(tmp_path):
    ids, types = sample_ids()
    write_folds(tmp_path / "a.csv", stratified_folds(ids, types, seed=7))
    shuffled_ids, shuffled_types = sample_ids(seed=1)  # input order must not matter
    write_folds(tmp_path / "b.csv", stratified_folds(shuffled_ids, shuffled_types, seed=7))
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_another_seed_another_split():
    ids, types = sample_ids()
    a = stratified_folds(ids, types, seed=1)
    b = stratified_folds(ids, types, seed=2)
    assert not a["fold"].equals(b["fold"])


def test_duplicate_ids_rejected():
    with pytest.raises(DataError, match="duplicate.*'b'"):
        stratified_folds(["a", "b", "b", "c"], ["x"] * 4, k=2)


def test_k_below_two_rejected():
    with pytest.raises(DataError, match="k must be"):
        stratified_folds(["a", "b"], ["x", "x"], k=1)


def test_write_read_round_trip(tmp_path):
    ids, types = sample_ids()
    folds = stratified_folds(ids, types)
    write_folds(tmp_path / "folds.csv", folds)
    pd.testing.assert_frame_equal(read_folds(tmp_path / "folds.csv"), folds)


def test_numeric_looking_ids_stay_strings(tmp_path):
    folds = stratified_folds(["007", "010", "3"], ["x", "x", "x"], k=3)
    write_folds(tmp_path / "folds.csv", folds)
    assert sorted(read_folds(tmp_path / "folds.csv")["image_id"]) == ["007", "010", "3"]


def test_read_folds_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nothere.csv.*not found"):
        read_folds(tmp_path / "nothere.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,fold\na,0\n")
    with pytest.raises(DataError, match=r"bad.csv.*\['type'\]"):
        read_folds(bad)


def test_committed_folds_match_the_code():
    if not COMMITTED.is_file():
        pytest.skip("folds/folds.csv not committed yet")
    committed = read_folds(COMMITTED)
    assert len(committed) == 664
    assert committed["image_id"].is_unique
    assert sorted(committed["fold"].unique()) == [0, 1, 2, 3, 4]
    regenerated = stratified_folds(committed["image_id"].tolist(), committed["type"].tolist())
    pd.testing.assert_frame_equal(committed.reset_index(drop=True), regenerated.reset_index(drop=True))


def test_committed_folds_cover_the_real_train_split(dsb_root):
    if not COMMITTED.is_file():
        pytest.skip("folds/folds.csv not committed yet")
    on_disk = sorted(p.name for p in (dsb_root / "stage1_train").iterdir() if p.is_dir())
    assert sorted(read_folds(COMMITTED)["image_id"]) == on_disk
