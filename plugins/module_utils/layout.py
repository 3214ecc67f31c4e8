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
- A digest becomes a path only through :func:`~.digest.digest_hex`: never a file outside ``blobs/sha256``.
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
  (:meth:`OciLayout.begin_writing`, :meth:`OciLayout.writers_excluded`);
- ``.ecrkit/partial``: downloads in progress, their journals and claims, and files being written
  whole (:class:`~.partial.PartialDirectory`), on the same filesystem as ``blobs/`` so that a commit
  is a rename;
- ``.ecrkit/verified``: the verification stamps of stored blobs (:mod:`.stamps`).

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
import errno
import fcntl
import os
import stat
import threading
from typing import Any, BinaryIO, Iterator

from ansible_collections.ecrkit.images.plugins.module_utils import hostfs
from ansible_collections.ecrkit.images.plugins.module_utils.digest import (
    HEX_RE, digest_hex, matches as digest_matches, of_bytes as digest_of_bytes, of_fd as digest_of_fd)
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError, NotWritableError
from ansible_collections.ecrkit.images.plugins.module_utils.hostfs import LockTimeoutError
from ansible_collections.ecrkit.images.plugins.module_utils.layout_format import (  # noqa: F401  pylint: disable=unused-import
    BLOB_DIGEST_MISMATCH,
    BLOB_MISSING,
    BLOB_NOT_A_FILE,
    BLOB_PRESENT,
    BLOB_SIZE_MISMATCH,
    BLOBS_DIR,
    INDEX_FILE,
    MAX_INDEX_SIZE,
    MAX_SMALL_BLOB,
    OCI_INDEX_MEDIA_TYPE,
    OCI_LAYOUT_FILE,
    OCI_LAYOUT_VERSION,
    REF_NAME_ANNOTATION,
    BlobMismatchError,
    BlobNotFoundError,
    CorruptIndexError,
    LayoutError,
    LayoutSymlinkError,
    NotALayoutError,
    check_descriptor,
    check_size,
    check_tag,
    find_in_index,
    index_bytes,
    parse_index,
    parse_oci_layout,
    ref_name,
    translate_os_error,
    with_tag,
)
from ansible_collections.ecrkit.images.plugins.module_utils.partial import PartialDirectory, journal_path
from ansible_collections.ecrkit.images.plugins.module_utils.stamps import VerifiedStamps

PRIVATE_DIR = ".ecrkit"
PARTIAL_DIR = PRIVATE_DIR + "/partial"
LOCK_FILE = PRIVATE_DIR + "/lock"
WRITERS_FILE = PRIVATE_DIR + "/writers"  # shared flock of every run writing blobs, exclusive for a prune
VERIFIED_DIR = PRIVATE_DIR + "/verified"  # one stamp per blob hashed: inode, size, mtime, ctime when it matched

DEFAULT_LOCK_TIMEOUT = 60.0
PUBLIC_DIR_MODE = 0o755
"""Directories of a layout: never group-writable, whatever the umask, so that the next run trusts them."""
PUBLIC_FILE_MODE = 0o644


