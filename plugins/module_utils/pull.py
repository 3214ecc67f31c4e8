# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pull use case: resolve a reference in ECR, plan what the destination lacks, fetch it, store it.

Idempotency without extra calls: what a destination records for the reference's name (the
``org.opencontainers.image.ref.name`` entry of an OCI layout or archive, or the manifest digest of a
docker-archive) is compared with what ECR resolves the reference to. For a multi-platform index the
wanted entry is the selected platform's manifest, whose digest the index itself lists, so a pull that
changes nothing costs exactly one BatchGetImage call and no download.

Archives are assembled in a staging OCI layout beside the archive (``.NAME.ecrkit-staging``), which
keeps partial downloads across interrupted runs and is removed once the archive is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Union

from ansible_collections.ecrkit.images.plugins.module_utils import archive, manifest, transfer
from ansible_collections.ecrkit.images.plugins.module_utils.ecr import EcrRepository
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError, InvalidOptionError
from ansible_collections.ecrkit.images.plugins.module_utils.layout import OciLayout
from ansible_collections.ecrkit.images.plugins.module_utils.manifest import (
    Descriptor, ImageIndex, ImageManifest, Platform, parse_manifest,
)
from ansible_collections.ecrkit.images.plugins.module_utils.reference import ImageRef, check_region, parse_reference

FORMATS = ("oci", "oci-archive", "docker-archive")
POLICIES = ("always", "missing")
MIN_CHUNK_SIZE = 1024 * 1024
ALL_PLATFORMS = "all"

Document = manifest.ManifestDocument


@dataclass(frozen=True)
class PullOptions:
    ref: ImageRef
    dest: str
    dest_format: str = "oci"
    platform: Optional[Platform] = None  # None: the host's (ignored with all_platforms)
    all_platforms: bool = False
    policy: str = "always"
    max_connections: int = 8
    chunk_size: int = 16 * 1024 * 1024
    ranged: bool = True
    tls_verify: Union[bool, str] = True
    check_mode: bool = False

    @classmethod
    def from_params(cls, *, ref: str, dest: str, dest_format: str = "oci", platform: str | None = None,
                    all_platforms: bool = False, policy: str = "always", region: str | None = None,
                    max_connections: int = 8, chunk_size: int = 16 * 1024 * 1024, ranged: bool = True,
                    tls_verify: Union[bool, str] = True, check_mode: bool = False) -> PullOptions:
        """Validate the module's options (in the user's terms) before any network call."""
        image_ref = parse_reference(ref)
        check_region(image_ref, region)
        if dest_format not in FORMATS:
            raise InvalidOptionError(f"format '{dest_format}' is not one of {', '.join(FORMATS)}.")
        if policy not in POLICIES:
            raise InvalidOptionError(f"pull '{policy}' is not one of {', '.join(POLICIES)}.")
        if all_platforms and dest_format == "docker-archive":
            raise InvalidOptionError("A docker-archive holds one platform; drop all_platforms or use format oci or oci-archive.")
        if max_connections < 1 or max_connections > 64:
            raise InvalidOptionError(f"max_concurrent_downloads must be between 1 and 64, not {max_connections}.")
        if chunk_size < MIN_CHUNK_SIZE:
            raise InvalidOptionError(f"chunk_size must be at least 1MB, not {chunk_size} bytes.")
        if not dest:
            raise InvalidOptionError("dest must name a directory (format oci) or a file (archive formats).")
        return cls(ref=image_ref, dest=dest, dest_format=dest_format,
                   platform=manifest.parse_platform(platform) if platform else None,
                   all_platforms=all_platforms, policy=policy, max_connections=max_connections,
                   chunk_size=chunk_size, ranged=ranged, tls_verify=tls_verify, check_mode=check_mode)

    @property
    def entry_name(self) -> str:
        """The name the image is recorded under in the destination: the tag, or for a reference by
        digest only, ``sha256-<hex>`` (a tag cannot hold ``:``)."""
        if self.ref.tag:
            return self.ref.tag
        return str(self.ref.digest).replace(":", "-")

    @property
    def wanted_platform(self) -> Platform:
        return self.platform or manifest.host_platform()


