# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""oci-archive and docker-archive files: writing them from an OCI layout, reading them without extracting.

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
import copy
import errno
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import posixpath
import re
import secrets
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator

from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.layout import (
    BLOB_DIGEST_MISMATCH,
    BLOB_MISSING,
    BLOB_PRESENT,
    BLOB_SIZE_MISMATCH,
    MAX_INDEX_SIZE,
    MAX_SMALL_BLOB,
    OCI_INDEX_MEDIA_TYPE,
    OCI_LAYOUT_VERSION,
    IMAGE_NAME_ANNOTATION,
    REF_NAME_ANNOTATION,
    RESOLVED_ANNOTATION,
    BlobMismatchError,
    BlobNotFoundError,
    LayoutError,
    OciLayout,
    check_descriptor,
    check_size,
    digest_hex,
    find_in_index,
    parse_index,
    parse_oci_layout,
    ref_name,
    translate_os_error,
)

OCI_ARCHIVE = "oci-archive"
DOCKER_ARCHIVE = "docker-archive"
FORMATS = (OCI_ARCHIVE, DOCKER_ARCHIVE)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_MEDIA_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_MEDIA_TYPES = (OCI_INDEX_MEDIA_TYPE, DOCKER_MANIFEST_LIST)
CONTAINERD_NAME_ANNOTATION = IMAGE_NAME_ANNOTATION

MAX_INDEX_DEPTH = 4
"""An index inside an index inside ... deeper than this is refused."""
MAX_LINK_HOPS = 16
MAX_CONFIG_SIZE = 32 << 20
MAX_EXTENDED_HEADER = 1 << 20
"""A PAX extended header or GNU long name larger than this is refused: an image archive needs a few hundred bytes."""
MAX_MEMBERS = 1 << 18
"""An archive with more members than this is refused (an image of 1,000 layers on 100 platforms has far fewer)."""

_CHUNK = 1 << 20
_TAR_MTIME = 0
# Docker reference grammar (distribution/reference): optional host[:port]/, lowercase path, :tag.
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?|\[[0-9a-fA-F:.]+\](?::[0-9]+)?)"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_TAG_RE = re.compile(rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*:[\w][\w.-]{{0,127}}")
_COMPRESSIONS = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


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

def _load_json(store: Any, descriptor: dict[str, Any], where: str) -> dict[str, Any]:
    if descriptor["size"] > MAX_SMALL_BLOB:
        raise ArchiveFormatError(f"Manifest {descriptor['digest']} in {where} claims {descriptor['size']} bytes, more than a manifest may have.")
    data = store.read_blob(descriptor["digest"], MAX_SMALL_BLOB)
    if len(data) != descriptor["size"]:
        raise BlobMismatchError(f"Manifest {descriptor['digest']} in {where} is {len(data)} bytes, its descriptor says {descriptor['size']}.")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        doc = None
    if not isinstance(doc, dict):
        raise ArchiveFormatError(f"Manifest {descriptor['digest']} in {where} is not a JSON object.")
    return doc


def image_blobs(store: Any, top: dict[str, Any], where: str = "the image") -> list[dict[str, Any]]:
    """Every descriptor an image needs, each once: the top manifest or index, child manifests, configs, layers.

    ``store`` is anything with ``read_blob(digest, max_size)`` (an :class:`OciLayout`, an
    :class:`OciArchive`). Manifests are read and checked against their digests; configs and layers are
    only listed. Nested indexes are followed to a depth of ``MAX_INDEX_DEPTH``; a media type that is
    neither an image manifest nor an index raises ArchiveFormatError.
    """
    found: dict[str, dict[str, Any]] = {}

    def visit(descriptor: dict[str, Any], depth: int, path: tuple[str, ...]) -> None:
        digest = descriptor["digest"]
        if digest in path or depth > MAX_INDEX_DEPTH:
            raise ArchiveFormatError(f"The image index {path[0]} in {where} nests indexes too deeply or in a cycle.")
        found.setdefault(digest, descriptor)
        media_type = descriptor["mediaType"]
        if media_type in INDEX_MEDIA_TYPES:
            doc = _load_json(store, descriptor, where)
            children = doc.get("manifests")
            if not isinstance(children, list):
                raise ArchiveFormatError(f"The image index {digest} in {where} has no list of manifests.")
            for number, child in enumerate(children):
                visit(check_descriptor(child, f"manifest {number} of index {digest}"), depth + 1, path + (digest,))
        elif media_type in MANIFEST_MEDIA_TYPES:
            doc = _load_json(store, descriptor, where)
            config = check_descriptor(doc.get("config"), f"the config of manifest {digest}")
            layers = doc.get("layers")
            if not isinstance(layers, list):
                raise ArchiveFormatError(f"The manifest {digest} in {where} has no list of layers.")
            found.setdefault(config["digest"], config)
            for number, layer in enumerate(layers):
                layer = check_descriptor(layer, f"layer {number} of manifest {digest}")
                found.setdefault(layer["digest"], layer)
        else:
            raise ArchiveFormatError(f"{digest} in {where} has media type {media_type}, which is neither an image manifest nor an index.")

    visit(check_descriptor(top, f"the top descriptor of {where}"), 0, ())
    return list(found.values())


