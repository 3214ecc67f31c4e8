# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Blob downloads over real HTTP: the blob server of conftest.py (misbehaving on request), the local ECR
endpoint through boto3, and a killed subprocess for resume."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import threading
import time
import tracemalloc

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils import download
from ansible_collections.ecrkit.images.plugins.module_utils.blobhttp import BlobAccessDeniedError, BlobHttpError, TransferError
from ansible_collections.ecrkit.images.plugins.module_utils.download import BlobJob, BlobVerificationError, download_blobs
from ansible_collections.ecrkit.images.plugins.module_utils.partial import journal_path
from ansible_collections.ecrkit.images.plugins.module_utils.pool import TransferPool

HERE = os.path.dirname(os.path.abspath(__file__))
EMULATOR_DIR = os.path.join(HERE, "..", "..", "..", "emulator")
for directory in (HERE, EMULATOR_DIR):  # the helpers beside this file, the local ECR endpoint
    if directory not in sys.path:
        sys.path.insert(0, directory)

# pylint: disable=wrong-import-position,unused-import
from fixture import ecr_endpoint  # noqa: E402,F401
from transfer_support import CHUNK, MIB, assert_clean_error, assert_no_secret, blob_bytes, ecr_jobs, job_for, pool, pushed_image, read  # noqa: E402

# pylint: disable=redefined-outer-name


# -- downloads against the blob server -------------------------------------------------------------


def test_ranged_download_of_several_blobs_sharing_the_pool(blob_server, tmp_path):
    blobs = [blob_server.add(blob_bytes(5 * CHUNK + 17, seed)) for seed in range(3)]
    seen = {}
    threads = set()
    lock = threading.Lock()

    def progress(digest, count):
        with lock:
            seen[digest] = seen.get(digest, 0) + count
            threads.add(threading.current_thread().name)

    with pool(2) as workers:
        results = download_blobs(workers, [job_for(blob, tmp_path) for blob in blobs], chunk_size=CHUNK,
                                 progress=progress)
        assert workers.http.connections_opened <= 2
    for blob, result in zip(blobs, results):
        assert read(result.path) == blob.data
        assert (result.digest, result.size, result.bytes_transferred, result.resumed_bytes) == \
            (blob.digest, blob.size, blob.size, 0)
        assert (result.attempts, result.url_refreshes, result.retries, result.requests, result.ranged) == (1, 0, 0, 6, True)
        assert not os.path.exists(journal_path(result.path))
        assert seen[blob.digest] == blob.size
        ranges = sorted(entry["range"] for entry in blob_server.requests(blob))
        expected = [f"bytes={first}-{min(first + CHUNK, blob.size) - 1}" for first in range(0, blob.size, CHUNK)]
        assert ranges == sorted(expected)
        assert blob.url_calls == [False]
    assert threads <= {f"ecrkit-transfer-{number}" for number in (1, 2)}


def test_a_small_blob_is_one_plain_get(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(CHUNK))
    with pool() as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK)
    assert read(result.path) == blob.data
    assert [entry["range"] for entry in blob_server.requests(blob)] == [None]
    assert not result.ranged and result.requests == 1


def test_ranged_false_streams_the_blob(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(6 * CHUNK))
    with pool() as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK, ranged=False)
    assert read(result.path) == blob.data and not result.ranged
    assert [entry["range"] for entry in blob_server.requests(blob)] == [None]


@pytest.mark.parametrize("behaviour", ["ignore_range", "wrong_content_range"])
def test_a_server_that_does_not_honour_ranges_gets_one_stream(blob_server, tmp_path, behaviour):
    blob = blob_server.add(blob_bytes(6 * CHUNK + 5), **{behaviour: True})
    with pool() as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK)
    assert read(result.path) == blob.data
    assert not result.ranged and result.attempts == 1
    last = blob_server.requests(blob)[-1]
    assert last["range"] is None and last["status"] == 200
    # at most one ranged request per worker before the switch
    assert len(blob_server.requests(blob)) <= 3 + 1


