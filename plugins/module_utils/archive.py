# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""oci-archive and docker-archive files: their formats and errors, the blobs of an image, and writing them.

Writing (the pull side) streams blobs from an :class:`OciLayout` into a tar, re-hashing each blob on the
way so that an archive never carries a blob whose bytes do not match its digest. Archives are
deterministic (sorted members, mtime 0, uid/gid 0, no user names, modes 0644/0755, PAX format, which
only adds an extended header for a member over 8 GiB) and atomic: written to a temporary file beside
the destination (created 0600: nobody reads the image while it is written), fsynced, given its mode
(``file_mode``, else the mode, owner and group of the archive it replaces, else 0666 less the umask)
and renamed over it. A destination that is a symbolic link, a FIFO or any other non-regular file, or
another user's file in a sticky shared directory, is refused.

- oci-archive: a tar of an OCI image layout holding exactly one image (its index or manifest, child
  manifests, configs and layers) and an ``index.json`` with one entry, tagged with the ref.name
  annotation: what ``skopeo copy oci-archive:FILE ...`` reads.
- docker-archive: what ``docker save`` writes since Docker 25: ``manifest.json``
  (``[{"Config": ..., "RepoTags": [...], "Layers": [...]}]``) naming files under ``blobs/sha256/``,
  plus ``oci-layout`` and ``index.json`` over the same blobs (one entry per repository tag, annotated
  with ``io.containerd.image.name`` and ref.name as Docker does), so the archive keeps the exact
  manifest, and its digest, that was pulled. Layers are stored as they are (gzip or not): ``docker
  load`` and skopeo decompress them. One platform only: the caller selects it. The legacy
  ``repositories`` file and per-layer ``<id>/`` directories are not written: every loader since
  Docker 1.10 reads ``manifest.json``, and the ``repositories`` file would name legacy layer IDs
  that this archive does not have.

Reading an archive is :mod:`.tararchive`'s (the tar, read in place) and :mod:`.archive_read`'s (the
oci-archive and docker-archive on top of it, and the summary a pull reads of its destination).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import io
import json
import os
import re
import secrets
import stat
import tarfile
from typing import Any, BinaryIO

from ansible_collections.ecrkit.images.plugins.module_utils import manifest, manifest_parser
from ansible_collections.ecrkit.images.plugins.module_utils.digest import Hasher, digest_hex
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.layout import OciLayout
from ansible_collections.ecrkit.images.plugins.module_utils.layout_format import (
    BLOB_MISSING,
    BLOB_PRESENT,
    MAX_SMALL_BLOB,
    OCI_INDEX_MEDIA_TYPE,
    OCI_LAYOUT_VERSION,
    IMAGE_NAME_ANNOTATION,
    REF_NAME_ANNOTATION,
    RESOLVED_ANNOTATION,
    BlobMismatchError,
    BlobNotFoundError,
    check_descriptor,
    translate_os_error,
)

OCI_ARCHIVE = "oci-archive"
DOCKER_ARCHIVE = "docker-archive"
FORMATS = (OCI_ARCHIVE, DOCKER_ARCHIVE)


_CHUNK = 1 << 20
_TAR_MTIME = 0
# Docker reference grammar (distribution/reference): optional host[:port]/, lowercase path, :tag.
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?|\[[0-9a-fA-F:.]+\](?::[0-9]+)?)"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_TAG_RE = re.compile(rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*:[\w][\w.-]{{0,127}}")
MAX_SHOWN_NAME = 200
"""Most characters of an archive member name a message quotes."""


class ArchiveError(EcrkitError):
    """An archive that cannot be read or written as asked; the base of this file's errors."""

    code = "archive_error"


class ArchiveFormatError(ArchiveError):
    """Not a tar, not the format asked for, or an archive that does not hold what its index names."""

    code = "invalid_archive"


class UnsafeArchiveError(ArchiveError):
    """An archive with members that could write or read outside it: refused as a whole."""

    code = "unsafe_archive"


class ArchiveTooLargeError(ArchiveError):
    """A compressed archive whose tar declares more data than the temporary directory can spare."""

    code = "archive_too_large"


# image walking ---------------------------------------------------------------------------------------