# writing ---------------------------------------------------------------------------------------------

def _kind(mode: int) -> str:
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
            target = _shown(os.readlink(name, dir_fd=dir_fd))
        except OSError:
            target = "?"
        raise UnsafeArchiveError(f"{dest} is a symbolic link (to {target}); refusing to replace it with an archive.")
    if stat.S_ISDIR(info.st_mode):
        raise ArchiveError(f"Cannot write an archive at {dest}: it is a directory.")
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeArchiveError(
            f"{dest} is {_kind(info.st_mode)}, not a regular file; refusing to replace it with an archive (remove it first if it is yours).")
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
        self.hasher = hashlib.sha256()

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
    if "sha256:" + reader.hasher.hexdigest() != digest:
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
    if top["mediaType"] not in MANIFEST_MEDIA_TYPES:
        raise ArchiveError(
            f"The image tagged {tag} is {top['mediaType']}; a docker-archive holds a single platform's image manifest, "
            "so select one platform.")
    if isinstance(repo_tags, str):
        raise TypeError("repo_tags is a list of repository:tag strings")
    tags: list[str] = []
    for repo_tag in repo_tags:
        if check_repo_tag(repo_tag) not in tags:
            tags.append(repo_tag)
    blobs = image_blobs(layout, top, where)
    manifest = _load_json(layout, top, where)
    config = check_descriptor(manifest["config"])
    layers = [check_descriptor(layer) for layer in manifest["layers"]]
    docker_manifest = [{
        "Config": "blobs/sha256/" + digest_hex(config["digest"]),
        "RepoTags": tags,
        "Layers": ["blobs/sha256/" + digest_hex(layer["digest"]) for layer in layers],
    }]
    plain = {key: value for key, value in top.items() if key != "annotations"}
    entries = []
    for repo_tag in tags:
        entry = copy.deepcopy(plain)
        entry["annotations"] = {CONTAINERD_NAME_ANNOTATION: _containerd_name(repo_tag), REF_NAME_ANNOTATION: repo_tag.rpartition(":")[2]}
        if RESOLVED_ANNOTATION in (top.get("annotations") or {}):
            entry["annotations"][RESOLVED_ANNOTATION] = top["annotations"][RESOLVED_ANNOTATION]
        entries.append(entry)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX_MEDIA_TYPE, "manifests": entries or [plain]}
    files = {"index.json": _json_bytes(index), "manifest.json": _json_bytes(docker_manifest), "oci-layout": _oci_layout_bytes()}
    size = _write_tar(dest_path, layout, blobs, files, fsync, file_mode)
    return {"descriptor": plain, "config": config, "size": size}


# reading ---------------------------------------------------------------------------------------------

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
            raise ArchiveFormatError(f"The archive member {_shown(self.name)} is truncated.")
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


_MAX_SHOWN_NAME = 200


def _shown(name: str) -> str:
    """A member name or link target (hostile text) for a message: on one line, control characters and
    undecodable bytes escaped, a very long one cut short."""
    text = name if name.isprintable() else name.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= _MAX_SHOWN_NAME else f"{text[:_MAX_SHOWN_NAME]}...({len(name)} characters)"


