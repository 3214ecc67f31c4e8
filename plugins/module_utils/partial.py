# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A blob's download on disk: the partial file, its resume journal, its ranges and its prefix hash.

- :class:`PartialFile`: the file a blob is written into, sized from its descriptor and locked while a
  download uses it, with a journal beside it (``<partial>.journal``) that records the byte ranges known
  written, so that a run killed at any point resumes with only the missing ranges;
- :func:`plan_ranges`: the blob cut into :class:`ByteRange` s, those the journal covers done, the
  missing bytes in closed ranges aligned to multiples of the chunk size (or one stream to the end);
- :class:`PrefixHasher`: one sha256 per blob that follows the contiguous written prefix. Bytes that
  extend it are hashed from the receive buffer as they arrive (all of them for one connection), bytes
  that arrived ahead of it are read back from the file (the page cache) once it reaches them, so the
  digest is known moments after the last byte and no chunk is ever held in memory.

The journal is ASCII: a header line ``ecrkit-partial 1 <digest> <size>``, then one ``<first> <last>``
line (inclusive) per written stretch, appended as bytes land. Unreadable, foreign or damaged journals
count as empty; a last line cut short (the process died while appending) is ignored.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import threading
from typing import Callable, Iterable, Iterator, Sequence

from ansible_collections.ecrkit.images.plugins.module_utils import hostfs
from ansible_collections.ecrkit.images.plugins.module_utils.digest import HEX_RE, Hasher, digest_hex
from ansible_collections.ecrkit.images.plugins.module_utils.errors import DiskFullError, EcrkitError, StorageError, storage_error
from ansible_collections.ecrkit.images.plugins.module_utils.layout_format import LayoutError, LayoutSymlinkError, translate_os_error

JOURNAL_SUFFIX = ".journal"
CLAIM_SUFFIX = ".lock"
TEMP_PREFIX = "tmp-"
CLAIM_TIMEOUT = 1800.0
"""How long a run waits for another run downloading the same blob (or image) to finish with it: long
enough for a multi-GiB layer on a slow link, short enough that a stuck holder is reported."""
_JOURNAL_MAGIC = "ecrkit-partial 1"


def journal_path(partial_path: str) -> str:
    """Where the resume journal of a partial file lives."""
    return partial_path + JOURNAL_SUFFIX


class ByteRange:
    """The bytes ``first``..``last`` (inclusive) of a blob: ``written`` of them are on disk from
    ``first`` on, ``journaled`` of those are recorded in the journal."""

    __slots__ = ("first", "last", "written", "journaled")

    def __init__(self, first: int, last: int, written: int = 0) -> None:
        self.first = first
        self.last = last
        self.written = written
        self.journaled = written

    @property
    def done(self) -> bool:
        return self.first + self.written > self.last


def _merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of half-open intervals, sorted."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def read_journal(path: str, digest: str, size: int, available: int) -> list[tuple[int, int]]:
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