def image_blobs(store: Any, top: dict[str, Any], where: str = "the image") -> list[dict[str, Any]]:
    """Every descriptor an image needs, each once: the top manifest or index first, then child manifests,
    configs and layers.

    ``store`` is anything with ``read_blob(digest, max_size)`` (an :class:`OciLayout`, an
    :class:`OciArchive`). Manifests are read, checked against their digests and walked with
    :func:`.manifest.walk` (so every rule of :mod:`.manifest` applies, nested indexes included); configs and
    layers are only listed. A manifest that breaks a rule is an ArchiveFormatError naming ``where``.
    """
    top = check_descriptor(top, f"the top descriptor of {where}")
    if top["size"] > MAX_SMALL_BLOB:
        raise ArchiveFormatError(f"Manifest {top['digest']} in {where} claims {top['size']} bytes, more than a manifest may have.")
    data = store.read_blob(top["digest"], MAX_SMALL_BLOB)
    if len(data) != top["size"]:
        raise BlobMismatchError(f"Manifest {top['digest']} in {where} is {len(data)} bytes, its descriptor says {top['size']}.")

    def fetch(descriptor: manifest.Descriptor) -> manifest.ManifestDocument:
        return manifest_parser.parse_manifest(store.read_blob(descriptor.digest, MAX_SMALL_BLOB), descriptor.media_type, descriptor.digest)

    found: dict[str, dict[str, Any]] = {top["digest"]: top}
    try:
        document = manifest_parser.parse_manifest(data, top["mediaType"], top["digest"])
        steps = manifest.walk(document, fetch)
    except manifest.ManifestError as exc:
        raise ArchiveFormatError(f"The image in {where} cannot be used: {str(exc)[:1].lower()}{str(exc)[1:]}") from None
    for step in steps:
        found.setdefault(step.descriptor.digest, step.descriptor.to_json())
    for parsed in [document] + [step.document for step in steps]:
        if isinstance(parsed, manifest.ImageManifest):
            for blob in manifest.referenced_blobs(parsed):
                found.setdefault(blob.digest, blob.to_json())
    return list(found.values())


# writing ---------------------------------------------------------------------------------------------

def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, for a message."""
    for test, text in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return text
    return "a special file"


def _umask() -> int:
    """The process umask, read from /proc where it can be: setting it to read it races with other threads."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _create_private_temp(dir_fd: int, prefix: str, suffix: str) -> tuple[int, str]:
    """Create a new file readable by its owner only, with a random name, in the directory ``dir_fd``: (fd, name)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        name = prefix + secrets.token_hex(8) + suffix
        try:
            return os.open(name, flags, 0o600, dir_fd=dir_fd), name
        except FileExistsError:
            continue


def _existing_archive(dir_fd: int, name: str, dest: str) -> os.stat_result | None:
    """What is at ``dest`` (``name`` in the directory ``dir_fd``) before an archive replaces it: None, or a
    regular file's lstat. Refused: a symbolic link, anything that is not a regular file (a FIFO, a
    device...), and a file another user owns in a sticky (shared) directory, whose owner we would
    otherwise keep and so hand the image to."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        try:
            target = show_name(os.readlink(name, dir_fd=dir_fd))
        except OSError:
            target = "?"
        raise UnsafeArchiveError(f"{dest} is a symbolic link (to {target}); refusing to replace it with an archive.")
    if stat.S_ISDIR(info.st_mode):
        raise ArchiveError(f"Cannot write an archive at {dest}: it is a directory.")
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeArchiveError(
            f"{dest} is {file_kind(info.st_mode)}, not a regular file; refusing to replace it with an archive (remove it first if it is yours).")
    directory = os.fstat(dir_fd)
    if info.st_uid != os.geteuid() and directory.st_mode & stat.S_ISVTX:
        raise UnsafeArchiveError(
            f"{dest} belongs to user {info.st_uid} in the shared directory {os.path.dirname(dest)}; refusing to replace it "
            "(another user may have put it there to receive the image): remove it, or write the archive in a private directory.")
    return info


