# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""A tar archive read in place (:class:`TarArchive`): scanned once, members served by positional reads.

Reading (the push side) scans the tar headers once and then serves members by name through
positional reads on the file: nothing is extracted, any number of members can be streamed at once.
An archive compressed as a whole (gzip, bzip2 or xz, as ``docker save | gzip`` makes) is decompressed,
streaming, into an anonymous temporary file (``tmpdir``, default the system's) that disappears when
the archive is closed or the process dies: only up to the tar's end, and only while what its headers
declare fits in that file system's free space less a reserve (:class:`ArchiveTooLargeError`); zstd is
refused with a message saying how to decompress it. The summary a pull reads of what is at its
destination never decompresses. Non-regular files (FIFOs, devices) are refused without being waited
on, and any failure while scanning becomes one :class:`ArchiveFormatError` sentence (PAX headers are
bounded before tarfile reads them). Hostile archives are refused with :class:`UnsafeArchiveError` when they are opened: absolute
member names, ``..`` components, links whose target is absolute or leaves the archive, duplicate
members, device and FIFO members, sparse files. Links inside the archive (Docker and skopeo use them
for repeated layers) are followed within the archive, at most 16 hops. Nothing is ever written
outside the temporary file.
"""

from __future__ import annotations

import bz2
import contextlib
import fcntl
import gzip
import io
import json
import lzma
import os
import posixpath
import re
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator

from ansible_collections.ecrkit.images.plugins.module_utils.archive import (
    ArchiveError, ArchiveFormatError, ArchiveTooLargeError, UnsafeArchiveError, file_kind, show_name)
from ansible_collections.ecrkit.images.plugins.module_utils.digest import digest_hex, matches as digest_matches, of_stream as digest_of_stream
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.layout_format import (
    BLOB_DIGEST_MISMATCH,
    BLOB_MISSING,
    BLOB_PRESENT,
    BLOB_SIZE_MISMATCH,
    MAX_SMALL_BLOB,
    BlobMismatchError,
    BlobNotFoundError,
    check_size,
    translate_os_error,
)

MAX_LINK_HOPS = 16
MAX_EXTENDED_HEADER = 1 << 20
"""A PAX extended header or GNU long name larger than this is refused: an image archive needs a few hundred bytes."""
MAX_MEMBERS = 1 << 18
"""An archive with more members than this is refused (an image of 1,000 layers on 100 platforms has far fewer)."""

_CHUNK = 1 << 20
_COMPRESSIONS = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


@dataclass(frozen=True)
class _Member:
    name: str
    kind: str  # "file", "dir", "link"
    size: int
    offset: int
    target: str | None


class _MemberReader(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes at ``offset`` of a file (positional reads on its own fd)."""

    def __init__(self, fd: int, offset: int, size: int, name: str) -> None:
        super().__init__()
        self._fd = os.dup(fd)
        self._offset = offset
        self._size = size
        self._pos = 0
        self.name = name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._fd < 0:
            raise ValueError("read from a closed archive member")
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        data = os.pread(self._fd, want, self._offset + self._pos)
        if not data:
            raise ArchiveFormatError(f"The archive member {show_name(self.name)} is truncated.")
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        super().close()


def normalise_name(name: str, archive: str) -> str:
    if "\x00" in name:
        raise UnsafeArchiveError(f"The archive {archive} has a member name with a NUL byte; it is refused.")
    if name.startswith("/"):
        raise UnsafeArchiveError(f"The archive {archive} has a member with an absolute path ({show_name(name)}); it is refused.")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"The archive {archive} has a member whose path leaves the archive ({show_name(name)}); it is refused.")
    return "/".join(parts)


def failure_reason(exc: BaseException) -> str:
    """An exception as a short reason in a message (one line; its class when it has no text)."""
    return show_name(str(exc) or type(exc).__name__)


_EXTENDED_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_LONG_NAME_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")


