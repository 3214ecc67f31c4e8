# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pull use case: resolve a reference in ECR, plan what the destination lacks, fetch it, store it.

Idempotency without extra calls: what a destination records for the reference's name (the
``org.opencontainers.image.ref.name`` entry of an OCI layout or archive, or the manifest digest of a
docker-archive) is compared with what ECR resolves the reference to. For a multi-platform index the
wanted entry is the selected platform's manifest, whose digest the index itself lists, so a pull that
changes nothing costs exactly one BatchGetImage call and no download.

The destinations (an OCI layout, an archive, containerd) are in :mod:`destinations`; this module
drives one: :func:`pull` asks it what it records and holds, plans from ECR what it lacks
(:func:`_plan`), downloads that into the layout it gives (:func:`_download`), stores the manifests and
the entry (:func:`_record`), and lets it finish (:meth:`~destinations.Destination.finish`).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional, Tuple, Union

from ansible_collections.ecrkit.images.plugins.module_utils import argspec, containerd, download, hostfs, layout_format, manifest
from ansible_collections.ecrkit.images.plugins.module_utils.destinations import (
    ALL_PLATFORMS, BlobStore, Destination, LayoutDestination, Plan, config_platform, entry_for, image_platform, open_destination, stored)
from ansible_collections.ecrkit.images.plugins.module_utils.ecr import EcrRepository
from ansible_collections.ecrkit.images.plugins.module_utils.prune import PruneResult, prune_layout
from ansible_collections.ecrkit.images.plugins.module_utils.errors import InvalidOptionError
from ansible_collections.ecrkit.images.plugins.module_utils.layout import OciLayout
from ansible_collections.ecrkit.images.plugins.module_utils.manifest import Descriptor, ImageManifest
from ansible_collections.ecrkit.images.plugins.module_utils.manifest_parser import parse_manifest, parse_referenced
from ansible_collections.ecrkit.images.plugins.module_utils.platform import Platform, host_platform, parse_platform
from ansible_collections.ecrkit.images.plugins.module_utils.pool import TransferPool
from ansible_collections.ecrkit.images.plugins.module_utils.reference import ImageRef, check_region, parse_reference
from ansible_collections.ecrkit.images.plugins.module_utils.retry import RetryPolicy, check_max_attempts

MIN_CHUNK_SIZE = 1024 * 1024

Document = manifest.ManifestDocument


