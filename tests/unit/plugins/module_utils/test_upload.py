# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Layer uploads: ECR-sized part plans, and reading parts only from the file that was verified.
(The pipelined part sender is tested end to end in test_push.py.)"""

from __future__ import annotations

import os
import sys
import threading

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils.errors import StorageError
from ansible_collections.ecrkit.images.plugins.module_utils.upload import (
    SourceChangedError, file_identity, iter_parts, open_source_file, plan_parts)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the helpers beside this file
# pylint: disable=wrong-import-position
from transfer_support import MIB, blob_bytes  # noqa: E402


# -- part planning ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 5 * MIB - 1, 5 * MIB, 5 * MIB + 1, 20 * MIB, 20 * MIB + 1, 100 * MIB])
@pytest.mark.parametrize("part_size", [5 * MIB, 10 * MIB, 20 * MIB])
def test_plan_parts_covers_the_blob_in_ecr_sized_parts(size, part_size):
    parts = plan_parts(size, part_size)
    if size == 0:
        assert parts == []  # an empty blob cannot go through the layer upload API
        return
    assert parts[0][0] == 0 and parts[-1][1] == size - 1
    for (first, last), (following, dummy) in zip(parts, parts[1:]):
        assert following == last + 1
        assert last - first + 1 == part_size  # every part but the last is a full one (>= 5 MiB)
    assert 1 <= parts[-1][1] - parts[-1][0] + 1 <= part_size
    assert len(parts) == -(-size // part_size)


@pytest.mark.parametrize("size, part_size, expected", [
    (1, 5 * MIB, [(0, 0)]),
    (5 * MIB - 1, 5 * MIB, [(0, 5 * MIB - 2)]),
    (5 * MIB, 5 * MIB, [(0, 5 * MIB - 1)]),
    (5 * MIB + 1, 5 * MIB, [(0, 5 * MIB - 1), (5 * MIB, 5 * MIB)]),
    (20 * MIB + 1, 20 * MIB, [(0, 20 * MIB - 1), (20 * MIB, 20 * MIB)]),
    (20 * MIB + 1, 10 * MIB, [(0, 10 * MIB - 1), (10 * MIB, 20 * MIB - 1), (20 * MIB, 20 * MIB)]),
    (100 * MIB, 20 * MIB, [(first, first + 20 * MIB - 1) for first in range(0, 100 * MIB, 20 * MIB)]),
])
def test_plan_parts_table(size, part_size, expected):
    assert plan_parts(size, part_size) == expected


@pytest.mark.parametrize("size, part_size", [(-1, 5 * MIB), (10, 5 * MIB - 1), (10, 20 * MIB + 1),
                                             (4201 * 5 * MIB, 5 * MIB)])
def test_plan_parts_refuses_what_ecr_refuses(size, part_size):
    with pytest.raises(ValueError):
        plan_parts(size, part_size)


# -- reading parts ---------------------------------------------------------------------------------


def test_iter_parts_reads_one_part_at_a_time(tmp_path):
    data = blob_bytes(11 * MIB + 3)
    path = tmp_path / "blob"
    path.write_bytes(data)
    parts = plan_parts(len(data), 5 * MIB)
    seen = list(iter_parts(str(path), parts))
    assert [(first, last) for first, last, dummy in seen] == parts
    assert b"".join(chunk for dummy, dummy, chunk in seen) == data
    with pytest.raises(StorageError, match="changed while it was being uploaded"):
        list(iter_parts(str(path), [(0, len(data))]))
    with pytest.raises(StorageError):
        list(iter_parts(str(tmp_path / "missing"), parts))


def _parts_in_thread(*args, **kwargs):
    """list(iter_parts(...)) with a bound: (result or exception, whether it was still blocked after 30 s)."""
    outcome = []

    def read_all():
        try:
            outcome.append(list(iter_parts(*args, **kwargs)))
        except BaseException as exc:  # pylint: disable=broad-except
            outcome.append(exc)

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    reader.join(30)
    return (outcome or [None])[0], reader.is_alive()


def test_iter_parts_refuses_a_fifo_without_blocking(tmp_path):
    fifo = str(tmp_path / "blob")
    os.mkfifo(fifo)
    outcome, blocked = _parts_in_thread(fifo, [(0, 9)])
    if blocked:  # let the blocked open() return: a writer that leaves at once
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert not blocked, "opening a FIFO to upload blocked"
    assert isinstance(outcome, StorageError) and "is not a regular file" in str(outcome)


@pytest.mark.parametrize("swap", ["link", "other_file", "resized", "directory_link", "fifo"])
def test_iter_parts_reads_only_the_file_that_was_verified(tmp_path, swap):
    root = tmp_path / "layout"
    (root / "blobs" / "sha256").mkdir(parents=True)
    path = root / "blobs" / "sha256" / "ab"
    path.write_bytes(b"verified bytes")
    fd, info = open_source_file("blobs/sha256/ab", str(root))
    os.close(fd)
    identity = file_identity(info)
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret, other bytes")
    if swap == "link":
        path.unlink()
        path.symlink_to(secret)
    elif swap == "other_file":
        os.replace(str(secret), str(path))
    elif swap == "resized":
        with open(path, "ab") as handle:
            handle.write(b" and more")
    elif swap == "directory_link":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "ab").write_bytes(b"secret, other bytes")
        os.rename(str(root / "blobs" / "sha256"), str(root / "blobs" / "old"))
        (root / "blobs" / "sha256").symlink_to(elsewhere)
    else:
        path.unlink()
        os.mkfifo(str(path))
    outcome, blocked = _parts_in_thread("blobs/sha256/ab", [(0, 13)], root=str(root), identity=identity,
                                        digest="sha256:" + "ab" * 32)
    if blocked:
        os.close(os.open(str(path), os.O_WRONLY | os.O_NONBLOCK))
    assert not blocked
    assert isinstance(outcome, SourceChangedError), outcome
    assert str(outcome) == (f"The blob sha256:{'ab' * 32} at {path} changed during the push (it is no longer the regular "
                            "file that was verified), so it was not read; find out what replaced it, then run again.")
    if swap == "resized":  # back to what was verified: read as usual
        with open(path, "r+b") as handle:
            handle.truncate(14)
        assert list(iter_parts("blobs/sha256/ab", [(0, 13)], root=str(root), identity=identity)) == [(0, 13, b"verified bytes")]
