# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The transfer engine: one thread pool, one set of HTTP connections, parallel ranged blob downloads.

:class:`TransferPool` is the one place in the collection that owns threads. Its ``max_connections``
worker threads are the connection bound of a whole operation: every blob of a pull (and, later, every
layer of a push) shares them. Work goes in as plain callables through a :class:`TaskGroup`; the first
task that fails cancels the rest of its group, and the group's ``wait()`` raises that error.

:func:`download_blobs` fetches blobs from the presigned URLs ECR's ``GetDownloadUrlForLayer`` answers:

- each blob's partial file is sized from its descriptor and cut into closed ranges of ``chunk_size``
  (aligned to multiples of it); workers send ``Range: bytes=a-b`` and ``os.pwrite`` the body at its
  offset from a small per-worker buffer, so memory is O(connections x BUFFER_SIZE) whatever the layer
  and chunk sizes. A blob of at most one chunk is one plain GET;
- one sha256 per blob follows the contiguous written prefix: bytes that extend it are hashed from the
  receive buffer as they arrive (all of them for one connection), bytes that arrived ahead of it are
  read back from the file (the page cache) once it reaches them, so the digest is known moments after
  the last byte and no chunk is ever held in memory;
- a server that ignores ``Range`` (200 instead of 206) or answers a wrong ``Content-Range`` makes that
  blob start over as one sequential stream; a broken range is retried from its last written byte with
  jittered backoff; HTTP 403 asks the URL provider for a fresh URL; 5xx, 408 and 429 are retried; 404
  and other 4xx fail at once;
- size and digest are checked at the end. A mismatch (or a server that sends more bytes than the
  descriptor declares) deletes the partial file and fetches the blob once more from scratch; a second
  mismatch raises :class:`BlobVerificationError` naming the digest. Only verified files are returned;
  moving them into a blob store is the caller's job;
- a journal beside each partial file (``<partial>.journal``) records the byte ranges known written, so
  a run killed at any point resumes with only the missing ranges, re-hashing the rest from disk.

Presigned URLs are credentials: they never appear in an exception message, a result or a log line.
Errors name the blob's digest instead (and, for connection failures, the host asked first; never where a
redirect led). Redirects are followed at most 5 times, to http(s) only, never from https down to http,
and to another origin without any header but the range.

Upload side: :func:`plan_parts` and :func:`iter_parts` cut a blob into the parts ``UploadLayerPart``
accepts and read them one at a time, from the very file that was verified (no link followed, no FIFO
waited on, same inode and size).

Only the standard library is used (``http.client``): on loopback its ``readinto`` path received about
3.5 GiB/s at 0.21 CPU seconds per GiB against urllib3's 2.6 GiB/s at 0.29-0.35 (equal under TLS), it
reads straight into the worker's buffer, and it lets a cancelled transfer shut its socket down.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import errno
import fcntl
import functools
import hashlib
import http.client
import os
import re
import select
import socket
import ssl
import stat
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator, Mapping, Sequence

from ansible_collections.ecrkit.images.plugins.module_utils import hostfs
from ansible_collections.ecrkit.images.plugins.module_utils.ecr import RetryPolicy
from ansible_collections.ecrkit.images.plugins.module_utils.errors import DiskFullError, EcrkitError, StorageError, storage_error

MIB = 1024 * 1024

DEFAULT_MAX_CONNECTIONS = 4
DEFAULT_CHUNK_SIZE = 16 * MIB
MIN_CHUNK_SIZE = 64 * 1024
BUFFER_SIZE = 1024 * 1024  # 256 KiB cost ~25% more CPU per byte than 1 MiB at one connection (bench/transfer_smoke.py)
"""Size of each worker's reusable receive/hash buffer."""
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_RETRY = RetryPolicy(attempts=5, base_delay=0.5, max_delay=10.0)
"""Per range: how many failures in a row (without a new byte) are tolerated, and the backoff."""
DEFAULT_URL_REFRESHES = 3
"""How many fresh URLs a blob may ask for in a row while the storage keeps answering 403."""
MAX_BLOB_ATTEMPTS = 2
"""A blob that fails verification is fetched once more from scratch, then the download fails."""
JOURNAL_SUFFIX = ".journal"
HASH_STEP = 4 * MIB

# ECR's layer upload rules (API model and service quotas).
ECR_MIN_PART_SIZE = 5 * MIB
ECR_MAX_PART_SIZE = 20 * MIB
ECR_MAX_PARTS = 4200
ECR_MAX_LAYER_SIZE = 52000 * MIB

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_JOURNAL_MAGIC = "ecrkit-partial 1"
_RETRY_STATUSES = frozenset((408, 429))
_REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))
_MAX_REDIRECTS = 5
_CROSS_ORIGIN_HEADERS = frozenset(("range", "if-range", "accept"))
"""What a redirect to another origin carries of the caller's headers: nothing that identifies or authorises."""
_USER_AGENT = "ecrkit.images"


# -- errors -----------------------------------------------------------------------------------------


class TransferError(EcrkitError):
    """A blob could not be transferred. ``digest`` names it (empty when the error is not about one)."""

    code = "transfer_failed"

    def __init__(self, message: str, digest: str = "") -> None:
        super().__init__(message)
        self.digest = digest


class BlobHttpError(TransferError):
    """The blob storage answered a status that no retry can fix (404, most other 4xx)."""

    code = "blob_http_error"

    def __init__(self, message: str, digest: str = "", status: int = 0) -> None:
        super().__init__(message, digest)
        self.status = status


class BlobAccessDeniedError(BlobHttpError):
    """HTTP 403 from the blob storage, still, after fresh URLs."""

    code = "blob_access_denied"


class BlobVerificationError(TransferError):
    """The bytes served for a blob do not match its descriptor (size or digest), twice in a row."""

    code = "blob_verification_failed"


class RedirectRefusedError(TransferError):
    """The blob storage redirected a download where this client does not follow (https to http, not http(s))."""

    code = "redirect_refused"


class TransferCancelled(EcrkitError):
    """Raised inside tasks of a cancelled :class:`TaskGroup`; it never leaves ``wait()``."""

    code = "transfer_cancelled"


# -- the thread pool --------------------------------------------------------------------------------