@dataclass(frozen=True)
class PullOptions:
    """The pull's options, validated, under the module's option names (defaults: :mod:`argspec`)."""

    ref: ImageRef
    dest: str
    format: str
    platform: Optional[Platform]  # None: the host's (ignored with all_platforms)
    all_platforms: bool
    pull: str
    max_concurrent_downloads: int
    chunk_size: int  # bytes
    ranged_downloads: bool
    tls_verify: Union[bool, str]
    check_mode: bool
    containerd_address: str
    containerd_namespace: str
    containerd_ctr_path: Optional[str]  # None: ctr from the system directories
    unpack: bool
    file_mode: Optional[int]  # Ansible's mode when numeric: given to what is created, before it is filled
    max_attempts: int
    download_timeout: float
    prune: bool  # format oci: remove the blobs no entry references once this pull's entry is stored
    warnings: Tuple[str, ...] = ()  # about the options, for the result

    @classmethod
    def from_params(
            cls, *, ref: str, dest: str | None = None, format: str = argspec.FORMAT, platform: str | None = None,
            all_platforms: bool = False, pull: str = argspec.PULL, region: str | None = None,
            max_concurrent_downloads: int = argspec.MAX_CONCURRENT_DOWNLOADS, chunk_size: Union[int, str] = argspec.CHUNK_SIZE,
            ranged_downloads: bool = True, tls_verify: Union[bool, str] = True, check_mode: bool = False,
            containerd_address: str | None = None, containerd_namespace: str | None = None,
            containerd_ctr_path: str | None = None, unpack: bool | None = None, max_attempts: int = argspec.MAX_ATTEMPTS,
            download_timeout: float = argspec.DOWNLOAD_TIMEOUT, mode: Any = None, prune: bool = False) -> PullOptions:
        """Validate the module's options before any network call. The containerd options and unpack are
        None when not given (their defaults apply), so that giving them for another format can be told
        apart and warned about."""
        image_ref = parse_reference(ref)
        check_region(image_ref, region)
        if format not in argspec.FORMATS:
            raise InvalidOptionError(f"format '{format}' is not one of {', '.join(argspec.FORMATS)}.")
        if pull not in argspec.PULL_POLICIES:
            raise InvalidOptionError(f"pull '{pull}' is not one of {', '.join(argspec.PULL_POLICIES)}.")
        if all_platforms and format == "docker-archive":
            raise InvalidOptionError("A docker-archive holds one platform; drop all_platforms or use format oci or oci-archive.")
        if all_platforms and platform:
            raise InvalidOptionError("platform picks one platform and all_platforms: true keeps them all; drop one of the two.")
        if max_concurrent_downloads < 1 or max_concurrent_downloads > 64:
            raise InvalidOptionError(f"max_concurrent_downloads must be between 1 and 64, not {max_concurrent_downloads}.")
        chunk_bytes = parse_size(chunk_size, "chunk_size")
        if chunk_bytes < MIN_CHUNK_SIZE:
            raise InvalidOptionError(f"chunk_size must be at least 1 MiB (1048576 bytes), not {chunk_bytes} bytes.")
        if not dest and format != "containerd":
            raise InvalidOptionError("dest must name a directory (format oci) or a file (archive formats).")
        check_max_attempts(max_attempts)
        if not 1 <= download_timeout <= 3600:
            raise InvalidOptionError(f"download_timeout must be between 1 and 3600 seconds, not {download_timeout:g}.")
        warnings = containerd.ignored_options_warnings("format", format, containerd_namespace=containerd_namespace,
                                                       containerd_address=containerd_address,
                                                       containerd_ctr_path=containerd_ctr_path, unpack=unpack)
        if prune and format != "oci":
            warnings.append(f"prune applies to format oci only (an archive holds this image alone, and containerd collects "
                            f"its own garbage), so it was ignored for format {format}.")
        containerd_address = containerd.DEFAULT_ADDRESS if containerd_address is None else containerd_address
        if not containerd_address:
            raise InvalidOptionError("containerd_address must name containerd's socket, such as /run/containerd/containerd.sock.")
        return cls(ref=image_ref, dest=dest or "", format=format,
                   platform=parse_platform(platform) if platform else None,
                   all_platforms=all_platforms, pull=pull, max_concurrent_downloads=max_concurrent_downloads,
                   chunk_size=chunk_bytes, ranged_downloads=ranged_downloads, tls_verify=tls_verify, check_mode=check_mode,
                   containerd_address=containerd_address,
                   containerd_namespace=containerd.DEFAULT_NAMESPACE if containerd_namespace is None else containerd_namespace,
                   containerd_ctr_path=containerd_ctr_path or None, unpack=True if unpack is None else unpack,
                   file_mode=_numeric_mode(mode), max_attempts=max_attempts, download_timeout=download_timeout,
                   prune=prune and format == "oci", warnings=tuple(warnings))

    @property
    def api_retry(self) -> RetryPolicy:
        """How ECR API calls are retried (full-jitter exponential backoff, 0.5 s base, 20 s cap)."""
        return RetryPolicy(attempts=self.max_attempts)

    @property
    def blob_retry(self) -> RetryPolicy:
        """How a blob request that made no progress is retried (0.5 s base, 10 s cap)."""
        return RetryPolicy(attempts=self.max_attempts, base_delay=0.5, max_delay=10.0)

    @property
    def image_name(self) -> str:
        """The image's full name, ``REGISTRY/REPOSITORY:TAG`` (``@DIGEST`` for a reference by digest only):
        what a layout records it under, so that two repositories with one tag never share an entry
        (skopeo and umoci read it: ``oci:DIR:NAME``)."""
        if self.ref.tag:
            return f"{self.ref.repository_uri}:{self.ref.tag}"
        return f"{self.ref.repository_uri}@{self.ref.digest}"

    @property
    def short_name(self) -> str:
        """The tag, or for a reference by digest only ``sha256-<hex>`` (a tag cannot hold ``:``): the name
        readers that know only tags look for, kept as an alias while no other repository holds it."""
        if self.ref.tag:
            return self.ref.tag
        return str(self.ref.digest).replace(":", "-")

    @property
    def wanted_platform(self) -> Platform:
        return self.platform or host_platform()


