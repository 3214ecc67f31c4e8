# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The push use case: read an image from a source, upload what ECR lacks, put its manifest(s) under the tags.

Order of work, so that a broken source or a refused tag costs no upload:

1. open the source and validate it before any API call: every manifest parses and hashes to its
   digest, every blob exists with its size;
2. one BatchGetImage for all tags (what each points at now); when every tag already points at the
   source's digest the push is unchanged and that single call is all it costs;
3. a tag that would move in an IMMUTABLE repository fails here, naming the tag and both digests;
4. BatchCheckLayerAvailability (batches of 100) for every config and layer; the missing ones are hashed
   (a blob that does not match its digest fails the push before any upload), then only they are
   uploaded, several at once on the :class:`~transfer.TransferPool`, each in order, in parts of the
   ``partSize`` InitiateLayerUpload answers, streamed from the source one part at a time;
5. PutImage: child manifests of an index untagged (by digest) first, then the top manifest under each
   tag that moves, with the exact bytes of the source.

Threads rather than processes for the uploads. Building an UploadLayerPart request (base64, JSON body,
SigV4 payload hash) is CPU-bound and only the hashing releases the GIL: ``bench/push_parts.py`` on 2
cores builds 20 MiB parts at about 115 MiB/s serially, 150 MiB/s with 2 threads and 210-240 MiB/s with 2
processes. Processes win that CPU-only measure by about 1.5x, but not clearly enough: 150 MiB/s of
request building is above what one host's uplink to ECR usually carries, whereas processes would each
need their own boto3 client and credentials, and would split the call counting, retry policy and error
translation of :class:`EcrRepository` across process boundaries inside an Ansible module. So layers
upload on the one :class:`~transfer.TransferPool`, several at once.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ansible_collections.ecrkit.images.plugins.module_utils import archive, containerd, manifest, transfer
from ansible_collections.ecrkit.images.plugins.module_utils.ecr import (
    AccessDeniedError, EcrApiError, EcrRepository, LayerRefusedError, RepositoryNotFoundError, RetryPolicy, check_max_attempts)
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError, InvalidOptionError, storage_error
from ansible_collections.ecrkit.images.plugins.module_utils.layout import (
    BLOB_DIGEST_MISMATCH, BLOB_MISSING, BLOB_NOT_A_FILE, BLOB_PRESENT, BLOB_SIZE_MISMATCH, OciLayout, ref_name)
from ansible_collections.ecrkit.images.plugins.module_utils.manifest import Descriptor, parse_manifest
from ansible_collections.ecrkit.images.plugins.module_utils.reference import ImageRef, check_region, parse_reference

FORMATS = ("oci", "oci-archive", "docker-archive", "containerd")
MUTABILITIES = ("MUTABLE", "IMMUTABLE")
MAX_CONCURRENT_UPLOADS = 16
_READ_CHUNK = 1024 * 1024
_MAGIC = ((b"\x1f\x8b", manifest.MEDIA_TYPE_DOCKER_LAYER_GZIP), (b"\x28\xb5\x2f\xfd", manifest.MEDIA_TYPE_DOCKER_LAYER_ZSTD))

Document = manifest.ManifestDocument


class SourceError(EcrkitError):
    """The source is missing, ambiguous or broken; nothing was uploaded."""

    code = "invalid_source"


class ImmutableTagError(EcrkitError):
    code = "immutable_tag"


class EmptyBlobError(EcrkitError):
    code = "empty_blob"


