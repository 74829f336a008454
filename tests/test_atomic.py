"""Atomic writes: the target is either the old file or the complete new one, never half of either."""
import os

import pytest

from nuclei import atomic
from nuclei.atomic import atomic_write, atomic_write_bytes, atomic_write_text


def test_writes_and_creates_parent_folders(tmp_path):
    path = tmp_path / "a" / "b" / "file.txt"
    atomic_write_text(path, "héllo")
    assert path.read_text(encoding="utf-8") == "héllo"
    atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(path.parent) == ["file.txt"]  # no temporary file left behind


def test_old_file_survives_a_failing_writer(tmp_path):
    path = tmp_path / "index.csv"
    atomic_write_text(path, "old,complete\n")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(path) as handle:
            handle.write("new,half")
            raise RuntimeError("boom")
    assert path.read_text() == "old,complete\n"
    assert os.listdir(tmp_path) == ["index.csv"]


def test_no_file_appears_when_the_first_write_fails(tmp_path):
    path = tmp_path / "never.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path, "wb") as handle:
            handle.write(b"partial")
            raise KeyboardInterrupt  # even a BaseException cleans up
    assert not path.exists() and os.listdir(tmp_path) == []


def test_old_file_survives_a_failing_rename(tmp_path, monkeypatch):
    path = tmp_path / "weights.pt"
    atomic_write_bytes(path, b"old")

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["weights.pt"]


def test_replaces_the_whole_file(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "a much longer first version\n")
    atomic_write_text(path, "short\n")
    assert path.read_text() == "short\n"
