# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""An OCI image layout directory used as a content-addressed blob store.

The directory follows the OCI image-layout specification (``oci-layout``, ``index.json``,
``blobs/sha256/<hex>``), so skopeo, umoci, containerd and Docker read what is written here, and
several images share one directory and its blobs, each recorded in ``index.json`` under its tag
(the ``org.opencontainers.image.ref.name`` annotation).

Guarantees:

- A blob is visible under ``blobs/sha256/<hex>`` only after :meth:`OciLayout.commit_blob` (or
  :meth:`OciLayout.write_blob`) renamed a complete file there. The caller of ``commit_blob`` has
  verified the digest; the commit re-checks the size. ``write_blob`` hashes the bytes itself.
- Only ``sha256:`` followed by 64 lowercase hex digits is accepted wherever a digest becomes a path,
  so a hostile digest cannot name a file outside ``blobs/sha256``.
- ``index.json`` is only changed under an exclusive ``flock`` on ``.ecrkit/lock`` inside the layout:
  :meth:`OciLayout.set_tag` re-reads it, replaces the entry of one tag, keeps every other entry as it
  was, and writes it atomically (temporary file, fsync, rename, fsync of the directory). A reader
  always sees a complete file.

Private files live in ``.ecrkit/`` at the root of the layout, never inside ``blobs/``: the OCI spec
reserves ``blobs/<alg>/`` for content-addressed blobs, and ``umoci gc`` treats every file there as a
blob. The dot-directory sits beside ``oci-layout`` as umoci's own ``.umoci-*`` directories do, and
skopeo, umoci and containerd ignore it. It holds:

- ``.ecrkit/lock``: the lock file of ``index.json`` updates;
- ``.ecrkit/writers``: locked shared by every run writing into the layout, exclusively by a prune
  (:meth:`OciLayout.begin_writing`, :meth:`OciLayout.prune`);
- ``.ecrkit/partial/<hex>``: a download in progress (:meth:`OciLayout.partial_path`), on the same
  filesystem as ``blobs/`` so that the commit is a rename; ``<hex>.journal`` is the transfer engine's
  resume record and ``<hex>.lock`` the lock that :meth:`OciLayout.claim_partial` holds so that two
  processes never write the same partial file;
- ``.ecrkit/partial/tmp-*``: files being written by :meth:`OciLayout.write_blob` and ``index.json``
  updates, locked while in use.

Symbolic links: the root is refused when it is a symbolic link (an operator who gave ``/srv/img``
should not find the image written wherever a link planted there points); ``follow_symlink=True``
accepts it and resolves it once, when the layout is opened, so that a link swapped later does not
redirect writes. ``oci-layout``, ``index.json``, ``blobs``, ``blobs/sha256`` and everything under
``.ecrkit`` must not be symbolic links at all; blobs are opened with ``O_NOFOLLOW`` and a blob that is
a symbolic link is reported as not being a regular file. Links in the components above the root
(``/var`` -> ``/private/var``) are the operator's filesystem and are not inspected.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import json
import os
import re
import secrets
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterable, Iterator

from ansible_collections.ecrkit.images.plugins.module_utils import hostfs
from ansible_collections.ecrkit.images.plugins.module_utils.digest import (
    digest_hex, matches as digest_matches, of_bytes as digest_of_bytes, of_fd as digest_of_fd)
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError, NotWritableError, storage_error

OCI_LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
BLOBS_DIR = "blobs"
PRIVATE_DIR = ".ecrkit"
PARTIAL_DIR = PRIVATE_DIR + "/partial"
LOCK_FILE = PRIVATE_DIR + "/lock"
WRITERS_FILE = PRIVATE_DIR + "/writers"  # shared flock of every run writing blobs, exclusive for a prune
VERIFIED_DIR = PRIVATE_DIR + "/verified"  # one stamp per blob hashed: inode, size, mtime, ctime when it matched
JOURNAL_SUFFIX = ".journal"
CLAIM_SUFFIX = ".lock"
TEMP_PREFIX = "tmp-"

OCI_LAYOUT_VERSION = "1.0.0"
OCI_INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
IMAGE_NAME_ANNOTATION = "io.containerd.image.name"
"""The image's full name (``REGISTRY/REPOSITORY:TAG``), as containerd and Docker write it beside ref.name."""
RESOLVED_ANNOTATION = "ecrkit.images.resolved.digest"
"""What the reference resolved to when the entry was pulled (the index of a multi-platform image whose
platform manifest the entry points at)."""

# Results of OciLayout.blob_status().
BLOB_PRESENT = "present"
BLOB_MISSING = "missing"
BLOB_SIZE_MISMATCH = "size_mismatch"
BLOB_DIGEST_MISMATCH = "digest_mismatch"
BLOB_NOT_A_FILE = "not_a_file"

MAX_INDEX_SIZE = 16 << 20
"""index.json larger than this is refused (thousands of tags fit in a few hundred KiB)."""
MAX_SMALL_BLOB = 4 << 20
"""Default limit of :meth:`OciLayout.read_blob`: ECR's manifest size limit."""
DEFAULT_LOCK_TIMEOUT = 60.0
CLAIM_TIMEOUT = 1800.0
"""How long a run waits for another run downloading the same blob (or image) to finish with it: long
enough for a multi-GiB layer on a slow link, short enough that a stuck holder is reported."""
PUBLIC_DIR_MODE = 0o755
"""Directories of a layout: never group-writable, whatever the umask, so that the next run trusts them."""
PUBLIC_FILE_MODE = 0o644