@dataclass(frozen=True)
class PushOptions:
    ref: ImageRef
    src: str
    src_format: str = "oci"
    src_tag: Optional[str] = None
    tags: Tuple[str, ...] = ()
    create_repository: bool = False
    image_tag_mutability: Optional[str] = None
    max_concurrent_uploads: int = 4
    check_mode: bool = False
    containerd_address: str = containerd.DEFAULT_ADDRESS
    containerd_namespace: str = containerd.DEFAULT_NAMESPACE
    max_attempts: int = 10
    containerd_ctr_path: Optional[str] = None  # None: ctr from the system directories
    warnings: Tuple[str, ...] = ()  # about the options, for the result

    @classmethod
    def from_params(cls, *, ref: str, src: str, src_format: str = "oci", src_tag: str | None = None,
                    tags: Sequence[str] | None = None, create_repository: bool = False,
                    image_tag_mutability: str | None = None, region: str | None = None,
                    max_concurrent_uploads: int = 4, check_mode: bool = False,
                    containerd_address: str | None = None, containerd_namespace: str | None = None,
                    max_attempts: int = 10, containerd_ctr_path: str | None = None) -> PushOptions:
        """Validate the module's options (in the user's terms) before any network call. The containerd
        options are None when not given (their defaults apply), so that giving them for another
        src_format can be told apart and warned about."""
        image_ref = parse_reference(ref, default_tag=None)  # a push names its tag (or a digest, for an untagged push)
        check_region(image_ref, region)
        if src_format not in FORMATS:
            raise InvalidOptionError(f"src_format '{src_format}' is not one of {', '.join(FORMATS)}.")
        if not src:
            raise InvalidOptionError("src must name an OCI layout directory, an archive file or an image in containerd.")
        check_max_attempts(max_attempts)
        if src_format == "containerd" and src_tag:
            raise InvalidOptionError("src_tag does not apply to src_format containerd; give the image's full name in src.")
        if image_tag_mutability is not None and image_tag_mutability not in MUTABILITIES:
            raise InvalidOptionError(f"image_tag_mutability '{image_tag_mutability}' is not one of {', '.join(MUTABILITIES)}.")
        if max_concurrent_uploads < 1 or max_concurrent_uploads > MAX_CONCURRENT_UPLOADS:
            raise InvalidOptionError(f"max_concurrent_uploads must be between 1 and {MAX_CONCURRENT_UPLOADS}, not {max_concurrent_uploads}.")
        extra = []
        for tag in tags or ():
            try:
                checked = parse_reference(f"{image_ref.host}/{image_ref.repository}:{tag}").tag if tag else None
            except EcrkitError:
                checked = None
            if not checked or checked != tag:
                raise InvalidOptionError(f"The tag '{tag}' in tags is not valid; a tag is 1 to 300 characters from A-Z, a-z, 0-9, '.', '_' and '-'.")
            extra.append(tag)
        warnings = containerd.ignored_options_warnings("src_format", src_format, containerd_namespace=containerd_namespace,
                                                       containerd_address=containerd_address,
                                                       containerd_ctr_path=containerd_ctr_path)
        if src_format != "containerd":  # a path: expand ~ and $VARS as Ansible's path options do
            src = os.path.expanduser(os.path.expandvars(src))
        return cls(ref=image_ref, src=src, src_format=src_format, src_tag=src_tag or None, tags=tuple(extra),
                   create_repository=create_repository, image_tag_mutability=image_tag_mutability,
                   max_concurrent_uploads=max_concurrent_uploads, check_mode=check_mode,
                   containerd_address=containerd.DEFAULT_ADDRESS if containerd_address is None else containerd_address,
                   containerd_namespace=containerd.DEFAULT_NAMESPACE if containerd_namespace is None else containerd_namespace,
                   max_attempts=max_attempts, containerd_ctr_path=containerd_ctr_path or None, warnings=tuple(warnings))

    @property
    def api_retry(self) -> RetryPolicy:
        """How ECR API calls (each part upload included) are retried: full-jitter exponential backoff."""
        return RetryPolicy(attempts=self.max_attempts)

    @property
    def all_tags(self) -> List[str]:
        """The reference's tag and the extra tags, each once, in order."""
        return list(dict.fromkeys(([self.ref.tag] if self.ref.tag else []) + list(self.tags)))


# Sources ----------------------------------------------------------------------------------------------

class _Blobs:
    """Where a source's blobs are: ``status``, ``read`` (small, verified), ``parts`` (streamed)."""

    name = ""
    missing_hint = ""  # why a blob may be missing from this kind of source, and what to do

    def status(self, digest: str, size: int, verify: bool = True) -> str:
        """``BLOB_PRESENT`` or what is wrong; ``verify`` hashes the bytes too, otherwise only the size counts."""
        raise NotImplementedError

    def read_blob(self, digest: str) -> bytes:
        raise NotImplementedError

    def parts(self, digest: str, parts: Sequence[Tuple[int, int]]) -> Iterator[Tuple[int, int, bytes]]:
        raise NotImplementedError