class Task:
    """One callable submitted to a :class:`TaskGroup`. After the group's ``wait()``, ``result()`` gives
    its return value (or raises its error, or :class:`TransferCancelled` if it never ran to the end)."""

    __slots__ = ("group", "_call", "_state", "_value", "_error")

    def __init__(self, group: TaskGroup, call: Callable[[], Any]) -> None:
        self.group = group
        self._call = call
        self._state = "pending"
        self._value: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._state in ("done", "failed", "cancelled")

    def result(self) -> Any:
        if self._state == "done":
            return self._value
        if self._state == "failed":
            raise self._error  # type: ignore[misc]
        if self._state == "cancelled":
            raise TransferCancelled("The task was cancelled.")
        raise RuntimeError("Task.result() called before the task finished")

    def _run(self) -> None:
        group = self.group
        if group.cancelled:
            self._state = "cancelled"
            return
        self._state = "running"
        try:
            self._value = self._call()
            self._state = "done"
        except TransferCancelled:
            self._state = "cancelled"
            if not group.cancelled:  # raised by hand outside a cancellation: a real failure
                self._state = "failed"
                self._error = TransferCancelled("A task gave up without its group being cancelled.")
                group.fail(self._error)
        except BaseException as exc:  # pylint: disable=broad-exception-caught
            # Whatever a task raises (KeyboardInterrupt and SystemExit included) ends its group and
            # surfaces in the waiting thread.
            self._state = "failed"
            self._error = exc
            group.fail(exc)
        finally:
            self._call = _done_call  # drop references held by the closure


def _done_call() -> None:
    return None