def plan_ranges(covered: Sequence[tuple[int, int]], size: int, chunk_size: int, stream: bool) -> list[ByteRange]:
    """Ranges over a whole blob of ``size`` bytes: the ``covered`` intervals (done) and the missing
    bytes in ranges that end on multiples of ``chunk_size``; with ``stream``, one range from the first
    missing byte to the end."""

    def split(start: int, end: int) -> list[ByteRange]:
        pieces = []
        while start < end:
            stop = min(end, (start // chunk_size + 1) * chunk_size)
            pieces.append(ByteRange(start, stop - 1))
            start = stop
        return pieces

    ranges: list[ByteRange] = []
    pos = 0
    for start, end in covered:
        if start > pos:
            if stream:
                break
            ranges.extend(split(pos, start))
        ranges.append(ByteRange(start, end - 1, end - start))
        pos = end
    if pos < size:
        ranges.extend([ByteRange(pos, size - 1)] if stream else split(pos, size))
    return ranges


def check_free_space(blobs: Sequence[tuple[str, int]]) -> None:
    """Fail before the first byte when the file systems cannot hold what the partial files ``(path, size)``
    still need."""
    needed: dict[int, tuple[int, str]] = {}
    for path, size in blobs:
        directory = os.path.dirname(os.path.abspath(path))
        try:
            device = os.stat(directory).st_dev
        except OSError:
            continue
        try:
            # what the (sparse) partial file still has to allocate
            missing = max(0, size - os.lstat(path).st_blocks * 512)
        except (OSError, AttributeError):
            missing = size
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


class PartialFile:
    """The partial file of one blob and its journal, opened only while a worker is on the blob."""

    def __init__(self, path: str, digest: str, size: int) -> None:
        self.path = path
        self.journal = journal_path(path)
        self.digest = digest
        self.size = size
        self.fd = -1
        self._journal_fd = -1

    @property
    def is_open(self) -> bool:
        return self.fd >= 0

    def open(self, fresh: bool = False) -> list[tuple[int, int]]:
        """Open (or create) the partial file, lock it, size it and open the journal; return the
        intervals the journal says are written (none when ``fresh``).

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
            covered = [] if fresh else read_journal(self.journal, self.digest, self.size, present)
            if present != self.size:
                os.ftruncate(self.fd, self.size)
        except OSError as exc:
            raise storage_error(exc, "sizing", self.path) from None
        self.start_journal(append=bool(covered))
        return covered

    def start_journal(self, append: bool = False) -> None:
        """(Re)open the journal: appending to what it holds, or emptied down to its header."""
        if self._journal_fd >= 0:
            os.close(self._journal_fd)
            self._journal_fd = -1
        try:
            # never through a planted link; truncated only after the descriptor was checked
            self._journal_fd = hostfs.open_regular(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                                   f"the journal of the download of {self.digest}", owner=os.geteuid())
            if not append:
                os.ftruncate(self._journal_fd, 0)
                os.write(self._journal_fd, f"{_JOURNAL_MAGIC} {self.digest} {self.size}\n".encode("ascii"))
        except OSError as exc:
            raise storage_error(exc, "writing", self.journal) from None

    def record(self, rng: ByteRange) -> None:
        """Journal the written part of a range (after its bytes were written; one caller at a time)."""
        if rng.written <= rng.journaled or self._journal_fd < 0:
            return
        line = f"{rng.first} {rng.first + rng.written - 1}\n".encode("ascii")
        try:
            os.write(self._journal_fd, line)
        except OSError as exc:
            raise storage_error(exc, "writing", self.journal) from None
        rng.journaled = rng.written

    def write(self, view: memoryview, offset: int) -> None:
        while view:
            try:
                count = os.pwrite(self.fd, view, offset)
            except OSError as exc:
                raise storage_error(exc, "writing", self.path) from None
            view = view[count:]
            offset += count

    def read_into(self, view: memoryview, offset: int) -> int:
        """Read back written bytes; a file that ends early was truncated by something else."""
        try:
            if hasattr(os, "preadv"):
                count = os.preadv(self.fd, [view], offset)
            else:  # pragma: no cover - platforms without preadv
                data = os.pread(self.fd, len(view), offset)
                view[:len(data)] = data
                count = len(data)
        except OSError as exc:
            raise storage_error(exc, "reading back", self.path) from None
        if count <= 0:
            raise StorageError(f"{self.path} ended at byte {offset} while blob {self.digest} was "
                               "being checked; something else truncated it.", self.path)
        return count

    def size_on_disk(self) -> int:
        try:
            return os.fstat(self.fd).st_size
        except OSError as exc:
            raise storage_error(exc, "checking", self.path) from None

    def complete(self) -> None:
        """The blob is verified: remove the journal and close the file, which stays as the blob."""
        try:
            os.unlink(self.journal)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise storage_error(exc, "removing", self.journal) from None
        self.close()

    def close(self) -> None:
        """Close the files (the partial and journal stay on disk for a later resume)."""
        for name in ("_journal_fd", "fd"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                try:
                    os.close(fd)
                except OSError:
                    pass

    def abandon(self, holds_data: bool) -> None:
        """After a failed operation: close the files, and remove them when they hold nothing to resume."""
        opened = self.is_open
        self.close()
        if opened and not holds_data:
            for path in (self.path, self.journal):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def discard(self) -> None:
        """Close and delete the files (their bytes failed verification)."""
        self.close()
        for path in (self.path, self.journal):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise storage_error(exc, "removing", path) from None


class PrefixHasher:
    """The sha256 of a blob's contiguous written prefix, kept up to date as ranges are written.

    ``lock`` is the blob's lock, which also guards its ranges. One thread at a time hashes; a thread
    that finds another one hashing leaves it to that one, which looks again before it stops.
    """

    def __init__(self, lock: threading.Lock, partial: PartialFile) -> None:
        self._lock = lock
        self._partial = partial
        self._ranges: list[ByteRange] = []
        self._head = 0  # ranges before this index are done
        self._hasher = Hasher()
        self._hashed = 0
        self._hashing = False

    def reset(self, ranges: list[ByteRange]) -> None:
        """Start over on a new plan (lock held)."""
        self._ranges = ranges
        self._head = 0
        self._hasher = Hasher()
        self._hashed = 0
        self._hashing = False

    def digest(self) -> str:
        return self._hasher.digest()

    def extend(self, pos: int, data: memoryview) -> bool:
        """Hash ``data``, just written at ``pos``, when it continues the hashed prefix and no other
        thread is hashing (then no byte has to be read back); return whether it did."""
        with self._lock:
            if self._hashing or self._hashed != pos:
                return False
            self._hashing = True
            hasher = self._hasher
        try:
            hasher.update(data)
        finally:
            with self._lock:
                self._hashed = pos + len(data)
                self._hashing = False
        return True

    def catch_up(self, view: memoryview, check: Callable[[], None]) -> None:
        """Hash the written prefix not hashed yet, reading it back from the file through ``view``;
        ``check`` raises when the download was cancelled."""
        while True:
            with self._lock:
                if self._hashing:
                    return
                start, end = self._hashed, self._prefix_end()
                if end <= start:
                    return
                self._hashing = True
                hasher = self._hasher
            pos = start
            try:
                while pos < end:
                    check()
                    count = self._partial.read_into(view[:min(len(view), end - pos)], pos)
                    hasher.update(view[:count])
                    pos += count
            finally:
                with self._lock:
                    self._hashed = pos
                    self._hashing = False

    def _prefix_end(self) -> int:
        """End of the contiguous written prefix (lock held)."""
        ranges = self._ranges
        while self._head < len(ranges) and ranges[self._head].done:
            self._head += 1
        if self._head == len(ranges):
            return self._partial.size
        rng = ranges[self._head]
        return rng.first + rng.written


class PartialDirectory:
    """Where a layout keeps what is still being written (``.ecrkit/partial``), one file per role:

    - ``<hex>``: the download of a blob (:meth:`path`), on the layout's filesystem so that the commit is
      a rename; ``<hex>.journal`` beside it (:class:`PartialFile`);
    - ``<hex>.lock``: the claim (:meth:`claim`), so that two processes never write the same download;
    - ``tmp-*``: small files being written whole (:meth:`write_temp`), locked while in use.

    ``directory`` is the path; ``make`` creates it when missing (checking that it can be trusted) and
    returns it, before anything is written there.
    """

    def __init__(self, directory: str, make: Callable[[], str]) -> None:
        self.directory = directory
        self._make = make

    def path(self, digest: str) -> str:
        """Where the download of ``digest`` is written until commit: ``<directory>/<hex>``.

        The path is the same for every run, so an interrupted download can be resumed; the directory
        is created if needed. Hold :meth:`claim` while writing it.
        """
        return os.path.join(self._make(), digest_hex(digest))

    def check(self, digest: str) -> None:
        """Refuse what was planted where the download of ``digest`` is kept (see :meth:`claim`); cheap
        (two lstat), so a pull checks every blob before its first request, then again under the claim,
        and the download opens the files without following links anyway."""
        path = self.path(digest)
        for name in (path, journal_path(path)):
            _refuse_planted(name, digest)

    @contextlib.contextmanager
    def claim(self, digest: str, timeout: float = CLAIM_TIMEOUT) -> Iterator[str]:
        """Hold the exclusive right to write the download of ``digest``; yields :meth:`path`.

        Another process (or thread) downloading the same blob here waits, ``timeout`` seconds at most
        (LockTimeoutError after that, naming the lock file). The holder should check that the blob is
        not stored yet once it has the claim: the previous holder may have committed it.
        :meth:`cleanup` never removes a claimed download.

        The partial file and its journal, when they exist, must be plain files of their own: a symbolic
        link (or a hard link, a directory, a FIFO) planted there would have the download written
        wherever it leads, so it raises LayoutSymlinkError or LayoutError and nothing is written.
        """
        path = self.path(digest)
        claim = path + CLAIM_SUFFIX
        fd = hostfs.flock(claim, timeout, f"the download of {digest}")
        try:
            self.check(digest)
            yield path
        finally:
            try:
                if not os.path.lexists(path):
                    # committed or abandoned: the claim file has nothing left to guard
                    hostfs.unlink_quiet(claim)
            finally:
                os.close(fd)

    def write_temp(self, data: bytes, fsync: bool, doing: str, mode: int) -> str:
        """Write ``data`` into a new temp file, locked while written; return its path (to rename)."""
        directory = self._make()
        while True:
            try:
                fd, tmp = hostfs.create_temp(directory, TEMP_PREFIX, mode=mode)
            except OSError as exc:
                raise translate_os_error(exc, doing, directory) from None
            try:
                # cleanup() skips temp files locked by their writer; it may have removed this one between
                # creation and lock, in which case the file has no name left: start again.
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_nlink == 0:
                    continue
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if fsync:
                    os.fsync(fd)
            except OSError as exc:
                hostfs.unlink_quiet(tmp)
                raise translate_os_error(exc, doing, tmp) from None
            except BaseException:
                hostfs.unlink_quiet(tmp)
                raise
            finally:
                os.close(fd)
            return tmp

    def cleanup(self, keep: Iterable[str] = frozenset()) -> list[str]:
        """Remove downloads, their journals and claims, and stale temp files; return the paths removed.

        Downloads of the digests in ``keep`` stay, and so does anything another process (or thread) is
        using at the moment: a claimed download, a temp file being written. Unknown files are left alone.
        """
        kept = {digest_hex(digest) for digest in keep}
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise translate_os_error(exc, "listing partial downloads", self.directory) from None
        removed: list[str] = []
        groups: set[str] = set()
        for name in names:
            base = name
            for suffix in (JOURNAL_SUFFIX, CLAIM_SUFFIX):
                if name.endswith(suffix):
                    base = name[:-len(suffix)]
            if HEX_RE.fullmatch(base):
                groups.add(base)
            elif name.startswith(TEMP_PREFIX):
                path = os.path.join(self.directory, name)
                fd = hostfs.try_flock(path)
                if fd is not None:
                    try:
                        if hostfs.unlink_quiet(path):
                            removed.append(path)
                    finally:
                        os.close(fd)
        for base in sorted(groups - kept):
            removed.extend(self._remove_unclaimed(os.path.join(self.directory, base)))
        return removed

    @staticmethod
    def _remove_unclaimed(path: str) -> list[str]:
        try:
            fd = hostfs.flock(path + CLAIM_SUFFIX, 0, "a partial download")
        except hostfs.LockTimeoutError:
            return []  # claimed: in use by someone else
        removed = []
        try:
            for victim in (path, journal_path(path)):
                if os.path.isdir(victim) and not os.path.islink(victim):
                    continue  # not something this collection makes: left alone, like any unknown file
                try:
                    if hostfs.unlink_quiet(victim):
                        removed.append(victim)
                except OSError as exc:
                    raise translate_os_error(exc, "removing a partial download", victim) from None
            hostfs.unlink_quiet(path + CLAIM_SUFFIX)
        finally:
            os.close(fd)
        return removed


def _refuse_planted(path: str, digest: str) -> None:
    """Refuse anything at ``path`` (a partial download or its journal) but a plain file with one name."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise translate_os_error(exc, f"checking the download of {digest}", path) from None
    if stat.S_ISLNK(info.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise LayoutSymlinkError(
            f"{path} is a symbolic link (to {target}) where the download of {digest} is kept; this collection never makes "
            "one, so nothing is written through it: remove it (and find out who put it there), then run again.")
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        kind = "a file with other names (hard links)" if stat.S_ISREG(info.st_mode) else "not a regular file"
        raise LayoutError(
            f"{path}, where the download of {digest} is kept, is {kind}; this collection never makes one, so nothing is "
            "written to it: remove it, then run again.")