def pull(options: PullOptions, connect: Callable[[ImageRef], EcrRepository]) -> Dict[str, Any]:
    """Run the pull; return the module result. ``connect`` is called only when ECR must be asked."""
    started = time.monotonic()
    target = open_destination(options)
    with contextlib.closing(target):
        result = _pull(options, connect, target, started)
        if options.prune and isinstance(target, LayoutDestination):  # prune is for format oci only
            _prune(options, target, result)
    if options.warnings:  # for the module to pass to Ansible
        result["warnings"] = list(result.get("warnings", ())) + list(options.warnings)
    return result


def _pull(options: PullOptions, connect: Callable[[ImageRef], EcrRepository], target: Destination,
          started: float) -> Dict[str, Any]:
    before = target.recorded_digest(options.image_name)
    previous = target.recorded_resolved(options.image_name, before)  # for the result: what was there

    if options.pull == "missing" and before:
        plan = target.local_plan(before)
        return _result(options, plan, previous, [], 0, started, changed=False, repository=None, target=target)

    repository = connect(options.ref)
    raw, media_type, reported = repository.get_manifest(options.ref.image_id, manifest.ACCEPTED_MANIFEST_TYPES)
    top = parse_manifest(raw, media_type or None, expected_digest=options.ref.digest)
    if reported and reported != top.digest:
        raise manifest.DigestMismatchError(
            f"ECR answered {options.ref} with a manifest whose bytes hash to {top.digest}, not to the {reported} it "
            "reported; nothing was stored.", expected=reported, actual=top.digest)
    entry = entry_for(options, top)
    wanted = target.wanted_digest(top, entry)

    if before == wanted and target.complete(wanted):
        target.tidy(wanted)
        plan = target.local_plan(wanted, top)
        return _result(options, plan, previous, [], 0, started, changed=False, repository=repository, target=target)

    plan = _plan(options, repository, target.contents, top, entry)
    missing = target.missing(plan.blobs)
    if not plan.platform and isinstance(plan.documents[-1], ImageManifest):
        contents = target.contents
        plan.platform = image_platform(contents, plan.documents[-1]) if contents is not None else "unknown"
    if options.check_mode:
        if plan.platform == "unknown" and isinstance(plan.documents[-1], ImageManifest):
            plan.platform = _remote_platform(options, repository, plan.documents[-1])
        return _result(options, plan, previous, missing, 0, started, changed=True, repository=repository,
                       check_mode=True, target=target)

    store = target.open_for_writing(plan)
    missing = target.missing(missing)  # another run may have stored some while this one waited for its lock
    transferred = _download(options, repository, store, missing)
    for document in plan.documents:
        store.write_blob(document.raw, expected_digest=document.digest)
    _record(store, options, plan)
    if plan.platform in ("", "unknown") and isinstance(plan.documents[-1], ImageManifest):
        plan.platform = image_platform(store, plan.documents[-1])
    target.finish(plan)
    # the destination lacked a blob, pointed elsewhere, or (containerd) was not unpacked: it changed
    return _result(options, plan, previous, missing, transferred, started, changed=True, repository=repository,
                   target=target)


def _record(store: OciLayout, options: PullOptions, plan: Plan) -> None:
    """Point the image's full name at the entry, and its tag alone too unless another repository holds it.

    The entry records the full name (containerd's ``io.containerd.image.name``, which also tells whose
    a tag-only alias is) and what the reference resolved to (the index of a multi-platform image), which
    the next run reports as ``previous_digest``. The tag-only alias is for readers that know tags only;
    it never moves from one repository to another, so two repositories with one tag never flap.
    """
    descriptor = plan.entry.to_json()
    descriptor["annotations"] = dict(descriptor.get("annotations") or {},
                                     **{layout_format.IMAGE_NAME_ANNOTATION: options.image_name, layout_format.RESOLVED_ANNOTATION: plan.top.digest})
    with store.lock():
        store.set_tag(options.image_name, descriptor)
        alias = store.find_tag(options.short_name)
        if alias is None or (alias.get("annotations") or {}).get(layout_format.IMAGE_NAME_ANNOTATION) == options.image_name:
            store.set_tag(options.short_name, descriptor)


