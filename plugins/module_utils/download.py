# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parallel ranged blob downloads: :func:`download_blobs` over a :class:`~pool.TransferPool`.

Blobs come from the presigned URLs ECR's ``GetDownloadUrlForLayer`` answers:

- each blob's partial file (:class:`~partial.PartialFile`) is sized from its descriptor and cut into
  closed ranges of ``chunk_size`` (:func:`~partial.plan_ranges`); workers send ``Range: bytes=a-b`` and
  ``os.pwrite`` the body at its offset from a small per-worker buffer, so memory is O(connections x
  BUFFER_SIZE) whatever the layer and chunk sizes. A blob of at most one chunk is one plain GET;
- the digest follows the written prefix (:class:`~partial.PrefixHasher`), so it is known moments after
  the last byte;
- a server that ignores ``Range`` (200 instead of 206) or answers a wrong ``Content-Range`` makes that
  blob start over as one sequential stream; a broken range is retried from its last written byte with
  jittered backoff; HTTP 403 asks the URL provider for a fresh URL; 5xx, 408 and 429 are retried; 404
  and other 4xx fail at once;
- size and digest are checked at the end. A mismatch (or a server that sends more bytes than the
  descriptor declares) deletes the partial file and fetches the blob once more from scratch; a second
  mismatch raises :class:`BlobVerificationError` naming the digest. Only verified files are returned;
  moving them into a blob store is the caller's job (``BlobJob.commit``);
- the journal beside each partial file lets a run killed at any point resume with only the missing
  ranges, re-hashing the rest from disk.

Presigned URLs are credentials: they never appear in an exception message, a result or a log line.
Errors name the blob's digest instead (and, for connection failures, the host asked first).
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import os
import re
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

from ansible_collections.ecrkit.images.plugins.module_utils import digest as digests
from ansible_collections.ecrkit.images.plugins.module_utils.blobhttp import (
    BlobAccessDeniedError, BlobHttpError, HttpClient, HttpResponse, TransferError, UnusableUrlError, host_of, reason_phrase)
from ansible_collections.ecrkit.images.plugins.module_utils.partial import (
    ByteRange, PartialFile, PrefixHasher, check_free_space, plan_ranges)
from ansible_collections.ecrkit.images.plugins.module_utils.pool import TaskGroup, TransferCancelled, TransferPool

MIB = 1024 * 1024
DEFAULT_CHUNK_SIZE = 16 * MIB
MIN_CHUNK_SIZE = 64 * 1024
BUFFER_SIZE = 1024 * 1024  # 256 KiB cost ~25% more CPU per byte than 1 MiB at one connection (bench/transfer_smoke.py)
"""Size of each worker's reusable receive/hash buffer."""
MAX_BLOB_ATTEMPTS = 2
"""A blob that fails verification is fetched once more from scratch, then the download fails."""
HASH_STEP = 4 * MIB
"""How far a range may run ahead of the hashed prefix before its worker hashes what it can read back."""

_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_RETRY_STATUSES = frozenset((408, 429))


class BlobVerificationError(TransferError):
    """The bytes served for a blob do not match its descriptor (size or digest), twice in a row."""

    code = "blob_verification_failed"


@dataclass(frozen=True)
class BlobJob:
    """One blob to download.

    ``get_url(refresh)`` returns a download URL (the caller's GetDownloadUrlForLayer); ``refresh=True``
    asks for a fresh one after a 403. It is called lazily (not at all for a blob already complete on
    disk), from worker threads, at most once at a time per blob. ``path`` is the partial file; its
    directory must exist. ``path + ".journal"`` is used beside it.

    ``claim()``, when given, is entered when a worker starts on the blob and left once the blob is done
    with (verified and committed, or abandoned): the right to write ``path``, held only while it is
    used. It yields False when the blob needs no download any more (another run stored it meanwhile).
    ``commit(result)``, when given, is called with the verified result while the claim is still held.
    """

    digest: str
    size: int
    path: str
    get_url: Callable[[bool], str]
    claim: Callable[[], ContextManager[bool]] | None = None
    commit: Callable[[DownloadResult], None] | None = None


@dataclass(frozen=True)
class DownloadResult:
    """A verified blob: ``path`` holds exactly ``size`` bytes hashing to ``digest``.

    ``bytes_transferred`` counts body bytes received in this run (retried ones included);
    ``resumed_bytes`` the bytes taken from an earlier interrupted run. ``attempts`` is 1, or 2 when a
    first copy failed verification. ``requests`` counts blob GETs, ``retries`` retried ranges,
    ``url_refreshes`` fresh URLs asked for after a 403. ``ranged`` tells whether the blob came in
    parallel ranges (False: one stream, because it was small, ranges were off, or the server ignored
    them).
    """

    digest: str
    size: int
    path: str
    bytes_transferred: int
    resumed_bytes: int
    attempts: int
    url_refreshes: int
    requests: int
    retries: int
    ranged: bool
    skipped: bool = False