@dataclass
class _Plan:
    top: Document
    entry: Descriptor  # what the destination's entry must point at
    platform: str
    documents: List[Document]  # every manifest/index to store, children first, the entry's last
    blobs: List[Descriptor]  # configs and layers, each once


def pull(options: PullOptions, connect: Callable[[ImageRef], EcrRepository]) -> Dict[str, Any]:
    """Run the pull; return the module result. ``connect`` is called only when ECR must be asked."""
    started = time.monotonic()
    target = _target(options)
    before = target.recorded_digest(options.entry_name)

    if options.policy == "missing" and before:
        plan = target.local_plan(before)
        return _result(options, plan, before, before, [], 0, started, changed=False, repository=None)

    repository = connect(options.ref)
    raw, media_type, reported = repository.get_manifest(options.ref.image_id, manifest.ACCEPTED_MANIFEST_TYPES)
    top = parse_manifest(raw, media_type or None, expected_digest=options.ref.digest)
    if reported and reported != top.digest:
        raise manifest.DigestMismatchError(
            f"ECR answered {options.ref} with a manifest whose bytes hash to {top.digest}, not to the {reported} it "
            "reported; nothing was stored.", expected=reported, actual=top.digest)
    entry = _entry_for(options, top)

    if before == entry.digest and target.complete(entry.digest):
        plan = target.local_plan(entry.digest, top)
        return _result(options, plan, before, entry.digest, [], 0, started, changed=False, repository=repository)

    plan = _plan(options, repository, target.store, top, entry)
    missing = [blob for blob in plan.blobs if not target.has_blob(blob)]
    if not plan.platform and isinstance(plan.documents[-1], ImageManifest) and target.store is not None:
        plan.platform = _image_platform(target.store, plan.documents[-1])
    if options.check_mode:
        return _result(options, plan, before, entry.digest, missing, 0, started, changed=True, repository=repository,
                       check_mode=True)

    store = target.open_for_writing()
    transferred = _download(options, repository, store, missing)
    for document in plan.documents:
        store.write_blob(document.raw, expected_digest=document.digest)
    store.set_tag(options.entry_name, plan.entry.to_json())
    if plan.platform in ("", "unknown") and isinstance(plan.documents[-1], ImageManifest):
        plan.platform = _image_platform(store, plan.documents[-1])
    target.finish(options, plan)
    return _result(options, plan, before, entry.digest, missing, transferred, started,
                   changed=before != entry.digest or bool(missing), repository=repository)


def _entry_for(options: PullOptions, top: Document) -> Descriptor:
    if isinstance(top, ImageIndex) and not options.all_platforms:
        return manifest.select_manifest(top, options.wanted_platform)
    return top.descriptor()


def _plan(options: PullOptions, repository: EcrRepository, store: Optional[OciLayout], top: Document,
          entry: Descriptor) -> _Plan:
    """Fetch the child manifest(s) the entry needs (from the destination when it has them) and list blobs."""

    def fetch(descriptor: Descriptor) -> Document:
        if store is not None and store.has_blob(descriptor.digest, descriptor.size):
            return manifest.parse_referenced(descriptor, store.read_blob(descriptor.digest), descriptor.media_type)
        raw, media_type, dummy = repository.get_manifest({"imageDigest": descriptor.digest},
                                                         manifest.ACCEPTED_MANIFEST_TYPES)
        return manifest.parse_referenced(descriptor, raw, media_type or None)

    if isinstance(top, ImageManifest):
        documents: List[Document] = [top]
        platform = ""
    elif options.all_platforms:
        documents = [step.document for step in manifest.walk(top, fetch)] + [top]
        platform = ALL_PLATFORMS
    else:
        child = fetch(entry)
        if not isinstance(child, ImageManifest):
            raise manifest.UnsupportedManifestError(
                f"The platform entry {entry.digest} of {options.ref} is itself an index; pull it by that digest.")
        documents = [child]
        platform = str(entry.platform.normalized()) if entry.platform else str(options.wanted_platform)
    return _Plan(top=top, entry=entry, platform=platform, documents=documents, blobs=manifest.distinct_blobs(documents))