def test_a_dropped_range_resumes_from_its_last_byte(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(4 * CHUNK), drop_after=1000, drops=1)
    with pool(1) as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK)
    assert read(result.path) == blob.data
    assert result.retries == 1 and result.requests == 5
    assert result.bytes_transferred == blob.size  # nothing fetched twice
    ranges = [entry["range"] for entry in blob_server.requests(blob)]
    assert ranges[:2] == [f"bytes=0-{CHUNK - 1}", f"bytes=1000-{CHUNK - 1}"]


def test_a_dropped_stream_resumes_with_a_range(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(3 * CHUNK), drop_after=5000, drops=2)
    with pool() as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK, ranged=False)
    assert read(result.path) == blob.data and result.retries == 2
    assert [entry["range"] for entry in blob_server.requests(blob)] == [
        None, f"bytes=5000-{blob.size - 1}", f"bytes=10000-{blob.size - 1}"]


def test_a_stream_resumed_against_a_server_ignoring_ranges_skips_what_it_has(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(3 * CHUNK), drop_after=5000, drops=1, ignore_range=True)
    with pool() as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK, ranged=False)
    assert read(result.path) == blob.data
    assert result.bytes_transferred == 5000 + blob.size


def test_server_errors_are_retried_with_backoff(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(3 * CHUNK), errors=2)
    with pool(1) as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK)
    assert read(result.path) == blob.data and result.retries == 2


def test_persistent_server_errors_fail_naming_the_digest(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(3 * CHUNK), errors=1000)
    with pool(1) as workers, pytest.raises(TransferError) as exc_info:
        download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK)
    assert blob.digest in str(exc_info.value) and "HTTP 500" in str(exc_info.value)
    assert exc_info.value.digest == blob.digest
    assert_clean_error(exc_info)


def test_an_expired_url_is_refreshed_once_for_all_ranges(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(6 * CHUNK), expired_below=1)
    with pool(3) as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK)
    assert read(result.path) == blob.data
    assert result.url_refreshes == 1 and blob.url_calls == [False, True]
    assert_no_secret(result)


def test_a_url_refused_even_when_fresh_fails_clearly(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(100), forbidden=1000)
    with pool(url_refreshes=2) as workers, pytest.raises(BlobAccessDeniedError) as exc_info:
        download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK)
    assert exc_info.value.status == 403 and blob.digest in str(exc_info.value)
    assert blob.url_calls == [False, True, True]
    assert_clean_error(exc_info)


def test_not_found_fails_at_once_and_leaves_nothing(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(2 * CHUNK), status=404)
    with pool() as workers, pytest.raises(BlobHttpError) as exc_info:
        download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK)
    assert exc_info.value.status == 404 and exc_info.value.code == "blob_http_error"
    assert len(blob_server.requests(blob)) <= 3  # not retried: one per range that had started
    assert not os.listdir(tmp_path)
    assert_clean_error(exc_info)


@pytest.mark.parametrize("status", [400, 410])
def test_other_client_errors_are_not_retried(blob_server, tmp_path, status):
    blob = blob_server.add(blob_bytes(100), status=status)
    with pool() as workers, pytest.raises(BlobHttpError) as exc_info:
        download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK)
    assert exc_info.value.status == status and len(blob_server.requests(blob)) == 1


def test_wrong_bytes_once_are_fetched_again_from_scratch(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(4 * CHUNK), corruptions=1)
    with pool() as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK)
    assert read(result.path) == blob.data
    assert result.attempts == 2 and result.bytes_transferred == 2 * blob.size


def test_wrong_bytes_twice_fail_naming_expected_and_actual_digest(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(4 * CHUNK), corruptions=1000)
    with pool() as workers, pytest.raises(BlobVerificationError) as exc_info:
        download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK)
    message = str(exc_info.value)
    assert f"expected {blob.digest}, got sha256:" in message
    assert exc_info.value.code == "blob_verification_failed"
    assert not os.listdir(tmp_path)  # no unverified file, no journal
    assert_clean_error(exc_info)