def _remote_platform(options: PullOptions, repository: EcrRepository, image: ImageManifest) -> str:
    """The platform of a single-platform image, from its config fetched into a private temporary
    directory (check mode writes nothing into the destination): one URL and one small GET."""
    with tempfile.TemporaryDirectory(prefix="ecrkit-config-") as directory:  # mkdtemp: mode 0700
        job = download.BlobJob(digest=image.config.digest, size=image.config.size, path=os.path.join(directory, "config"),
                               get_url=_url_provider(repository, image.config.digest))
        with TransferPool(1, verify=options.tls_verify, retry=options.blob_retry,
                          read_timeout=options.download_timeout) as pool:
            result, = download.download_blobs(pool, [job], chunk_size=options.chunk_size, ranged=False)
        with open(result.path, "rb") as handle:
            return config_platform(handle.read(manifest.MAX_MANIFEST_SIZE))


def _numeric_mode(mode: Any) -> Optional[int]:
    """Ansible's ``mode`` as a number when it is one (``0640``, ``"0640"``, ``"640"``); None for a symbolic
    mode (``u=rw,g=r``), which Ansible applies once the pull is done."""
    if isinstance(mode, int) and not isinstance(mode, bool):
        return mode & 0o7777
    if isinstance(mode, str) and re.fullmatch(r"0?[0-7]{3,4}", mode):
        return int(mode, 8) & 0o7777
    return None


_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?) ?(?:([kmgt])i?b?|b)?", re.IGNORECASE)


