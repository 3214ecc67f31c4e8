# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a push reads an image: an OCI layout, an oci-archive, a docker-archive or containerd.

:func:`open_source` finds the image in ``src`` and validates it before any API call (every manifest
parses and hashes to its digest, every blob exists with its size), as a :class:`Source`: the image's
documents and blobs, read through a :class:`BlobReader` (``status``, ``read_blob``, ``parts``).
:func:`check_blobs` hashes the blobs a push is about to send.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple

from ansible_collections.ecrkit.images.plugins.module_utils import archive, archive_read, containerd, manifest, upload
from ansible_collections.ecrkit.images.plugins.module_utils.digest import Hasher, of_bytes as digest_of_bytes, of_fd as digest_of_fd
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError, storage_error
from ansible_collections.ecrkit.images.plugins.module_utils.layout import OciLayout
from ansible_collections.ecrkit.images.plugins.module_utils.layout_format import (
    BLOB_DIGEST_MISMATCH, BLOB_MISSING, BLOB_NOT_A_FILE, BLOB_PRESENT, BLOB_SIZE_MISMATCH, ref_name)
from ansible_collections.ecrkit.images.plugins.module_utils.manifest import Descriptor
from ansible_collections.ecrkit.images.plugins.module_utils.manifest_parser import parse_manifest, parse_referenced

if TYPE_CHECKING:  # only for annotations: push imports this module
    from ansible_collections.ecrkit.images.plugins.module_utils.push import PushOptions

_MAGIC = ((b"\x1f\x8b", manifest.MEDIA_TYPE_DOCKER_LAYER_GZIP), (b"\x28\xb5\x2f\xfd", manifest.MEDIA_TYPE_DOCKER_LAYER_ZSTD))

Document = manifest.ManifestDocument


class SourceError(EcrkitError):
    """The source is missing, ambiguous or broken; nothing was uploaded."""

    code = "invalid_source"


class BlobReader(Protocol):
    """Where a source's blobs are: ``status`` (checked), ``read_blob`` (small, verified), ``parts`` (streamed)."""

    name: str  # the source, for messages: "the OCI layout /srv/app"
    missing_hint: str  # why a blob may be missing from this kind of source, and what to do

    def status(self, digest: str, size: int, verify: bool = True) -> str:
        """``BLOB_PRESENT`` or what is wrong; ``verify`` hashes the bytes too, otherwise only the size counts."""

    def read_blob(self, digest: str) -> bytes:
        """A small blob (a manifest, an index, a config), checked against its digest."""

    def parts(self, digest: str, parts: Sequence[Tuple[int, int]]) -> Iterator[Tuple[int, int, bytes]]:
        """``(first, last, bytes)`` of each of ``parts`` (inclusive byte ranges), in order."""


class _LayoutBlobs:
    """An OCI layout, which whoever made it can still change: a blob is hashed from the descriptor that
    ``status(verify=True)`` opened, and its upload reads only that same file (device, inode, size), so a
    blob swapped for a link or another file after its check sends nothing (see :func:`upload.iter_parts`)."""

    missing_hint = ""

    def __init__(self, store: OciLayout) -> None:
        self.store = store
        self.name = f"the OCI layout {store.root}"
        self.verified: Dict[str, Tuple[int, int, int]] = {}  # digest -> identity of the file that hashed to it

    def status(self, digest: str, size: int, verify: bool = True) -> str:
        if not verify:
            return self.store.blob_status(digest, size, verify=False)
        path = self.store.blob_path(digest)
        try:
            fd, info = upload.open_source_file(os.path.relpath(path, self.store.root), self.store.root)
        except FileNotFoundError:
            return BLOB_MISSING
        except OSError as exc:
            if isinstance(exc, upload.NotARegularFileError) or exc.errno in (errno.ELOOP, errno.ENOTDIR):
                return BLOB_NOT_A_FILE
            raise storage_error(exc, f"opening blob {digest}", path) from None
        try:
            if info.st_size != size:
                return BLOB_SIZE_MISMATCH
            try:
                actual = digest_of_fd(fd)
            except OSError as exc:
                raise storage_error(exc, f"reading blob {digest}", path) from None
        finally:
            os.close(fd)
        if actual != digest:
            return BLOB_DIGEST_MISMATCH
        self.verified[digest] = upload.file_identity(info)
        return BLOB_PRESENT

    def read_blob(self, digest: str) -> bytes:
        return self.store.read_blob(digest, manifest.MAX_MANIFEST_SIZE)

    def parts(self, digest: str, parts: Sequence[Tuple[int, int]]) -> Iterator[Tuple[int, int, bytes]]:
        path = self.store.blob_path(digest)
        return upload.iter_parts(os.path.relpath(path, self.store.root), parts, root=self.store.root,
                                 identity=self.verified.get(digest), digest=digest)