_local = threading.local()


def _worker_buffer() -> memoryview:
    """This thread's reusable buffer (pool workers live as long as their pool)."""
    view = getattr(_local, "buffer", None)
    if view is None:
        view = _local.buffer = memoryview(bytearray(BUFFER_SIZE))
    return view


def _nothing() -> None:
    return None


class _Retry(Exception):
    """A failed attempt worth another try (after backoff)."""


class _Fallback(Exception):
    """The server does not honour our ranges: the blob starts over as one stream."""


class _Mismatch(Exception):
    """The served blob contradicts its descriptor: start over from scratch (once)."""


class _UrlRejected(Exception):
    """HTTP 403: the URL expired (or was refused)."""


class _Stale(Exception):
    """The blob was restarted while this task was working on it: stop quietly."""


class _BlobUrl:
    """A blob's current download URL, asked for lazily and refreshed once for all ranges after a 403."""

    def __init__(self, job: BlobJob) -> None:
        self._job = job
        self._lock = threading.Lock()
        self._url: str | None = None
        self.version = 0
        self.refreshes = 0

    def current(self) -> tuple[str, int]:
        with self._lock:
            if self._url is None:
                self._url = self._ask(False)
            return self._url, self.version

    def refresh(self, seen_version: int) -> None:
        with self._lock:
            if self.version != seen_version:
                return  # another range already got a fresh one
            self._url = self._ask(True)
            self.version += 1
            self.refreshes += 1

    def _ask(self, refresh: bool) -> str:
        url = self._job.get_url(refresh)
        if not isinstance(url, str) or not url.lower().startswith(("https://", "http://")):
            raise TransferError(f"The download URL given for blob {self._job.digest} is not an http(s) URL.",
                                self._job.digest)
        return url


