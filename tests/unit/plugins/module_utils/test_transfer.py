# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The transfer engine over real HTTP: the blob server of conftest.py (misbehaving on request), the
local ECR endpoint through boto3, and a killed subprocess for resume."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.server
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
import tracemalloc
import types

import pytest
from hypothesis import given, settings, strategies as st

from ansible_collections.ecrkit.images.plugins.module_utils import transfer
from ansible_collections.ecrkit.images.plugins.module_utils.transfer import (
    BlobAccessDeniedError, BlobHttpError, BlobJob, BlobVerificationError, RetryPolicy, TransferCancelled, TransferError,
    TransferPool, download_blobs, iter_parts, plan_parts)
from ansible_collections.ecrkit.images.plugins.module_utils.errors import DiskFullError, EcrkitError, NotWritableError, StorageError

EMULATOR_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "emulator")
if EMULATOR_DIR not in sys.path:
    sys.path.insert(0, EMULATOR_DIR)

# pylint: disable=wrong-import-position,unused-import,wrong-import-order
import sample_images  # noqa: E402
from fixture import ecr_endpoint, make_self_signed_cert, run_emulator  # noqa: E402,F401

# pylint: disable=redefined-outer-name

SECRET = "S3CR3TSIGNATURE"  # the signature in the blob server's URLs (conftest.py)
KIB = 1024
MIB = 1024 * 1024
CHUNK = transfer.MIN_CHUNK_SIZE  # 64 KiB: several ranges per blob without big test data
FAST = RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.01)


