# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The task pool: the one place in the collection that owns threads.

:class:`TransferPool` has ``max_connections`` worker threads, the connection bound of a whole
operation: every blob of a pull, every layer part of a push shares them, and each worker uses at most
one HTTP connection (of the pool's :class:`~blobhttp.HttpClient`) at a time. Work goes in as plain
callables through a :class:`TaskGroup`; the first task that fails cancels the rest of its group
(queued tasks are dropped, the sockets of running ones shut down), and the group's ``wait()`` raises
that error.
"""

from __future__ import annotations

import collections
import functools
import threading
from typing import Any, Callable

from ansible_collections.ecrkit.images.plugins.module_utils.blobhttp import (
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_READ_TIMEOUT, HttpClient)
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.retry import RetryPolicy

DEFAULT_RETRY = RetryPolicy(attempts=5, base_delay=0.5, max_delay=10.0)
"""Per blob range: how many failures in a row (without a new byte) are tolerated, and the backoff."""
DEFAULT_URL_REFRESHES = 3
"""How many fresh URLs a blob may ask for in a row while the storage keeps answering 403."""


class TransferCancelled(EcrkitError):
    """Raised inside tasks of a cancelled :class:`TaskGroup`; it never leaves ``wait()``."""

    code = "transfer_cancelled"


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

    def drop(self) -> None:
        """The task will never run (its group was cancelled or the pool closed before a worker took it)."""
        self._state = "cancelled"
        self._call = _done_call

    def run(self) -> None:
        """Run the call in the current (worker) thread; a failure cancels the group."""
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

    ``lock`` is the pool's lock: the pool counts the group's tasks in and out under it
    (:meth:`task_added`, :meth:`tasks_finished`).
    """

    def __init__(self, pool: TransferPool, lock: threading.Lock) -> None:
        self._pool = pool
        self._lock = lock
        self._idle = threading.Condition(lock)
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
        self._pool.enqueue(task)
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
        with self._lock:
            if self._error is None:
                self._error = error
        self.cancel()

    def cancel(self, wait: bool = False) -> None:
        """Drop the queued tasks and stop the running ones (their sockets are shut down); with
        ``wait``, return once the running ones have ended, without raising their errors."""
        self._cancelled.set()
        self._pool.cancel_group(self)
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

    # -- called by the pool, with its lock held ----------------------------------------------------

    def mark_cancelled(self) -> None:
        """Cancelled by the pool closing: running tasks stop at their next check (the pool cuts their sockets)."""
        self._cancelled.set()

    def task_added(self) -> None:
        self._outstanding += 1

    def tasks_finished(self, count: int = 1) -> None:
        self._outstanding -= count
        if not self._outstanding:
            self._idle.notify_all()

    def _wait_idle(self) -> None:
        with self._idle:
            while self._outstanding:
                self._idle.wait()


class TransferPool:
    """A fixed bound of worker threads, each using at most one HTTP connection at a time.

    Use it as a context manager; leaving the block cancels whatever is still queued or running and
    joins every worker, so no thread outlives it. Workers start on demand, up to ``max_connections``.

    ``verify`` is True (system CA store), False (no TLS verification) or the path of a CA bundle file
    (or directory). ``connect_timeout`` bounds a connection's setup (TCP and TLS), ``read_timeout`` any
    wait for the next bytes of an answer. ``retry`` is the backoff for failed blob ranges (its ``attempts``
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
        return TaskGroup(self, self._lock)

    def close(self, timeout: float = 30.0) -> None:
        """Cancel what is left, join the workers, close the connections. Idempotent."""
        with self._lock:
            already = self._closed
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            groups = {task.group for task in dropped} | {task.group for task in self._running.values()}
            for group in groups:
                group.mark_cancelled()
            for task in dropped:
                task.drop()
                task.group.tasks_finished()
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

    # -- called by the groups ----------------------------------------------------------------------

    def enqueue(self, task: Task) -> None:
        """Queue a task of one of this pool's groups (:meth:`TaskGroup.submit`), starting a worker if none is idle."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the TransferPool is closed")
            group = task.group
            group.task_added()
            if group.cancelled:
                task.drop()
                group.tasks_finished()
                return
            self._queue.append(task)
            if len(self._queue) > self._idle_workers and len(self._workers) < self.max_connections:
                worker = threading.Thread(target=self._worker, name=f"ecrkit-transfer-{len(self._workers) + 1}",
                                          daemon=True)
                self._workers.append(worker)
                worker.start()
            else:
                self._work.notify()

    def cancel_group(self, group: TaskGroup) -> None:
        """Drop the group's queued tasks and cut the connections of its running ones (:meth:`TaskGroup.cancel`)."""
        me = threading.get_ident()
        with self._lock:
            kept: collections.deque[Task] = collections.deque()
            dropped = 0
            for task in self._queue:
                if task.group is group:
                    task.drop()
                    dropped += 1
                else:
                    kept.append(task)
            self._queue = kept
            if dropped:
                group.tasks_finished(dropped)
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
                task.run()
            finally:
                with self._lock:
                    del self._running[ident]
                    task.group.tasks_finished()
                    task = None  # type: ignore[assignment]