class _BlobDownload:
    """One blob on its way: its ranges and their tasks, restarts, the final check, the accounting."""

    def __init__(self, job: BlobJob, group: TaskGroup, chunk_size: int, ranged: bool,
                 progress: Callable[[str, int], None] | None) -> None:
        self.job = job
        self.digest = job.digest
        self.size = job.size
        self.path = os.fspath(job.path)
        self.group = group
        self.chunk_size = chunk_size
        self.stream = not ranged or job.size <= chunk_size  # small blobs: one GET
        self.send_ranges = True
        self.progress = progress
        self.lock = threading.Lock()
        self.partial = PartialFile(self.path, self.digest, self.size)
        self.hash = PrefixHasher(self.lock, self.partial)
        self.url = _BlobUrl(job)
        self.ranges: list[ByteRange] = []
        self.generation = 0  # bumped by a restart: tasks of an older one stop
        self.active = 0  # tasks of this blob not finished
        self.restart: str | None = None
        self.mismatch = ""
        self.failed = False
        self.result: DownloadResult | None = None
        self.claim: contextlib.ExitStack | None = None
        self.on_done: Callable[[], None] = _nothing
        # accounting
        self.transferred = 0
        self.resumed = 0
        self.attempts = 1
        self.requests = 0
        self.retries = 0

    # -- the blob's life ---------------------------------------------------------------------------

    def begin(self) -> None:
        """A worker starts on this blob: claim it, open its files and queue its ranges (or skip it)."""
        if self.job.claim is not None:
            self.claim = contextlib.ExitStack()
            if not self.claim.enter_context(self.job.claim()):
                self.result = DownloadResult(
                    digest=self.digest, size=self.size, path=self.path, bytes_transferred=0, resumed_bytes=0,
                    attempts=0, url_refreshes=0, requests=0, retries=0, ranged=False, skipped=True)
                self.release()
                return
        self._plan(self.partial.open())
        self.start()

    def release(self) -> None:
        """Give up the claim (if any) and let the next blob start."""
        claim, self.claim = self.claim, None
        try:
            if claim is not None:
                claim.close()
        finally:
            on_done, self.on_done = self.on_done, _nothing
            on_done()

    def abandon(self) -> None:
        """After a failed operation: close the files, and remove them when they hold nothing to resume."""
        self.partial.abandon(holds_data=self.partial.is_open and any(rng.written for rng in self.ranges))

    def _plan(self, covered: list[tuple[int, int]]) -> None:
        self.ranges = plan_ranges(covered, self.size, self.chunk_size, self.stream)
        self.resumed = sum(rng.written for rng in self.ranges)

    def start(self) -> None:
        """Submit the missing ranges of the current plan (or just the final check)."""
        with self.lock:
            self.generation += 1
            generation = self.generation
            self.hash.reset(self.ranges)
            todo = [rng for rng in self.ranges if not rng.done]
            self.active += max(1, len(todo))
        if not todo:
            self.group.submit(self._run, None, generation)
        for rng in todo:
            self.group.submit(self._run, rng, generation)

    def _run(self, rng: ByteRange | None, generation: int) -> None:
        ok = False
        try:
            if rng is not None:
                self._fetch(rng, generation)
            ok = True
        finally:
            action = self._leave(ok)
        if action is not None:
            action()

    def _leave(self, ok: bool) -> Callable[[], None] | None:
        """A task of this blob ends; the last one out finishes the blob or restarts it."""
        with self.lock:
            self.active -= 1
            self.failed = self.failed or not ok
            if self.active or self.failed or self.group.cancelled or self.result is not None:
                return None
            kind, self.restart = self.restart, None
            if kind is not None:
                return lambda: self._restart(kind)
            if all(rng.done for rng in self.ranges):
                return self._finish
        return None

    def _request_restart(self, kind: str, generation: int, reason: str = "") -> None:
        with self.lock:
            if generation != self.generation:
                return
            self.generation += 1  # the other tasks of this generation stop at their next step
            if self.restart != "scratch":
                self.restart = kind
            if reason:
                self.mismatch = reason

    def _restart(self, kind: str) -> None:
        if kind == "scratch":
            if self.attempts >= MAX_BLOB_ATTEMPTS:
                self.partial.discard()
                raise BlobVerificationError(
                    f"Blob {self.digest} failed verification {self.attempts} times ({self.mismatch}); its partial "
                    "file was deleted. The image in ECR may be damaged (re-push it), or something on the way "
                    "(a proxy, a cache) alters downloads.", self.digest)
            self.attempts += 1
            self.partial.discard()
            self._plan(self.partial.open(fresh=True))
        else:
            self.stream = True
            self.partial.start_journal()
            self._plan([])
        self.start()

    def _finish(self) -> None:
        self.hash.catch_up(_worker_buffer(), self.group.check)
        on_disk = self.partial.size_on_disk()
        actual = self.hash.digest()
        if on_disk != self.size:
            self.mismatch = f"expected {self.size} bytes, the file has {on_disk}"
        elif actual != self.digest:
            self.mismatch = f"expected {self.digest}, got {actual}"
        else:
            self._complete()
            return
        self._restart("scratch")

    def _complete(self) -> None:
        self.partial.complete()
        result = DownloadResult(
            digest=self.digest, size=self.size, path=self.path, bytes_transferred=self.transferred,
            resumed_bytes=self.resumed, attempts=self.attempts, url_refreshes=self.url.refreshes,
            requests=self.requests, retries=self.retries, ranged=not self.stream)
        if self.job.commit is not None:
            self.job.commit(result)
        with self.lock:
            self.result = result
        self.release()

    # -- fetching ----------------------------------------------------------------------------------

    def _fetch(self, rng: ByteRange, generation: int) -> None:
        """Fetch the rest of ``rng``: retries from the last written byte, URL refreshes, fallbacks."""
        pool = self.group.pool
        policy = pool.retry
        failures = 0
        rejections = 0
        view = _worker_buffer()
        try:
            while not rng.done:
                self.group.check()
                if self.generation != generation:
                    return
                url, version = self.url.current()
                before = rng.written
                try:
                    self._attempt(url, rng, generation, view)
                    rejections = 0
                except _UrlRejected:
                    rejections += 1
                    if rejections > pool.url_refreshes:
                        raise BlobAccessDeniedError(
                            f"The storage behind ECR refused blob {self.digest} with 403 Forbidden even with "
                            f"{pool.url_refreshes} fresh download URLs; check the host clock, and that no "
                            "proxy or S3 VPC endpoint policy blocks ECR's layer bucket.", self.digest, 403) from None
                    if rejections > 1:
                        self.group.sleep(policy.delay(rejections - 2))
                    self.url.refresh(version)
                except (_Retry, OSError, http.client.HTTPException) as exc:
                    reason = _describe_failure(exc, pool.http)
                    if isinstance(exc, ssl.SSLCertVerificationError):
                        raise TransferError(
                            f"TLS verification of {host_of(url)} failed while downloading blob {self.digest} "
                            f"({reason}); give the CA bundle that signs its certificate (aws_ca_bundle).",
                            self.digest) from None
                    if self.group.cancelled:
                        raise TransferCancelled("The transfer was cancelled.") from None
                    failures = 1 if rng.written > before else failures + 1
                    if failures >= policy.attempts:
                        raise TransferError(
                            f"Downloading blob {self.digest} from {host_of(url)} failed {failures} times in a row "
                            f"({reason}); check the network path to ECR's layer storage (proxy, firewall, DNS) and "
                            "run again: the bytes already written are kept and the download resumes.",
                            self.digest) from None
                    with self.lock:
                        self.retries += 1
                    self.group.sleep(policy.delay(failures - 1))
        except _Stale:
            return
        except _Fallback:
            self._request_restart("stream", generation)
        except _Mismatch as exc:
            self._request_restart("scratch", generation, str(exc))
        finally:
            with self.lock:
                if generation == self.generation and not rng.done:
                    self.partial.record(rng)  # keep what this range got before it stopped

    def _attempt(self, url: str, rng: ByteRange, generation: int, view: memoryview) -> None:
        """One GET for the unwritten rest of ``rng``."""
        start = rng.first + rng.written
        headers = {}
        if self.send_ranges and not (start == 0 and rng.last == self.size - 1):
            headers["Range"] = f"bytes={start}-{rng.last}"
        with self.lock:
            self.requests += 1
        try:
            response = self.group.pool.http.get(url, headers)
        except UnusableUrlError:
            raise TransferError(f"The download URL given for blob {self.digest} cannot be used.", self.digest) from None
        reuse = False
        try:
            status = response.status
            if status == 403:
                raise _UrlRejected()
            if status in (200, 206):
                skip = self._check_answer(response, rng, start)
                self._receive(response, rng, generation, start, skip, view)
                reuse = True
            elif status == 416:
                raise _Mismatch(f"the storage holds fewer than the {self.size} bytes the descriptor declares")
            elif status >= 500 or status in _RETRY_STATUSES:
                raise _Retry(f"HTTP {status} {reason_phrase(status)}")
            elif status == 404:
                raise BlobHttpError(
                    f"The storage behind ECR has no data for blob {self.digest} (404 Not Found) although ECR "
                    "handed out a URL for it; re-push the image, or ask AWS support if it persists.",
                    self.digest, status)
            else:
                raise BlobHttpError(
                    f"The storage behind ECR answered HTTP {status} {reason_phrase(status)} for blob {self.digest}; "
                    "this is not retried.", self.digest, status)
        finally:
            response.close(reuse)

    def _check_answer(self, response: HttpResponse, rng: ByteRange, start: int) -> int:
        """Check the status and framing of a 200/206 before any byte is written; returns how many bytes
        of the body to skip (a 200 answer to a resumed stream starts at byte 0)."""
        expected = rng.last - start + 1
        length_text = response.header("Content-Length")
        try:
            length = int(length_text) if length_text is not None else None
        except ValueError:
            length = None  # http.client then reads to the end of the connection; excess is caught there
        if response.status == 206:
            match = _CONTENT_RANGE_RE.fullmatch((response.header("Content-Range") or "").strip())
            if (match is not None and int(match.group(1)) == start and int(match.group(2)) == rng.last
                    and match.group(3) in ("*", str(self.size)) and length in (None, expected)):
                return 0
            if not self.stream:
                raise _Fallback()
            if self.send_ranges:
                self.send_ranges = False  # this server gets plain GETs from now on
                raise _Retry("the server answered a range request with a wrong Content-Range")
            raise _Retry("the server answered a plain GET with a partial answer")
        # 200: the whole blob, whatever we asked.
        if length is not None and length != self.size:
            if length > self.size:
                raise _Mismatch(f"the server declared {length} bytes, more than the {self.size} of the descriptor")
            raise _Mismatch(f"the server declared {length} bytes, fewer than the {self.size} of the descriptor")
        if start == 0 and rng.last == self.size - 1:
            return 0
        if not self.stream:
            raise _Fallback()
        return start

    def _receive(self, response: HttpResponse, rng: ByteRange, generation: int, start: int, skip: int,
                 view: memoryview) -> None:
        size = len(view)
        while skip:
            count = response.readinto(view[:min(size, skip)])
            if not count:
                raise _Retry("the connection closed early")
            skip -= count
            self._count(0, count)
        pos = start
        end = rng.last + 1
        group = self.group
        hash_mark = rng.written
        while pos < end:
            if group.cancelled:
                raise TransferCancelled("The transfer was cancelled.")
            count = response.readinto(view[:min(size, end - pos)])
            if not count:
                raise _Retry(f"the connection closed early, {end - pos} bytes short")
            if self.generation != generation:
                raise _Stale()
            self.partial.write(view[:count], pos)
            # bytes that continue the hashed prefix are hashed from the buffer, not read back
            inline = self.hash.extend(pos, view[:count])
            pos += count
            with self.lock:
                rng.written += count
                if rng.written - rng.journaled >= self.chunk_size or rng.done:
                    self.partial.record(rng)
            self._count(count, count)
            if inline:
                hash_mark = rng.written
            if rng.done or rng.written - hash_mark >= HASH_STEP:  # done: hash the ranges that came in ahead
                hash_mark = rng.written
                self.hash.catch_up(view, group.check)
        if not response.length_known and response.readinto(view[:1]):
            if response.status == 200:
                raise _Mismatch(f"the server sent more than the {self.size} bytes the descriptor declares")
            raise _Mismatch("the server sent more bytes than the range it announced")

    def _count(self, written: int, received: int) -> None:
        with self.lock:
            self.transferred += received
        if self.progress is not None and written:
            self.progress(self.digest, written)