class _ArchiveBlobs:
    """A tar source (oci-archive, docker-archive): its reader resolves digests to members."""

    missing_hint = ""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.name = f"the archive {reader.path}"

    def status(self, digest: str, size: int, verify: bool = True) -> str:
        return self.reader.blob_status(digest, size, verify=verify)

    def read_blob(self, digest: str) -> bytes:
        return self.reader.read_blob(digest, manifest.MAX_MANIFEST_SIZE)

    def parts(self, digest: str, parts: Sequence[Tuple[int, int]]) -> Iterator[Tuple[int, int, bytes]]:
        with self.reader.open_blob(digest) as handle:
            for first, last in parts:
                handle.seek(first)
                data = handle.read(last - first + 1)
                if len(data) != last - first + 1:
                    raise SourceError(f"The blob {digest} in {self.name} ended before byte {last}.")
                yield first, last, data


class _ContainerdBlobs:
    """containerd's content store: blobs stream out of ``ctr content get`` and are hashed on the way."""

    def __init__(self, client: containerd.Containerd) -> None:
        self.client = client
        self.name = f"containerd namespace '{client.namespace}'"
        self.missing_hint = (" (containerd keeps only the platforms it pulled: pull every platform into it first, "
                             "or push the platform's own manifest)")
        self.digests = client.content_digests()

    def status(self, digest: str, size: int, verify: bool = True) -> str:  # pylint: disable=unused-argument
        # containerd checked size and digest when it committed the blob; the upload hashes it again
        return BLOB_PRESENT if digest in self.digests else "missing"

    def read_blob(self, digest: str) -> bytes:
        if digest not in self.digests:
            raise SourceError(f"The manifest {digest} is not in {self.name}{self.missing_hint}; nothing was pushed.")
        return self.client.read_blob(digest, manifest.MAX_MANIFEST_SIZE)

    def parts(self, digest: str, parts: Sequence[Tuple[int, int]]) -> Iterator[Tuple[int, int, bytes]]:
        hasher = Hasher()
        with self.client.open_blob(digest) as stream:
            for first, last in parts:
                data = _read_exactly(stream, last - first + 1)
                if len(data) != last - first + 1:
                    raise SourceError(f"The blob {digest} in {self.name} ended before byte {last}; nothing more was uploaded.")
                hasher.update(data)
                if last == parts[-1][1] and hasher.digest() != digest:
                    raise SourceError(f"The blob {digest} in {self.name} does not hash to its digest; it was not pushed. "
                                      "Check containerd's content store ('ctr content verify' or re-pull the image).")
                yield first, last, data