def blob_bytes(size, seed=0):
    """Deterministic incompressible test data."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}/{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


def job_for(blob, directory, name=None):
    return BlobJob(blob.digest, blob.size, os.path.join(str(directory), name or blob.name + ".partial"), blob.get_url)


def pool(connections=3, **kwargs):
    kwargs.setdefault("retry", FAST)
    return TransferPool(connections, **kwargs)


def transfer_threads():
    return [thread for thread in threading.enumerate() if thread.name.startswith("ecrkit-transfer-")]


def read(path):
    with open(path, "rb") as handle:
        return handle.read()


def assert_no_secret(value):
    text = value if isinstance(value, str) else repr(value)
    assert SECRET not in text
    assert "X-Amz-Credential" not in text and "X-Amz-Signature" not in text


def assert_clean_error(exc_info):
    """No URL, no signature in the message, the repr or the formatted traceback."""
    exc = exc_info.value
    assert_no_secret(str(exc))
    assert_no_secret(repr(exc))
    assert_no_secret("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    assert "http://" not in str(exc)


# -- the pool -------------------------------------------------------------------------------------


def test_map_returns_results_in_order_and_bounds_threads():
    running = []
    peak = []
    lock = threading.Lock()

    def work(item):
        with lock:
            running.append(item)
            peak.append(len(running))
        time.sleep(0.005)
        with lock:
            running.remove(item)
        return item * item

    with TransferPool(3) as workers:
        assert workers.map(work, list(range(20))) == [item * item for item in range(20)]
        assert len(transfer_threads()) <= 3
    assert max(peak) <= 3
    assert not transfer_threads()


def test_first_error_cancels_the_rest_and_no_thread_survives():
    with TransferPool(2) as workers:
        group = workers.group()
        started = threading.Event()

        def sleeper():
            started.set()
            group.sleep(60)

        def failer():
            started.wait(10)
            raise ValueError("boom")

        sleeping = group.submit(sleeper)
        failing = group.submit(failer)
        queued = [group.submit(sleeper) for dummy in range(5)]
        with pytest.raises(ValueError, match="boom"):
            group.wait()
        assert group.cancelled
        with pytest.raises(TransferCancelled):
            sleeping.result()
        with pytest.raises(ValueError):
            failing.result()
        for task in queued:
            assert task.done()
        # the pool stays usable for another group
        assert workers.map(lambda item: item + 1, [1, 2]) == [2, 3]
    assert not transfer_threads()


def test_tasks_can_submit_more_tasks_to_their_group():
    results = []
    with TransferPool(2) as workers:
        group = workers.group()

        def spawn(depth):
            results.append(depth)
            if depth < 5:
                group.submit(spawn, depth + 1)

        group.submit(spawn, 0)
        group.wait()
    assert sorted(results) == [0, 1, 2, 3, 4, 5]


def test_a_task_raising_keyboard_interrupt_surfaces_in_the_waiting_thread():
    with TransferPool(2) as workers:
        group = workers.group()
        group.submit(group.sleep, 60)

        def interrupted():
            raise KeyboardInterrupt()

        group.submit(interrupted)
        with pytest.raises(KeyboardInterrupt):
            group.wait()
    assert not transfer_threads()


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_ctrl_c_while_waiting_cancels_the_group_and_joins_the_workers(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(8 * CHUNK), hold_from=0)  # every request hangs
    main = threading.main_thread().ident
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pool(2) as workers:
            timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
            timer.start()
            with pytest.raises(KeyboardInterrupt):
                download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK)
            timer.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not transfer_threads()
    # nothing was written, so nothing is left behind
    assert not os.listdir(tmp_path)


def test_a_failing_blob_aborts_a_transfer_blocked_in_a_read(blob_server, tmp_path):
    hung = blob_server.add(blob_bytes(2 * CHUNK), hold_from=0)
    missing = blob_server.add(blob_bytes(100), status=404)
    outcome = []

    def run():
        with pool(3, read_timeout=120) as workers:
            try:
                download_blobs(workers, [job_for(hung, tmp_path), job_for(missing, tmp_path)], chunk_size=CHUNK)
            except BlobHttpError as exc:
                outcome.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    runner.join(30)  # a hang detector, far below the read timeout: the blocked read must be aborted
    alive = runner.is_alive()
    blob_server.release()
    runner.join(30)
    assert not alive
    assert outcome and outcome[0].status == 404 and outcome[0].digest == missing.digest


# -- downloads against the blob server --------------------------------------------------------------


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
        assert not os.path.exists(transfer.journal_path(result.path))
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


def test_a_refused_connection_names_the_host_and_not_the_url(tmp_path):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens there once this socket closes
    url = f"http://127.0.0.1:{port}/blob?X-Amz-Signature={SECRET}"
    with pool() as workers, pytest.raises(TransferError) as exc_info:
        download_blobs(workers, [BlobJob("sha256:" + "1" * 64, 10, str(tmp_path / "p"), lambda refresh: url)])
    assert "from 127.0.0.1 failed 4 times in a row (Connection refused)" in str(exc_info.value)
    assert_clean_error(exc_info)


@pytest.mark.parametrize("url", ["ftp://example.test/blob?X-Amz-Signature={secret}",
                                 "http://127.0.0.1:{port}/blob?X-Amz-Signature={secret} with space",
                                 "http://example.test:99999/blob?X-Amz-Signature={secret}"])
def test_an_unusable_url_fails_without_showing_it(blob_server, tmp_path, url):
    url = url.format(secret=SECRET, port=blob_server.port)
    with pool() as workers, pytest.raises(TransferError, match="download URL given for blob") as exc_info:
        download_blobs(workers, [BlobJob("sha256:" + "1" * 64, 10, str(tmp_path / "p"), lambda refresh: url)])
    assert_clean_error(exc_info)


def test_redirects_are_followed(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(2 * CHUNK), redirects=3)
    with pool() as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK)
    assert read(result.path) == blob.data
    assert any(entry["path"].startswith("/moved/") for entry in blob_server.requests(blob))


class Hop:
    """A one-purpose HTTP(S) server on ``host``: every GET is answered by ``answer(path)`` -> (status,
    headers, body); ``seen`` holds each request's path and headers (names in lower case)."""

    def __init__(self, answer, host="127.0.0.1", tls=None):
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # pylint: disable=arguments-differ
                pass

            def do_GET(self):  # pylint: disable=invalid-name
                seen.append((self.path, {name.lower(): value for name, value in self.headers.items()}))
                status, headers, body = answer(self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # clients that refuse the certificate hang up

        self.server = Server((host, 0), Handler)
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.host = host
        self.port = self.server.server_address[1]
        self.scheme = "https" if tls else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path, host=None):
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""
    return make_self_signed_cert(str(tmp_path_factory.mktemp("tls")))


def redirect_to(location):
    return lambda path: (302, {"Location": location}, b"")


def test_a_redirect_from_https_to_http_is_refused_before_any_plain_request(blob_server, tmp_path, tls_files):
    blob = blob_server.add(blob_bytes(CHUNK))
    hop = Hop(redirect_to(blob.url()), tls=tls_files)
    job = BlobJob(blob.digest, blob.size, str(tmp_path / "p"), lambda refresh: hop.url(f"/start?X-Amz-Signature={SECRET}"))
    try:
        with pool(verify=tls_files[0]) as workers, pytest.raises(TransferError) as exc_info:
            download_blobs(workers, [job], chunk_size=CHUNK)
    finally:
        hop.close()
    assert exc_info.value.code == "redirect_refused"
    assert str(exc_info.value).startswith("The blob storage redirected an https download to plain http")
    assert hop.seen and not blob_server.requests()  # refused before connecting: nothing went out in the clear
    assert str(blob_server.port) not in str(exc_info.value)
    assert_clean_error(exc_info)