@pytest.mark.parametrize("mode", ["length", "close"])
@pytest.mark.parametrize("ranged", [True, False])
def test_more_bytes_than_declared_is_never_accepted(blob_server, tmp_path, mode, ranged):
    blob = blob_server.add(blob_bytes(3 * CHUNK), extra=100, extra_mode=mode)
    with pool() as workers, pytest.raises(BlobVerificationError) as exc_info:
        download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK, ranged=ranged)
    assert blob.digest in str(exc_info.value) and "more" in str(exc_info.value)
    assert not os.listdir(tmp_path)


def test_a_short_blob_is_a_size_mismatch(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(3 * CHUNK))
    job = BlobJob(blob.digest, blob.size + 10, str(tmp_path / "short"), blob.get_url)
    with pool() as workers, pytest.raises(BlobVerificationError) as exc_info:
        download_blobs(workers, [job], chunk_size=CHUNK)
    assert "fewer" in str(exc_info.value)
    assert not os.listdir(tmp_path)


def test_zero_byte_blob_needs_no_request(tmp_path):
    def no_url(refresh):
        raise AssertionError(refresh)

    empty = "sha256:" + hashlib.sha256(b"").hexdigest()
    with pool() as workers:
        result, = download_blobs(workers, [BlobJob(empty, 0, str(tmp_path / "empty"), no_url)])
        assert result.size == 0 and read(result.path) == b"" and result.requests == 0
        with pytest.raises(BlobVerificationError):
            download_blobs(workers, [BlobJob("sha256:" + "0" * 64, 0, str(tmp_path / "bad"), no_url)])


def test_bad_jobs_are_refused_before_any_request(tmp_path):
    with pool() as workers:
        with pytest.raises(ValueError):
            download_blobs(workers, [BlobJob("sha512:" + "0" * 128, 1, str(tmp_path / "x"), str)])
        with pytest.raises(ValueError):
            download_blobs(workers, [], chunk_size=1000)
        job = BlobJob("sha256:" + "0" * 64, 1, str(tmp_path / "x"), str)
        with pytest.raises(ValueError):
            download_blobs(workers, [job, job])


def test_url_provider_errors_propagate(blob_server, tmp_path):
    class Denied(TransferError):
        pass

    def provider(refresh):
        raise Denied(f"no URL (refresh={refresh})")

    blob = blob_server.add(blob_bytes(3 * CHUNK))
    with pool() as workers, pytest.raises(Denied):
        download_blobs(workers, [BlobJob(blob.digest, blob.size, str(tmp_path / "p"), provider)], chunk_size=CHUNK)
    assert not blob_server.requests(blob)


def test_files_are_opened_only_while_a_worker_is_on_their_blob(blob_server, tmp_path):
    """With 2 connections, no more than 2 blobs are claimed and open at once, however many there are."""
    blobs = [blob_server.add(os.urandom(1000 + number)) for number in range(40)]
    open_now = []
    most = []
    lock = threading.Lock()

    def claim_of(blob):
        @contextlib.contextmanager
        def claim():
            with lock:
                open_now.append(blob.digest)
                most.append(len(open_now))
            try:
                yield True
            finally:
                with lock:
                    open_now.remove(blob.digest)
        return claim

    jobs = [BlobJob(blob.digest, blob.size, str(tmp_path / f"{number}.partial"), blob.get_url, claim=claim_of(blob))
            for number, blob in enumerate(blobs)]
    with TransferPool(2) as pool:
        results = download_blobs(pool, jobs, chunk_size=MIB)
    assert [result.digest for result in results] == [blob.digest for blob in blobs]
    assert max(most) <= 2 and not open_now


# -- resume ----------------------------------------------------------------------------------------


def write_partial(path, data, chunks, chunk, journal_lines=None, torn=""):
    """A partial file holding the given chunks of ``data`` (zeros elsewhere) and its journal."""
    with open(path, "wb") as handle:
        handle.truncate(len(data))
        for number in chunks:
            handle.seek(number * chunk)
            handle.write(data[number * chunk:(number + 1) * chunk])
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    lines = journal_lines if journal_lines is not None else [
        f"{number * chunk} {min((number + 1) * chunk, len(data)) - 1}" for number in chunks]
    with open(journal_path(path), "w", encoding="ascii") as handle:
        handle.write(f"ecrkit-partial 1 {digest} {len(data)}\n")
        handle.writelines(line + "\n" for line in lines)
        handle.write(torn)


