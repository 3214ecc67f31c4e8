# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verification stamps on their own: a stamp matches only the file it was written for, one that cannot
be trusted or written only costs a hash, and orphans go with their blob (OciLayout's use of them is in
test_layout.py)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils import hostfs
from ansible_collections.ecrkit.images.plugins.module_utils.stamps import VerifiedStamps, stamp_line

DIGEST = "sha256:" + "c" * 64
OTHER = "sha256:" + "d" * 64


@pytest.fixture(name="store")
def fixture_store(tmp_path):
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    directory = tmp_path / "verified"
    stamps = VerifiedStamps(str(directory), lambda: hostfs.private_directory(str(tmp_path), "verified", "the stamps"))
    return stamps, blobs


def test_a_stamp_matches_only_the_file_it_was_written_for(store):
    stamps, blobs = store
    blob = blobs / DIGEST[7:]
    blob.write_bytes(b"layer")
    assert not stamps.matches(DIGEST, os.lstat(blob))  # none yet
    stamps.record(DIGEST, str(blob))
    assert stamps.matches(DIGEST, os.lstat(blob))
    assert not stamps.matches(OTHER, os.lstat(blob))
    with open(blob, "r+b") as handle:  # same size, new bytes: the ctime moves
        handle.write(b"LAYER")
    assert not stamps.matches(DIGEST, os.lstat(blob))


def test_a_stamp_line_names_inode_size_and_times():
    info = os.stat_result((0o100644, 12, 0, 1, 0, 0, 34, 0, 0, 0))
    assert stamp_line(info) == f"12 34 {info.st_mtime_ns} {info.st_ctime_ns}\n".encode("ascii")


def test_a_stamp_that_is_a_link_is_never_trusted_nor_written_through(store, tmp_path):
    stamps, blobs = store
    blob = blobs / DIGEST[7:]
    blob.write_bytes(b"layer")
    stamps.record(DIGEST, str(blob))
    os.unlink(os.path.join(stamps.directory, DIGEST[7:]))
    outside = tmp_path / "outside"
    outside.write_bytes(stamp_line(os.lstat(blob)))
    os.symlink(outside, os.path.join(stamps.directory, DIGEST[7:]))
    assert not stamps.matches(DIGEST, os.lstat(blob))  # a planted stamp does not skip the hash
    stamps.record(DIGEST, str(blob))  # best effort: refused quietly
    assert outside.read_bytes() == stamp_line(os.lstat(blob)) and os.path.islink(os.path.join(stamps.directory, DIGEST[7:]))


def test_a_stamp_that_cannot_be_written_costs_nothing_but_the_next_hash(store):
    stamps, blobs = store
    stamps.record(DIGEST, str(blobs / "missing"))  # no blob: no stamp, no error
    assert not os.path.exists(os.path.join(stamps.directory, DIGEST[7:]))


def test_orphan_stamps_go_and_others_stay(store):
    stamps, blobs = store
    for digest in (DIGEST, OTHER):
        (blobs / digest[7:]).write_bytes(digest.encode())
        stamps.record(digest, str(blobs / digest[7:]))
    (blobs / OTHER[7:]).unlink()
    unknown = os.path.join(stamps.directory, "not-a-stamp")
    with open(unknown, "w", encoding="utf-8") as handle:
        handle.write("kept")
    stamps.remove_orphans(lambda digest: str(blobs / digest[7:]))
    assert sorted(os.listdir(stamps.directory)) == sorted([DIGEST[7:], "not-a-stamp"])
    VerifiedStamps(str(blobs / "nowhere"), lambda: "").remove_orphans(str)  # no directory yet: nothing to do