def _normalise(name: str, archive: str) -> str:
    if "\x00" in name:
        raise UnsafeArchiveError(f"The archive {archive} has a member name with a NUL byte; it is refused.")
    if name.startswith("/"):
        raise UnsafeArchiveError(f"The archive {archive} has a member with an absolute path ({_shown(name)}); it is refused.")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"The archive {archive} has a member whose path leaves the archive ({_shown(name)}); it is refused.")
    return "/".join(parts)


def _reason(exc: BaseException) -> str:
    """An exception as a short reason in a message (one line; its class when it has no text)."""
    return _shown(str(exc) or type(exc).__name__)


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
                raise ArchiveFormatError(f"{path} is not a readable tar archive ({_reason(exc)}).") from None
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
        raise ArchiveFormatError(f"{path} is {_kind(info.st_mode)}, not a regular file, so it is not an image archive.")
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
        self._fd = -1
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
            self._members: dict[str, _Member] = {}
            self._members = self._scan()
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
        except (EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
            raise ArchiveFormatError(f"{self.path} is not a valid {self.compression} file ({_reason(exc)}).") from None
        except OSError as exc:
            if exc.errno is None:  # bz2 and gzip report corrupt data as OSError without errno
                raise ArchiveFormatError(f"{self.path} is not a valid {self.compression} file ({_reason(exc)}).") from None
            raise translate_os_error(exc, f"decompressing {self.path}", where) from None
        except Exception as exc:  # pylint: disable=broad-except  # hostile input: whatever breaks, one sentence
            raise ArchiveFormatError(f"{self.path} could not be decompressed as {self.compression} ({_reason(exc)}).") from None
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
        except OSError as exc:
            if exc.errno is not None:
                raise ArchiveError(f"Cannot read the archive {self.path}: {exc.strerror or exc}.") from None
            raise ArchiveFormatError(f"{self.path} is not a readable tar archive ({_reason(exc)}).") from None
        except Exception as exc:  # pylint: disable=broad-except  # hostile input: whatever breaks, one sentence
            raise ArchiveFormatError(f"{self.path} is not a readable tar archive ({_reason(exc)}).") from None
        return members

    def _add_member(self, members: dict[str, _Member], info: tarfile.TarInfo, total: int) -> None:
        name = _normalise(info.name, self.path)
        if not name:
            return  # the "./" entry of the root itself
        if name in members:
            raise UnsafeArchiveError(f"The archive {self.path} holds {_shown(name)} more than once; it is refused.")
        target = None
        if info.isreg() and not info.issparse():
            kind = "file"
            if info.offset_data + info.size > total:
                raise ArchiveFormatError(f"The archive {self.path} is truncated: member {_shown(name)} ends past the end of the file.")
        elif info.isdir():
            kind = "dir"
        elif info.issym() or info.islnk():
            kind = "link"
            if info.linkname.startswith("/"):
                raise UnsafeArchiveError(f"The archive {self.path} has a link {_shown(name)} to an absolute path ({_shown(info.linkname)}); it is refused.")
            base = posixpath.dirname(name) if info.issym() else ""
            target = posixpath.normpath(posixpath.join(base, info.linkname)) if info.linkname else ""
            if target in ("", ".") or target == ".." or target.startswith("../"):
                raise UnsafeArchiveError(
                    f"The archive {self.path} has a link {_shown(name)} pointing outside the archive ({_shown(info.linkname)}); it is refused.")
        else:
            raise UnsafeArchiveError(f"The archive {self.path} has a member {_shown(name)} that is a device, FIFO or sparse file; an image archive never does.")
        members[name] = _Member(name, kind, info.size if kind == "file" else 0, info.offset_data, target)

    def _resolve(self, name: str, any_kind: bool = False) -> _Member:
        seen = []
        current = name
        for dummy in range(MAX_LINK_HOPS + 1):
            member = self._members.get(current)
            if member is None:
                if seen:
                    raise ArchiveFormatError(f"The link {_shown(seen[0])} in {self.path} points to {_shown(current)}, which is not in the archive.")
                raise ArchiveFormatError(f"The archive {self.path} has no member {_shown(name)}.")
            if member.kind != "link":
                if member.kind != "file" and not any_kind:
                    raise ArchiveFormatError(f"{_shown(name)} in the archive {self.path} is not a file.")
                return member
            seen.append(current)
            current = str(member.target)
        raise ArchiveFormatError(f"The link {_shown(name)} in {self.path} is part of a loop or a chain longer than {MAX_LINK_HOPS}.")

    # public member access ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every member name (normalised: no leading ``./``), in archive order."""
        return list(self._members)

    def has_member(self, name: str) -> bool:
        """True when ``name`` is (or links to) a regular file of the archive."""
        try:
            self._resolve(_normalise(name, self.path))
        except ArchiveFormatError:
            return False
        return True

    def member_size(self, name: str) -> int:
        """The size of a file member (after following links)."""
        return self._resolve(_normalise(name, self.path)).size

    def open_member(self, name: str) -> BinaryIO:
        """A seekable binary reader of a file member, streaming from the archive file; the caller closes it."""
        member = self._resolve(_normalise(name, self.path))
        return _MemberReader(self._fd, member.offset, member.size, name)  # type: ignore[return-value]

    def read_member(self, name: str, max_size: int) -> bytes:
        """The bytes of a small member; ArchiveFormatError when it is larger than ``max_size``."""
        member = self._resolve(_normalise(name, self.path))
        if member.size > max_size:
            raise ArchiveFormatError(f"{_shown(name)} in the archive {self.path} is {member.size} bytes, more than the {max_size} expected.")
        with self.open_member(name) as handle:
            return handle.read()

    def hash_member(self, name: str) -> str:
        """The sha256 digest of a member's bytes, streamed."""
        hasher = hashlib.sha256()
        with self.open_member(name) as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                hasher.update(chunk)
        return "sha256:" + hasher.hexdigest()

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
            raise ArchiveFormatError(f"{self.path} is not a readable {kind} ({_reason(exc)}).") from None
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
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise BlobMismatchError(f"Blob {digest} in the archive {self.path} does not hash to its digest.")
        return data

    def _json_member(self, name: str, max_size: int) -> Any:
        try:
            return json.loads(self.read_member(name, max_size).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ArchiveFormatError(f"{_shown(name)} in the archive {self.path} is not valid JSON.") from None


class OciArchive(TarArchive):
    """An oci-archive: an OCI image layout in a tar. Offers the read side of :class:`OciLayout`
    (``read_index``, ``find_tag``, ``list_tags``, ``blob_status``, ``has_blob``, ``open_blob``,
    ``read_blob``), so code that reads images takes either.
    """

    format = OCI_ARCHIVE

    def __init__(self, path: str | os.PathLike, tmpdir: str | None = None, *, decompress: bool = True,
                 follow_symlinks: bool = True) -> None:
        super().__init__(path, tmpdir, decompress=decompress, follow_symlinks=follow_symlinks)
        with self._closed_on_failure("oci-archive"):
            if not self.has_member("oci-layout") or not self.has_member("index.json"):
                raise ArchiveFormatError(f"{self.path} is not an oci-archive: it has no oci-layout or no index.json.")
            try:
                parse_oci_layout(self.read_member("oci-layout", 64 << 10), f"The oci-layout file of {self.path}")
                self._index = parse_index(self.read_member("index.json", MAX_INDEX_SIZE), f"index.json in {self.path}")
            except LayoutError as exc:
                raise ArchiveFormatError(str(exc)) from None

    @property
    def root(self) -> str:
        """The archive path, for messages (as OciLayout.root)."""
        return self.path

    def read_index(self) -> dict[str, Any]:
        """The parsed ``index.json`` (a copy)."""
        return copy.deepcopy(self._index)

    def find_tag(self, tag: str) -> dict[str, Any] | None:
        """The descriptor recorded for ``tag`` (ref.name), or None."""
        return find_in_index(self._index, tag, f"index.json in {self.path}")

    def list_tags(self) -> list[str]:
        """Every ref.name in ``index.json``, in order."""
        return [name for name in (ref_name(entry) for entry in self._index["manifests"]) if name is not None]


class DockerArchive(TarArchive):
    """A docker-archive (``docker save``): ``manifest.json`` and the files it names.

    ``manifest`` is the parsed ``manifest.json``: a list of ``{"Config": str, "RepoTags": [str],
    "Layers": [str]}`` (RepoTags ``null`` becomes ``[]``), every named file present in the archive.
    ``oci_index`` is the parsed ``index.json`` when the archive also is an OCI layout (Docker 25 and
    later, and this collection's writer), else None.
    """

    format = DOCKER_ARCHIVE

    def __init__(self, path: str | os.PathLike, tmpdir: str | None = None, *, decompress: bool = True,
                 follow_symlinks: bool = True) -> None:
        super().__init__(path, tmpdir, decompress=decompress, follow_symlinks=follow_symlinks)
        with self._closed_on_failure("docker-archive"):
            self.manifest = self._parse_manifest()
            self.oci_index: dict[str, Any] | None = None
            if self.has_member("index.json") and self.has_member("oci-layout"):
                try:
                    self.oci_index = parse_index(self.read_member("index.json", MAX_INDEX_SIZE), f"index.json in {self.path}")
                except LayoutError as exc:
                    raise ArchiveFormatError(str(exc)) from None

    def _parse_manifest(self) -> list[dict[str, Any]]:
        if not self.has_member("manifest.json"):
            raise ArchiveFormatError(f"{self.path} is not a docker-archive: it has no manifest.json.")
        doc = self._json_member("manifest.json", MAX_INDEX_SIZE)
        if not isinstance(doc, list) or not doc:
            raise ArchiveFormatError(f"manifest.json in {self.path} is not a non-empty list of images.")
        images = []
        for number, item in enumerate(doc):
            where = f"image {number} of manifest.json in {self.path}"
            if not isinstance(item, dict):
                raise ArchiveFormatError(f"{_cap(where)} is not a JSON object.")
            config, layers, repo_tags = item.get("Config"), item.get("Layers"), item.get("RepoTags") or []
            if not isinstance(config, str) or not isinstance(layers, list) or not all(isinstance(layer, str) for layer in layers):
                raise ArchiveFormatError(f"{_cap(where)} needs a Config file name and a list of Layers file names.")
            if not isinstance(repo_tags, list) or not all(isinstance(repo_tag, str) for repo_tag in repo_tags):
                raise ArchiveFormatError(f"The RepoTags of {where} must be a list of strings.")
            for name in [config] + layers:
                if not self.has_member(name):
                    raise ArchiveFormatError(f"{_cap(where)} names {_shown(name)}, which is not a file in the archive.")
            images.append(dict(item, Config=config, Layers=list(layers), RepoTags=list(repo_tags)))
        return images

    def find_repo_tag(self, repo_tag: str) -> dict[str, Any] | None:
        """The manifest.json entry whose RepoTags holds ``repo_tag``, or None."""
        for image in self.manifest:
            if repo_tag in image["RepoTags"]:
                return image
        return None

    def config_digest(self, image: dict[str, Any]) -> str:
        """The digest of an image's config file (hashed here: the file name is not trusted)."""
        if self.member_size(image["Config"]) > MAX_CONFIG_SIZE:
            raise ArchiveFormatError(f"The config {_shown(image['Config'])} in {self.path} is larger than {MAX_CONFIG_SIZE} bytes.")
        return self.hash_member(image["Config"])

    def manifest_digest(self, image: dict[str, Any]) -> str | None:
        """The digest of the OCI/Docker manifest the archive keeps for ``image`` (Docker 25+ style), or None.

        It is the ``index.json`` entry whose manifest names this image's config and, in order, blobs
        that are this image's layer files.
        """
        if self.oci_index is None:
            return None
        for entry in self.oci_index["manifests"]:
            try:
                entry = check_descriptor(entry)
                if entry["mediaType"] not in MANIFEST_MEDIA_TYPES or entry["size"] > MAX_SMALL_BLOB:
                    continue
                name = "blobs/sha256/" + digest_hex(entry["digest"])
                data = self.read_member(name, MAX_SMALL_BLOB)
                if "sha256:" + hashlib.sha256(data).hexdigest() != entry["digest"]:
                    continue
                doc = json.loads(data.decode("utf-8"))
                members = [self._blob_member(layer) for layer in doc["layers"]]
                if self._blob_member(doc["config"]) == _normalise(image["Config"], self.path) and \
                        members == [_normalise(layer, self.path) for layer in image["Layers"]]:
                    return entry["digest"]
            except (ArchiveError, LayoutError, ValueError, KeyError, TypeError):
                continue
        return None

    @staticmethod
    def _blob_member(descriptor: Any) -> str:
        return "blobs/sha256/" + digest_hex(check_descriptor(descriptor)["digest"])


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def open_oci_archive(path: str | os.PathLike, tmpdir: str | None = None, *, decompress: bool = True,
                     follow_symlinks: bool = True) -> OciArchive:
    """Open an oci-archive for reading (a context manager). See the module docstring and TarArchive for
    what is refused."""
    return OciArchive(path, tmpdir, decompress=decompress, follow_symlinks=follow_symlinks)


def open_docker_archive(path: str | os.PathLike, tmpdir: str | None = None, *, decompress: bool = True,
                        follow_symlinks: bool = True) -> DockerArchive:
    """Open a docker-archive for reading (a context manager). See the module docstring and TarArchive for
    what is refused."""
    return DockerArchive(path, tmpdir, decompress=decompress, follow_symlinks=follow_symlinks)


def read_archive_summary(path: str | os.PathLike, archive_format: str) -> dict[str, Any] | None:
    """What an existing archive at ``path`` holds, for an idempotency check; None when there is no file.

    Layers are not read, only checked to be there with the right sizes; manifests are read and their
    digests checked. The result::

        {"format": "oci-archive" | "docker-archive",
         "manifests": [{"tag": ref.name or None, "digest": ..., "mediaType": ..., "size": ...}],
         "images": [{"repo_tags": [...], "config_digest": ..., "manifest_digest": ... or None,
                     "layers": [member names]}]}

    ``manifests`` lists ``index.json`` (a docker-archive without one gives ``[]``); ``images`` lists
    ``manifest.json`` (``[]`` for an oci-archive). An archive that is unreadable, of the other format,
    or that lacks a blob its index names raises ArchiveError: the caller should then rewrite it. So does
    anything that is not a regular file (a FIFO is not waited on), a symbolic link, and a compressed
    archive, which is never decompressed for this: this collection writes none.
    """
    if archive_format not in FORMATS:
        raise ArchiveError(f"Unknown archive format {archive_format!r}; expected one of {', '.join(FORMATS)}.")
    if not os.path.lexists(path):
        return None
    opener = open_oci_archive if archive_format == OCI_ARCHIVE else open_docker_archive
    with opener(path, decompress=False, follow_symlinks=False) as archive:
        try:
            if isinstance(archive, OciArchive):
                return _oci_summary(archive)
            return _docker_summary(archive)  # type: ignore[arg-type]
        except LayoutError as exc:
            raise ArchiveFormatError(f"The archive {archive.path} is not usable: {exc}") from None
        except EcrkitError:
            raise
        except Exception as exc:  # pylint: disable=broad-except  # hostile input: whatever breaks, one sentence
            raise ArchiveFormatError(f"The archive {archive.path} is not usable ({_reason(exc)}).") from None


def _oci_summary(archive: OciArchive) -> dict[str, Any]:
    manifests = []
    for entry in archive.read_index()["manifests"]:
        entry = check_descriptor(entry, f"an entry of index.json in {archive.path}")
        for blob in image_blobs(archive, entry, f"the archive {archive.path}"):
            if not archive.has_blob(blob["digest"], blob["size"]):
                raise ArchiveFormatError(f"The archive {archive.path} lacks blob {blob['digest']} ({blob['size']} bytes), which its index needs.")
        manifests.append(_summary_entry(entry))
    return {"format": OCI_ARCHIVE, "manifests": manifests, "images": []}


def _docker_summary(archive: DockerArchive) -> dict[str, Any]:
    manifests = []
    for entry in (archive.oci_index or {"manifests": []})["manifests"]:
        try:
            manifests.append(_summary_entry(check_descriptor(entry)))
        except LayoutError:
            continue
    images = [{
        "repo_tags": list(image["RepoTags"]),
        "config_digest": archive.config_digest(image),
        "manifest_digest": archive.manifest_digest(image),
        "layers": [_normalise(layer, archive.path) for layer in image["Layers"]],
    } for image in archive.manifest]
    return {"format": DOCKER_ARCHIVE, "manifests": manifests, "images": images}


def _summary_entry(entry: dict[str, Any]) -> dict[str, Any]:
    return {"tag": ref_name(entry), "digest": entry["digest"], "mediaType": entry["mediaType"], "size": entry["size"],
            "annotations": dict(entry.get("annotations") or {})}
