# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Partial files: the journal and the plan of ranges it gives, the local storage errors of a download
(no space, disk full, unwritable, locked, links planted at the partial or its journal), and the partial
directory of a layout (claims, cleanup)."""

from __future__ import annotations

import errno
import os
import signal
import sys

import pytest
from hypothesis import given, settings, strategies as st

from ansible_collections.ecrkit.images.plugins.module_utils.download import BlobJob, download_blobs
from ansible_collections.ecrkit.images.plugins.module_utils.errors import DiskFullError, EcrkitError, NotWritableError, StorageError
from ansible_collections.ecrkit.images.plugins.module_utils.hostfs import LockTimeoutError
from ansible_collections.ecrkit.images.plugins.module_utils.layout import OciLayout
from ansible_collections.ecrkit.images.plugins.module_utils.layout_format import BLOB_MISSING, LayoutError, LayoutSymlinkError
from ansible_collections.ecrkit.images.plugins.module_utils.partial import journal_path, plan_ranges, read_journal
from ansible_collections.ecrkit.images.plugins.module_utils.pool import TransferPool

HERE = os.path.dirname(os.path.abspath(__file__))
EMULATOR_DIR = os.path.join(HERE, "..", "..", "..", "emulator")
for directory in (HERE, EMULATOR_DIR):  # the helpers beside this file, the local ECR endpoint
    if directory not in sys.path:
        sys.path.insert(0, directory)

# pylint: disable=wrong-import-position
from layout_support import fixture_layout, partials_of, run_worker, sha, write_partial  # noqa: E402,F401  pylint: disable=unused-import
from transfer_support import CHUNK, MIB, blob_bytes, job_for, pool, read  # noqa: E402


# -- the journal and the plan ----------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(size=st.integers(0, 2000), chunk=st.integers(1, 300), stream=st.booleans(),
       spans=st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 400)), max_size=8), torn=st.integers(0, 30))
def test_journal_and_plan_properties(tmp_path_factory, size, chunk, stream, spans, torn):
    """Whatever a journal holds (overlaps, a torn last line), the plan covers every byte exactly once,
    keeps only bytes the journal recorded, and fetches missing bytes in chunk-aligned ranges."""
    directory = tmp_path_factory.mktemp("journal")
    digest = "sha256:" + "ab" * 32
    written = [(start, min(start + length, size)) for start, length in spans if start < size]
    text = f"ecrkit-partial 1 {digest} {size}\n" + "".join(f"{start} {end - 1}\n" for start, end in written)
    text = text[:len(text) - torn] if torn and written else text
    path = directory / "p.journal"
    path.write_text(text, encoding="ascii")
    covered = read_journal(str(path), digest, size, size)
    recorded = set()
    for start, end in written:
        recorded.update(range(start, end))
    for start, end in covered:
        assert set(range(start, end)) <= recorded
    # chunk sizes below MIN_CHUNK_SIZE keep the examples small
    ranges = plan_ranges(covered, size, chunk, stream)
    position = 0
    for rng in ranges:
        assert rng.first == position and rng.last >= rng.first
        position = rng.last + 1
        if not rng.done and not stream:
            assert rng.first // chunk == rng.last // chunk  # within one chunk-aligned slot
        if stream and not rng.done:
            assert rng.last == size - 1  # one stream to the end
    assert position == size
    assert sum(rng.written for rng in ranges) <= sum(end - start for start, end in covered)


# -- local storage errors --------------------------------------------------------------------------


def test_not_enough_free_space_fails_before_any_request(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(100))
    stats = os.statvfs(str(tmp_path))
    too_big = stats.f_bavail * stats.f_frsize + 1024 * MIB
    with pool() as workers, pytest.raises(DiskFullError) as exc_info:
        download_blobs(workers, [BlobJob(blob.digest, too_big, str(tmp_path / "big"), blob.get_url)])
    assert str(tmp_path) in str(exc_info.value)
    assert not blob_server.requests(blob) and not os.listdir(tmp_path)


def test_disk_full_while_writing_stops_the_download_and_keeps_what_it_has(blob_server, tmp_path, monkeypatch):
    blob = blob_server.add(blob_bytes(6 * CHUNK))
    real_pwrite = os.pwrite
    written = []

    def pwrite(fd, data, offset):  # the disk fills up after two chunks
        if sum(written) >= 2 * CHUNK:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        count = real_pwrite(fd, data, offset)
        written.append(count)
        return count

    monkeypatch.setattr(os, "pwrite", pwrite)
    path = str(tmp_path / "partial")
    with pool(1) as workers, pytest.raises(DiskFullError) as exc_info:
        download_blobs(workers, [job_for(blob, tmp_path, "partial")], chunk_size=CHUNK)
    assert exc_info.value.path == path and path in str(exc_info.value) and "free space" in str(exc_info.value)
    assert len(blob_server.requests(blob)) == 3  # not retried
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    with pool(1) as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path, "partial")], chunk_size=CHUNK)
    assert read(path) == blob.data and result.resumed_bytes == 2 * CHUNK


def test_a_missing_directory_is_a_storage_error(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(100))
    with pool() as workers, pytest.raises(StorageError) as exc_info:
        download_blobs(workers, [job_for(blob, tmp_path / "nowhere")])
    assert str(tmp_path / "nowhere") in str(exc_info.value)


def test_an_unwritable_directory_is_a_permission_error(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(100))
    if os.geteuid() == 0:  # root ignores file modes, but not sysfs
        locked = "/sys"
        if not os.path.isdir(locked):
            pytest.skip("needs a directory root cannot write to")
    else:
        locked = str(tmp_path / "locked")
        os.mkdir(locked, 0o500)
    with pool() as workers, pytest.raises(NotWritableError) as exc_info:
        download_blobs(workers, [job_for(blob, locked)])
    assert os.path.join(locked, blob.name + ".partial") in str(exc_info.value)
    assert exc_info.value.code == "not_writable"


def test_a_partial_in_use_by_another_process_is_refused(blob_server, tmp_path):
    import fcntl  # pylint: disable=import-outside-toplevel

    blob = blob_server.add(blob_bytes(100))
    path = str(tmp_path / "partial")
    with open(path, "wb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        with pool() as workers, pytest.raises(StorageError, match="Another process"):
            download_blobs(workers, [job_for(blob, tmp_path, "partial")])
    assert os.path.exists(path)  # not ours to remove


@pytest.mark.parametrize("planted", ["partial", "journal"])
@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_a_link_planted_at_the_partial_or_journal_is_not_written_through(blob_server, tmp_path, planted, link):
    """A symbolic link raced in after the layout's claim check is refused by O_NOFOLLOW; another name
    of a precious file (a hard link, where protected_hardlinks is off) by checking the descriptor itself
    (one name, regular, ours) before any write. Either way the target is neither truncated nor written."""
    data = os.urandom(3 * MIB)
    blob = blob_server.add(data)
    path = str(tmp_path / "blob.partial")
    target = tmp_path / "shadow"
    target.write_bytes(b"root:secret\n")
    (os.symlink if link == "symbolic" else os.link)(str(target), path if planted == "partial" else journal_path(path))
    with TransferPool(2) as pool:
        with pytest.raises(EcrkitError, match="is a symbolic link" if link == "symbolic" else "has other names"):
            download_blobs(pool, [BlobJob(blob.digest, len(data), path, blob.get_url)], chunk_size=MIB)
    assert target.read_bytes() == b"root:secret\n"


# -- the partial directory of a layout: claims and cleanup ------------------------------------------


def test_partials_live_outside_blobs(layout):
    digest = sha(b"abc")
    path = layout.partials.path(digest)
    assert path == os.path.join(layout.root, ".ecrkit", "partial", digest[7:])
    assert os.path.isdir(os.path.dirname(path))
    assert layout.partials.path(digest) == path  # the same every run: a download resumes


def test_killed_download_leaves_no_visible_blob_and_releases_its_claim(layout):
    data = os.urandom(1 << 16)
    digest = sha(data)
    worker = run_worker("""
        import sys, time
        from ansible_collections.ecrkit.images.plugins.module_utils.layout import OciLayout
        layout = OciLayout(sys.argv[1])
        with layout.partials.claim(sys.argv[2]) as path:
            with open(path, "wb") as handle:
                handle.write(b"x" * 1000)
                handle.flush()
                print("written", flush=True)
                time.sleep(60)
    """, layout.root, digest)
    try:
        assert worker.stdout.readline().strip() == "written"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.stdout.close()
        worker.stderr.close()
    assert layout.blob_status(digest, len(data)) == BLOB_MISSING
    assert [(p.digest, p.size) for p in partials_of(layout)] == [(digest, 1000)]
    with layout.partials.claim(digest, timeout=5) as path:  # the dead process's claim went with it
        with open(path, "r+b") as handle:
            handle.seek(0)
            handle.write(data)
        layout.commit_blob(path, digest, len(data))
    assert layout.has_blob(digest, len(data), verify=True)
    assert os.listdir(os.path.join(layout.root, ".ecrkit", "partial")) == []


def _plant_link(path, outside):
    os.symlink(outside, path)


def _plant_hard_link(path, outside):
    os.link(outside, path)


def _plant_directory(path, outside):  # pylint: disable=unused-argument
    os.mkdir(path)


@pytest.mark.parametrize("suffix", ["", ".journal"])
@pytest.mark.parametrize("plant, error, message", [
    (_plant_link, LayoutSymlinkError, "is a symbolic link (to {outside}) where the download of"),
    (_plant_hard_link, LayoutError, "is a file with other names (hard links); this collection never makes one"),
    (_plant_directory, LayoutError, "is not a regular file"),
])
def test_a_planted_partial_is_never_written_through(layout, tmp_path, suffix, plant, error, message):
    """Someone who can write in the layout plants a link where a download (or its journal) goes; the
    transfer engine opens that path to write: the claim refuses first, and the target is left alone."""
    outside = tmp_path / "precious"
    outside.write_bytes(b"do not touch")
    digest = sha(b"blob")
    plant(layout.partials.path(digest) + suffix, outside)
    with pytest.raises(error) as caught:
        with layout.partials.claim(digest):
            pytest.fail("claimed a planted partial")
    assert message.format(outside=outside) in str(caught.value) and "remove it" in str(caught.value)
    assert str(caught.value).endswith(".") and "\n" not in str(caught.value)
    assert outside.read_bytes() == b"do not touch"
    target = layout.partials.path(digest) + suffix
    if os.path.isdir(target) and not os.path.islink(target):
        os.rmdir(target)
    else:
        os.unlink(target)
    with layout.partials.claim(digest, timeout=5) as path:  # once removed, the download goes ahead (the claim was released)
        assert path == layout.partials.path(digest)


def test_cleanup_leaves_a_planted_directory_alone(layout):
    """A directory named like a partial download is not one: cleanup (which a pull runs once its downloads
    are committed) leaves it, as any unknown file, instead of failing with a raw OSError."""
    planted = layout.partials.path(sha(b"planted"))
    os.mkdir(planted)
    os.mkdir(planted + ".journal")
    digest, partial = write_partial(layout, b"stale")
    assert layout.partials.cleanup() == [partial]
    assert os.path.isdir(planted) and os.path.isdir(planted + ".journal") and not os.path.exists(partial)
    assert digest not in [item.digest for item in partials_of(layout)]


def test_claim_is_exclusive_and_times_out(layout):
    digest = sha(b"claimed")
    other = OciLayout(layout.root)
    with layout.partials.claim(digest):
        with pytest.raises(LockTimeoutError, match=f"Timed out after 0.2 s waiting for the download of {digest}"):
            with other.partials.claim(digest, timeout=0.2):
                pass
    with other.partials.claim(digest, timeout=0.2) as path:
        assert path == layout.partials.path(digest)


def test_cleanup_partials_keeps_what_is_kept_or_in_use(layout):
    first, first_path = write_partial(layout, b"first")
    second, second_path = write_partial(layout, b"second")
    third, third_path = write_partial(layout, b"third")
    with open(first_path + ".journal", "w", encoding="utf-8") as handle:
        handle.write("{}")
    with open(os.path.join(os.path.dirname(first_path), "tmp-stale"), "wb") as handle:
        handle.write(b"left by a crash")
    with open(os.path.join(os.path.dirname(first_path), "unknown-file"), "wb") as handle:
        handle.write(b"not ours to judge")
    other = OciLayout(layout.root)
    with other.partials.claim(third):  # another process (or thread) is downloading it right now
        removed = layout.partials.cleanup(keep={second})
    assert sorted(os.path.basename(path) for path in removed) == sorted([first[7:], first[7:] + ".journal", "tmp-stale"])
    assert sorted(p.digest for p in partials_of(layout)) == sorted([second, third])
    assert os.path.exists(os.path.join(os.path.dirname(first_path), "unknown-file"))
    layout.partials.cleanup()
    assert partials_of(layout) == []
    assert os.listdir(os.path.dirname(first_path)) == ["unknown-file"]