def _read_exactly(stream: Any, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = stream.read(size)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


@dataclass
class Source:
    blobs: BlobReader
    top: Document
    documents: List[Document]  # children first (PutImage order), the top last
    layers: List[Descriptor]  # configs and layers, each once
    where: str = ""  # the image's name in the source, for messages


_PROBLEMS = {
    "missing": "is missing",
    "not_a_file": "is not a regular file",
    "size_mismatch": "does not have the size its descriptor gives",
    "digest_mismatch": "does not hash to its digest",
}


def _load(blobs: BlobReader, top_descriptor: Dict[str, Any], where: str) -> Source:
    """Parse the image under ``top_descriptor`` and validate every manifest and blob it references."""
    try:
        raw = blobs.read_blob(top_descriptor["digest"])
        top = parse_manifest(raw, top_descriptor.get("mediaType"), expected_digest=top_descriptor["digest"])

        def fetch(descriptor: Descriptor) -> Document:
            return parse_referenced(descriptor, blobs.read_blob(descriptor.digest), descriptor.media_type)

        documents = [step.document for step in manifest.walk(top, fetch)] + [top]
    except SourceError:
        raise
    except EcrkitError as exc:
        raise SourceError(f"The image '{where}' in {blobs.name} cannot be pushed: {exc}") from None
    source = Source(blobs=blobs, top=top, documents=documents, layers=manifest.distinct_blobs(documents), where=where)
    check_blobs(source, source.layers, verify=False)
    return source


def check_blobs(source: Source, blobs: List[Descriptor], verify: bool) -> None:
    """Every one of ``blobs`` is in the source with its size (and, with ``verify``, hashes to its digest)."""
    for blob in blobs:
        try:
            state = source.blobs.status(blob.digest, blob.size, verify=verify)
        except EcrkitError as exc:
            raise SourceError(f"The blob {blob.digest} of the image '{source.where}' in {source.blobs.name} cannot be read: "
                              f"{exc}") from None
        if state != BLOB_PRESENT:
            hint = source.blobs.missing_hint if state == "missing" else ""
            raise SourceError(f"The blob {blob.digest} ({blob.size} bytes) of the image '{source.where}' in {source.blobs.name} "
                              f"{_PROBLEMS.get(state, state)}{hint}; nothing was pushed.")


def _pick_entry(index: Dict[str, Any], src_tag: Optional[str], where: str) -> Tuple[Dict[str, Any], str]:
    entries = index.get("manifests") or []
    if src_tag:
        for entry in entries:
            if ref_name(entry) == src_tag:
                return entry, src_tag
        names = [name for name in (ref_name(entry) for entry in entries) if name]
        raise SourceError(f"{where} has no image tagged '{src_tag}' (it has: {', '.join(names) or 'no tagged image'}).")
    if len(entries) != 1:
        names = [name for name in (ref_name(entry) for entry in entries) if name]
        raise SourceError(f"{where} holds {len(entries)} images; set src_tag to one of: {', '.join(names) or 'none tagged'}.")
    return entries[0], ref_name(entries[0]) or entries[0]["digest"]


def _docker_image(reader: archive_read.DockerArchive, src_tag: Optional[str]) -> Dict[str, Any]:
    images = reader.manifest
    if src_tag:
        for image in images:
            for repo_tag in image["RepoTags"]:
                if repo_tag == src_tag or repo_tag.rsplit(":", 1)[-1] == src_tag:
                    return image
        tags = [repo_tag for image in images for repo_tag in image["RepoTags"]]
        raise SourceError(f"The docker-archive {reader.path} has no image tagged '{src_tag}' (it has: {', '.join(tags) or 'none'}).")
    if len(images) != 1:
        tags = [repo_tag for image in images for repo_tag in image["RepoTags"]]
        raise SourceError(f"The docker-archive {reader.path} holds {len(images)} images; set src_tag to one of: {', '.join(tags)}.")
    return images[0]


def layer_media_type(head: bytes) -> str:
    """The Docker schema 2 layer media type for a layer file starting with ``head``: by its magic bytes."""
    for magic, media_type in _MAGIC:
        if head.startswith(magic):
            return media_type
    return manifest.MEDIA_TYPE_DOCKER_LAYER


def docker_manifest(reader: archive_read.DockerArchive, image: Dict[str, Any]) -> Tuple[bytes, Dict[str, str]]:
    """A Docker schema 2 manifest for a ``manifest.json`` entry, and the member name of each blob.

    Reproducible: the same archive always gives the same bytes (fixed key order, Docker's 3-space
    indent), layers as stored (compressed or not; the media type follows the file's magic bytes).
    """
    names: Dict[str, str] = {}

    def describe(name: str, media_type: Optional[str]) -> Dict[str, Any]:
        digest = reader.hash_member(name)
        names.setdefault(digest, name)
        if media_type is None:
            with reader.open_member(name) as handle:
                media_type = layer_media_type(handle.read(4))
        return {"mediaType": media_type, "size": reader.member_size(name), "digest": digest}

    config = describe(image["Config"], manifest.MEDIA_TYPE_DOCKER_CONFIG)
    layers = [describe(name, None) for name in image["Layers"]]
    document = {"schemaVersion": 2, "mediaType": manifest.MEDIA_TYPE_DOCKER_MANIFEST, "config": config, "layers": layers}
    return json.dumps(document, indent=3).encode("utf-8"), names


@contextlib.contextmanager
def open_source(options: PushOptions) -> Iterator[Source]:
    """The validated image of ``options.src``; archives stay open until the block ends."""
    if options.src_format == "containerd":
        client = containerd.connect(options.containerd_address, options.containerd_namespace, must_exist=True,
                                    executable=options.containerd_ctr_path)
        record = client.image(options.src)
        if record is None:
            raise containerd.UnknownImageError(
                f"containerd has no image named '{options.src}' in namespace '{options.containerd_namespace}'; "
                "give the full name as 'ctr images ls' shows it (for example registry/name:tag).")
        yield _load(_ContainerdBlobs(client), {"digest": record.digest, "mediaType": record.media_type}, options.src)
        return
    if options.src_format == "oci":
        if not os.path.isdir(options.src):
            raise SourceError(f"There is no OCI layout directory at {options.src}.")
        try:
            store = OciLayout(options.src)
        except EcrkitError as exc:
            raise SourceError(str(exc)) from None
        entry, where = _pick_entry(store.read_index(), options.src_tag, f"The OCI layout {options.src}")
        yield _load(_LayoutBlobs(store), entry, where)
        return
    opener = archive_read.open_oci_archive if options.src_format == "oci-archive" else archive_read.open_docker_archive
    try:
        reader = opener(options.src)
    except archive.ArchiveError as exc:
        raise SourceError(str(exc)) from None
    with reader:
        if options.src_format == "oci-archive":
            entry, where = _pick_entry(reader.read_index(), options.src_tag, f"The oci-archive {options.src}")
            yield _load(_ArchiveBlobs(reader), entry, where)
            return
        image = _docker_image(reader, options.src_tag)
        where = (image["RepoTags"] or [image["Config"]])[0]
        kept = reader.manifest_digest(image)
        if kept:  # Docker 25+ (and this collection's writer) keep the exact manifest: push that one
            data = reader.read_member(f"blobs/sha256/{kept.split(':', 1)[1]}", manifest.MAX_MANIFEST_SIZE)
            media_type = json.loads(data.decode("utf-8")).get("mediaType") or manifest.MEDIA_TYPE_OCI_MANIFEST
            yield _load(_ArchiveBlobs(reader), {"digest": kept, "mediaType": media_type}, where)
            return
        data, names = docker_manifest(reader, image)
        digest = digest_of_bytes(data)
        yield _load(_DockerBlobs(reader, names, digest, data), {"digest": digest, "mediaType": manifest.MEDIA_TYPE_DOCKER_MANIFEST},
                    where)


class _DockerBlobs(_ArchiveBlobs):
    """A classic docker-archive: blobs are its named files, plus the manifest built for it."""

    def __init__(self, reader: Any, names: Dict[str, str], manifest_digest: str, manifest_bytes: bytes) -> None:
        super().__init__(reader)
        reader.blob_names.update(names)
        self.built = {manifest_digest: manifest_bytes}

    def read_blob(self, digest: str) -> bytes:
        if digest in self.built:
            return self.built[digest]
        return super().read_blob(digest)