class _LayoutBlobs(_Blobs):
    """An OCI layout, which whoever made it can still change: a blob is hashed from the descriptor that
    ``status(verify=True)`` opened, and its upload reads only that same file (device, inode, size), so a
    blob swapped for a link or another file after its check sends nothing (see :func:`transfer.iter_parts`)."""

    def __init__(self, store: OciLayout) -> None:
        self.store = store
        self.name = f"the OCI layout {store.root}"
        self.verified: Dict[str, Tuple[int, int, int]] = {}  # digest -> identity of the file that hashed to it

    def status(self, digest: str, size: int, verify: bool = True) -> str:
        if not verify:
            return self.store.blob_status(digest, size, verify=False)
        path = self.store.blob_path(digest)
        try:
            fd, info = transfer.open_source_file(os.path.relpath(path, self.store.root), self.store.root)
        except FileNotFoundError:
            return BLOB_MISSING
        except OSError as exc:
            if isinstance(exc, transfer.NotARegularFileError) or exc.errno in (errno.ELOOP, errno.ENOTDIR):
                return BLOB_NOT_A_FILE
            raise storage_error(exc, f"opening blob {digest}", path) from None
        try:
            if info.st_size != size:
                return BLOB_SIZE_MISMATCH
            hasher = hashlib.sha256()
            while True:
                try:
                    data = os.read(fd, _READ_CHUNK)
                except OSError as exc:
                    raise storage_error(exc, f"reading blob {digest}", path) from None
                if not data:
                    break
                hasher.update(data)
        finally:
            os.close(fd)
        if "sha256:" + hasher.hexdigest() != digest:
            return BLOB_DIGEST_MISMATCH
        self.verified[digest] = transfer.file_identity(info)
        return BLOB_PRESENT

    def read_blob(self, digest: str) -> bytes:
        return self.store.read_blob(digest, manifest.MAX_MANIFEST_SIZE)

    def parts(self, digest: str, parts: Sequence[Tuple[int, int]]) -> Iterator[Tuple[int, int, bytes]]:
        path = self.store.blob_path(digest)
        return transfer.iter_parts(os.path.relpath(path, self.store.root), parts, root=self.store.root,
                                   identity=self.verified.get(digest), digest=digest)


class _ArchiveBlobs(_Blobs):
    """A tar source (oci-archive, docker-archive): its reader resolves digests to members."""

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


class _ContainerdBlobs(_Blobs):
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
        hasher = hashlib.sha256()
        with self.client.open_blob(digest) as stream:
            for first, last in parts:
                data = _read_exactly(stream, last - first + 1)
                if len(data) != last - first + 1:
                    raise SourceError(f"The blob {digest} in {self.name} ended before byte {last}; nothing more was uploaded.")
                hasher.update(data)
                if last == parts[-1][1] and "sha256:" + hasher.hexdigest() != digest:
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
class _Source:
    blobs: _Blobs
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


def _load(blobs: _Blobs, top_descriptor: Dict[str, Any], where: str) -> _Source:
    """Parse the image under ``top_descriptor`` and validate every manifest and blob it references."""
    try:
        raw = blobs.read_blob(top_descriptor["digest"])
        top = parse_manifest(raw, top_descriptor.get("mediaType"), expected_digest=top_descriptor["digest"])

        def fetch(descriptor: Descriptor) -> Document:
            return manifest.parse_referenced(descriptor, blobs.read_blob(descriptor.digest), descriptor.media_type)

        documents = [step.document for step in manifest.walk(top, fetch)] + [top]
    except SourceError:
        raise
    except EcrkitError as exc:
        raise SourceError(f"The image '{where}' in {blobs.name} cannot be pushed: {exc}") from None
    source = _Source(blobs=blobs, top=top, documents=documents, layers=manifest.distinct_blobs(documents), where=where)
    check_blobs(source, source.layers, verify=False)
    return source


def check_blobs(source: _Source, blobs: List[Descriptor], verify: bool) -> None:
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


def _docker_image(reader: archive.DockerArchive, src_tag: Optional[str]) -> Dict[str, Any]:
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


def docker_manifest(reader: archive.DockerArchive, image: Dict[str, Any]) -> Tuple[bytes, Dict[str, str]]:
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
def open_source(options: PushOptions) -> Iterator[_Source]:
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
    opener = archive.open_oci_archive if options.src_format == "oci-archive" else archive.open_docker_archive
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
        digest = manifest.sha256_digest(data)
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


# The push ---------------------------------------------------------------------------------------------

def push(options: PushOptions, connect: Callable[[ImageRef], EcrRepository]) -> Dict[str, Any]:
    """Run the push; return the module result. The source is validated before ``connect`` is called.
    ``warnings`` in the result (when there are any) are for the module to pass to Ansible."""
    warnings = list(options.warnings)
    result = _push(options, connect, warnings)
    if warnings:
        result["warnings"] = warnings
    return result