def test_resume_fetches_only_missing_ranges(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(6 * CHUNK + 999))
    path = str(tmp_path / "partial")
    write_partial(path, blob.data, [0, 1, 3], CHUNK, torn=f"{4 * CHUNK} 12")  # died while appending
    with pool(2) as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path, "partial")], chunk_size=CHUNK)
    assert read(path) == blob.data
    assert result.resumed_bytes == 3 * CHUNK
    assert result.bytes_transferred == blob.size - 3 * CHUNK == blob_server.bytes_sent(blob)
    assert sorted(entry["range"] for entry in blob_server.requests(blob)) == sorted([
        f"bytes={2 * CHUNK}-{3 * CHUNK - 1}", f"bytes={4 * CHUNK}-{5 * CHUNK - 1}",
        f"bytes={5 * CHUNK}-{6 * CHUNK - 1}", f"bytes={6 * CHUNK}-{blob.size - 1}"])
    assert not os.path.exists(journal_path(path))


def test_resume_of_a_complete_partial_makes_no_request(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(3 * CHUNK))
    path = str(tmp_path / "partial")
    write_partial(path, blob.data, [0, 1, 2], CHUNK)
    with pool() as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path, "partial")], chunk_size=CHUNK)
    assert result.resumed_bytes == blob.size and result.bytes_transferred == 0
    assert not blob_server.requests(blob) and blob.url_calls == []


def test_resume_with_another_chunk_size_still_uses_what_is_there(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(8 * CHUNK))
    path = str(tmp_path / "partial")
    write_partial(path, blob.data, [0, 1, 2, 3], CHUNK)
    with pool() as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path, "partial")], chunk_size=2 * CHUNK)
    assert read(path) == blob.data and result.resumed_bytes == 4 * CHUNK
    assert blob_server.bytes_sent(blob) == 4 * CHUNK


@pytest.mark.parametrize("journal", ["foreign", "garbage", "missing"])
def test_an_unusable_journal_means_starting_over(blob_server, tmp_path, journal):
    blob = blob_server.add(blob_bytes(4 * CHUNK))
    path = str(tmp_path / "partial")
    write_partial(path, blob.data, [0, 1], CHUNK, journal_lines=["0 x"] if journal == "garbage" else None)
    if journal == "foreign":
        with open(journal_path(path), "w", encoding="ascii") as handle:
            handle.write(f"ecrkit-partial 1 sha256:{'1' * 64} {blob.size}\n0 {CHUNK - 1}\n")
    elif journal == "missing":
        os.unlink(journal_path(path))
    with pool() as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path, "partial")], chunk_size=CHUNK)
    assert read(path) == blob.data
    assert result.resumed_bytes == 0 and result.bytes_transferred == blob.size


def test_resumed_bytes_that_are_wrong_are_caught_by_the_digest(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(4 * CHUNK))
    path = str(tmp_path / "partial")
    write_partial(path, blob.data, [0], CHUNK, journal_lines=[f"0 {CHUNK - 1}", f"{CHUNK} {2 * CHUNK - 1}"])
    with pool() as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path, "partial")], chunk_size=CHUNK)
    assert read(path) == blob.data
    assert result.attempts == 2 and result.resumed_bytes == 0
    assert result.bytes_transferred == 2 * CHUNK + blob.size


def test_a_longer_partial_is_cut_to_size(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(2 * CHUNK))
    path = str(tmp_path / "partial")
    with open(path, "wb") as handle:
        handle.write(b"x" * (5 * CHUNK))
    with pool() as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path, "partial")], chunk_size=CHUNK)
    assert read(result.path) == blob.data