_HEX_RE = re.compile(r"[0-9a-f]{64}")


class LayoutError(EcrkitError):
    """Something about an OCI layout directory or a blob in it is wrong; the base of this file's errors."""

    code = "layout_error"


class NotALayoutError(LayoutError):
    """The path is missing, not a directory, or a directory that is not an OCI image layout."""

    code = "not_an_oci_layout"


class LayoutSymlinkError(LayoutError):
    """The layout root, or a file of the layout itself, is a symbolic link."""

    code = "layout_symlink"


class LockTimeoutError(LayoutError):
    """Another process held a lock of the layout for longer than the timeout."""

    code = "lock_timeout"


class CorruptIndexError(LayoutError):
    """``index.json`` (or ``oci-layout``) cannot be parsed or does not have the OCI shape."""

    code = "corrupt_index"


class InvalidDescriptorError(LayoutError):
    """A descriptor that is not an object with a ``mediaType``, or a size that is not a count of bytes
    (a bad digest is :class:`~.digest.InvalidDigestError`)."""

    code = "invalid_descriptor"


class BlobNotFoundError(LayoutError):
    """A blob (or the partial file to commit) is not there."""

    code = "blob_not_found"


class BlobMismatchError(LayoutError):
    """Bytes whose size or digest is not the one they are stored or committed under."""

    code = "blob_mismatch"


@dataclass(frozen=True)
class PartialBlob:
    """A download in progress, as :meth:`OciLayout.list_partials` reports it."""

    digest: str
    path: str
    size: int
    journal: bool


def check_size(size: Any, what: str = "a blob") -> int:
    """Return ``size`` when it is a non-negative int (not a bool); raise InvalidDescriptorError otherwise."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidDescriptorError(f"The size of {what} must be a whole number of bytes, not {size!r}.")
    return size


def check_descriptor(value: Any, where: str = "a descriptor") -> dict[str, Any]:
    """Validate an OCI descriptor (``mediaType``, ``digest``, ``size``); return a deep copy of it."""
    if not isinstance(value, dict):
        raise InvalidDescriptorError(f"{_cap(where)} must be a JSON object, not {type(value).__name__}.")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise InvalidDescriptorError(f"{_cap(where)} has no mediaType.")
    digest_hex(value.get("digest"))
    check_size(value.get("size"), f"{value.get('digest')} in {where}")
    annotations = value.get("annotations")
    if annotations is not None and not isinstance(annotations, dict):
        raise InvalidDescriptorError(f"The annotations of {where} must be a JSON object.")
    return copy.deepcopy(value)


def ref_name(entry: Any) -> str | None:
    """The ``org.opencontainers.image.ref.name`` annotation of an index entry, or None."""
    if isinstance(entry, dict):
        annotations = entry.get("annotations")
        if isinstance(annotations, dict):
            name = annotations.get(REF_NAME_ANNOTATION)
            if isinstance(name, str):
                return name
    return None


def check_tag(tag: Any) -> str:
    """A tag to store as ref.name: a non-empty string without control characters."""
    if not isinstance(tag, str) or not tag or any(ord(char) < 0x20 or ord(char) == 0x7F for char in tag):
        raise LayoutError(f"{tag!r} cannot be used as a tag in an OCI layout: it must be a non-empty string without control characters.")
    return tag


def parse_index(data: bytes, where: str) -> dict[str, Any]:
    """Parse the bytes of an ``index.json``; entries other than the one looked up are kept as they are."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptIndexError(f"{where} is not valid JSON ({exc}); restore it or remove the layout.") from None
    if not isinstance(doc, dict):
        raise CorruptIndexError(f"{where} is not a JSON object, so it is not an OCI image index.")
    if doc.get("schemaVersion") != 2:
        raise CorruptIndexError(f"{where} has schemaVersion {doc.get('schemaVersion')!r}; an OCI image index has 2.")
    manifests = doc.get("manifests", [])
    if not isinstance(manifests, list) or not all(isinstance(entry, dict) for entry in manifests):
        raise CorruptIndexError(f"The manifests of {where} must be a list of JSON objects.")
    doc["manifests"] = manifests
    return doc