def _push(options: PushOptions, connect: Callable[[ImageRef], EcrRepository], warnings: List[str]) -> Dict[str, Any]:
    started = time.monotonic()
    with open_source(options) as source:
        top = source.top
        if options.ref.digest and options.ref.digest != top.digest:
            raise SourceError(f"The reference {options.ref} names the digest {options.ref.digest}, but the image in "
                              f"{options.src} is {top.digest}.")
        tags = options.all_tags
        repository = connect(options.ref)
        ids = [{"imageTag": tag} for tag in tags] or [{"imageDigest": top.digest}]
        created = False
        try:
            previous = repository.image_digests(ids, manifest.ACCEPTED_MANIFEST_TYPES)
        except RepositoryNotFoundError:
            if not options.create_repository:
                raise RepositoryNotFoundError(
                    f"The repository '{options.ref.repository}' does not exist in registry {options.ref.registry_id} "
                    f"({options.ref.region}); create it first or set create_repository: true.", "RepositoryNotFoundException") from None
            created = True
            previous = [None] * len(ids)
        before = dict(zip(tags, previous))
        moving = [tag for tag in tags if before[tag] != top.digest]
        untagged_needed = not tags and previous[0] != top.digest
        mutability = None if created else _compare_mutability(options, repository, warnings)
        if not moving and not untagged_needed:
            return _result(options, source, before, [], 0, started, repository, created=False, changed=False)
        if not created:
            _refuse_immutable(options, repository, before, moving, top.digest, mutability)
        missing = set(d.digest for d in source.layers) if created else set(repository.missing_blobs(d.digest for d in source.layers))
        empty = [blob.digest for blob in source.layers if blob.digest in missing and blob.size == 0]
        if empty:
            raise EmptyBlobError(f"ECR lacks the empty (0-byte) blob {empty[0]}, and its layer upload API cannot store an empty "
                                 "blob; the image cannot be pushed through the ECR API.")
        to_upload = [blob for blob in source.layers if blob.digest in missing]
        check_blobs(source, to_upload, verify=True)  # hashed only when they are to be sent; ECR verified its own
        if options.check_mode:
            return _result(options, source, before, to_upload, 0, started, repository, created=created, changed=True, check_mode=True)
        if created:
            repository.create_repository(options.image_tag_mutability)
        transferred = _upload(options, repository, source.blobs, to_upload)
        for document in source.documents[:-1]:
            repository.put_image(document.raw, document.media_type, digest=document.digest)
        for tag in moving:
            try:
                repository.put_image(top.raw, top.media_type, tag=tag, digest=top.digest)
            except EcrApiError as exc:
                if exc.aws_code == "ImageTagAlreadyExistsException":
                    raise _immutable_error(options, {tag: before.get(tag)}, top.digest) from None
                raise
        if untagged_needed:
            repository.put_image(top.raw, top.media_type, digest=top.digest)
        return _result(options, source, before, to_upload, transferred, started, repository, created=created, changed=True)


def _compare_mutability(options: PushOptions, repository: EcrRepository, warnings: List[str]) -> Optional[str]:
    """The existing repository's tag mutability when image_tag_mutability was given (one DescribeRepositories,
    only then), with a warning when they differ: the option applies to a repository this task creates."""
    if not options.image_tag_mutability:
        return None
    try:
        current = repository.tag_mutability()
    except AccessDeniedError:
        warnings.append(f"image_tag_mutability {options.image_tag_mutability} could not be compared with the setting of the "
                        f"existing repository '{options.ref.repository}' (no ecr:DescribeRepositories); it applies only to a "
                        "repository this task creates.")
        return None
    if current != options.image_tag_mutability:
        warnings.append(
            f"The repository '{options.ref.repository}' already exists with image tag mutability {current}; "
            f"image_tag_mutability {options.image_tag_mutability} applies only to a repository this task creates, so "
            f"nothing was changed. To change it: aws ecr put-image-tag-mutability --registry-id {options.ref.registry_id} "
            f"--region {options.ref.region} --repository-name {options.ref.repository} --image-tag-mutability "
            f"{options.image_tag_mutability}")
    return current


def _refuse_immutable(options: PushOptions, repository: EcrRepository, before: Dict[str, Optional[str]], moving: List[str],
                      digest: str, mutability: Optional[str] = None) -> None:
    """Fail before any upload when tags would move in an immutable repository, naming every one of them
    (one extra call, only then, unless ``mutability`` is already known)."""
    occupied = [tag for tag in moving if before[tag]]
    if occupied and (mutability or repository.tag_mutability()) == "IMMUTABLE":
        raise _immutable_error(options, {tag: before[tag] for tag in occupied}, digest)


