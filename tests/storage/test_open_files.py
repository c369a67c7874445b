"""proxy.storage.open_files: reused descriptors, bounded, reading what the file held."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.storage.open_files import OpenFiles


def test_reads_by_offset_and_reuses_the_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "v"
    path.write_bytes(b"0123456789")
    files = OpenFiles()
    assert files.read(str(path), 0, 4) == b"0123"
    assert files.read(str(path), 4, 100) == b"456789"  # short at the end of the file
    assert len(files) == 1
    files.close()
    assert len(files) == 0


def test_a_deleted_file_still_reads_its_bytes_until_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "v"
    path.write_bytes(b"old")
    files = OpenFiles()
    assert files.read(str(path), 0, 3) == b"old"
    path.unlink()
    assert files.read(str(path), 0, 3) == b"old"  # diskcache never reuses a value file's name
    files.forget(str(path))
    with pytest.raises(FileNotFoundError):
        files.read(str(path), 0, 3)
    files.close()


def test_at_most_capacity_descriptors_stay_open(tmp_path: Path) -> None:
    files = OpenFiles(capacity=3)
    for i in range(10):
        p = tmp_path / f"v{i}"
        p.write_bytes(b"x")
        files.read(str(p), 0, 1)
    assert len(files) == 3
    files.close()