class TaskGroup:
    """Tasks that succeed or fail together, on one :class:`TransferPool`.

    ``submit()`` queues a callable (tasks may submit more tasks to their own group); ``wait()`` blocks
    until every task has finished, then raises the first failure, if any. The first failure cancels the
    group: queued tasks are dropped, the sockets of running ones are shut down, and running tasks stop
    at their next :meth:`check`, :meth:`sleep` or read. An interruption of ``wait()`` itself
    (KeyboardInterrupt) cancels the group the same way and waits for its running tasks before it
    propagates. Do not call ``wait()`` from inside a task of the same pool.
    """

    def __init__(self, pool: TransferPool) -> None:
        self._pool = pool
        self._idle = threading.Condition(pool._lock)  # pylint: disable=protected-access
        self._outstanding = 0
        self._error: BaseException | None = None
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def pool(self) -> TransferPool:
        return self._pool

    def submit(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Task:
        """Queue ``call(*args, **kwargs)``; returns its :class:`Task`."""
        task = Task(self, functools.partial(call, *args, **kwargs) if args or kwargs else call)
        self._pool._enqueue(task)  # pylint: disable=protected-access
        return task

    def check(self) -> None:
        """Raise :class:`TransferCancelled` when the group has been cancelled (for long tasks)."""
        if self._cancelled.is_set():
            raise TransferCancelled("The transfer was cancelled.")

    def sleep(self, seconds: float) -> None:
        """Sleep, but raise :class:`TransferCancelled` as soon as the group is cancelled."""
        if self._cancelled.wait(max(0.0, seconds)):
            raise TransferCancelled("The transfer was cancelled.")

    def fail(self, error: BaseException) -> None:
        """Record ``error`` as the group's failure (the first one wins) and cancel the group."""
        with self._pool._lock:  # pylint: disable=protected-access
            if self._error is None:
                self._error = error
        self.cancel()

    def cancel(self, wait: bool = False) -> None:
        """Drop the queued tasks and stop the running ones (their sockets are shut down); with
        ``wait``, return once the running ones have ended, without raising their errors."""
        self._cancelled.set()
        self._pool._cancel_group(self)  # pylint: disable=protected-access
        if wait:
            self._wait_idle()

    def wait(self) -> None:
        """Block until all tasks have finished; raise the first failure."""
        try:
            self._wait_idle()
        except BaseException:
            # Interrupted (KeyboardInterrupt, SystemExit): stop the work, let the running tasks end, then
            # propagate. A second interruption during that short wait propagates at once.
            self.cancel(wait=True)
            raise
        error = self._error
        if error is not None:
            self._error = None
            try:
                raise error
            finally:
                error = None

    def _wait_idle(self) -> None:
        with self._idle:
            while self._outstanding:
                self._idle.wait()

    def _task_finished(self, count: int = 1) -> None:
        """Called with the pool lock held."""
        self._outstanding -= count
        if not self._outstanding:
            self._idle.notify_all()


class TransferPool:
    """A fixed bound of worker threads, each using at most one HTTP connection at a time.

    Use it as a context manager; leaving the block cancels whatever is still queued or running and
    joins every worker, so no thread outlives it. Workers start on demand, up to ``max_connections``.

    ``verify`` is True (system CA store), False (no TLS verification) or the path of a CA bundle file
    (or directory). ``connect_timeout`` bounds a connection's setup (TCP and TLS), ``read_timeout`` any
    wait for the next bytes of an answer. ``retry`` is the backoff for failed ranges (its ``attempts``
    counts failures in a row without a new byte), ``url_refreshes`` how many fresh URLs a blob may ask
    for while its storage keeps answering 403.
    """

    def __init__(self, max_connections: int = DEFAULT_MAX_CONNECTIONS, *, verify: bool | str = True,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, read_timeout: float = DEFAULT_READ_TIMEOUT,
                 retry: RetryPolicy | None = None, url_refreshes: int = DEFAULT_URL_REFRESHES) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self.retry = retry or DEFAULT_RETRY
        self.url_refreshes = url_refreshes
        self.http = HttpClient(verify, connect_timeout, read_timeout, max_idle=max_connections)
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._queue: collections.deque[Task] = collections.deque()
        self._workers: list[threading.Thread] = []
        self._idle_workers = 0
        self._running: dict[int, Task] = {}
        self._closed = False

    def __enter__(self) -> TransferPool:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def group(self) -> TaskGroup:
        return TaskGroup(self)

    def map(self, call: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``[call(item) for item in items]`` on the workers; the first failure cancels the rest."""
        group = self.group()
        tasks = [group.submit(call, item) for item in items]
        group.wait()
        return [task.result() for task in tasks]

    def close(self, timeout: float = 30.0) -> None:
        """Cancel what is left, join the workers, close the connections. Idempotent."""
        with self._lock:
            already = self._closed
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            groups = {task.group for task in dropped} | {task.group for task in self._running.values()}
            for group in groups:
                group._cancelled.set()  # pylint: disable=protected-access
            for task in dropped:
                task._state = "cancelled"  # pylint: disable=protected-access
                task.group._task_finished()  # pylint: disable=protected-access
            self.http.abort(list(self._running))
            self._work.notify_all()
            workers = list(self._workers)
        if already and not workers:
            return
        for worker in workers:
            if worker is not threading.current_thread():
                worker.join(timeout)
        with self._lock:
            self._workers = [worker for worker in self._workers if worker.is_alive()]
        self.http.close()

    # -- internals ---------------------------------------------------------------------------------

    def _enqueue(self, task: Task) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the TransferPool is closed")
            group = task.group
            group._outstanding += 1  # pylint: disable=protected-access
            if group.cancelled:
                task._state = "cancelled"  # pylint: disable=protected-access
                group._task_finished()  # pylint: disable=protected-access
                return
            self._queue.append(task)
            if len(self._queue) > self._idle_workers and len(self._workers) < self.max_connections:
                worker = threading.Thread(target=self._worker, name=f"ecrkit-transfer-{len(self._workers) + 1}",
                                          daemon=True)
                self._workers.append(worker)
                worker.start()
            else:
                self._work.notify()

    def _cancel_group(self, group: TaskGroup) -> None:
        me = threading.get_ident()
        with self._lock:
            kept: collections.deque[Task] = collections.deque()
            dropped = 0
            for task in self._queue:
                if task.group is group:
                    task._state = "cancelled"  # pylint: disable=protected-access
                    dropped += 1
                else:
                    kept.append(task)
            self._queue = kept
            if dropped:
                group._task_finished(dropped)  # pylint: disable=protected-access
            # Under the pool lock a worker cannot move on to another task, so the connection it holds
            # belongs to this group's task.
            self.http.abort([ident for ident, task in self._running.items() if task.group is group and ident != me])

    def _worker(self) -> None:
        ident = threading.get_ident()
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._idle_workers += 1
                    self._work.wait()
                    self._idle_workers -= 1
                if not self._queue:
                    return
                task = self._queue.popleft()
                self._running[ident] = task
                self.http.forget_abort(ident)
            try:
                task._run()  # pylint: disable=protected-access
            finally:
                with self._lock:
                    del self._running[ident]
                    task.group._task_finished()  # pylint: disable=protected-access
                    task = None  # type: ignore[assignment]


_local = threading.local()


def _worker_buffer() -> memoryview:
    """This thread's reusable buffer (pool workers live as long as their pool)."""
    view = getattr(_local, "buffer", None)
    if view is None:
        view = _local.buffer = memoryview(bytearray(BUFFER_SIZE))
    return view


# -- HTTP -------------------------------------------------------------------------------------------


def make_ssl_context(verify: bool | str = True) -> ssl.SSLContext:
    """The TLS settings for blob downloads: system CAs, a CA bundle (file or directory), or none."""
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if verify is True or verify is None:
        return ssl.create_default_context()
    path = os.fspath(verify)
    try:
        if os.path.isdir(path):
            return ssl.create_default_context(capath=path)
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise TransferError(f"The CA bundle {path} cannot be used for blob downloads "
                            f"({getattr(exc, 'strerror', None) or exc}); check the aws_ca_bundle option.") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    return host.startswith("127.") or host == "::1"


class UnusableUrlError(Exception):
    """A URL that is not http(s) or does not parse (deliberately without the URL: it may be secret)."""


class HttpResponse:
    """An answer whose connection stays leased until :meth:`close`."""

    def __init__(self, client: HttpClient, key: tuple[Any, ...], conn: http.client.HTTPConnection,
                 response: http.client.HTTPResponse) -> None:
        self._client = client
        self._key = key
        self._conn: http.client.HTTPConnection | None = conn
        self._response = response
        self.status = response.status

    def header(self, name: str) -> str | None:
        return self._response.getheader(name)

    @property
    def length_known(self) -> bool:
        """True when the body is delimited by Content-Length (http.client then never reads past it)."""
        return self._response.length is not None

    def readinto(self, view: memoryview) -> int:
        return self._response.readinto(view)

    def close(self, reuse: bool = False) -> None:
        """Give the connection back for reuse (only when the body was read to its end) or close it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        reusable = reuse and self._response.isclosed() and not self._response.will_close
        if not reusable:
            self._response.close()
        self._client.release(self._key, conn, reusable)


class HttpClient:
    """Keep-alive HTTP/1.1 connections for the workers of one :class:`TransferPool`.

    Each thread leases at most one connection at a time; idle ones are kept per origin (at most
    ``max_idle`` each). ``abort(thread_ids)`` shuts down the sockets those threads are using, which
    wakes a worker blocked in a read. Proxies come from the usual environment variables (``https_proxy``,
    ``http_proxy``, ``no_proxy``; loopback hosts are never proxied): HTTPS goes through a CONNECT
    tunnel, plain HTTP in absolute form.
    """

    def __init__(self, verify: bool | str = True, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 read_timeout: float = DEFAULT_READ_TIMEOUT, max_idle: int = DEFAULT_MAX_CONNECTIONS) -> None:
        self.verify = verify
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle
        self._context = make_ssl_context(verify)
        self._proxies = urllib.request.getproxies_environment()
        self._lock = threading.Lock()
        self._idle: dict[tuple[Any, ...], list[http.client.HTTPConnection]] = {}
        self._busy: dict[int, http.client.HTTPConnection] = {}
        self._aborted: set[int] = set()
        self.connections_opened = 0

    def get(self, url: str, headers: Mapping[str, str] | None = None) -> HttpResponse:
        """GET ``url``, following up to 5 redirects: to http(s) URLs only, never from https to plain http,
        and to another origin with only the range headers (no credential, no cookie: a presigned URL
        carries its own). Raises OSError/http.client.HTTPException for network failures,
        :class:`UnusableUrlError` for a URL this client cannot use and :class:`RedirectRefusedError` for
        a redirect it does not follow; none of them names a URL, and errors met after a redirect do not
        name where it led either."""
        sent = dict(headers or {})
        for hop in range(_MAX_REDIRECTS + 1):
            try:
                response = self._request(url, sent)
            except UnusableUrlError:
                if hop:
                    raise RedirectRefusedError("The blob storage redirected a download to a URL this client cannot use; "
                                               "the redirect was not followed.") from None
                raise
            except ssl.SSLCertVerificationError as exc:
                if hop:
                    raise _without_host(exc) from None
                raise
            location = response.header("Location") if response.status in _REDIRECT_STATUSES else None
            if not location:
                return response
            response.close()
            target = _redirect_target(url, location)
            if _origin(target) != _origin(url):
                sent = {name: value for name, value in sent.items() if name.lower() in _CROSS_ORIGIN_HEADERS}
            url = target
        raise http.client.HTTPException(f"more than {_MAX_REDIRECTS} redirects")

    def _request(self, url: str, headers: Mapping[str, str]) -> HttpResponse:
        try:
            parts = urllib.parse.urlsplit(url)
            scheme = parts.scheme.lower()
            parts.port  # pylint: disable=pointless-statement  # raises ValueError when malformed
        except ValueError:
            raise UnusableUrlError() from None
        if scheme not in ("http", "https") or not parts.hostname:
            raise UnusableUrlError()
        host = parts.hostname
        port = parts.port or (443 if scheme == "https" else 80)
        proxy = self._proxy_for(scheme, host)
        target = url if proxy and scheme == "http" else (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        key = (scheme, host, port, proxy)
        while True:
            conn, reused = self._acquire(key)
            try:
                conn.putrequest("GET", target, skip_accept_encoding=True)
                conn.putheader("Accept-Encoding", "identity")
                conn.putheader("User-Agent", _USER_AGENT)
                if proxy and proxy[2] and scheme == "http":
                    conn.putheader("Proxy-Authorization", proxy[2])
                for name, value in headers.items():
                    conn.putheader(name, value)
                conn.endheaders()
                response = conn.getresponse()
            except (http.client.InvalidURL, UnicodeEncodeError):  # InvalidURL quotes the URL; non-ASCII text
                self.release(key, conn, False)
                raise UnusableUrlError() from None
            except (ConnectionError, http.client.BadStatusLine):
                aborted = self.release(key, conn, False)
                if reused and not aborted:
                    continue  # the server closed an idle keep-alive connection: try a fresh one
                raise
            except BaseException:
                self.release(key, conn, False)
                raise
            return HttpResponse(self, key, conn, response)

    def _proxy_for(self, scheme: str, host: str) -> tuple[str, int, str] | None:
        proxy = self._proxies.get(scheme)
        if not proxy or _is_loopback(host) or urllib.request.proxy_bypass_environment(host, self._proxies):
            return None
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        if parts.scheme != "http" or not parts.hostname:
            raise TransferError(f"The {scheme}_proxy environment variable names a proxy this client cannot use; "
                                "only http:// proxies are supported.")
        auth = ""
        if parts.username:
            credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii")
        return parts.hostname, parts.port or 80, auth

    def _acquire(self, key: tuple[Any, ...]) -> tuple[http.client.HTTPConnection, bool]:
        ident = threading.get_ident()
        with self._lock:
            self._check_abort(ident)
            idle = self._idle.get(key) or []
            while idle:
                conn = idle.pop()
                if _still_open(conn):
                    self._busy[ident] = conn
                    return conn, True
                conn.close()
        conn = self._connect(key)
        with self._lock:
            self.connections_opened += 1
            if ident in self._aborted:  # cancelled while connecting
                conn.close()
                self._check_abort(ident)
            self._busy[ident] = conn
        return conn, False

    def _check_abort(self, ident: int) -> None:
        if ident in self._aborted:
            raise ConnectionAbortedError(errno.ECONNABORTED, "the transfer was cancelled")

    def _connect(self, key: tuple[Any, ...]) -> http.client.HTTPConnection:
        scheme, host, port, proxy = key
        conn: http.client.HTTPConnection
        if proxy is not None:
            proxy_host, proxy_port, auth = proxy
            if scheme == "https":
                conn = http.client.HTTPSConnection(proxy_host, proxy_port, timeout=self.connect_timeout,
                                                   context=self._context)
                conn.set_tunnel(host, port, headers={"Proxy-Authorization": auth} if auth else None)
            else:
                conn = http.client.HTTPConnection(proxy_host, proxy_port, timeout=self.connect_timeout)
        elif scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=self.connect_timeout, context=self._context)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        try:
            conn.connect()
            conn.sock.settimeout(self.read_timeout)
        except BaseException:
            conn.close()
            raise
        return conn

    def release(self, key: tuple[Any, ...], conn: http.client.HTTPConnection, reusable: bool) -> bool:
        """Take back the calling thread's connection; returns whether :meth:`abort` had cut it."""
        ident = threading.get_ident()
        with self._lock:
            if self._busy.get(ident) is conn:
                del self._busy[ident]
            aborted = ident in self._aborted
            if reusable and not aborted and conn.sock is not None:
                idle = self._idle.setdefault(key, [])
                if len(idle) < self.max_idle:
                    idle.append(conn)
                    return False
        conn.close()
        return aborted

    def abort(self, thread_ids: Sequence[int]) -> None:
        """Shut down the sockets the given threads are using (a blocked read returns at once); their
        further requests fail at once too, until :meth:`forget_abort`."""
        with self._lock:
            self._aborted.update(thread_ids)
            socks = [self._busy[ident].sock for ident in thread_ids if ident in self._busy]
        for sock in socks:
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def forget_abort(self, ident: int) -> None:
        """The thread starts on other work: its requests are allowed again."""
        with self._lock:
            self._aborted.discard(ident)

    def close(self) -> None:
        with self._lock:
            conns = [conn for idle in self._idle.values() for conn in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()


def _origin(url: str) -> tuple[str, str, int]:
    """Scheme, host and port of a URL that :meth:`HttpClient._request` accepted or that
    :func:`_redirect_target` returned."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def _redirect_target(url: str, location: str) -> str:
    """The URL a ``Location`` answered for ``url`` leads to; :class:`RedirectRefusedError` for one not followed."""
    try:
        target = urllib.parse.urldefrag(urllib.parse.urljoin(url, location.strip()))[0]
        parts = urllib.parse.urlsplit(target)
        parts.port  # pylint: disable=pointless-statement  # raises ValueError when malformed
    except ValueError:
        raise RedirectRefusedError("The blob storage redirected a download to a URL that does not parse; "
                                   "the redirect was not followed.") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise RedirectRefusedError("The blob storage redirected a download to something other than an http(s) URL; "
                                   "the redirect was not followed.")
    if scheme == "http" and urllib.parse.urlsplit(url).scheme.lower() == "https":
        raise RedirectRefusedError("The blob storage redirected an https download to plain http, which would send the "
                                   "blob unencrypted and unverified, so the redirect was refused; check for a proxy or "
                                   "storage endpoint that rewrites URLs.")
    return target


def _without_host(exc: ssl.SSLCertVerificationError) -> ssl.SSLCertVerificationError:
    """The same verification failure, minus the host name OpenSSL quotes (here: where a redirect led)."""
    message = exc.verify_message or exc.reason or "certificate verify failed"
    clean = ssl.SSLCertVerificationError(exc.errno, "certificate verify failed")
    clean.verify_code = exc.verify_code
    clean.verify_message = re.sub(r"'[^']*'", "the host a redirect led to", str(message))
    clean.reason = exc.reason
    return clean


def _still_open(conn: http.client.HTTPConnection) -> bool:
    """An idle keep-alive connection is usable when nothing is readable on it (no EOF, no stray bytes)."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return not poller.poll(0)
        readable, dummy, dummy = select.select([sock], [], [], 0)  # pragma: no cover - no poll()
    except (OSError, ValueError):
        return False
    return not readable


# -- downloads --------------------------------------------------------------------------------------


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


def journal_path(partial_path: str) -> str:
    """Where the resume journal of a partial file lives."""
    return partial_path + JOURNAL_SUFFIX


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


class _Range:
    __slots__ = ("first", "last", "written", "journaled")

    def __init__(self, first: int, last: int, written: int = 0) -> None:
        self.first = first
        self.last = last
        self.written = written
        self.journaled = written

    @property
    def done(self) -> bool:
        return self.first + self.written > self.last


def _pwrite_all(fd: int, view: memoryview, offset: int, path: str) -> None:
    while view:
        try:
            count = os.pwrite(fd, view, offset)
        except OSError as exc:
            raise storage_error(exc, "writing", path) from None
        view = view[count:]
        offset += count


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)  # pragma: no cover - platforms without preadv
    view[:len(data)] = data
    return len(data)


def _merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of half-open intervals, sorted."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _read_journal(path: str, digest: str, size: int, available: int) -> list[tuple[int, int]]:
    """Byte intervals (half-open) a journal records as written, within the first ``available`` bytes
    of the partial file. Unreadable, foreign or damaged journals count as empty; a last line cut short
    (the process died while appending) is ignored."""
    try:
        with os.fdopen(hostfs.open_regular(path, os.O_RDONLY, "the journal of a download"), "rb") as handle:
            text = handle.read().decode("ascii")
    except (OSError, UnicodeDecodeError, EcrkitError):
        return []
    lines = text.split("\n")
    if not lines or lines[0] != f"{_JOURNAL_MAGIC} {digest} {size}":
        return []
    intervals = []
    for line in lines[1:-1]:  # the element after the last newline is empty or a torn line
        fields = line.split(" ")
        if len(fields) != 2 or not all(field.isdigit() for field in fields):
            return []
        first, last = int(fields[0]), int(fields[1])
        if first > last or last >= size:
            return []
        if first < available:
            intervals.append((first, min(last + 1, available)))
    return _merge(intervals)


class _BlobDownload:
    """The state of one blob: its partial file and journal, its ranges, its hash, its URL."""

    def __init__(self, job: BlobJob, group: TaskGroup, chunk_size: int, ranged: bool,
                 progress: Callable[[str, int], None] | None) -> None:
        self.job = job
        self.digest = job.digest
        self.size = job.size
        self.path = os.fspath(job.path)
        self.journal = journal_path(job.path)
        self.group = group
        self.pool = group.pool
        self.chunk_size = chunk_size
        self.stream = not ranged or job.size <= chunk_size  # small blobs: one GET
        self.send_ranges = True
        self.progress = progress
        self.lock = threading.Lock()
        self.fd = -1
        self.journal_fd = -1
        self.ranges: list[_Range] = []
        self.head = 0
        self.hasher = hashlib.sha256()
        self.hashed = 0
        self.hashing = False
        self.generation = 0
        self.active = 0
        self.restart: str | None = None
        self.mismatch = ""
        self.failed = False
        self.result: DownloadResult | None = None
        self.claim: contextlib.ExitStack | None = None
        self.on_done: Callable[[], None] = _done_call
        self.url_lock = threading.Lock()
        self.url: str | None = None
        self.url_version = 0
        # accounting
        self.transferred = 0
        self.resumed = 0
        self.attempts = 1
        self.url_refreshes = 0
        self.requests = 0
        self.retries = 0

    # -- files -------------------------------------------------------------------------------------

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
        self.open()
        self.start()

    def release(self) -> None:
        """Give up the claim (if any) and let the next blob start."""
        claim, self.claim = self.claim, None
        try:
            if claim is not None:
                claim.close()
        finally:
            on_done, self.on_done = self.on_done, _done_call
            on_done()

    def open(self, fresh: bool = False) -> None:
        """Open (or create) the partial file, lock it, read the journal and plan the ranges.

        Through :func:`hostfs.open_regular`: a link, a FIFO, a file with other names (hard links) or
        another user's file found at the partial path is refused, checked on the descriptor written to.
        """
        try:
            # the partial file becomes the blob: readable as the layout's other files (its directory is private)
            self.fd = hostfs.open_regular(self.path, os.O_RDWR | os.O_CREAT, f"the download of {self.digest}",
                                          mode=0o644, owner=os.geteuid())
        except OSError as exc:
            raise storage_error(exc, "creating", self.path) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            # Any other errno is a file system without flock (some NFS setups): go on unlocked.
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(self.fd)
                self.fd = -1
                raise StorageError(f"Another process is downloading blob {self.digest} into {self.path}; let it "
                                   "finish (or stop it), then run again.", self.path) from None
        try:
            present = os.fstat(self.fd).st_size
            covered = [] if fresh else _read_journal(self.journal, self.digest, self.size, present)
            if present != self.size:
                os.ftruncate(self.fd, self.size)
        except OSError as exc:
            raise storage_error(exc, "sizing", self.path) from None
        self._open_journal(append=bool(covered))
        self._plan(covered)

    def _open_journal(self, append: bool) -> None:
        if self.journal_fd >= 0:
            os.close(self.journal_fd)
            self.journal_fd = -1
        try:
            # never through a planted link; truncated only after the descriptor was checked
            self.journal_fd = hostfs.open_regular(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                                  f"the journal of the download of {self.digest}", owner=os.geteuid())
            if not append:
                os.ftruncate(self.journal_fd, 0)
                os.write(self.journal_fd, f"{_JOURNAL_MAGIC} {self.digest} {self.size}\n".encode("ascii"))
        except OSError as exc:
            raise storage_error(exc, "writing", self.journal) from None

    def _plan(self, covered: list[tuple[int, int]]) -> None:
        """Ranges over the whole blob: the covered intervals (done) and the missing bytes, in chunks;
        in stream mode one range from the first missing byte to the end."""
        ranges: list[_Range] = []
        pos = 0
        for start, end in covered:
            if start > pos:
                if self.stream:
                    break
                ranges.extend(self._split(pos, start))
            ranges.append(_Range(start, end - 1, end - start))
            pos = end
        if pos < self.size:
            ranges.extend([_Range(pos, self.size - 1)] if self.stream else self._split(pos, self.size))
        self.ranges = ranges
        self.resumed = sum(rng.written for rng in ranges)

    def _split(self, start: int, end: int) -> list[_Range]:
        """[start, end) in ranges that end on multiples of the chunk size."""
        ranges = []
        while start < end:
            stop = min(end, (start // self.chunk_size + 1) * self.chunk_size)
            ranges.append(_Range(start, stop - 1))
            start = stop
        return ranges

    def close(self) -> None:
        """Close the files (the partial and journal stay on disk for a later resume)."""
        for name in ("journal_fd", "fd"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                try:
                    os.close(fd)
                except OSError:
                    pass

    def abandon(self) -> None:
        """After a failed operation: close the files, and remove them when they hold nothing to resume."""
        holds_data = self.fd >= 0 and any(rng.written for rng in self.ranges)
        opened = self.fd >= 0
        self.close()
        if opened and not holds_data:
            for path in (self.path, self.journal):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def _discard_files(self) -> None:
        self.close()
        for path in (self.path, self.journal):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise storage_error(exc, "removing", path) from None

    def _journal_range(self, rng: _Range) -> None:
        """Record the written part of a range (called with the lock held, after its bytes were written)."""
        if rng.written <= rng.journaled or self.journal_fd < 0:
            return
        line = f"{rng.first} {rng.first + rng.written - 1}\n".encode("ascii")
        try:
            os.write(self.journal_fd, line)
        except OSError as exc:
            raise storage_error(exc, "writing", self.journal) from None
        rng.journaled = rng.written

    # -- scheduling --------------------------------------------------------------------------------

    def start(self) -> None:
        """Submit the missing ranges of the current plan (or just the final check)."""
        with self.lock:
            self.generation += 1
            generation = self.generation
            self.hasher = hashlib.sha256()
            self.hashed = 0
            self.head = 0
            self.hashing = False
            todo = [rng for rng in self.ranges if not rng.done]
            self.active += max(1, len(todo))
        if not todo:
            self.group.submit(self._run, None, generation)
        for rng in todo:
            self.group.submit(self._run, rng, generation)

    def _run(self, rng: _Range | None, generation: int) -> None:
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
                self._discard_files()
                raise BlobVerificationError(
                    f"Blob {self.digest} failed verification {self.attempts} times ({self.mismatch}); its partial "
                    "file was deleted. The image in ECR may be damaged (re-push it), or something on the way "
                    "(a proxy, a cache) alters downloads.", self.digest)
            self.attempts += 1
            self._discard_files()
            self.open(fresh=True)
        else:
            self.stream = True
            self._open_journal(append=False)
            self._plan([])
        self.start()

    def _finish(self) -> None:
        self._advance_hash(_worker_buffer())
        try:
            on_disk = os.fstat(self.fd).st_size
        except OSError as exc:
            raise storage_error(exc, "checking", self.path) from None
        actual = "sha256:" + self.hasher.hexdigest()
        if on_disk != self.size:
            self.mismatch = f"expected {self.size} bytes, the file has {on_disk}"
        elif actual != self.digest:
            self.mismatch = f"expected {self.digest}, got {actual}"
        else:
            self._complete()
            return
        self._restart("scratch")

    def _complete(self) -> None:
        try:
            os.unlink(self.journal)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise storage_error(exc, "removing", self.journal) from None
        self.close()
        result = DownloadResult(
            digest=self.digest, size=self.size, path=self.path, bytes_transferred=self.transferred,
            resumed_bytes=self.resumed, attempts=self.attempts, url_refreshes=self.url_refreshes,
            requests=self.requests, retries=self.retries, ranged=not self.stream)
        if self.job.commit is not None:
            self.job.commit(result)
        with self.lock:
            self.result = result
        self.release()

    # -- hashing -----------------------------------------------------------------------------------

    def _prefix_end(self) -> int:
        """End of the contiguous written prefix (lock held)."""
        ranges = self.ranges
        while self.head < len(ranges) and ranges[self.head].done:
            self.head += 1
        if self.head == len(ranges):
            return self.size
        rng = ranges[self.head]
        return rng.first + rng.written

    def _advance_hash(self, view: memoryview) -> None:
        """Hash the written prefix not hashed yet, reading it back from the file. One thread at a time
        per blob; a thread that finds another one hashing leaves it to that one, which looks again
        before it stops."""
        while True:
            with self.lock:
                if self.hashing:
                    return
                start, end = self.hashed, self._prefix_end()
                if end <= start:
                    return
                self.hashing = True
                hasher = self.hasher
            pos = start
            try:
                while pos < end:
                    self.group.check()
                    try:
                        count = _pread_into(self.fd, view[:min(len(view), end - pos)], pos)
                    except OSError as exc:
                        raise storage_error(exc, "reading back", self.path) from None
                    if count <= 0:
                        raise StorageError(f"{self.path} ended at byte {pos} while blob {self.digest} was "
                                           "being checked; something else truncated it.", self.path)
                    hasher.update(view[:count])
                    pos += count
            finally:
                with self.lock:
                    self.hashed = pos
                    self.hashing = False

    # -- the URL -----------------------------------------------------------------------------------

    def _current_url(self) -> tuple[str, int]:
        with self.url_lock:
            if self.url is None:
                self.url = self._ask_url(False)
            return self.url, self.url_version

    def _refresh_url(self, seen_version: int) -> None:
        with self.url_lock:
            if self.url_version != seen_version:
                return  # another range already got a fresh one
            self.url = self._ask_url(True)
            self.url_version += 1
            with self.lock:
                self.url_refreshes += 1

    def _ask_url(self, refresh: bool) -> str:
        url = self.job.get_url(refresh)
        if not isinstance(url, str) or not url.lower().startswith(("https://", "http://")):
            raise TransferError(f"The download URL given for blob {self.digest} is not an http(s) URL.", self.digest)
        return url

    # -- fetching ----------------------------------------------------------------------------------

    def _fetch(self, rng: _Range, generation: int) -> None:
        """Fetch the rest of ``rng``: retries from the last written byte, URL refreshes, fallbacks."""
        policy = self.pool.retry
        failures = 0
        rejections = 0
        view = _worker_buffer()
        try:
            while not rng.done:
                self.group.check()
                if self.generation != generation:
                    return
                url, version = self._current_url()
                before = rng.written
                try:
                    self._attempt(url, rng, generation, view)
                    rejections = 0
                except _UrlRejected:
                    rejections += 1
                    if rejections > self.pool.url_refreshes:
                        raise BlobAccessDeniedError(
                            f"The storage behind ECR refused blob {self.digest} with 403 Forbidden even with "
                            f"{self.pool.url_refreshes} fresh download URLs; check the host clock, and that no "
                            "proxy or S3 VPC endpoint policy blocks ECR's layer bucket.", self.digest, 403) from None
                    if rejections > 1:
                        self.group.sleep(policy.delay(rejections - 2))
                    self._refresh_url(version)
                except (_Retry, OSError, http.client.HTTPException) as exc:
                    reason = _describe_failure(exc, self.pool.http)
                    if isinstance(exc, ssl.SSLCertVerificationError):
                        raise TransferError(
                            f"TLS verification of {_host(url)} failed while downloading blob {self.digest} "
                            f"({reason}); give the CA bundle that signs its certificate (aws_ca_bundle).",
                            self.digest) from None
                    if self.group.cancelled:
                        raise TransferCancelled("The transfer was cancelled.") from None
                    failures = 1 if rng.written > before else failures + 1
                    if failures >= policy.attempts:
                        raise TransferError(
                            f"Downloading blob {self.digest} from {_host(url)} failed {failures} times in a row "
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
                    self._journal_range(rng)  # keep what this range got before it stopped

    def _attempt(self, url: str, rng: _Range, generation: int, view: memoryview) -> None:
        """One GET for the unwritten rest of ``rng``."""
        start = rng.first + rng.written
        headers = {}
        if self.send_ranges and not (start == 0 and rng.last == self.size - 1):
            headers["Range"] = f"bytes={start}-{rng.last}"
        with self.lock:
            self.requests += 1
        try:
            response = self.pool.http.get(url, headers)
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
                raise _Retry(f"HTTP {status} {_reason(status)}")
            elif status == 404:
                raise BlobHttpError(
                    f"The storage behind ECR has no data for blob {self.digest} (404 Not Found) although ECR "
                    "handed out a URL for it; re-push the image, or ask AWS support if it persists.",
                    self.digest, status)
            else:
                raise BlobHttpError(
                    f"The storage behind ECR answered HTTP {status} {_reason(status)} for blob {self.digest}; "
                    "this is not retried.", self.digest, status)
        finally:
            response.close(reuse)

    def _check_answer(self, response: HttpResponse, rng: _Range, start: int) -> int:
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

    def _receive(self, response: HttpResponse, rng: _Range, generation: int, start: int, skip: int,
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
            _pwrite_all(self.fd, view[:count], pos, self.path)
            with self.lock:
                # bytes that continue the hashed prefix are hashed from the buffer, not read back
                inline = not self.hashing and self.hashed == pos
                if inline:
                    self.hashing = True
                    hasher = self.hasher
            if inline:
                try:
                    hasher.update(view[:count])
                finally:
                    with self.lock:
                        self.hashed = pos + count
                        self.hashing = False
            pos += count
            with self.lock:
                rng.written += count
                if rng.written - rng.journaled >= self.chunk_size or rng.done:
                    self._journal_range(rng)
            self._count(count, count)
            if inline:
                hash_mark = rng.written
            if rng.done or rng.written - hash_mark >= HASH_STEP:  # done: hash the ranges that came in ahead
                hash_mark = rng.written
                self._advance_hash(view)
        if not response.length_known and response.readinto(view[:1]):
            if response.status == 200:
                raise _Mismatch(f"the server sent more than the {self.size} bytes the descriptor declares")
            raise _Mismatch("the server sent more bytes than the range it announced")

    def _count(self, written: int, received: int) -> None:
        with self.lock:
            self.transferred += received
        if self.progress is not None and written:
            self.progress(self.digest, written)


def _host(url: str) -> str:
    """The host of a URL, the only part of a presigned URL that may be shown."""
    try:
        return urllib.parse.urlsplit(url).hostname or "the blob storage"
    except ValueError:
        return "the blob storage"


def _reason(status: int) -> str:
    return http.client.responses.get(status, "")


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


def _check_space(downloads: Sequence[_BlobDownload]) -> None:
    """Fail before the first byte when the file systems cannot hold what is still to come."""
    needed: dict[int, tuple[int, str]] = {}
    for blob in downloads:
        directory = os.path.dirname(os.path.abspath(blob.path))
        try:
            device = os.stat(directory).st_dev
        except OSError:
            continue
        try:
            # what the (sparse) partial file still has to allocate
            missing = max(0, blob.size - os.lstat(blob.path).st_blocks * 512)
        except (OSError, AttributeError):
            missing = blob.size
        total, dummy = needed.get(device, (0, directory))
        needed[device] = (total + missing, directory)
    for total, directory in needed.values():
        try:
            stats = os.statvfs(directory)
        except OSError:
            continue
        free = stats.f_bavail * stats.f_frsize
        if stats.f_blocks and total > free:
            raise DiskFullError(
                f"The download needs {total} more bytes in {directory} but only {free} are free there; free "
                "space or choose another destination.", directory)


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
    layers holds a few dozen descriptors, not thousands. ``ranged=False`` fetches each blob as one stream. ``progress(digest, nbytes)`` is called
    from worker threads as bytes are written. The first error cancels the rest and is raised
    (:class:`TransferError` and subclasses, :class:`StorageError` and subclasses, or whatever a URL
    provider raised); partial files and journals stay for the next run, except those of a blob that
    failed verification and those that hold nothing yet.
    """
    if chunk_size < MIN_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be at least {MIN_CHUNK_SIZE}")
    paths = set()
    for job in jobs:
        if not _DIGEST_RE.fullmatch(job.digest):
            raise ValueError(f"unsupported digest {job.digest!r}: only sha256 is supported")
        if job.size < 0:
            raise ValueError(f"negative size for blob {job.digest}")
        if job.path in paths:
            raise ValueError(f"two jobs write {job.path}")
        paths.add(job.path)
    group = pool.group()
    downloads = [_BlobDownload(job, group, chunk_size, ranged, progress) for job in jobs]
    try:
        _check_space(downloads)
        _Window(group, downloads, pool.max_connections).start()
        group.wait()
    except BaseException:
        group.cancel(wait=True)
        raise
    finally:
        for blob in downloads:
            if blob.result is None:
                blob.on_done = _done_call  # nothing more starts after a failure
                try:
                    blob.abandon()
                finally:
                    blob.release()
    results = [blob.result for blob in downloads]
    if any(result is None for result in results):  # pragma: no cover - wait() raises first
        raise TransferError("A download ended without a verified result.")
    return results  # type: ignore[return-value]


# -- uploads ----------------------------------------------------------------------------------------


def plan_parts(size: int, part_size: int = ECR_MAX_PART_SIZE) -> list[tuple[int, int]]:
    """The ``(partFirstByte, partLastByte)`` pairs (inclusive) for uploading ``size`` bytes to ECR.

    Every part is ``part_size`` bytes except the last, which holds the rest (1 to ``part_size`` bytes);
    ``part_size`` must lie within ECR's limits (5 MiB to 20 MiB; use the ``partSize`` that
    InitiateLayerUpload answers), and at most 4,200 parts are allowed. ECR's quota table lists a 10 MiB
    maximum part size, but its API takes parts of up to 20971520 bytes and answers that as ``partSize``.

    A 0-byte blob gives no parts: UploadLayerPart cannot carry an empty part (``partLastByte`` must be
    at least 0, i.e. one byte) and CompleteLayerUpload after no part raises EmptyUploadException, so an
    empty blob cannot be uploaded through the layer API at all. The push code must check it with
    BatchCheckLayerAvailability and, when ECR lacks it, fail with a message saying so.
    """
    if size < 0:
        raise ValueError("size must not be negative")
    if not ECR_MIN_PART_SIZE <= part_size <= ECR_MAX_PART_SIZE:
        raise ValueError(f"part_size must be between {ECR_MIN_PART_SIZE} and {ECR_MAX_PART_SIZE} bytes")
    parts = [(first, min(first + part_size, size) - 1) for first in range(0, size, part_size)]
    if len(parts) > ECR_MAX_PARTS:
        raise ValueError(f"{size} bytes in parts of {part_size} are more than ECR's {ECR_MAX_PARTS} parts")
    return parts


class NotARegularFileError(OSError):
    """Raised by :func:`open_source_file` for a directory, FIFO, socket or device."""


class SourceChangedError(StorageError):
    """A file to upload is no longer the one that was verified (replaced, re-linked or resized)."""

    code = "source_changed"


_SOURCE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_SOURCE_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


def file_identity(info: os.stat_result) -> tuple[int, int, int]:
    """What says that a file read later is the one that was verified: device, inode and size."""
    return info.st_dev, info.st_ino, info.st_size


def open_source_file(path: str, root: str | None = None) -> tuple[int, os.stat_result]:
    """Open a file to upload for reading; return the descriptor and its ``fstat``.

    Without ``root`` the last component of ``path`` must not be a symbolic link; with ``root``,
    ``path`` is relative to it and none of its components may be one (the directories of an image
    source belong to whoever made it). ``O_NONBLOCK`` until ``fstat`` has shown a regular file, so a
    FIFO never blocks. Raises OSError: ``ELOOP`` (or ``ENOTDIR``) for a link, :class:`NotARegularFileError`
    for anything but a regular file.
    """
    dir_fd = None
    name = path
    try:
        if root is not None:
            names = [part for part in path.split("/") if part]
            dir_fd = os.open(root, _SOURCE_DIR_FLAGS & ~os.O_NOFOLLOW)  # the root: the operator's path
            for part in names[:-1]:
                child = os.open(part, _SOURCE_DIR_FLAGS, dir_fd=dir_fd)
                os.close(dir_fd)
                dir_fd = child
            name = names[-1]
        fd = os.open(name, _SOURCE_FLAGS, dir_fd=dir_fd)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotARegularFileError(errno.EINVAL, "not a regular file")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def iter_parts(path: str, parts: Sequence[tuple[int, int]], *, root: str | None = None,
               identity: tuple[int, int, int] | None = None, digest: str = "") -> Iterator[tuple[int, int, bytes]]:
    """Read ``path`` one part at a time: yields ``(first, last, data)``. Only one part is in memory;
    the file stays open until the generator is exhausted or closed.

    The file is opened by :func:`open_source_file` (``root`` as there) when the first part is asked
    for. ``identity`` is the :func:`file_identity` of the file that was verified: a file that is not
    that one any more (replaced by a link or another file, resized) raises :class:`SourceChangedError`
    naming ``digest`` before a byte is read, so a swap after the check never sends other bytes."""
    shown = os.path.join(root, path) if root is not None else path
    changed = (f"The blob {digest} at {shown} changed during the push (it is no longer the regular file that was "
               "verified), so it was not read; find out what replaced it, then run again.")
    try:
        fd, info = open_source_file(path, root)
    except OSError as exc:
        link = exc.errno in (errno.ELOOP, errno.ENOTDIR)  # ENOTDIR: a link where a directory was
        if identity is not None and (link or isinstance(exc, (NotARegularFileError, FileNotFoundError))):
            raise SourceChangedError(changed, shown) from None
        if isinstance(exc, NotARegularFileError):
            raise StorageError(f"{shown} is not a regular file (a directory, FIFO or device), so it is not uploaded.",
                               shown) from None
        if link:
            raise StorageError(f"{shown} is or lies under a symbolic link, which is not followed; give the file itself.",
                               shown) from None
        raise storage_error(exc, "opening", shown) from None
    try:
        if identity is not None and file_identity(info) != tuple(identity):
            raise SourceChangedError(changed, shown)
        for first, last in parts:
            length = last - first + 1
            chunks = []
            got = 0
            while got < length:
                try:
                    data = os.pread(fd, length - got, first + got)
                except OSError as exc:
                    raise storage_error(exc, "reading", shown) from None
                if not data:
                    raise StorageError(f"{shown} ended at byte {first + got}, before the end of part {first}-{last}; "
                                       "the file changed while it was being uploaded.", shown)
                chunks.append(data)
                got += len(data)
            yield first, last, chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)