def _immutable_error(options: PushOptions, occupied: Dict[str, Optional[str]], digest: str) -> ImmutableTagError:
    where = f"in the immutable repository '{options.ref.repository}'"
    if len(occupied) == 1:
        tag, current = next(iter(occupied.items()))
        return ImmutableTagError(f"The tag '{tag}' {where} points at {current or 'another image'}; it cannot be moved to "
                                 f"{digest}. Push under a new tag.")
    listed = ", ".join(f"'{tag}' (at {current or 'another image'})" for tag, current in occupied.items())
    return ImmutableTagError(f"The tags {listed} {where} point at other images; none of them can be moved to {digest}. "
                             "Push under new tags.")


def _upload(options: PushOptions, repository: EcrRepository, blobs: _Blobs, layers: List[Descriptor]) -> int:
    """Upload ``layers`` (several at once, each in order); return the bytes sent."""
    if not layers:
        return 0
    in_flight = min(options.max_concurrent_uploads, len(layers))
    with transfer.TransferPool(in_flight + 1) as pool:  # a part of each layer, and one built ahead
        group = pool.group()
        uploads = _LayerUploads(repository, blobs, layers, group)
        for dummy in range(in_flight):
            uploads.start_next_layer()
        group.wait()
        return uploads.sent


class _PartReader:
    """A layer's parts as the source yields them, numbered in that order, one reader at a time."""

    def __init__(self, parts: Iterator[Tuple[int, int, bytes]]) -> None:
        self._parts = parts
        self._lock = threading.Lock()
        self._count = 0

    def next(self) -> Tuple[int, int, int, bytes]:
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
    """The uploads of one push as tasks on a :class:`~transfer.TransferPool`: ``in_flight`` layers at a
    time, each in order.

    ECR takes a layer's parts only in order, and building an UploadLayerPart request (base64, JSON,
    SigV4 payload hash) takes about as long as sending it. Layers in flight together overlap each
    other's building and sending; a layer alone in flight (one big layer, or the last one) does it by
    itself: part N+1's task builds its request while part N is on its way, then waits for it
    (``wait_before_sending`` of :meth:`EcrRepository.upload_layer_part`). So a layer has one part task
    at a time, two when it was alone at its last part: at most ``in_flight + 1`` parts are in memory, and
    only one task waits. Each received part starts the next task; the last one completes the layer and
    starts the next layer.
    """

    def __init__(self, repository: EcrRepository, blobs: _Blobs, layers: List[Descriptor], group: transfer.TaskGroup) -> None:
        self.repository = repository
        self.blobs = blobs
        self.group = group
        self._waiting = collections.deque(layers)
        self._lock = threading.Lock()
        self._active = 0  # layers begun and not completed
        self.sent = 0

    def start_next_layer(self) -> None:
        with self._lock:
            layer = self._waiting.popleft() if self._waiting else None
        if layer is not None:
            self.group.submit(self._begin, layer)

    def _begin(self, layer: Descriptor, attempt: int = 1) -> None:
        upload_id, part_size = self.repository.initiate_layer_upload()
        part_size = min(max(part_size, transfer.ECR_MIN_PART_SIZE), transfer.ECR_MAX_PART_SIZE)
        plan = transfer.plan_parts(layer.size, part_size)
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
            self.repository.upload_layer_part(upload.upload_id, first, last, data, wait_before_sending=wait)
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

    def _waiter(self, received: threading.Event) -> Callable[[], None]:
        def wait() -> None:
            while not received.wait(0.05):
                self.group.check()  # the push failed elsewhere: this part is not sent
        return wait


def _result(options: PushOptions, source: _Source, before: Dict[str, Optional[str]], uploaded: List[Descriptor],
            transferred: int, started: float, repository: EcrRepository, created: bool, changed: bool,
            check_mode: bool = False) -> Dict[str, Any]:
    sent = {blob.digest for blob in uploaded}
    action = "upload" if check_mode else "uploaded"
    top = source.top
    return {
        "changed": changed,
        "ref": str(options.ref),
        "digest": top.digest,
        "media_type": top.media_type,
        "tags": [{"tag": tag, "previous_digest": digest, "changed": digest != top.digest} for tag, digest in before.items()],
        "layers": [{"digest": blob.digest, "size": blob.size, "media_type": blob.media_type,
                    "action": action if blob.digest in sent else "present"} for blob in source.layers],
        "bytes_transferred": transferred,
        "elapsed": round(time.monotonic() - started, 3),
        "repository_created": created,
        # as the pull reports them: the repository, the image pinned by digest, what the reference's tag held
        "repository": options.ref.repository,
        "image": f"{options.ref.repository_uri}@{top.digest}",
        "previous_digest": before.get(options.ref.tag) if options.ref.tag else None,
        "api_calls": repository.api_calls,
        "retries": repository.retries,
        "diff": {"before": dict(before),
                 "after": {tag: top.digest for tag in before}},
    }