def test_a_redirect_to_another_host_carries_no_credentials():
    target = Hop(lambda path: (200, {}, b"data"))
    start = Hop(redirect_to(target.url(f"/there?X-Amz-Signature={SECRET}", host="localhost")))
    sent = {"Range": "bytes=0-3", "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAFAKE", "Cookie": "session=1",
            "Proxy-Authorization": "Basic dXNlcjpwYXNz", "X-Amz-Security-Token": "token"}
    client = transfer.HttpClient()
    try:
        response = client.get(start.url("/start"), sent)
        body = bytearray(16)
        assert response.status == 200 and body[:response.readinto(memoryview(body))] == b"data"
        response.close()
    finally:
        client.close()
        start.close()
        target.close()
    assert start.seen[0][1]["authorization"] == sent["Authorization"]  # the origin asked for gets what it was given
    (path, headers), = target.seen
    assert path == f"/there?X-Amz-Signature={SECRET}" and headers["host"] == f"localhost:{target.port}"
    assert headers["range"] == "bytes=0-3"
    assert not {"authorization", "cookie", "proxy-authorization", "x-amz-security-token"} & set(headers)


def test_a_redirect_to_another_host_is_followed_for_a_download(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(3 * CHUNK))
    hop = Hop(lambda path: (307, {"Location": blob.url().replace("127.0.0.1", "localhost")}, b""))
    job = BlobJob(blob.digest, blob.size, str(tmp_path / "p"), lambda refresh: hop.url(f"/start?X-Amz-Signature={SECRET}"))
    try:
        with pool() as workers:
            result, = download_blobs(workers, [job], chunk_size=CHUNK)
    finally:
        hop.close()
    assert read(result.path) == blob.data
    assert len(hop.seen) == len(blob_server.requests(blob)) == 3  # one redirect per range, every range served
    assert all(entry["range"] for entry in blob_server.requests(blob))


@pytest.mark.parametrize("chain", ["loop", "tls_mismatch", "refused", "not_http", "unparsable", "not_ascii"])
def test_a_failing_redirect_chain_names_no_url(tmp_path, tls_files, chain):
    """Wherever a redirect leads, the error names the blob and the host asked first, nothing of the target."""
    other = "127.0.0.2"  # loopback too, but another host: it must not show
    with socket.socket() as unused:
        unused.bind((other, 0))
        closed_port = unused.getsockname()[1]
    query = f"?X-Amz-Signature={SECRET}&X-Amz-Credential=AKIAFAKE"
    target = None
    if chain == "tls_mismatch":  # the certificate is for 127.0.0.1 and localhost, not 127.0.0.2
        target = Hop(lambda path: (200, {}, b"x" * 10), host=other, tls=tls_files)
        location = target.url("/target-path" + query)
    else:
        location = {"loop": "/hop-back" + query,  # more than 5 redirects
                    "refused": f"https://{other}:{closed_port}/target-path" + query,
                    "not_http": "file:///etc/passwd" + query,
                    "unparsable": f"https://[{other}/target-path" + query,
                    "not_ascii": f"/target-path-\u00e9-{other}" + query}[chain]
    start = Hop(redirect_to(location), tls=tls_files)
    job = BlobJob("sha256:" + "1" * 64, 10, str(tmp_path / "p"), lambda refresh: start.url("/start" + query))
    try:
        with pool(verify=tls_files[0]) as workers, pytest.raises(TransferError) as exc_info:
            download_blobs(workers, [job])
    finally:
        start.close()
        if target is not None:
            target.close()
    text = str(exc_info.value)
    assert "sha256:" + "1" * 64 in text or exc_info.value.code == "redirect_refused"
    for shown in (other, "://", "target-path", "hop-back", "passwd", str(closed_port), "AKIAFAKE"):
        assert shown not in text
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