def _download(options: PullOptions, repository: EcrRepository, store: OciLayout, blobs: List[Descriptor]) -> int:
    """Fetch ``blobs`` into ``store``'s partial files, verified, and commit each; return bytes moved.

    Each partial file is claimed first, so two runs pulling into one layout never write the same
    file; a blob another run committed while this one waited for the claim is not fetched again.
    """
    with contextlib.ExitStack() as claims:
        jobs = []
        for blob in blobs:
            path = claims.enter_context(store.claim_partial(blob.digest))
            if not store.has_blob(blob.digest, blob.size):
                jobs.append(transfer.BlobJob(digest=blob.digest, size=blob.size, path=path,
                                             get_url=_url_provider(repository, blob.digest)))
        if not jobs:
            return 0
        with transfer.TransferPool(options.max_connections, verify=options.tls_verify) as pool:
            results = transfer.download_blobs(pool, jobs, chunk_size=options.chunk_size, ranged=options.ranged)
        for result in results:
            store.commit_blob(result.path, result.digest, result.size)
    store.cleanup_partials()
    return sum(result.bytes_transferred for result in results)


def _url_provider(repository: EcrRepository, digest: str) -> Callable[[bool], str]:
    def get_url(refresh: bool = False) -> str:  # pylint: disable=unused-argument
        # every call asks ECR: a fresh presigned URL is what a refresh needs, and the first call has none
        return repository.get_download_url(digest)
    return get_url


def _result(options: PullOptions, plan: _Plan, before: Optional[str], after: str, missing: List[Descriptor],
            transferred: int, started: float, changed: bool, repository: Optional[EcrRepository],
            check_mode: bool = False) -> Dict[str, Any]:
    missing_digests = {blob.digest for blob in missing}
    fetched = "download" if check_mode else "downloaded"
    entry_document = plan.documents[-1] if plan.documents else plan.top
    return {
        "changed": changed,
        "ref": str(options.ref),
        "digest": plan.top.digest,
        "media_type": plan.top.media_type,
        "platform": plan.platform or "unknown",
        "manifest_digest": entry_document.digest if isinstance(entry_document, ImageManifest) else plan.top.digest,
        "layers": [{"digest": blob.digest, "size": blob.size, "media_type": blob.media_type,
                    "action": fetched if blob.digest in missing_digests else "present"} for blob in plan.blobs],
        "bytes_transferred": transferred,
        "elapsed": round(time.monotonic() - started, 3),
        "dest": options.dest,
        "format": options.dest_format,
        "api_calls": repository.api_calls if repository else 0,
        "retries": repository.retries if repository else 0,
        "diff": {"before": {"tag": before}, "after": {"tag": after}},
    }


# Destinations ---------------------------------------------------------------------------------------

class _LayoutTarget:
    """An OCI layout directory: the store is the destination itself."""

    def __init__(self, options: PullOptions) -> None:
        self.options = options
        self.root = options.dest
        self.store: Optional[OciLayout] = OciLayout(self.root) if _is_layout(self.root) else None

    def recorded_digest(self, name: str) -> Optional[str]:
        entry = self.store.find_tag(name) if self.store else None
        return entry["digest"] if entry else None

    def has_blob(self, blob: Descriptor) -> bool:
        return bool(self.store and self.store.has_blob(blob.digest, blob.size))

    def complete(self, digest: str) -> bool:
        try:
            plan = self.local_plan(digest)
        except EcrkitError:
            return False
        return all(self.has_blob(blob) for blob in plan.blobs)

    def local_plan(self, digest: str, top: Optional[Document] = None) -> _Plan:
        if self.store is None:
            raise EcrkitError(f"{self.root} holds no OCI image layout.")
        return _local_plan(self.options, self.store, digest, top)

    def open_for_writing(self) -> OciLayout:
        if self.store is None:
            self.store = OciLayout(self.root, create=True)
        return self.store

    def finish(self, options: PullOptions, plan: _Plan) -> None:
        """Nothing more: the layout is the destination."""


