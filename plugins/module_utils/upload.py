# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Layer uploads to ECR: part planning, reading a source file part by part, and the pipelined part sender.

- :func:`plan_parts` cuts a blob into the parts ``UploadLayerPart`` accepts;
- :func:`iter_parts` reads them one at a time from the very file that was verified (no link followed,
  no FIFO waited on, same inode and size: :func:`open_source_file`, :func:`file_identity`);
- :func:`upload_layers` sends the layers of a push as tasks on a :class:`~pool.TransferPool`, several
  layers at once, each in order, building a layer's next part while the previous one is on its way. A
  botocore ``before-send`` hook (registered through :meth:`~ecr.EcrRepository.hook_before_send`) holds
  a built and signed part until the part before it is in.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import os
import stat
import threading
from typing import Any, Callable, Iterator, Protocol, Sequence

from ansible_collections.ecrkit.images.plugins.module_utils.ecr import EcrRepository, LayerRefusedError
from ansible_collections.ecrkit.images.plugins.module_utils.errors import StorageError, storage_error
from ansible_collections.ecrkit.images.plugins.module_utils.manifest import Descriptor
from ansible_collections.ecrkit.images.plugins.module_utils.pool import TaskGroup, TransferPool

MIB = 1024 * 1024

# ECR's layer upload rules (API model and service quotas).
ECR_MIN_PART_SIZE = 5 * MIB
ECR_MAX_PART_SIZE = 20 * MIB
ECR_MAX_PARTS = 4200


# -- planning and reading ---------------------------------------------------------------------------


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


# -- the part sender --------------------------------------------------------------------------------


class PartSource(Protocol):
    """Where a push reads a layer's parts from (a source's blob reader)."""

    def parts(self, digest: str, parts: Sequence[tuple[int, int]]) -> Iterator[tuple[int, int, bytes]]:
        """``(first, last, data)`` of each of ``parts`` of the blob, in order."""


_holding = threading.local()


def _hold_until_previous_part_is_in(**dummy: Any) -> None:
    """botocore's ``before-send`` event of UploadLayerPart, in the sending thread, once the request is
    built and signed: the part's waiter (set by :meth:`_LayerUploads._send`) holds it there."""
    wait = getattr(_holding, "wait", None)
    if wait is not None:
        wait()


def upload_layers(repository: EcrRepository, blobs: PartSource, layers: Sequence[Descriptor], max_in_flight: int) -> int:
    """Upload ``layers`` (``max_in_flight`` at once, each in order); return the bytes sent."""
    if not layers:
        return 0
    in_flight = min(max_in_flight, len(layers))
    with TransferPool(in_flight + 1) as pool:  # a part of each layer, and one built ahead
        group = pool.group()
        uploads = _LayerUploads(repository, blobs, layers, group)
        for dummy in range(in_flight):
            uploads.start_next_layer()
        group.wait()
        return uploads.sent


class _PartReader:
    """A layer's parts as the source yields them, numbered in that order, one reader at a time."""

    def __init__(self, parts: Iterator[tuple[int, int, bytes]]) -> None:
        self._parts = parts
        self._lock = threading.Lock()
        self._count = 0

    def next(self) -> tuple[int, int, int, bytes]:
        """``(number, first, last, data)`` of the next part."""
        with self._lock:
            first, last, data = next(self._parts)
            self._count += 1
            return self._count - 1, first, last, data

    def close(self) -> None:
        with self._lock:
            close = getattr(self._parts, "close", None)
            if close is not None:
                close()


class _LayerUpload:
    """One layer on its way: its upload ID, its parts, which of them ECR has, and its part tasks."""

    def __init__(self, layer: Descriptor, attempt: int, upload_id: str, reader: _PartReader, parts: int) -> None:
        self.layer = layer
        self.attempt = attempt
        self.upload_id = upload_id
        self.reader = reader
        self.received = [threading.Event() for dummy in range(parts)]
        self.submitted = 0  # part tasks started so far
        self.outstanding = 0  # part tasks not finished