# -- resume --------------------------------------------------------------------------------------


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
    with open(transfer.journal_path(path), "w", encoding="ascii") as handle:
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
    assert not os.path.exists(transfer.journal_path(path))


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
        with open(transfer.journal_path(path), "w", encoding="ascii") as handle:
            handle.write(f"ecrkit-partial 1 sha256:{'1' * 64} {blob.size}\n0 {CHUNK - 1}\n")
    elif journal == "missing":
        os.unlink(transfer.journal_path(path))
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
    with open(transfer.journal_path(path), encoding="ascii") as handle:
        assert handle.read().splitlines()[1:] == [f"0 {CHUNK - 1}", f"{CHUNK} {CHUNK + CHUNK // 2 - 1}"]
    del blob.behaviour["errors_from"]
    with pool(1) as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path, "partial")], chunk_size=CHUNK)
    assert read(path) == blob.data
    assert result.resumed_bytes == CHUNK + CHUNK // 2
    assert result.bytes_transferred == blob.size - result.resumed_bytes


SUBPROCESS_DOWNLOAD = """
import sys
from ansible_collections.ecrkit.images.plugins.module_utils import transfer
url, digest, size, path, chunk = sys.argv[1:6]
with transfer.TransferPool(2) as pool:
    transfer.download_blobs(pool, [transfer.BlobJob(digest, int(size), path, lambda refresh: url)],
                            chunk_size=int(chunk))
"""


def collection_root():
    """The directory holding ``ansible_collections`` (for a subprocess to import the collection)."""
    path = os.path.abspath(transfer.__file__)
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
            if os.path.exists(transfer.journal_path(path)):
                lines = read(transfer.journal_path(path)).count(b"\n")
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
    covered = transfer._read_journal(str(path), digest, size, size)  # pylint: disable=protected-access
    recorded = set()
    for start, end in written:
        recorded.update(range(start, end))
    for start, end in covered:
        assert set(range(start, end)) <= recorded
    # chunk sizes below MIN_CHUNK_SIZE keep the examples small; planning needs no pool
    blob = transfer._BlobDownload(BlobJob(digest, size, str(directory / "p"), str),  # pylint: disable=protected-access
                                  types.SimpleNamespace(pool=None), chunk, not stream, None)
    blob._plan(covered)  # pylint: disable=protected-access
    position = 0
    for rng in blob.ranges:
        assert rng.first == position and rng.last >= rng.first
        position = rng.last + 1
        if not rng.done and not blob.stream:
            assert rng.first // chunk == rng.last // chunk  # within one chunk-aligned slot
        if blob.stream and not rng.done:
            assert rng.last == size - 1  # one stream to the end
    assert position == size
    assert blob.resumed == sum(rng.written for rng in blob.ranges) <= sum(end - start for start, end in covered)


# -- memory --------------------------------------------------------------------------------------


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


# -- HTTP details --------------------------------------------------------------------------------