def _open_file(path: str, doing: str, missing: EcrkitError, irregular: EcrkitError) -> int:
    """Open a file of the layout for reading, never through a link; ``missing`` or ``irregular`` when it
    is not there or not a regular file. ``O_NONBLOCK`` until then: a FIFO planted there must not block."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise missing from None
    except OSError as exc:
        raise translate_os_error(exc, doing, path) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise irregular
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
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
                    self._write_file(INDEX_FILE, index_bytes({"schemaVersion": 2, "manifests": []}), True, "creating index.json")
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
            self._write_file(INDEX_FILE, index_bytes({"schemaVersion": 2, "manifests": []}), True, "creating index.json")
        self._ensure_dir(BLOBS_DIR + "/sha256")
        # the marker goes last: a directory with oci-layout in it is a complete layout
        self._write_file(OCI_LAYOUT_FILE, index_bytes({"imageLayoutVersion": OCI_LAYOUT_VERSION}), True, "creating oci-layout")

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
                path = hostfs.public_directory(os.path.join(path, part), PUBLIC_DIR_MODE, "the blobs of the OCI layout")
        return path

    @staticmethod
    def _read_file(path: str, limit: int, what: str) -> bytes:
        fd = _open_file(path, f"reading {what}", NotALayoutError(f"{path} is missing, so this is not a complete OCI layout."),
                        CorruptIndexError(f"{path} is not a regular file, so this is not an OCI layout this collection can use."))
        with os.fdopen(fd, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            data = handle.read(size + 1) if size <= limit else b""
        if size > limit or len(data) > limit:
            raise CorruptIndexError(f"{path} is larger than {limit} bytes, far more than {what} should be.")
        return data

    def _write_file(self, name: str, data: bytes, fsync: bool, doing: str) -> None:
        """Write the file ``name`` (relative to the root) atomically: temp file, fsync, rename, fsync dir."""
        target = self._path(name)
        tmp = self.partials.write_temp(data, fsync, doing, PUBLIC_FILE_MODE)
        try:
            os.replace(tmp, target)
        except OSError as exc:
            hostfs.unlink_quiet(tmp)
            raise translate_os_error(exc, doing, target) from None
        if fsync:
            hostfs.fsync_dir(os.path.dirname(target))

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
        """:meth:`blob_status` with the bytes checked, hashing only a file that changed since it last matched
        (see :mod:`.stamps`). A successful hash is stamped unless ``record`` is false (check mode)."""
        state = self.blob_status(digest, size)
        if state != BLOB_PRESENT:
            return state
        path = self.blob_path(digest)
        try:
            info = os.lstat(path)
        except OSError as exc:
            raise translate_os_error(exc, f"checking blob {digest}", path) from None
        if self.stamps.matches(digest, info):
            return BLOB_PRESENT
        state = self.blob_status(digest, size, verify=True)
        if state == BLOB_PRESENT and record and self._may_record():
            self.stamps.record(digest, path, info)
        return state

    def open_blob(self, digest: str) -> BinaryIO:
        """Open a stored blob for reading (binary, unbuffered position; the caller closes it)."""
        fd = _open_file(self.blob_path(digest), f"opening blob {digest}",
                        BlobNotFoundError(f"Blob {digest} is not in the OCI layout {self.root}."),
                        BlobNotFoundError(f"Blob {digest} in the OCI layout {self.root} is not a regular file."))
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
        tmp = self.partials.write_temp(data, fsync, f"writing blob {digest}", PUBLIC_FILE_MODE)
        target = self.blob_path(digest)
        try:
            os.replace(tmp, target)
        except OSError as exc:
            hostfs.unlink_quiet(tmp)
            raise translate_os_error(exc, f"storing blob {digest}", target) from None
        if fsync:
            hostfs.fsync_dir(os.path.dirname(target))
        self.stamps.record(digest, target)
        return digest

    # partial downloads -----------------------------------------------------------------------------

    @property
    def stamps(self) -> VerifiedStamps:
        """``.ecrkit/verified``: which stored blobs were hashed, and what their files looked like then."""
        return VerifiedStamps(self._path(VERIFIED_DIR), lambda: self._ensure_dir(VERIFIED_DIR))

    @property
    def partials(self) -> PartialDirectory:
        """``.ecrkit/partial``: downloads in progress, their journals and claims (created on first write)."""
        return PartialDirectory(self._path(PARTIAL_DIR), lambda: self._ensure_dir(PARTIAL_DIR))

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
        hostfs.unlink_quiet(journal_path(partial_path))
        if fsync:
            hostfs.fsync_dir(os.path.dirname(target))
        self.stamps.record(digest, target)
        return target

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
                self._lock_fd = hostfs.flock(self._path(LOCK_FILE), timeout, f"the lock of {self._path(INDEX_FILE)}")
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
            manifests, previous = with_tag(index, tag, entry)
            if manifests == index["manifests"]:
                return previous
            index["manifests"] = manifests
            index.setdefault("mediaType", OCI_INDEX_MEDIA_TYPE)
            self._write_file(INDEX_FILE, index_bytes(index), fsync, f"updating index.json for tag {tag}")
        return previous

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
        if self._writers_fd is None:
            self._ensure_dir(PRIVATE_DIR)
            self._writers_fd = hostfs.flock(self._path(WRITERS_FILE), self.lock_timeout if timeout is None else timeout,
                                            f"the pruning of the OCI layout {self.root}", shared=True)

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
            fd = hostfs.flock(self._path(WRITERS_FILE), wait, f"the runs writing into the OCI layout {self.root}")
        except LockTimeoutError:
            yield False
            return
        try:
            with self.lock():
                yield True
        finally:
            os.close(fd)

    def stored_blobs(self) -> list[tuple[str, int]]:
        """``(digest, size)`` of every regular file under ``blobs/sha256`` named as a digest, sorted; anything
        else there is not something this collection made, and is not listed."""
        directory = self._path(BLOBS_DIR + "/sha256")
        try:
            names = sorted(name for name in os.listdir(directory) if HEX_RE.fullmatch(name))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise translate_os_error(exc, "listing the blobs", directory) from None
        blobs = []
        for name in names:
            try:
                info = os.lstat(os.path.join(directory, name))
            except FileNotFoundError:
                continue  # removed meanwhile: not stored any more
            except OSError as exc:
                raise translate_os_error(exc, "listing the blobs", directory) from None
            if stat.S_ISREG(info.st_mode):
                blobs.append(("sha256:" + name, info.st_size))
        return blobs

    def remove_blob(self, digest: str) -> bool:
        """Remove a stored blob (hold :meth:`writers_excluded`); whether it was there."""
        path = self.blob_path(digest)
        try:
            return hostfs.unlink_quiet(path)
        except OSError as exc:
            raise translate_os_error(exc, "removing a blob", path) from None