def _padded(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _pax_records(payload: bytes, path: str) -> dict[str, str]:
    """The ``keyword=value`` records of a PAX extended header, parsed as tarfile parses them."""
    records: dict[str, str] = {}
    pos = 0
    while True:
        match = _PAX_RECORD.match(payload, pos)
        if not match:
            return records
        length = int(match.group(1))
        if length == 0:
            raise ArchiveFormatError(f"The archive {path} has a malformed PAX extended header.")
        keyword = match.group(2).decode("utf-8", "surrogateescape")
        records[keyword] = payload[match.end(2) + 1:match.start(1) + length - 1].decode("utf-8", "surrogateescape")
        pos += length


def _walk_tar(path: str, read: Callable[[int], bytes], skip: Callable[[int], None]) -> None:
    """Follow a tar's headers as tarfile does, up to its end, before tarfile itself is given the archive.

    ``read(n)`` returns the next ``n`` bytes (fewer at the end of the data), ``skip(n)`` passes over the
    next ``n`` bytes of member data. Refused here, before anything is allocated for them: an extended
    header (PAX) or GNU long name larger than ``MAX_EXTENDED_HEADER``, sparse members, negative sizes,
    more than ``MAX_MEMBERS`` members. Where the headers stop (zero block, end of data, a bad header
    after the first) tarfile stops too; anything after that is never read.
    """
    offset = 0
    global_pax: dict[str, str] = {}
    pax_size: str | None = None  # the size an extended header gives the member it precedes
    count = 0
    while True:
        block = read(tarfile.BLOCKSIZE)
        if len(block) < tarfile.BLOCKSIZE:
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.EOFHeaderError:
            return
        except tarfile.HeaderError as exc:
            if offset == 0:
                raise ArchiveFormatError(f"{path} is not a readable tar archive ({failure_reason(exc)}).") from None
            return
        where = f"at offset {offset} of the archive {path}"
        offset += tarfile.BLOCKSIZE
        if info.size < 0:
            raise ArchiveFormatError(f"The tar header {where} declares a negative size; the archive is damaged.")
        if info.type in _EXTENDED_TYPES or info.type in _LONG_NAME_TYPES:
            if info.size > MAX_EXTENDED_HEADER:
                raise ArchiveFormatError(
                    f"The extended tar header {where} declares {info.size} bytes, more than the {MAX_EXTENDED_HEADER} "
                    "an image archive could need; the archive is refused.")
            payload = read(_padded(info.size))[:info.size]
            offset += _padded(info.size)
            if info.type in _EXTENDED_TYPES:
                records = _pax_records(payload, path)
                if any(keyword.startswith("GNU.sparse.") for keyword in records):
                    raise UnsafeArchiveError(f"The archive {path} has a sparse member {where}; an image archive never does.")
                if info.type == tarfile.XGLTYPE:
                    global_pax.update(records)
                elif pax_size is None:  # in a chain of extended headers, the first one's size wins (as in tarfile)
                    merged = dict(global_pax)
                    merged.update(records)
                    pax_size = merged.get("size")
            continue
        if info.type == tarfile.GNUTYPE_SPARSE:
            raise UnsafeArchiveError(f"The archive {path} has a sparse member {where}; an image archive never does.")
        size = info.size
        if pax_size is not None:
            try:
                size = int(pax_size)
            except ValueError:
                size = 0
            pax_size = None
            if size < 0:
                raise ArchiveFormatError(f"The tar header {where} declares a negative size; the archive is damaged.")
        count += 1
        if count > MAX_MEMBERS:
            raise ArchiveFormatError(f"The archive {path} has more than {MAX_MEMBERS} members, far more than an image archive has.")
        if info.isreg() or info.type not in tarfile.SUPPORTED_TYPES:
            skip(_padded(size))
            offset += _padded(size)


class _FileHeaders:
    """An uncompressed archive file as :func:`_walk_tar` reads it: positional reads, skips by seeking."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pos = 0

    def read(self, count: int) -> bytes:
        data = os.pread(self._fd, count, self._pos)
        self._pos += len(data)
        return data

    def skip(self, count: int) -> None:
        self._pos += count


class _DecompressedCopy:
    """A decompressing stream as :func:`_walk_tar` reads it: every byte read or skipped is written to
    ``out``, up to ``budget`` bytes; a header that needs more ends it with ArchiveTooLargeError before
    its data is decompressed."""

    def __init__(self, stream: BinaryIO, out: BinaryIO, budget: int, path: str, where: str) -> None:
        self._stream = stream
        self._out = out
        self._budget = budget
        self._path = path
        self._where = where
        self.written = 0

    def _reserve(self, count: int) -> None:
        if self.written + count > self._budget:
            raise ArchiveTooLargeError(
                f"The tar in {self._path} declares at least {self.written + count} bytes, more than the {self._budget} bytes "
                f"that {self._where} can spare for decompressing it (its free space less a reserve); decompress it where there "
                "is room and give the .tar, or point TMPDIR at a larger file system.")

    def read(self, count: int) -> bytes:
        self._reserve(count)
        pieces = []
        wanted = count
        while wanted > 0:
            piece = self._stream.read(min(wanted, _CHUNK))
            if not piece:
                break
            pieces.append(piece)
            wanted -= len(piece)
        data = b"".join(pieces)
        self._out.write(data)
        self.written += len(data)
        return data

    def skip(self, count: int) -> None:
        self._reserve(count)
        while count > 0:
            piece = self._stream.read(min(count, _CHUNK))
            if not piece:
                return
            self._out.write(piece)
            self.written += len(piece)
            count -= len(piece)


def _decompression_budget(fd: int) -> int:
    """How many bytes a decompressed copy may take on the file system of ``fd``: its free space less a
    reserve (a twentieth of its size, at most 1 GiB), so that decompressing never fills it."""
    info = os.fstatvfs(fd)
    reserve = min(info.f_blocks * info.f_frsize // 20, 1 << 30)
    return max(info.f_bavail * info.f_frsize - reserve, 0)


class _HeaderReads:
    """The archive file as tarfile reads it, refusing any read larger than a header can need: a second
    guard (after :func:`_walk_tar`) against a hostile size that tarfile would allocate at once."""

    def __init__(self, raw: BinaryIO, path: str) -> None:
        self._raw = raw
        self._path = path

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > MAX_EXTENDED_HEADER:
            raise ArchiveFormatError(f"The archive {self._path} has a tar header too large to read; it is refused.")
        return self._raw.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


def _open_regular(path: str, follow_symlinks: bool) -> int:
    """Open an archive for reading: a regular file, else refused without blocking (a FIFO, a device) and,
    unless ``follow_symlinks``, without following a symbolic link at ``path``."""
    try:
        info = os.stat(path, follow_symlinks=follow_symlinks)
    except FileNotFoundError:
        raise ArchiveFormatError(f"There is no archive at {path}.") from None
    except OSError as exc:
        raise ArchiveError(f"Cannot read the archive {path}: {exc.strerror or exc}.") from None
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeArchiveError(f"{path} is a symbolic link, which is not followed here; give the archive itself.")
    if not stat.S_ISREG(info.st_mode):
        raise ArchiveFormatError(f"{path} is {file_kind(info.st_mode)}, not a regular file, so it is not an image archive.")
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)  # O_NONBLOCK: should it have become a FIFO meanwhile, do not wait for a writer
    except OSError as exc:
        raise ArchiveError(f"Cannot read the archive {path}: {exc.strerror or exc}.") from None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise ArchiveFormatError(f"{path} was replaced while it was being opened; it is not read.")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


class TarArchive:
    """An uncompressed tar opened for reading by member name; the base of OciArchive and DockerArchive.

    Use as a context manager or call :meth:`close`. Raises ArchiveError and its subclasses only (any
    failure of the scan becomes ArchiveFormatError). ``decompress=False`` refuses a compressed archive
    instead of decompressing it; ``follow_symlinks=False`` refuses a symbolic link at ``path``.
    """

    format = "tar"

    def __init__(self, path: str | os.PathLike, tmpdir: str | None = None, *, decompress: bool = True,
                 follow_symlinks: bool = True) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.blob_names: dict[str, str] = {}
        self.compression: str | None = None
        fd = self._fd = _open_regular(self.path, follow_symlinks)
        try:
            magic = os.pread(fd, 8, 0)
            for prefix, name in _COMPRESSIONS:
                if magic.startswith(prefix):
                    self.compression = name
            if self.compression == "zstd":
                raise ArchiveFormatError(
                    f"{self.path} is compressed with zstd, which cannot be read here; decompress it first (zstd -d) and use the .tar.")
            if self.compression and not decompress:
                raise ArchiveFormatError(
                    f"{self.path} is compressed ({self.compression}); it is not decompressed here, since an archive this collection writes never is.")
            if self.compression:
                self._fd = self._decompress(fd, tmpdir)
                os.close(fd)
            self._members: dict[str, _Member] = self._scan()
            for member in self._members.values():
                if member.kind == "link":
                    # every link must end at a file or directory of the archive: it leads nowhere else
                    self._resolve(member.name, any_kind=True)
        except BaseException:
            self.close()
            raise

    def _decompress(self, fd: int, tmpdir: str | None) -> int:
        """Decompress, streaming, into an anonymous temporary file (returned as a new fd): only as far as
        the tar's headers go (what follows its end is never decompressed), and only while what they
        declare fits in the temporary directory's free space less a reserve."""
        openers: dict[str, Callable[[BinaryIO], Any]] = {
            "gzip": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
            "bzip2": lambda raw: bz2.BZ2File(raw, mode="rb"),
            "xz": lambda raw: lzma.LZMAFile(raw, mode="rb"),
        }
        where = tmpdir or tempfile.gettempdir()
        try:
            temp = tempfile.TemporaryFile(dir=tmpdir)  # pylint: disable=consider-using-with
        except OSError as exc:
            raise translate_os_error(exc, f"creating a temporary file to decompress {self.path}", where) from None
        try:
            budget = _decompression_budget(temp.fileno())
            with os.fdopen(os.dup(fd), "rb") as raw, openers[str(self.compression)](raw) as stream:
                copy_ = _DecompressedCopy(stream, temp, budget, self.path, where)
                _walk_tar(self.path, copy_.read, copy_.skip)
            temp.flush()
            return os.dup(temp.fileno())
        except EcrkitError:
            raise
        except (EOFError, zlib.error, lzma.LZMAError, ValueError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:  # without errno: bz2 and gzip reporting corrupt data
                raise translate_os_error(exc, f"decompressing {self.path}", where) from None
            raise ArchiveFormatError(f"{self.path} is not a valid {self.compression} file ({failure_reason(exc)}).") from None
        except Exception as exc:  # pylint: disable=broad-except  # hostile input: whatever breaks, one sentence
            raise ArchiveFormatError(f"{self.path} could not be decompressed as {self.compression} ({failure_reason(exc)}).") from None
        finally:
            temp.close()

    def _scan(self) -> dict[str, _Member]:
        total = os.fstat(self._fd).st_size
        members: dict[str, _Member] = {}
        try:
            headers = _FileHeaders(self._fd)
            _walk_tar(self.path, headers.read, headers.skip)  # refuses what tarfile must not be given
            with os.fdopen(os.dup(self._fd), "rb") as raw:
                raw.seek(0)  # a dup shares the offset, which decompression left at the end
                with tarfile.open(fileobj=_HeaderReads(raw, self.path), mode="r:") as tar:  # type: ignore[call-overload]
                    for info in tar:
                        self._add_member(members, info, total)
        except EcrkitError:
            raise
        except Exception as exc:  # pylint: disable=broad-except  # hostile input: whatever breaks, one sentence
            if isinstance(exc, OSError) and exc.errno is not None:  # the file, not its content
                raise ArchiveError(f"Cannot read the archive {self.path}: {exc.strerror or exc}.") from None
            raise ArchiveFormatError(f"{self.path} is not a readable tar archive ({failure_reason(exc)}).") from None
        return members

    def _add_member(self, members: dict[str, _Member], info: tarfile.TarInfo, total: int) -> None:
        name = normalise_name(info.name, self.path)
        if not name:
            return  # the "./" entry of the root itself
        if name in members:
            raise UnsafeArchiveError(f"The archive {self.path} holds {show_name(name)} more than once; it is refused.")
        target = None
        if info.isreg() and not info.issparse():
            kind = "file"
            if info.offset_data + info.size > total:
                raise ArchiveFormatError(f"The archive {self.path} is truncated: member {show_name(name)} ends past the end of the file.")
        elif info.isdir():
            kind = "dir"
        elif info.issym() or info.islnk():
            kind = "link"
            if info.linkname.startswith("/"):
                raise UnsafeArchiveError(
                    f"The archive {self.path} has a link {show_name(name)} to an absolute path ({show_name(info.linkname)}); it is refused.")
            base = posixpath.dirname(name) if info.issym() else ""
            target = posixpath.normpath(posixpath.join(base, info.linkname)) if info.linkname else ""
            if target in ("", ".") or target == ".." or target.startswith("../"):
                raise UnsafeArchiveError(
                    f"The archive {self.path} has a link {show_name(name)} pointing outside the archive ({show_name(info.linkname)}); it is refused.")
        else:
            raise UnsafeArchiveError(
                f"The archive {self.path} has a member {show_name(name)} that is a device, FIFO or sparse file; an image archive never does.")
        members[name] = _Member(name, kind, info.size if kind == "file" else 0, info.offset_data, target)

    def _resolve(self, name: str, any_kind: bool = False) -> _Member:
        seen = []
        current = name
        for dummy in range(MAX_LINK_HOPS + 1):
            member = self._members.get(current)
            if member is None:
                if seen:
                    raise ArchiveFormatError(f"The link {show_name(seen[0])} in {self.path} points to {show_name(current)}, which is not in the archive.")
                raise ArchiveFormatError(f"The archive {self.path} has no member {show_name(name)}.")
            if member.kind != "link":
                if member.kind != "file" and not any_kind:
                    raise ArchiveFormatError(f"{show_name(name)} in the archive {self.path} is not a file.")
                return member
            seen.append(current)
            current = str(member.target)
        raise ArchiveFormatError(f"The link {show_name(name)} in {self.path} is part of a loop or a chain longer than {MAX_LINK_HOPS}.")

    # public member access ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every member name (normalised: no leading ``./``), in archive order."""
        return list(self._members)

    def has_member(self, name: str) -> bool:
        """True when ``name`` is (or links to) a regular file of the archive."""
        try:
            self._resolve(normalise_name(name, self.path))
        except ArchiveFormatError:
            return False
        return True

    def member_size(self, name: str) -> int:
        """The size of a file member (after following links)."""
        return self._resolve(normalise_name(name, self.path)).size

    def open_member(self, name: str) -> BinaryIO:
        """A seekable binary reader of a file member, streaming from the archive file; the caller closes it."""
        member = self._resolve(normalise_name(name, self.path))
        return _MemberReader(self._fd, member.offset, member.size, name)  # type: ignore[return-value]

    def read_member(self, name: str, max_size: int) -> bytes:
        """The bytes of a small member; ArchiveFormatError when it is larger than ``max_size``."""
        member = self._resolve(normalise_name(name, self.path))
        if member.size > max_size:
            raise ArchiveFormatError(f"{show_name(name)} in the archive {self.path} is {member.size} bytes, more than the {max_size} expected.")
        with self.open_member(name) as handle:
            return handle.read()

    def hash_member(self, name: str) -> str:
        """The sha256 digest of a member's bytes, streamed."""
        with self.open_member(name) as handle:
            return digest_of_stream(handle)

    def close(self) -> None:
        """Close the archive (and drop the decompressed temporary copy, if any)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @contextlib.contextmanager
    def _closed_on_failure(self, kind: str) -> Iterator[None]:
        """Close the archive when reading what a subclass needs fails; hostile input breaks in any way,
        and whatever breaks that is not already our error becomes one sentence."""
        try:
            yield
        except EcrkitError:
            self.close()
            raise
        except Exception as exc:  # pylint: disable=broad-except
            self.close()
            raise ArchiveFormatError(f"{self.path} is not a readable {kind} ({failure_reason(exc)}).") from None
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "TarArchive":
        return self

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        self.close()

    # blobs by digest: ``blobs/sha256/<hex>`` members (oci-archive, Docker 25+ docker-archive) or the member
    # files ``blob_names`` maps digests to (a classic docker-archive, filled in by its reader's user)

    def blob_member(self, digest: str) -> str:
        """The member name of a blob."""
        return self.blob_names.get(digest) or "blobs/sha256/" + digest_hex(digest)

    def blob_status(self, digest: str, size: int, verify: bool = False) -> str:
        """As :meth:`OciLayout.blob_status`."""
        name = self.blob_member(digest)
        check_size(size, digest)
        if not self.has_member(name):
            return BLOB_MISSING
        if self.member_size(name) != size:
            return BLOB_SIZE_MISMATCH
        if verify and self.hash_member(name) != digest:
            return BLOB_DIGEST_MISMATCH
        return BLOB_PRESENT

    def has_blob(self, digest: str, size: int, verify: bool = False) -> bool:
        """As :meth:`OciLayout.has_blob`."""
        return self.blob_status(digest, size, verify) == BLOB_PRESENT

    def open_blob(self, digest: str) -> BinaryIO:
        """A streaming reader of a blob; BlobNotFoundError when the archive lacks it."""
        name = self.blob_member(digest)
        if not self.has_member(name):
            raise BlobNotFoundError(f"Blob {digest} is not in the archive {self.path}.")
        return self.open_member(name)

    def read_blob(self, digest: str, max_size: int = MAX_SMALL_BLOB) -> bytes:
        """The bytes of a small blob, checked against ``digest``."""
        name = self.blob_member(digest)
        if not self.has_member(name):
            raise BlobNotFoundError(f"Blob {digest} is not in the archive {self.path}.")
        data = self.read_member(name, max_size)
        if not digest_matches(data, digest):
            raise BlobMismatchError(f"Blob {digest} in the archive {self.path} does not hash to its digest.")
        return data

    def _json_member(self, name: str, max_size: int) -> Any:
        try:
            return json.loads(self.read_member(name, max_size).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ArchiveFormatError(f"{show_name(name)} in the archive {self.path} is not valid JSON.") from None