def parse_oci_layout(data: bytes, where: str) -> dict[str, Any]:
    """Parse an ``oci-layout`` file: ``{"imageLayoutVersion": "1.x.y"}``."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        doc = None
    version = doc.get("imageLayoutVersion") if isinstance(doc, dict) else None
    if not isinstance(version, str) or not version.startswith("1."):
        raise NotALayoutError(f"{where} does not declare an OCI image layout version 1.x, so this is not an OCI layout this collection can use.")
    return doc


def find_in_index(index: dict[str, Any], tag: str, where: str) -> dict[str, Any] | None:
    """The first entry of ``index`` whose ref.name is ``tag`` (validated, copied), or None."""
    check_tag(tag)
    for entry in index["manifests"]:
        if ref_name(entry) == tag:
            return check_descriptor(entry, f"the entry for tag {tag} in {where}")
    return None


def translate_os_error(exc: OSError, doing: str, path: str) -> EcrkitError:
    """An OSError met while ``doing`` something to ``path``, as the error to raise for the operator."""
    if exc.errno == errno.ELOOP:
        return LayoutSymlinkError(f"{path} is a symbolic link, which is refused while {doing}.")
    return storage_error(exc, doing, path)


def fsync_dir(path: str) -> None:
    """fsync a directory so that a rename in it survives a crash (ignored where unsupported)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def create_temp(directory: str, prefix: str, suffix: str = "", mode: int = 0o600) -> tuple[int, str]:
    """Create a new file with a random name (``O_EXCL``: never an existing file, link or FIFO) and
    ``mode`` less the umask (private by default: nobody reads an image while it is written); return
    (fd, path)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        path = os.path.join(directory, prefix + secrets.token_hex(8) + suffix)
        try:
            return os.open(path, flags, mode), path
        except FileExistsError:
            continue


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _unlink_quiet(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _stamp(info: os.stat_result) -> bytes:
    return f"{info.st_ino} {info.st_size} {info.st_mtime_ns} {info.st_ctime_ns}\n".encode("ascii")


def _flock(path: str, timeout: float, what: str, shared: bool = False) -> int:
    """Open (creating) ``path`` and take an exclusive (with ``shared``, a shared) flock on it; return the fd.

    ``timeout`` 0 tries once; every wait is bounded. The lock file must be a regular file of this user
    (a link, a FIFO or another user's file planted there is refused, never waited on). The lock file may
    be unlinked by its holder (a finished claim) or by cleanup; a lock taken on a file that is no longer
    at ``path`` is dropped and taken again on the new one.
    """
    deadline = time.monotonic() + max(0.0, timeout)
    delay = 0.002
    while True:
        try:
            fd = hostfs.open_regular(path, os.O_RDONLY | os.O_CREAT, f"the lock file of {what}", owner=os.geteuid())
        except OSError as exc:
            raise translate_os_error(exc, f"locking {what}", path) from None
        try:
            while True:
                try:
                    fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeoutError(
                            f"Timed out after {timeout:g} s waiting for {what} (lock file {path}), which another "
                            "process is holding; let it finish, or raise the timeout.") from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
            try:
                current = os.lstat(path)
            except FileNotFoundError:
                current = None
            held = os.fstat(fd)
            if current is not None and (current.st_ino, current.st_dev) == (held.st_ino, held.st_dev):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def lock_path(path: str, timeout: float, what: str) -> int:
    """Take an exclusive lock on the file ``path`` (created if missing) for ``what``; the fd to close."""
    return _flock(path, timeout, what)


def _check_partial_file(path: str, digest: str) -> None:
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


def _digest_files(directory: str, doing: str) -> tuple[set[str], list[tuple[str, os.stat_result]]]:
    """Every name in ``directory`` (none when it does not exist), and the regular files among them named
    as a digest's hex, sorted, with their lstat; a file removed meanwhile is left out."""
    try:
        names = set(os.listdir(directory))
    except FileNotFoundError:
        return set(), []
    except OSError as exc:
        raise translate_os_error(exc, doing, directory) from None
    files = []
    for name in sorted(names):
        if not _HEX_RE.fullmatch(name):
            continue
        try:
            info = os.lstat(os.path.join(directory, name))
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise translate_os_error(exc, doing, directory) from None
        if stat.S_ISREG(info.st_mode):
            files.append((name, info))
    return names, files


def _try_flock_existing(path: str) -> int | None:
    """flock an existing file without waiting; the fd, or None when it is missing or held elsewhere."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class OciLayout:
    """An OCI image layout directory: blobs by digest, tags in ``index.json``.

    ``OciLayout(root)`` opens an existing layout and writes nothing (a read-only source works).
    ``OciLayout(root, create=True)`` also creates the directory, or initialises an empty one, and checks
    that it is writable. A directory that is not empty and has no ``oci-layout`` file is refused rather
    than written into; the only exception is what an interrupted initialisation leaves (``blobs/``,
    ``index.json``, ``.ecrkit/``), which is completed. See the module docstring for symbolic links.

    Raises NotALayoutError, LayoutSymlinkError, NotWritableError, CorruptIndexError.

    Thread safety: the methods may be called from several threads; :meth:`lock` serialises threads of
    this object and processes alike.
    """

    def __init__(self, root: str | os.PathLike, create: bool = False, *, follow_symlink: bool = False,
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT, private: bool = False, root_mode: int | None = None) -> None:
        root = os.path.abspath(os.fspath(root))
        self.lock_timeout = lock_timeout
        self._thread_lock = threading.RLock()
        self._lock_depth = 0
        self._lock_fd: int | None = None
        self._writers_fd: int | None = None
        self._trusted: bool | None = None
        # a new root gets its final mode before anything is written into it (never group/other-writable)
        mode = hostfs.PRIVATE_MODE if private else PUBLIC_DIR_MODE if root_mode is None else root_mode & ~0o022
        self.root = self._open_root(root, create, follow_symlink, mode)
        if create:
            self.require_writable()
        for name in (OCI_LAYOUT_FILE, INDEX_FILE, BLOBS_DIR, BLOBS_DIR + "/sha256", PRIVATE_DIR, PARTIAL_DIR, LOCK_FILE):
            path = self._path(name)
            if os.path.islink(path):
                raise LayoutSymlinkError(
                    f"{path} is a symbolic link (to {os.readlink(path)}); the files of an OCI layout must be real "
                    "files and directories, so the layout is refused.")
        if not os.path.lexists(self._path(OCI_LAYOUT_FILE)):
            if not create:
                raise NotALayoutError(f"{self.root} is not an OCI image layout: it has no oci-layout file.")
            self._refuse_foreign()
            with self.lock():  # several processes may create the same layout at once
                if not os.path.lexists(self._path(OCI_LAYOUT_FILE)):
                    self._initialise()
        self._check_marker()
        if not os.path.lexists(self._path(INDEX_FILE)):
            if not create:
                raise NotALayoutError(f"The OCI layout {self.root} has no index.json; it is incomplete.")
            with self.lock():
                if not os.path.lexists(self._path(INDEX_FILE)):
                    self._write_file(INDEX_FILE, _index_bytes({"schemaVersion": 2, "manifests": []}), True, "creating index.json")
        if create:
            self._check_writable()
        self.read_index()

    # opening ---------------------------------------------------------------------------------------

    @staticmethod
    def _open_root(root: str, create: bool, follow_symlink: bool, mode: int) -> str:
        try:
            info = os.lstat(root)
        except FileNotFoundError:
            if not create:
                raise NotALayoutError(f"There is no OCI layout at {root}: the directory does not exist.") from None
            hostfs.verify_directory(root, "the OCI layout", create=True, mode=mode)
            info = os.lstat(root)
        except OSError as exc:
            raise translate_os_error(exc, "opening the OCI layout", root) from None
        if stat.S_ISLNK(info.st_mode):
            target = os.readlink(root)
            if not follow_symlink:
                raise LayoutSymlinkError(
                    f"{root} is a symbolic link to {target}; refusing to use it as an OCI layout (give the real "
                    "directory instead).")
            root = os.path.realpath(root)
            try:
                info = os.stat(root)
            except OSError:
                raise NotALayoutError(f"{root} (the target of a symbolic link) does not exist.") from None
        if not stat.S_ISDIR(info.st_mode):
            raise NotALayoutError(f"{root} is not a directory, so it cannot be an OCI image layout.")
        return root

    def _check_marker(self) -> None:
        path = self._path(OCI_LAYOUT_FILE)
        parse_oci_layout(self._read_file(path, 64 << 10, "the oci-layout file"), path)

    def _refuse_foreign(self) -> None:
        try:
            names = sorted(os.listdir(self.root))
        except OSError as exc:
            raise translate_os_error(exc, "listing the directory", self.root) from None
        # what an interrupted or concurrent initialisation leaves is not foreign
        foreign = [name for name in names if name not in (BLOBS_DIR, INDEX_FILE, PRIVATE_DIR, OCI_LAYOUT_FILE)]
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise NotALayoutError(
                f"{self.root} is not empty and is not an OCI image layout (it holds {shown}); refusing to write an "
                "image into it: give a new or empty directory, or an existing OCI layout.")

    def _initialise(self) -> None:
        self._refuse_foreign()
        if os.path.lexists(self._path(INDEX_FILE)):
            parse_index(self._read_file(self._path(INDEX_FILE), MAX_INDEX_SIZE, "index.json"), self._path(INDEX_FILE))
        else:
            self._write_file(INDEX_FILE, _index_bytes({"schemaVersion": 2, "manifests": []}), True, "creating index.json")
        self._ensure_dir(BLOBS_DIR + "/sha256")
        # the marker goes last: a directory with oci-layout in it is a complete layout
        self._write_file(OCI_LAYOUT_FILE, _index_bytes({"imageLayoutVersion": OCI_LAYOUT_VERSION}), True, "creating oci-layout")

    def require_writable(self) -> None:
        """Refuse to write into a layout another user could change under this run (see :mod:`hostfs`).

        Checked once, before the first write: the root and every directory above it must be changeable
        only by root and this user. Reading needs no such trust (a push source may be anyone's); a
        layout that is not trusted is still read, but nothing is written into it, stamps included.
        """
        if self._trusted is None:
            try:
                self.root = hostfs.verify_directory(self.root, "the OCI layout")
                self._trusted = True
            except hostfs.UntrustedPathError:
                self._trusted = False
                raise
        if not self._trusted:
            hostfs.verify_directory(self.root, "the OCI layout")  # raises again, with the reason

    def _may_record(self) -> bool:
        try:
            self.require_writable()
        except EcrkitError:
            return False
        return True

    def _check_writable(self) -> None:
        for name in ("", BLOBS_DIR + "/sha256"):
            path = self._path(name) if name else self.root
            if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
                raise NotWritableError(f"The OCI layout directory {path} is not writable by this user; fix its permissions or choose another destination.")

    # paths and small files -------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"OciLayout({self.root!r})"

    def _path(self, name: str) -> str:
        return os.path.join(self.root, *name.split("/")) if name else self.root

    def _ensure_dir(self, name: str) -> str:
        """Make (or check) the directory ``name`` of the layout: ``.ecrkit`` and what is below it private
        to this user (mode 0700), the others never group- or world-writable."""
        self.require_writable()
        path = self.root
        private = False
        for part in name.split("/"):
            private = private or part == PRIVATE_DIR
            if private:
                path = hostfs.private_directory(path, part, "the private files of the OCI layout")
            else:
                path = self._public_dir(os.path.join(path, part))
        return path

    @staticmethod
    def _public_dir(path: str) -> str:
        try:
            os.mkdir(path, PUBLIC_DIR_MODE)
        except FileExistsError:
            pass
        except OSError as exc:
            raise translate_os_error(exc, "creating a directory of the OCI layout", path) from None
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode):
            raise LayoutSymlinkError(f"{path} is not a plain directory; the layout is refused.")
        if not hostfs.is_trusted(info):
            raise hostfs.UntrustedPathError(
                f"{path} {hostfs.untrusted_reason(info)}, so another user could change the blobs of the OCI layout; "
                "give it to this user and close it to others (chown, chmod go-w).", path)
        return path

    @staticmethod
    def _read_file(path: str, limit: int, what: str) -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotALayoutError(f"{path} is missing, so this is not a complete OCI layout.") from None
        except OSError as exc:
            raise translate_os_error(exc, f"reading {what}", path) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CorruptIndexError(f"{path} is not a regular file, so this is not an OCI layout this collection can use.")
        with os.fdopen(fd, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            data = handle.read(size + 1) if size <= limit else b""
        if size > limit or len(data) > limit:
            raise CorruptIndexError(f"{path} is larger than {limit} bytes, far more than {what} should be.")
        return data

    def _write_file(self, name: str, data: bytes, fsync: bool, doing: str) -> None:
        """Write the file ``name`` (relative to the root) atomically: temp file, fsync, rename, fsync dir."""
        target = self._path(name)
        tmp = self._write_temp(data, fsync, doing)
        try:
            os.replace(tmp, target)
        except OSError as exc:
            _unlink_quiet(tmp)
            raise translate_os_error(exc, doing, target) from None
        if fsync:
            fsync_dir(os.path.dirname(target))

    def _write_temp(self, data: bytes, fsync: bool, doing: str) -> str:
        """Write ``data`` into a new temp file of the partial directory, locked while written; return its path."""
        directory = self._ensure_dir(PARTIAL_DIR)
        while True:
            try:
                fd, tmp = create_temp(directory, TEMP_PREFIX, mode=PUBLIC_FILE_MODE)  # index.json and blobs: readable
            except OSError as exc:
                raise translate_os_error(exc, doing, directory) from None
            try:
                # cleanup_partials() skips temp files locked by their writer; it may have removed this
                # one between creation and lock, in which case the file has no name left: start again.
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
                _unlink_quiet(tmp)
                raise translate_os_error(exc, doing, tmp) from None
            except BaseException:
                _unlink_quiet(tmp)
                raise
            finally:
                os.close(fd)
            return tmp

    # blobs -----------------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> str:
        """``<root>/blobs/sha256/<hex>`` for a valid sha256 digest (:class:`~.digest.InvalidDigestError` otherwise)."""
        return os.path.join(self.root, BLOBS_DIR, "sha256", digest_hex(digest))

    def blob_status(self, digest: str, size: int, verify: bool = False) -> str:
        """What is stored under ``digest``: one of the ``BLOB_*`` constants.

        ``BLOB_PRESENT`` when a regular file of ``size`` bytes is there (and, with ``verify``, its bytes
        hash to ``digest``); otherwise ``BLOB_MISSING``, ``BLOB_NOT_A_FILE`` (a symbolic link, a
        directory...), ``BLOB_SIZE_MISMATCH`` or ``BLOB_DIGEST_MISMATCH``. Anything but present means the
        blob must be fetched again; :meth:`commit_blob` then replaces what is there.
        """
        path = self.blob_path(digest)
        check_size(size, digest)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return BLOB_MISSING
        except OSError as exc:
            raise translate_os_error(exc, f"checking blob {digest}", path) from None
        if not stat.S_ISREG(info.st_mode):
            return BLOB_NOT_A_FILE
        if info.st_size != size:
            return BLOB_SIZE_MISMATCH
        if verify:
            with self.open_blob(digest) as handle:
                if digest_of_fd(handle.fileno()) != digest:
                    return BLOB_DIGEST_MISMATCH
        return BLOB_PRESENT

    def has_blob(self, digest: str, size: int, verify: bool = False) -> bool:
        """True when the blob is stored with that size (and, with ``verify``, those bytes)."""
        return self.blob_status(digest, size, verify) == BLOB_PRESENT

    def verified_status(self, digest: str, size: int, record: bool = True) -> str:
        """:meth:`blob_status` with the bytes checked, hashing only a file that changed since it last matched.

        A stamp (``.ecrkit/verified/<hex>``: inode, size, mtime and ctime) is kept when a blob's bytes are
        known to match its digest: at commit, and after a successful check here (unless ``record`` is
        false, as in check mode). A file whose stamp still matches is not read again; any write to it,
        a replacement or a ``touch`` changes its ctime or inode, and it is hashed again. So a tampered blob
        is found on the next run, while a run that changes nothing reads no layer.
        """
        state = self.blob_status(digest, size)
        if state != BLOB_PRESENT:
            return state
        path = self.blob_path(digest)
        try:
            info = os.lstat(path)
        except OSError as exc:
            raise translate_os_error(exc, f"checking blob {digest}", path) from None
        stamp_path = self._path(VERIFIED_DIR + "/" + digest_hex(digest))
        try:
            with os.fdopen(hostfs.open_regular(stamp_path, os.O_RDONLY, "a verification stamp"), "rb") as handle:
                if handle.read(200) == _stamp(info):
                    return BLOB_PRESENT
        except (OSError, EcrkitError):
            pass  # no stamp (yet), or not one of ours: hash it
        state = self.blob_status(digest, size, verify=True)
        if state == BLOB_PRESENT and record and self._may_record():
            self._record_verified(digest, info)
        return state

    def _record_verified(self, digest: str, info: os.stat_result | None = None) -> None:
        """Best effort: a stamp that cannot be written only means the blob is hashed again next time.

        Written in place, not through a temp file a kill could leave behind: a torn or interleaved stamp
        never equals a blob's stat line, so the worst it costs is that hash."""
        try:
            if info is None:
                info = os.lstat(self.blob_path(digest))
            directory = self._ensure_dir(VERIFIED_DIR)
            fd = hostfs.open_regular(os.path.join(directory, digest_hex(digest)), os.O_WRONLY | os.O_CREAT,
                                     "a verification stamp", owner=os.geteuid())
            try:
                os.ftruncate(fd, 0)  # after the checks: O_TRUNC would cut a file before they ran
                os.write(fd, _stamp(info))
            finally:
                os.close(fd)
        except (OSError, EcrkitError):
            pass

    def open_blob(self, digest: str) -> BinaryIO:
        """Open a stored blob for reading (binary, unbuffered position; the caller closes it)."""
        path = self.blob_path(digest)
        try:
            # O_NONBLOCK: a FIFO planted as a blob must not block the open; fstat then refuses it
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobNotFoundError(f"Blob {digest} is not in the OCI layout {self.root}.") from None
        except OSError as exc:
            raise translate_os_error(exc, f"opening blob {digest}", path) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise BlobNotFoundError(f"Blob {digest} in the OCI layout {self.root} is not a regular file.")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")

    def read_blob(self, digest: str, max_size: int = MAX_SMALL_BLOB) -> bytes:
        """The bytes of a small blob (manifest, index, config), checked against ``digest``."""
        with self.open_blob(digest) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max_size:
                raise BlobMismatchError(f"Blob {digest} in {self.root} is larger than {max_size} bytes, too large for a manifest or config.")
            data = handle.read(size + 1)  # not read(max_size): that would allocate max_size up front
        if not digest_matches(data, digest):
            raise BlobMismatchError(f"Blob {digest} in {self.root} does not hash to its digest; it was altered on disk.")
        return data

    def write_blob(self, data: bytes, expected_digest: str | None = None, fsync: bool = True) -> str:
        """Store a small blob (manifest, config) and return its digest.

        The digest is computed here. With ``expected_digest``, bytes that hash to anything else raise
        BlobMismatchError and nothing is written. A blob already stored with these bytes is left alone.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("write_blob() takes bytes")
        data = bytes(data)
        digest = digest_of_bytes(data)
        if expected_digest is not None:
            digest_hex(expected_digest)
            if expected_digest != digest:
                raise BlobMismatchError(
                    f"Refusing to store a blob as {expected_digest}: its {len(data)} bytes hash to {digest}.")
        if self.has_blob(digest, len(data), verify=True):
            return digest
        self._ensure_dir(BLOBS_DIR + "/sha256")
        tmp = self._write_temp(data, fsync, f"writing blob {digest}")
        target = self.blob_path(digest)
        try:
            os.replace(tmp, target)
        except OSError as exc:
            _unlink_quiet(tmp)
            raise translate_os_error(exc, f"storing blob {digest}", target) from None
        if fsync:
            fsync_dir(os.path.dirname(target))
        self._record_verified(digest)
        return digest

    # partial downloads -----------------------------------------------------------------------------

    def partial_path(self, digest: str) -> str:
        """Where the download of ``digest`` is written until commit: ``.ecrkit/partial/<hex>``.

        The path is the same for every run, so an interrupted download can be resumed; the directory
        is created if needed. Hold :meth:`claim_partial` while writing it.
        """
        hexpart = digest_hex(digest)
        return os.path.join(self._ensure_dir(PARTIAL_DIR), hexpart)

    def check_partial(self, digest: str) -> None:
        """Refuse what was planted where the download of ``digest`` is kept (see :meth:`claim_partial`);
        cheap (two lstat), so a pull checks every blob before its first request, then again under the
        claim, and the download opens the files without following links anyway."""
        path = self.partial_path(digest)
        for name in (path, path + JOURNAL_SUFFIX):
            _check_partial_file(name, digest)

    @contextlib.contextmanager
    def claim_partial(self, digest: str, timeout: float = CLAIM_TIMEOUT) -> Iterator[str]:
        """Hold the exclusive right to write the partial file of ``digest``; yields :meth:`partial_path`.

        Another process (or thread) downloading the same blob into this layout waits here, ``timeout``
        seconds at most (LockTimeoutError after that, naming the lock file). The holder
        should check :meth:`has_blob` first once it has the claim: the previous holder may have
        committed the blob. :meth:`cleanup_partials` never removes a claimed partial.

        The partial file and its journal, when they exist, must be plain files of their own: a symbolic
        link (or a hard link, a directory, a FIFO) planted there would have the download written
        wherever it leads, so it raises LayoutSymlinkError or LayoutError and nothing is written.
        """
        path = self.partial_path(digest)
        claim = path + CLAIM_SUFFIX
        fd = _flock(claim, timeout, f"the download of {digest}")
        try:
            self.check_partial(digest)
            yield path
        finally:
            try:
                if not os.path.lexists(path):
                    # committed or abandoned: the claim file has nothing left to guard
                    _unlink_quiet(claim)
            finally:
                os.close(fd)

    def commit_blob(self, partial_path: str, digest: str, size: int, fsync: bool = True) -> str:
        """Make a complete download visible as ``blobs/sha256/<hex>``; return that path.

        The caller has verified that the file's bytes hash to ``digest``. Here the size is checked
        (BlobMismatchError, and the file is left where it is), the file is fsynced when ``fsync``,
        renamed into place (replacing a damaged blob of that name), and the journal sidecar
        ``partial_path + ".journal"`` is removed; then the blobs directory is fsynced when ``fsync``.
        """
        target = self.blob_path(digest)
        check_size(size, digest)
        try:
            fd = os.open(partial_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobNotFoundError(f"Cannot commit blob {digest}: its download file {partial_path} is not there.") from None
        except OSError as exc:
            raise translate_os_error(exc, f"committing blob {digest}", partial_path) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise BlobMismatchError(f"Cannot commit blob {digest}: {partial_path} is not a regular file.")
            if info.st_size != size:
                raise BlobMismatchError(
                    f"Refusing to commit blob {digest}: {partial_path} holds {info.st_size} bytes where {size} were expected.")
            if fsync:
                os.fsync(fd)
        except OSError as exc:
            raise translate_os_error(exc, f"committing blob {digest}", partial_path) from None
        finally:
            os.close(fd)
        self._ensure_dir(BLOBS_DIR + "/sha256")
        try:
            os.replace(partial_path, target)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise LayoutError(f"Cannot commit blob {digest}: {partial_path} is on another filesystem than {self.root}.") from None
            raise translate_os_error(exc, f"committing blob {digest}", target) from None
        _unlink_quiet(partial_path + JOURNAL_SUFFIX)
        if fsync:
            fsync_dir(os.path.dirname(target))
        self._record_verified(digest)
        return target

    def list_partials(self) -> list[PartialBlob]:
        """The partial downloads present, sorted by digest."""
        directory = self._path(PARTIAL_DIR)
        names, files = _digest_files(directory, "listing partial downloads")
        return [PartialBlob("sha256:" + name, os.path.join(directory, name), info.st_size, name + JOURNAL_SUFFIX in names)
                for name, info in files]

    def cleanup_partials(self, keep: Iterable[str] = frozenset()) -> list[str]:
        """Remove partial downloads, their journals and claims, and stale temp files; return the paths removed.

        Partials of the digests in ``keep`` stay, and so does anything another process (or thread) is
        using at the moment: a claimed partial, a temp file being written. Unknown files are left alone.
        """
        kept = {digest_hex(digest) for digest in keep}
        directory = self._path(PARTIAL_DIR)
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise translate_os_error(exc, "listing partial downloads", directory) from None
        removed: list[str] = []
        groups: set[str] = set()
        for name in names:
            base = name
            for suffix in (JOURNAL_SUFFIX, CLAIM_SUFFIX):
                if name.endswith(suffix):
                    base = name[:-len(suffix)]
            if _HEX_RE.fullmatch(base):
                groups.add(base)
            elif name.startswith(TEMP_PREFIX):
                path = os.path.join(directory, name)
                fd = _try_flock_existing(path)
                if fd is not None:
                    try:
                        if _unlink_quiet(path):
                            removed.append(path)
                    finally:
                        os.close(fd)
        for base in sorted(groups - kept):
            path = os.path.join(directory, base)
            try:
                fd = _flock(path + CLAIM_SUFFIX, 0, "a partial download")
            except LockTimeoutError:
                continue  # claimed: in use by someone else
            try:
                for victim in (path, path + JOURNAL_SUFFIX):
                    if os.path.isdir(victim) and not os.path.islink(victim):
                        continue  # not something this collection makes: left alone, like any unknown file
                    try:
                        if _unlink_quiet(victim):
                            removed.append(victim)
                    except OSError as exc:
                        raise translate_os_error(exc, "removing a partial download", victim) from None
                _unlink_quiet(path + CLAIM_SUFFIX)
            finally:
                os.close(fd)
        return removed

    # index.json ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the exclusive lock of ``index.json`` updates (re-entrant within this object).

        Waits ``timeout`` seconds at most (default: the layout's ``lock_timeout``), then raises
        LockTimeoutError. The lock is an flock, so it goes away with a killed process.
        """
        timeout = self.lock_timeout if timeout is None else timeout
        if not self._thread_lock.acquire(timeout=max(0.0, timeout)):
            raise LockTimeoutError(f"Timed out after {timeout:g} s waiting for another thread to update {self._path(INDEX_FILE)}.")
        try:
            if self._lock_depth == 0:
                self._ensure_dir(PRIVATE_DIR)
                self._lock_fd = _flock(self._path(LOCK_FILE), timeout, f"the lock of {self._path(INDEX_FILE)}")
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._lock_fd is not None:
                    os.close(self._lock_fd)
                    self._lock_fd = None
        finally:
            self._thread_lock.release()

    def read_index(self) -> dict[str, Any]:
        """The parsed ``index.json`` (CorruptIndexError when it is not an OCI image index)."""
        path = self._path(INDEX_FILE)
        return parse_index(self._read_file(path, MAX_INDEX_SIZE, "index.json"), path)

    def find_tag(self, tag: str) -> dict[str, Any] | None:
        """The descriptor ``index.json`` records for ``tag`` (a copy, validated), or None."""
        return find_in_index(self.read_index(), tag, self._path(INDEX_FILE))

    def list_tags(self) -> list[str]:
        """The ref.name of every tagged entry, in index order."""
        return [name for name in (ref_name(entry) for entry in self.read_index()["manifests"]) if name is not None]

    def set_tag(self, tag: str, descriptor: dict[str, Any], fsync: bool = True) -> dict[str, Any] | None:
        """Point ``tag`` at ``descriptor`` in ``index.json``; return the entry it replaced, or None.

        The descriptor's blob must already be stored (BlobNotFoundError otherwise), so that a tag never
        names a manifest that is not there. Under :meth:`lock`: the index is re-read, the first entry of
        that tag is replaced in place (further entries of the same tag are dropped) or a new entry is
        appended, every other entry is kept as it was, and the file is replaced atomically. Nothing is
        written when the entry is already exactly this.
        """
        check_tag(tag)
        entry = check_descriptor(descriptor)
        annotations = dict(entry.get("annotations") or {})
        annotations[REF_NAME_ANNOTATION] = tag
        entry["annotations"] = annotations
        with self.lock():
            if not self.has_blob(entry["digest"], entry["size"]):
                raise BlobNotFoundError(
                    f"Cannot tag {tag} in {self.root}: manifest {entry['digest']} ({entry['size']} bytes) is not stored there.")
            index = self.read_index()
            previous = None
            manifests = []
            for item in index["manifests"]:
                if ref_name(item) == tag:
                    if previous is None:
                        previous = item
                        manifests.append(entry)
                    continue
                manifests.append(item)
            if previous is None:
                manifests.append(entry)
            if manifests == index["manifests"]:
                return copy.deepcopy(previous)
            index["manifests"] = manifests
            index.setdefault("mediaType", OCI_INDEX_MEDIA_TYPE)
            self._write_file(INDEX_FILE, _index_bytes(index), fsync, f"updating index.json for tag {tag}")
        return copy.deepcopy(previous)

    # writers and pruning ---------------------------------------------------------------------------
    #
    # A pull commits blobs before its index.json entry points at them, and decides which blobs the
    # layout already has before it downloads the rest, so "unreferenced right now" does not make a blob
    # garbage. Every run of this collection that writes into a layout holds a shared flock on
    # .ecrkit/writers (begin_writing) from before it looks at what the layout holds until its entry is
    # stored; prune takes that lock exclusively, so it only runs while no such run is between those
    # two points, and a run that starts meanwhile waits for the prune (a few file operations).

    def begin_writing(self, timeout: float | None = None) -> None:
        """Announce a writer of this layout until :meth:`end_writing`; a no-op while already announced.

        Writers do not exclude each other; they exclude :meth:`prune`. A prune in progress is waited
        for, ``timeout`` seconds at most (default: the layout's ``lock_timeout``), then LockTimeoutError.
        """
        if self._writers_fd is not None:
            return
        timeout = self.lock_timeout if timeout is None else timeout
        self._ensure_dir(PRIVATE_DIR)
        self._writers_fd = _flock(self._path(WRITERS_FILE), timeout, f"the pruning of the OCI layout {self.root}", shared=True)

    def end_writing(self) -> None:
        """Withdraw what :meth:`begin_writing` announced (once this writer's entries are stored)."""
        fd, self._writers_fd = self._writers_fd, None
        if fd is not None:
            os.close(fd)

    @contextlib.contextmanager
    def writers_excluded(self, wait: float) -> Iterator[bool]:
        """Hold off every run writing into this layout (the writers' lock, exclusively, ``wait`` seconds at
        most) and hold the index lock; yields False, holding nothing, when writers did not finish in time.
        This object's own :meth:`begin_writing` ends first."""
        self.end_writing()
        self._ensure_dir(PRIVATE_DIR)
        try:
            fd = _flock(self._path(WRITERS_FILE), wait, f"the runs writing into the OCI layout {self.root}")
        except LockTimeoutError:
            yield False
            return
        try:
            with self.lock():
                yield True
        finally:
            os.close(fd)

    def stored_blobs(self) -> list[tuple[str, int]]:
        """``(digest, size)`` of every regular file under ``blobs/sha256`` named as a digest; anything else
        there is not something this collection made, and is not listed."""
        dummy, files = _digest_files(self._path(BLOBS_DIR + "/sha256"), "listing the blobs")
        return [("sha256:" + name, info.st_size) for name, info in files]

    def remove_blob(self, digest: str) -> bool:
        """Remove a stored blob (hold :meth:`writers_excluded`); whether it was there."""
        path = self.blob_path(digest)
        try:
            return _unlink_quiet(path)
        except OSError as exc:
            raise translate_os_error(exc, "removing a blob", path) from None

    def remove_orphan_stamps(self) -> None:
        """Remove the verification stamps whose blob is gone (a stamp is only worth its blob)."""
        directory = self._path(VERIFIED_DIR)
        try:
            names = os.listdir(directory)
        except OSError:
            return  # none yet; or unreadable, and then left as it is: a stale stamp costs nothing but space
        for name in names:
            if _HEX_RE.fullmatch(name) and not os.path.lexists(self.blob_path("sha256:" + name)):
                with contextlib.suppress(OSError):
                    _unlink_quiet(os.path.join(directory, name))


def _index_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