def _describe_failure(exc: BaseException, client: HttpClient) -> str:
    """A short, URL-free description of a failed attempt."""
    if isinstance(exc, _Retry):
        return str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or exc.reason or "certificate verify failed"
    if isinstance(exc, socket.timeout):
        return f"no data for {client.read_timeout:g} seconds"
    if isinstance(exc, http.client.IncompleteRead):
        return "the connection closed early"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _Window:
    """Starts the blobs of one download in order, a new one as one finishes, at most ``size`` at a time.

    Workers take tasks in order, so the ranges of the blobs begun are worked on before the next blob
    begins; ``size`` (the connections) keeps every worker busy while bounding the files held open.
    """

    def __init__(self, group: TaskGroup, downloads: Sequence[_BlobDownload], size: int) -> None:
        self.group = group
        self.size = size
        self.pending = collections.deque(downloads)
        self.lock = threading.Lock()

    def start(self) -> None:
        for dummy in range(self.size):
            self.next()

    def next(self) -> None:
        with self.lock:
            if not self.pending:
                return
            blob = self.pending.popleft()
        blob.on_done = self.next
        self.group.submit(blob.begin)


def download_blobs(pool: TransferPool, jobs: Sequence[BlobJob], chunk_size: int = DEFAULT_CHUNK_SIZE,
                   ranged: bool = True, progress: Callable[[str, int], None] | None = None) -> list[DownloadResult]:
    """Download ``jobs`` over ``pool``'s workers; return one verified :class:`DownloadResult` per job,
    in order.

    The space the blobs still need is checked before the first request. A blob's files are opened
    (and its claim taken) when a worker starts on it, and closed (and the claim left) when it is done,
    at most ``pool.max_connections`` blobs at a time (:class:`_Window`), so an image of a thousand
    layers holds a few dozen descriptors, not thousands. ``ranged=False`` fetches each blob as one
    stream. ``progress(digest, nbytes)`` is called from worker threads as bytes are written. The first
    error cancels the rest and is raised (:class:`~blobhttp.TransferError` and subclasses,
    :class:`StorageError` and subclasses, or whatever a URL provider raised); partial files and journals
    stay for the next run, except those of a blob that failed verification and those that hold nothing yet.
    """
    if chunk_size < MIN_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be at least {MIN_CHUNK_SIZE}")
    paths = set()
    for job in jobs:
        if not digests.is_digest(job.digest):
            raise ValueError(f"unsupported digest {job.digest!r}: only sha256 is supported")
        if job.size < 0:
            raise ValueError(f"negative size for blob {job.digest}")
        if job.path in paths:
            raise ValueError(f"two jobs write {job.path}")
        paths.add(job.path)
    group = pool.group()
    downloads = [_BlobDownload(job, group, chunk_size, ranged, progress) for job in jobs]
    try:
        check_free_space([(blob.path, blob.size) for blob in downloads])
        _Window(group, downloads, pool.max_connections).start()
        group.wait()
    except BaseException:
        group.cancel(wait=True)
        raise
    finally:
        for blob in downloads:
            if blob.result is None:
                blob.on_done = _nothing  # nothing more starts after a failure
                try:
                    blob.abandon()
                finally:
                    blob.release()
    results = [blob.result for blob in downloads]
    if any(result is None for result in results):  # pragma: no cover - wait() raises first
        raise TransferError("A download ended without a verified result.")
    return results  # type: ignore[return-value]