class TinyProxy:
    """A forward proxy for the tests: CONNECT tunnels and absolute-form GETs, every host mapped to one
    local address; it records the request lines and Proxy-Authorization headers it saw."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.seen = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                client, dummy = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(client,), daemon=True).start()

    def handle(self, client):
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                data = client.recv(65536)
                if not data:
                    return
                head += data
            lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            self.seen.append((lines[0], [line for line in lines if line.lower().startswith("proxy-authorization")]))
            with socket.create_connection(self.upstream) as server:
                if lines[0].startswith("CONNECT "):
                    client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                else:
                    server.sendall(head)
                self.pipe(client, server)

    @staticmethod
    def pipe(one, other):
        peers = {one: other, other: one}
        while True:
            readable, dummy, dummy = select.select(list(peers), [], [], 30)
            if not readable:
                return
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                peers[sock].sendall(data)

    def close(self):
        self.listener.close()


def test_plain_http_goes_through_the_proxy_from_the_environment(blob_server, tmp_path, monkeypatch):
    proxy = TinyProxy(("127.0.0.1", blob_server.port))
    monkeypatch.setenv("http_proxy", f"http://user:p%40ss@127.0.0.1:{proxy.port}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    blob = blob_server.add(blob_bytes(3 * CHUNK))

    def far_away(refresh):
        return blob.get_url(refresh).replace(f"127.0.0.1:{blob_server.port}", "blobs.example.test")

    try:
        with pool() as workers:
            result, = download_blobs(workers, [BlobJob(blob.digest, blob.size, str(tmp_path / "p"), far_away)],
                                     chunk_size=CHUNK)
    finally:
        proxy.close()
    assert read(result.path) == blob.data
    assert proxy.seen and all(line.startswith("GET http://blobs.example.test/blobs/") for line, dummy in proxy.seen)
    assert all(auth == ["Proxy-Authorization: Basic dXNlcjpwQHNz"] for dummy, auth in proxy.seen)


def test_loopback_is_never_proxied(blob_server, tmp_path, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # discard port: nothing listens
    blob = blob_server.add(blob_bytes(CHUNK))
    with pool() as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK)
    assert read(result.path) == blob.data


def test_keep_alive_connections_are_reused(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(12 * CHUNK))
    with pool(1) as workers:
        download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK)
        assert workers.http.connections_opened == 1


def test_a_bad_ca_bundle_is_reported():
    with pytest.raises(TransferError, match="CA bundle /nonexistent/ca.pem"):
        TransferPool(verify="/nonexistent/ca.pem")


# -- against the local ECR endpoint --------------------------------------------------------------


def pushed_image(endpoint, tmp_path, count=2, size=300 * KIB):
    image = sample_images.build_random_image(str(tmp_path / "layout"), "v1", count=count, size=size, seed="transfer")
    client = endpoint.client()
    sample_images.push_image(client, image, "team/app", create_repository=True)
    blobs = list(image.layers) + [image.manifests[0].config]
    return client, image, blobs


def ecr_jobs(client, blobs, directory, calls=None):
    os.makedirs(directory, exist_ok=True)

    def provider(digest):
        def get_url(refresh):
            if calls is not None:
                calls.append((digest, refresh))
            return client.get_download_url_for_layer(repositoryName="team/app", layerDigest=digest)["downloadUrl"]
        return get_url

    return [BlobJob(desc.digest, desc.size, os.path.join(str(directory), desc.hex + ".partial"), provider(desc.digest))
            for desc in blobs]


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


def test_ecr_over_tls_with_a_ca_bundle_and_through_a_connect_proxy(tmp_path, monkeypatch):
    with run_emulator(tmp_path, tls=True) as endpoint:
        client, image, blobs = pushed_image(endpoint, tmp_path, count=1)
        with pool(2, verify=endpoint.ca_bundle) as workers:
            results = download_blobs(workers, ecr_jobs(client, blobs, tmp_path / "out"), chunk_size=CHUNK)
        assert read(results[0].path) == image.read_blob(blobs[0].digest)

        untrusted = r"TLS verification of 127\.0\.0\.1 failed .*\(self-signed certificate\)"
        with pool(2) as workers, pytest.raises(TransferError, match=untrusted) as exc_info:
            download_blobs(workers, ecr_jobs(client, blobs, tmp_path / "untrusted"), chunk_size=CHUNK)
        assert_clean_error(exc_info)

        proxy = TinyProxy(("127.0.0.1", endpoint.port))
        monkeypatch.setenv("https_proxy", f"127.0.0.1:{proxy.port}")
        far = [BlobJob(job.digest, job.size, job.path, lambda refresh, job=job: job.get_url(refresh).replace(
            f"127.0.0.1:{endpoint.port}", "ecr-layers.example.test"))
            for job in ecr_jobs(client, blobs, tmp_path / "proxied")]
        try:
            with pool(2, verify=False) as workers:
                results = download_blobs(workers, far, chunk_size=CHUNK)
        finally:
            proxy.close()
        assert read(results[0].path) == image.read_blob(blobs[0].digest)
        assert proxy.seen and all(line.startswith("CONNECT ecr-layers.example.test:443 HTTP/1.") for line, dummy in proxy.seen)


# -- upload planning -----------------------------------------------------------------------------


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
    fd, info = transfer.open_source_file("blobs/sha256/ab", str(root))
    os.close(fd)
    identity = transfer.file_identity(info)
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
    assert isinstance(outcome, transfer.SourceChangedError), outcome
    assert str(outcome) == (f"The blob sha256:{'ab' * 32} at {path} changed during the push (it is no longer the regular "
                            "file that was verified), so it was not read; find out what replaced it, then run again.")
    if swap == "resized":  # back to what was verified: read as usual
        with open(path, "r+b") as handle:
            handle.truncate(14)
        assert list(iter_parts("blobs/sha256/ab", [(0, 13)], root=str(root), identity=identity)) == [(0, 13, b"verified bytes")]


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
    (os.symlink if link == "symbolic" else os.link)(str(target), path if planted == "partial" else transfer.journal_path(path))
    with TransferPool(2) as pool:
        with pytest.raises(EcrkitError, match="is a symbolic link" if link == "symbolic" else "has other names"):
            download_blobs(pool, [BlobJob(blob.digest, len(data), path, blob.get_url)], chunk_size=MIB)
    assert target.read_bytes() == b"root:secret\n"


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