def test_a_failed_run_keeps_its_progress_for_the_next(blob_server, tmp_path):
    # range 0 completes; range 1 is cut halfway, then its retries get 500 until the run gives up
    blob = blob_server.add(blob_bytes(4 * CHUNK), drop_after=CHUNK // 2, drops=1, drop_from=CHUNK,
                           errors_from=CHUNK + 1)
    path = str(tmp_path / "partial")
    with pool(1) as workers, pytest.raises(TransferError, match="HTTP 500"):
        download_blobs(workers, [job_for(blob, tmp_path, "partial")], chunk_size=CHUNK)
    with open(journal_path(path), encoding="ascii") as handle:
        assert handle.read().splitlines()[1:] == [f"0 {CHUNK - 1}", f"{CHUNK} {CHUNK + CHUNK // 2 - 1}"]
    del blob.behaviour["errors_from"]
    with pool(1) as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path, "partial")], chunk_size=CHUNK)
    assert read(path) == blob.data
    assert result.resumed_bytes == CHUNK + CHUNK // 2
    assert result.bytes_transferred == blob.size - result.resumed_bytes


SUBPROCESS_DOWNLOAD = """
import sys
from ansible_collections.ecrkit.images.plugins.module_utils import download, pool
url, digest, size, path, chunk = sys.argv[1:6]
with pool.TransferPool(2) as workers:
    download.download_blobs(workers, [download.BlobJob(digest, int(size), path, lambda refresh: url)],
                            chunk_size=int(chunk))
"""


def collection_root():
    """The directory holding ``ansible_collections`` (for a subprocess to import the collection)."""
    path = os.path.abspath(download.__file__)
    for dummy in range(6):
        path = os.path.dirname(path)
    return path


def test_resume_after_sigkill_fetches_only_what_is_missing(blob_server, tmp_path):
    size = 16 * CHUNK
    blob = blob_server.add(blob_bytes(size), hold_from=8 * CHUNK)  # the second half hangs
    path = str(tmp_path / "partial")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [collection_root(), os.environ.get("PYTHONPATH")])))
    with subprocess.Popen([sys.executable, "-c", SUBPROCESS_DOWNLOAD, blob.url(), blob.digest, str(size), path,
                           str(CHUNK)], env=env, stderr=subprocess.PIPE) as child:
        deadline = time.monotonic() + 30
        lines, held = 0, []
        while (lines < 9 or len(held) < 2) and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.02)
            if os.path.exists(journal_path(path)):
                lines = read(journal_path(path)).count(b"\n")
            held = [entry for entry in blob_server.requests(blob) if entry["status"] == 0]
        child.kill()
        child.wait()
        assert lines == 9, child.stderr.read().decode() if child.stderr else ""
    assert len(held) == 2  # the kill came while both workers had a range in flight
    blob.behaviour.pop("hold_from")
    blob_server.release()
    already = len(blob_server.requests(blob))
    with pool(2) as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path, "partial")], chunk_size=CHUNK)
    assert read(path) == blob.data
    assert result.resumed_bytes == 8 * CHUNK and result.bytes_transferred == 8 * CHUNK
    rerun = blob_server.requests(blob)[already:]
    assert sorted(entry["range"] for entry in rerun) == sorted(
        f"bytes={first}-{first + CHUNK - 1}" for first in range(8 * CHUNK, size, CHUNK))


# -- memory ----------------------------------------------------------------------------------------


def test_memory_does_not_grow_with_chunk_or_blob_size(blob_server, tmp_path):
    source = str(tmp_path / "source")
    with open(source, "wb") as handle:
        for number in range(64):
            handle.write(blob_bytes(MIB, number))
    blob = blob_server.add(source)  # served with sendfile: the server allocates next to nothing
    os.mkdir(tmp_path / "out")
    tracemalloc.start()
    try:
        with pool(4) as workers:
            result, = download_blobs(workers, [job_for(blob, tmp_path / "out")], chunk_size=8 * MIB)
        dummy, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.digest == blob.digest and result.ranged and result.requests == 8
    assert peak < 8 * MIB, f"peak {peak} bytes"


# -- against the local ECR endpoint ----------------------------------------------------------------