class _ArchiveTarget(_LayoutTarget):
    """An archive file, assembled in a staging layout beside it."""

    def __init__(self, options: PullOptions) -> None:  # pylint: disable=super-init-not-called
        self.options = options
        directory, name = os.path.split(os.path.abspath(options.dest))
        self.root = os.path.join(directory, f".{name}.ecrkit-staging")
        self.store = OciLayout(self.root) if _is_layout(self.root) else None
        self.summary = _archive_summary(options.dest, options.dest_format)

    def recorded_digest(self, name: str) -> Optional[str]:
        if not self.summary:
            return None
        if self.options.dest_format == "oci-archive":
            digests = [entry["digest"] for entry in self.summary["manifests"] if entry.get("tag") == name]
        else:
            digests = [image["manifest_digest"] for image in self.summary["images"]
                       if _repo_tag(self.options) in (image.get("repo_tags") or [])]
        return digests[0] if digests else None

    def complete(self, digest: str) -> bool:
        return self.summary is not None  # read_archive_summary checked every blob it references

    def local_plan(self, digest: str, top: Optional[Document] = None) -> _Plan:
        opener = archive.open_oci_archive if self.options.dest_format == "oci-archive" else archive.open_docker_archive
        with opener(self.options.dest) as reader:
            return _local_plan(self.options, reader, digest, top)

    def finish(self, options: PullOptions, plan: _Plan) -> None:
        store = self.open_for_writing()
        if options.dest_format == "oci-archive":
            archive.write_oci_archive(store, options.entry_name, options.dest)
        else:
            archive.write_docker_archive(store, options.entry_name, options.dest, [_repo_tag(options)])
        shutil.rmtree(self.root, ignore_errors=True)


def _local_plan(options: PullOptions, reader: Any, digest: str, top: Optional[Document]) -> _Plan:
    """What a destination already holds under ``digest``, read from it (``reader.read_blob``) without
    any API call. With ``top`` (what ECR resolved), the plan reports it rather than the stored entry."""
    document = parse_manifest(reader.read_blob(digest), None, expected_digest=digest)

    def fetch(descriptor: Descriptor) -> Document:
        return manifest.parse_referenced(descriptor, reader.read_blob(descriptor.digest), descriptor.media_type)

    if isinstance(document, ImageIndex):
        documents = [step.document for step in manifest.walk(document, fetch)] + [document]
        platform = ALL_PLATFORMS
    else:
        documents = [document]
        platform = _image_platform(reader, document)
    entry = document.descriptor()
    if isinstance(top, ImageIndex) and not options.all_platforms:
        entry = _entry_for(options, top)
        platform = str(entry.platform.normalized()) if entry.platform else platform
    return _Plan(top=top or document, entry=entry, platform=platform, documents=documents, blobs=manifest.distinct_blobs(documents))


def _image_platform(reader: Any, image: ImageManifest) -> str:
    """``os/arch[/variant]`` from an image's config when the destination holds it, else ``unknown``."""
    try:
        config = json.loads(reader.read_blob(image.config.digest))
        return str(manifest.normalize_platform(Platform(os=config["os"], architecture=config["architecture"],
                                                        variant=config.get("variant"))))
    except (EcrkitError, KeyError, TypeError, ValueError):
        return "unknown"


def _target(options: PullOptions) -> _LayoutTarget:
    return _LayoutTarget(options) if options.dest_format == "oci" else _ArchiveTarget(options)


def _is_layout(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "oci-layout"))


def _archive_summary(path: str, dest_format: str) -> Optional[Dict[str, Any]]:
    try:
        return archive.read_archive_summary(path, dest_format)
    except archive.ArchiveError:
        return None  # unusable: rewritten by this pull


def _repo_tag(options: PullOptions) -> str:
    """The RepoTags entry of a docker-archive: the reference without digest, with a tag."""
    ref = options.ref
    return f"{ref.host}/{ref.repository}:{ref.tag or options.entry_name}"