def _open_directory(dest: str) -> int:
    directory = os.path.dirname(dest)
    try:
        return os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise ArchiveError(f"Cannot write {dest}: the directory {directory} does not exist.") from None
    except OSError as exc:
        raise translate_os_error(exc, "opening the directory of the archive", directory) from None


def check_archive_destination(dest_path: str | os.PathLike) -> None:
    """Raise the ArchiveError that writing an archive at ``dest_path`` would raise because of what is there
    now (a missing directory, a link, a FIFO or other non-regular file, another user's file in a shared
    directory), so that a pull can refuse it before it downloads anything. Creates nothing, opens no file."""
    dest = os.path.abspath(os.fspath(dest_path))
    dir_fd = _open_directory(dest)
    try:
        _existing_archive(dir_fd, os.path.basename(dest), dest)
    except OSError as exc:
        raise translate_os_error(exc, "looking at the archive", dest) from None
    finally:
        os.close(dir_fd)


def _fsync_directory(dir_fd: int) -> None:
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise


class _AtomicFile:
    """A temporary file beside ``dest`` that replaces ``dest`` on success and vanishes on failure.

    The temporary file is created 0600, so nobody reads the image while it is written. Before the rename
    it gets ``file_mode`` when given, else the mode, owner and group of the archive it replaces (the
    owner only where we may give a file away: as root), else the mode of any new file (0666 less the
    umask). What must not be replaced is refused first, see :func:`_existing_archive`.
    """

    def __init__(self, dest: str, fsync: bool, file_mode: int | None = None) -> None:
        self.dest = os.path.abspath(os.fspath(dest))
        self.fsync = fsync
        self.file_mode = file_mode
        self.name = os.path.basename(self.dest)
        self.dir_fd = _open_directory(self.dest)
        try:
            _existing_archive(self.dir_fd, self.name, self.dest)
            fd, self.tmp = _create_private_temp(self.dir_fd, "." + self.name + ".", ".tmp")
        except OSError as exc:
            os.close(self.dir_fd)
            raise translate_os_error(exc, "creating the archive", self.dest) from None
        except BaseException:
            os.close(self.dir_fd)
            raise
        self.handle = os.fdopen(fd, "wb")

    def __enter__(self) -> BinaryIO:
        return self.handle

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        try:
            if exc_type is None:
                try:
                    self._commit()
                    return
                except OSError as error:
                    self._discard()
                    raise translate_os_error(error, "writing the archive", self.dest) from None
                except BaseException:
                    self._discard()
                    raise
            self._discard()
            if isinstance(exc, OSError):
                raise translate_os_error(exc, "writing the archive", self.dest) from None
        finally:
            os.close(self.dir_fd)

    def _commit(self) -> None:
        self.handle.flush()
        fd = self.handle.fileno()
        old = _existing_archive(self.dir_fd, self.name, self.dest)  # as it is now, just before the rename
        if old is not None:
            _keep_owner(fd, old)
        if self.file_mode is not None:
            mode = self.file_mode
        elif old is not None:
            mode = stat.S_IMODE(old.st_mode) & 0o777
        else:
            mode = 0o666 & ~_umask()
        os.fchmod(fd, stat.S_IMODE(mode))  # after fchown, which would clear set-id bits
        if self.fsync:
            os.fsync(fd)
        self.handle.close()
        os.replace(self.tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        if self.fsync:
            _fsync_directory(self.dir_fd)

    def _discard(self) -> None:
        try:
            self.handle.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass


def _keep_owner(fd: int, old: os.stat_result) -> None:
    """Give the new archive the owner and group of the one it replaces, as far as we may."""
    current = os.fstat(fd)
    if (current.st_uid, current.st_gid) == (old.st_uid, old.st_gid):
        return
    try:
        os.fchown(fd, old.st_uid, old.st_gid)
    except PermissionError:  # only root gives a file away; a member of the old group may still keep the group
        with contextlib.suppress(PermissionError):
            os.fchown(fd, -1, old.st_gid)


class _HashingReader(io.RawIOBase):
    """Reads a file handle, hashing what passes, for tarfile.addfile()."""

    def __init__(self, handle: BinaryIO) -> None:
        super().__init__()
        self._handle = handle
        self.hasher = Hasher()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._handle.read(len(buffer))
        self.hasher.update(data)
        buffer[:len(data)] = data
        return len(data)


def _tarinfo(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = 0 if directory else size
    info.mtime = _TAR_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_tar(dest: str, layout: OciLayout, blobs: list[dict[str, Any]], files: dict[str, bytes], fsync: bool,
               file_mode: int | None = None) -> int:
    """Write a deterministic tar at ``dest``: the blobs (streamed, re-hashed) and small files; return its size."""
    members: dict[str, Any] = {"blobs/": None, "blobs/sha256/": None}
    for blob in blobs:
        members["blobs/sha256/" + digest_hex(blob["digest"])] = blob
    members.update(files)
    for blob in blobs:  # fail before writing anything when a blob is missing or the wrong size
        status = layout.blob_status(blob["digest"], blob["size"])
        if status == BLOB_MISSING:
            raise BlobNotFoundError(f"Blob {blob['digest']} is not in the OCI layout {layout.root}; pull the image again.")
        if status != BLOB_PRESENT:
            raise BlobMismatchError(f"Blob {blob['digest']} in the OCI layout {layout.root} is damaged ({status}); pull the image again.")
    with _AtomicFile(dest, fsync, file_mode) as out:
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, copybufsize=_CHUNK) as tar:
            for name in sorted(members):
                value = members[name]
                if value is None:
                    tar.addfile(_tarinfo(name.rstrip("/"), directory=True))
                elif isinstance(value, bytes):
                    tar.addfile(_tarinfo(name, len(value)), io.BytesIO(value))
                else:
                    _add_blob(tar, layout, name, value)
        size = out.tell()
    return size


def _add_blob(tar: tarfile.TarFile, layout: OciLayout, name: str, blob: dict[str, Any]) -> None:
    digest, size = blob["digest"], blob["size"]
    with layout.open_blob(digest) as handle:
        actual = os.fstat(handle.fileno()).st_size
        if actual != size:
            raise BlobMismatchError(f"Blob {digest} in {layout.root} is {actual} bytes where {size} were expected; pull the image again.")
        reader = _HashingReader(handle)
        tar.addfile(_tarinfo(name, size), reader)
    if reader.hasher.digest() != digest:
        raise BlobMismatchError(f"Blob {digest} in {layout.root} does not hash to its digest; pull the image again.")


def _tagged(layout: OciLayout, tag: str) -> dict[str, Any]:
    top = layout.find_tag(tag)
    if top is None:
        tags = ", ".join(layout.list_tags()) or "none"
        raise BlobNotFoundError(f"No image is tagged {tag} in the OCI layout {layout.root} (its tags: {tags}).")
    return top


def _json_bytes(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _oci_layout_bytes() -> bytes:
    return _json_bytes({"imageLayoutVersion": OCI_LAYOUT_VERSION})


def write_oci_archive(layout: OciLayout, tag: str, dest_path: str, fsync: bool = True, file_mode: int | None = None,
                      ref_name: str | None = None) -> dict[str, Any]:
    """Write the image tagged ``tag`` in ``layout`` as an oci-archive at ``dest_path``.

    The archive holds that image's blobs only and an ``index.json`` with one entry: the tagged
    descriptor (its other annotations kept), whose ref.name is ``ref_name`` (default ``tag``). Returns ``{"descriptor": <that entry>, "size": <archive
    bytes>}``. Raises BlobNotFoundError when a blob is missing, BlobMismatchError when one does not
    match its digest (the destination is then left as it was), ArchiveError for the destination.
    ``file_mode`` (permission bits) is given to the archive before it appears; without it, an archive that
    is replaced keeps its mode, owner and group, and a new one gets 0666 less the umask. While it is
    written, the archive is a temporary file beside ``dest_path`` that only its owner can read.
    """
    top = _tagged(layout, tag)
    blobs = image_blobs(layout, top, f"the OCI layout {layout.root}")
    entry = copy.deepcopy(top)
    entry["annotations"] = dict(entry.get("annotations") or {}, **{REF_NAME_ANNOTATION: ref_name or tag})
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX_MEDIA_TYPE, "manifests": [entry]}
    size = _write_tar(dest_path, layout, blobs, {"index.json": _json_bytes(index), "oci-layout": _oci_layout_bytes()}, fsync, file_mode)
    return {"descriptor": entry, "size": size}


def check_repo_tag(repo_tag: Any) -> str:
    """A ``repository:tag`` that ``docker load`` accepts (Docker reference grammar, tag required)."""
    if not isinstance(repo_tag, str) or not _REPO_TAG_RE.fullmatch(repo_tag) or len(repo_tag.rpartition(":")[0]) > 255:
        raise ArchiveError(f"{repo_tag!r} is not a repository:tag that a docker-archive can carry (e.g. registry.example/team/app:1.2).")
    return repo_tag


def _containerd_name(repo_tag: str) -> str:
    """Docker's fully qualified form: ``app:1`` -> ``docker.io/library/app:1``."""
    first, sep, rest = repo_tag.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"):
        rest = repo_tag if sep else "library/" + repo_tag
        return "docker.io/" + rest
    return repo_tag


def write_docker_archive(layout: OciLayout, tag: str, dest_path: str, repo_tags: list[str], fsync: bool = True,
                         file_mode: int | None = None) -> dict[str, Any]:
    """Write the single-platform image tagged ``tag`` in ``layout`` as a docker-archive at ``dest_path``.

    ``repo_tags`` (``repository:tag`` strings, possibly none) become ``RepoTags`` in ``manifest.json``
    and entries of ``index.json``. An index (multi-platform image) raises ArchiveError: the caller picks
    the platform's manifest first. Returns ``{"descriptor": <the manifest's descriptor>, "config":
    <config descriptor>, "size": <archive bytes>}``. ``file_mode``: as :func:`write_oci_archive`.
    """
    top = _tagged(layout, tag)
    where = f"the OCI layout {layout.root}"
    if top["mediaType"] not in manifest.MANIFEST_TYPES:
        raise ArchiveError(
            f"The image tagged {tag} is {top['mediaType']}; a docker-archive holds a single platform's image manifest, "
            "so select one platform.")
    if isinstance(repo_tags, str):
        raise TypeError("repo_tags is a list of repository:tag strings")
    tags: list[str] = []
    for repo_tag in repo_tags:
        if check_repo_tag(repo_tag) not in tags:
            tags.append(repo_tag)
    blobs = image_blobs(layout, top, where)  # reads and checks the manifest: it is an image manifest
    document = json.loads(layout.read_blob(top["digest"], MAX_SMALL_BLOB))
    config = check_descriptor(document["config"])
    layers = [check_descriptor(layer) for layer in document["layers"]]
    docker_manifest = [{
        "Config": "blobs/sha256/" + digest_hex(config["digest"]),
        "RepoTags": tags,
        "Layers": ["blobs/sha256/" + digest_hex(layer["digest"]) for layer in layers],
    }]
    plain = {key: value for key, value in top.items() if key != "annotations"}
    entries = []
    for repo_tag in tags:
        entry = copy.deepcopy(plain)
        entry["annotations"] = {IMAGE_NAME_ANNOTATION: _containerd_name(repo_tag), REF_NAME_ANNOTATION: repo_tag.rpartition(":")[2]}
        if RESOLVED_ANNOTATION in (top.get("annotations") or {}):
            entry["annotations"][RESOLVED_ANNOTATION] = top["annotations"][RESOLVED_ANNOTATION]
        entries.append(entry)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX_MEDIA_TYPE, "manifests": entries or [plain]}
    files = {"index.json": _json_bytes(index), "manifest.json": _json_bytes(docker_manifest), "oci-layout": _oci_layout_bytes()}
    size = _write_tar(dest_path, layout, blobs, files, fsync, file_mode)
    return {"descriptor": plain, "config": config, "size": size}


MAX_SHOWN_NAME = 200


def show_name(name: str) -> str:
    """A member name or link target (hostile text) for a message: on one line, control characters and
    undecodable bytes escaped, a very long one cut short."""
    text = name if name.isprintable() else name.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= MAX_SHOWN_NAME else f"{text[:MAX_SHOWN_NAME]}...({len(name)} characters)"