def test_ecr_image_blobs_download_in_ranges_over_one_pool(ecr_endpoint, tmp_path):
    client, image, blobs = pushed_image(ecr_endpoint, tmp_path, count=3)
    ecr_endpoint.reset_stats()
    with pool(3) as workers:
        results = download_blobs(workers, ecr_jobs(client, blobs, tmp_path / "out"), chunk_size=CHUNK)
    for desc, result in zip(blobs, results):
        assert read(result.path) == image.read_blob(desc.digest)
        assert result.bytes_transferred == desc.size
    layers = results[:-1]
    assert all(result.ranged and result.requests >= 4 for result in layers)
    stats = ecr_endpoint.stats()
    assert stats["api_calls"]["GetDownloadUrlForLayer"] == len(blobs)
    assert stats["blob_bytes"] == sum(desc.size for desc in blobs)
    assert stats["blob_status"].get("206", 0) >= 3 * 4


def test_ecr_dropped_connections_are_retried(ecr_endpoint, tmp_path):
    client, image, blobs = pushed_image(ecr_endpoint, tmp_path)
    ecr_endpoint.set_faults("drop-blob:after=10K,count=3")
    with pool(2) as workers:
        results = download_blobs(workers, ecr_jobs(client, blobs, tmp_path / "out"), chunk_size=CHUNK)
    assert sum(result.retries for result in results) == 3
    for desc, result in zip(blobs, results):
        assert read(result.path) == image.read_blob(desc.digest)
        assert result.bytes_transferred == desc.size


def test_ecr_corruption_once_is_repaired_by_a_second_download(ecr_endpoint, tmp_path):
    client, image, blobs = pushed_image(ecr_endpoint, tmp_path, count=1)
    layer = blobs[0]
    ecr_endpoint.set_faults(f"corrupt-blob:offset=100K,count=1,digest={layer.digest}")
    with pool(2) as workers:
        results = download_blobs(workers, ecr_jobs(client, blobs, tmp_path / "out"), chunk_size=CHUNK)
    assert results[0].attempts == 2 and results[1].attempts == 1
    assert read(results[0].path) == image.read_blob(layer.digest)


def test_ecr_persistent_corruption_ends_in_a_clear_error(ecr_endpoint, tmp_path):
    client, dummy, blobs = pushed_image(ecr_endpoint, tmp_path, count=1)
    layer = blobs[0]
    ecr_endpoint.set_faults(f"corrupt-blob:offset=100K,count=100,digest={layer.digest}")
    out = tmp_path / "out"
    with pool(2) as workers, pytest.raises(BlobVerificationError) as exc_info:
        download_blobs(workers, ecr_jobs(client, [layer], out), chunk_size=CHUNK)
    assert f"expected {layer.digest}, got sha256:" in str(exc_info.value)
    assert not os.listdir(out)
    assert_clean_error(exc_info)


def test_ecr_a_stalled_answer_times_out_and_is_retried(ecr_endpoint, tmp_path):
    client, image, blobs = pushed_image(ecr_endpoint, tmp_path, count=1)
    ecr_endpoint.set_faults("stall-blob:after=10K,seconds=3,count=1")
    with pool(2, read_timeout=0.5) as workers:
        results = download_blobs(workers, ecr_jobs(client, blobs, tmp_path / "out"), chunk_size=CHUNK)
    assert sum(result.retries for result in results) == 1
    for desc, result in zip(blobs, results):
        assert read(result.path) == image.read_blob(desc.digest)


def test_ecr_expired_urls_are_refreshed_through_the_api(ecr_endpoint, tmp_path):
    client, image, blobs = pushed_image(ecr_endpoint, tmp_path)
    ecr_endpoint.set_faults("expire-urls:after=0,count=2")
    calls = []
    with pool(1) as workers:
        results = download_blobs(workers, ecr_jobs(client, blobs, tmp_path / "out", calls), chunk_size=CHUNK)
    assert [result.url_refreshes for result in results] == [2, 0, 0]
    assert sum(1 for dummy, refresh in calls if refresh) == 2
    for desc, result in zip(blobs, results):
        assert read(result.path) == image.read_blob(desc.digest)
        assert_no_secret(result)