def parse_size(value: Union[int, str], option: str) -> int:
    """A size option in bytes: a whole number of bytes, or a number with a binary unit as the docs write
    them, ``16MiB``, ``1GiB``, ``512KiB`` (``16MB``, ``16Mi`` and ``16m`` mean the same: binary too)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE_RE.fullmatch(str(value).strip())
    if not match:
        raise InvalidOptionError(f"{option} '{value}' is not a size; write a number of bytes or one with a binary unit, "
                                 "such as 16MiB, 512KiB or 1GiB.")
    return int(float(match.group(1)) * 1024 ** " kmgt".index((match.group(2) or " ").lower()))


def apply_file_attributes(options: PullOptions, apply: Callable[[str], bool]) -> bool:
    """Apply Ansible's file options (``apply(path)``, which returns whether it changed anything) to the
    destination: the layout directory or the archive file, once it exists; containerd has no such file.
    Return whether they changed anything. A layout they leave open to other users' writes is refused
    now, rather than by the next run."""
    if options.format == "containerd" or not os.path.lexists(options.dest):
        return False
    changed = apply(options.dest)
    if options.format == "oci":
        hostfs.verify_directory(options.dest, "the OCI layout")
    return changed


def _plan(options: PullOptions, repository: EcrRepository, store: Optional[BlobStore], top: Document,
          entry: Descriptor) -> Plan:
    """Fetch the child manifest(s) the entry needs (from the destination when it has them) and list blobs."""

    def fetch(descriptor: Descriptor) -> Document:
        if store is not None and store.has_blob(descriptor.digest, descriptor.size):
            try:
                return parse_referenced(descriptor, store.read_blob(descriptor.digest), descriptor.media_type)
            except layout_format.BlobMismatchError:
                pass  # altered on disk: fetched again, and stored again with the other documents
        raw, media_type, dummy = repository.get_manifest({"imageDigest": descriptor.digest},
                                                         manifest.ACCEPTED_MANIFEST_TYPES)
        return parse_referenced(descriptor, raw, media_type or None)

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
    return Plan(top=top, entry=entry, platform=platform, documents=documents, blobs=manifest.distinct_blobs(documents))


def _download(options: PullOptions, repository: EcrRepository, store: OciLayout, blobs: List[Descriptor]) -> int:
    """Fetch ``blobs`` into ``store``'s partial files, verified, and commit each; return bytes moved.

    Each partial file is claimed when a worker starts on it and until it is committed, so two runs
    pulling into one layout never write the same file, and a pull holds a few descriptors per
    connection, not per blob; a blob another run committed while this one waited for the claim is
    not fetched again.
    """
    for blob in blobs:  # a link planted at a partial file fails the pull before any request
        store.partials.check(blob.digest)
    jobs = [download.BlobJob(digest=blob.digest, size=blob.size, path=store.partials.path(blob.digest),
                             get_url=_url_provider(repository, blob.digest), claim=_claim(store, blob),
                             commit=_committer(store)) for blob in blobs]
    results: List[download.DownloadResult] = []
    if jobs:
        with TransferPool(options.max_concurrent_downloads, verify=options.tls_verify, retry=options.blob_retry,
                          read_timeout=options.download_timeout) as pool:
            results = download.download_blobs(pool, jobs, chunk_size=options.chunk_size, ranged=options.ranged_downloads)
    store.partials.cleanup()  # also what a killed run left of blobs it had committed
    return sum(result.bytes_transferred for result in results)


def _claim(store: OciLayout, blob: Descriptor) -> Callable[[], ContextManager[bool]]:
    @contextlib.contextmanager
    def claim() -> Iterator[bool]:
        with store.partials.claim(blob.digest):
            yield not stored(store, blob)  # another run may have stored it while this one waited
    return claim


def _committer(store: OciLayout) -> Callable[[download.DownloadResult], None]:
    def commit(result: download.DownloadResult) -> None:
        store.commit_blob(result.path, result.digest, result.size)
    return commit


def _url_provider(repository: EcrRepository, digest: str) -> Callable[[bool], str]:
    def get_url(refresh: bool = False) -> str:  # pylint: disable=unused-argument
        # every call asks ECR: a fresh presigned URL is what a refresh needs, and the first call has none
        return repository.get_download_url(digest)
    return get_url


def _result(options: PullOptions, plan: Plan, previous: Optional[str], missing: List[Descriptor],
            transferred: int, started: float, changed: bool, repository: Optional[EcrRepository],
            target: Destination, check_mode: bool = False) -> Dict[str, Any]:
    missing_digests = {blob.digest for blob in missing}
    fetched = "download" if check_mode else "downloaded"
    entry_document = plan.documents[-1] if plan.documents else plan.top
    result = {
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
        "dest": options.dest or None,
        "format": options.format,
        "api_calls": repository.api_calls if repository else 0,
        "retries": repository.retries if repository else 0,
        "previous_digest": previous,
        "repository": options.ref.repository,
        "image": f"{options.ref.repository_uri}@{plan.top.digest}",
    }
    # keyed by the image's name, with the digest the result reports (the index of a multi-platform image)
    result["diff"] = {"before": {options.image_name: result["previous_digest"]}, "after": {options.image_name: plan.top.digest}}
    result.update(target.extra_result(plan, check_mode))
    return result


PRUNE_WAIT = 60.0
"""Seconds a prune waits for other runs writing into the layout (documented under the module's prune)."""


def _prune(options: PullOptions, target: LayoutDestination, result: Dict[str, Any]) -> None:
    """``prune``: once the pull stored its entry, remove the blobs of the layout that no entry references
    (:meth:`OciLayout.prune`), and report it: ``bytes_freed``, ``blobs_removed``, the diff, a warning when
    another run's writing kept the prune from running. Check mode counts what would go once this pull's
    entry replaced the image's current one."""
    target.close()  # this run's shared writers' lock would keep its own prune waiting
    store = target.store  # None only in check mode, before the layout exists
    pruned = PruneResult(())
    if store is not None:
        replacing, keep = None, set()
        if options.check_mode and result["changed"]:
            replacing = options.image_name
            keep = {result["digest"], result["manifest_digest"]} | {blob["digest"] for blob in result["layers"]}
        pruned = prune_layout(store, check_mode=options.check_mode, wait=PRUNE_WAIT, replacing=replacing, keep=keep)
    result["bytes_freed"] = pruned.bytes_freed
    result["blobs_removed"] = len(pruned.removed)
    result["changed"] = result["changed"] or bool(pruned.removed)
    if pruned.skipped:
        result["warnings"] = list(result.get("warnings", ())) + [pruned.skipped]
    diff = result.get("diff")
    if isinstance(diff, dict):
        diff.setdefault("before", {})["unreferenced_blobs"] = [f"{digest} ({size} bytes)" for digest, size in pruned.removed]
        diff.setdefault("after", {})["unreferenced_blobs"] = []