class _LayerUploads:
    """The uploads of one push as tasks on a :class:`~pool.TransferPool`: ``in_flight`` layers at a
    time, each in order.

    ECR takes a layer's parts only in order, and building an UploadLayerPart request (base64, JSON,
    SigV4 payload hash) takes about as long as sending it. Layers in flight together overlap each
    other's building and sending; a layer alone in flight (one big layer, or the last one) does it by
    itself: part N+1's task builds its request while part N is on its way, then waits for it
    (:meth:`_send`). So a layer has one part task at a time, two when it was alone at its last part: at
    most ``in_flight + 1`` parts are in memory, and only one task waits. Each received part starts the next task; the last one completes the layer and
    starts the next layer.
    """

    def __init__(self, repository: EcrRepository, blobs: PartSource, layers: Sequence[Descriptor], group: TaskGroup) -> None:
        self.repository = repository
        self.blobs = blobs
        self.group = group
        self._waiting = collections.deque(layers)
        self._lock = threading.Lock()
        self._active = 0  # layers begun and not completed
        self.sent = 0
        self._hooked = repository.hook_before_send("upload_layer_part", _hold_until_previous_part_is_in)

    def start_next_layer(self) -> None:
        with self._lock:
            layer = self._waiting.popleft() if self._waiting else None
        if layer is not None:
            self.group.submit(self._begin, layer)

    def _begin(self, layer: Descriptor, attempt: int = 1) -> None:
        upload_id, part_size = self.repository.initiate_layer_upload()
        part_size = min(max(part_size, ECR_MIN_PART_SIZE), ECR_MAX_PART_SIZE)
        plan = plan_parts(layer.size, part_size)
        upload = _LayerUpload(layer, attempt, upload_id, _PartReader(self.blobs.parts(layer.digest, plan)), len(plan))
        with self._lock:
            self._active += 1
        if plan:
            self._start_parts(upload)
        else:
            self._complete(upload)

    def _start_parts(self, upload: _LayerUpload) -> None:
        with self._lock:
            wanted = 2 if self._active == 1 else 1
            count = max(0, min(wanted - upload.outstanding, len(upload.received) - upload.submitted))
            upload.outstanding += count
            upload.submitted += count
        for dummy in range(count):
            self.group.submit(self._send_next_part, upload)

    def _send_next_part(self, upload: _LayerUpload) -> None:
        try:
            number, first, last, data = upload.reader.next()
            wait = self._waiter(upload.received[number - 1]) if number else None
            self._send(upload.upload_id, first, last, data, wait)
            with self._lock:
                self.sent += len(data)
                upload.outstanding -= 1
            del data  # before the next part is read
            upload.received[number].set()
        except BaseException:
            upload.reader.close()
            raise
        if number == len(upload.received) - 1:
            self._complete(upload)
        else:
            self._start_parts(upload)

    def _complete(self, upload: _LayerUpload) -> None:
        upload.reader.close()
        try:
            self.repository.complete_layer_upload(upload.upload_id, upload.layer.digest)
        except LayerRefusedError as exc:
            # The source hashed right before the upload, so the bytes changed on the way (ECR never
            # stores a layer under a digest they do not hash to): once more, from the source.
            if upload.attempt > 1:
                raise LayerRefusedError(f"{str(exc).rstrip('.')}, in two uploads from the source; something on the way "
                                        "to ECR (a proxy?) alters the bytes, or the source changes while it is pushed.",
                                        exc.aws_code) from None
            with self._lock:
                self._active -= 1
            self._begin(upload.layer, upload.attempt + 1)
            return
        with self._lock:
            self._active -= 1
        self.start_next_layer()

    def _send(self, upload_id: str, first: int, last: int, data: bytes, wait: Callable[[], None] | None) -> None:
        """UploadLayerPart, calling ``wait`` once the request is built and signed, just before it is sent
        (again before each retry); whatever ``wait`` raises ends the call."""
        if wait is not None and not self._hooked:
            wait()  # a client without botocore's events (a test double): wait before building instead
            wait = None
        _holding.wait = wait
        try:
            self.repository.upload_layer_part(upload_id, first, last, data)
        finally:
            _holding.wait = None

    def _waiter(self, received: threading.Event) -> Callable[[], None]:
        def wait() -> None:
            while not received.wait(0.05):
                self.group.check()  # the push failed elsewhere: this part is not sent
        return wait
