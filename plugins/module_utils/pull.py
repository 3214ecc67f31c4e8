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

A ``dest`` that is a symbolic link is refused before any API call (an OCI layout or archive is written
at the path given, never wherever a link planted there points). What a layout destination already
holds counts as present when it is a regular file of the right size whose bytes hash to its digest; a
blob unchanged (inode, size, mtime, ctime) since it last matched is not read again
(:meth:`OciLayout.verified_status`), so a tampered blob is found and fetched again while a run that
changes nothing reads no layer. A manifest that does not match is fetched from ECR again.

containerd (:class:`_ContainerdTarget`) records the name of the image against what the reference
resolves to, an index included, as containerd's own pull does. The blobs containerd lacks are staged in
an OCI layout (under ``dest``, else ``$TMPDIR`` or ``/var/tmp``) and ingested one by one; see
:mod:`containerd` for how they are kept safe from its garbage collector meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional, Tuple, Union

from ansible_collections.ecrkit.images.plugins.module_utils import archive, containerd, hostfs, layout, manifest, transfer
from ansible_collections.ecrkit.images.plugins.module_utils.ecr import EcrRepository, RetryPolicy, check_max_attempts
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError, InvalidOptionError
from ansible_collections.ecrkit.images.plugins.module_utils.layout import OciLayout
from ansible_collections.ecrkit.images.plugins.module_utils.manifest import (
    Descriptor, ImageIndex, ImageManifest, Platform, parse_manifest,
)
from ansible_collections.ecrkit.images.plugins.module_utils.reference import ImageRef, check_region, parse_reference

FORMATS = ("oci", "oci-archive", "docker-archive", "containerd")
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
    containerd_address: str = containerd.DEFAULT_ADDRESS
    containerd_namespace: str = containerd.DEFAULT_NAMESPACE
    containerd_ctr_path: Optional[str] = None  # None: ctr from the system directories
    unpack: bool = True
    file_mode: Optional[int] = None  # Ansible's mode when numeric: given to what is created, before it is filled
    max_attempts: int = 10
    download_timeout: float = transfer.DEFAULT_READ_TIMEOUT
    warnings: Tuple[str, ...] = ()  # about the options, for the result
    prune: bool = False  # format oci: remove the blobs no entry references once this pull's entry is stored

    @classmethod
    def from_params(cls, *, ref: str, dest: str, dest_format: str = "oci", platform: str | None = None,
                    all_platforms: bool = False, policy: str = "always", region: str | None = None,
                    max_connections: int = 8, chunk_size: Union[int, str] = 16 * 1024 * 1024, ranged: bool = True,
                    tls_verify: Union[bool, str] = True, check_mode: bool = False,
                    containerd_address: str | None = None, containerd_namespace: str | None = None,
                    unpack: bool | None = None,
                    max_attempts: int = 10, download_timeout: float = transfer.DEFAULT_READ_TIMEOUT,
                    containerd_ctr_path: str | None = None, mode: Any = None, prune: bool = False) -> PullOptions:
        """Validate the module's options (in the user's terms) before any network call. The containerd
        options and unpack are None when not given (their defaults apply), so that giving them for another
        format can be told apart and warned about."""
        image_ref = parse_reference(ref)
        check_region(image_ref, region)
        if dest_format not in FORMATS:
            raise InvalidOptionError(f"format '{dest_format}' is not one of {', '.join(FORMATS)}.")
        if policy not in POLICIES:
            raise InvalidOptionError(f"pull '{policy}' is not one of {', '.join(POLICIES)}.")
        if all_platforms and dest_format == "docker-archive":
            raise InvalidOptionError("A docker-archive holds one platform; drop all_platforms or use format oci or oci-archive.")
        if all_platforms and platform:
            raise InvalidOptionError("platform picks one platform and all_platforms: true keeps them all; drop one of the two.")
        if max_connections < 1 or max_connections > 64:
            raise InvalidOptionError(f"max_concurrent_downloads must be between 1 and 64, not {max_connections}.")
        chunk_size = parse_size(chunk_size, "chunk_size")
        if chunk_size < MIN_CHUNK_SIZE:
            raise InvalidOptionError(f"chunk_size must be at least 1 MiB (1048576 bytes), not {chunk_size} bytes.")
        if not dest and dest_format != "containerd":
            raise InvalidOptionError("dest must name a directory (format oci) or a file (archive formats).")
        check_max_attempts(max_attempts)
        if not 1 <= download_timeout <= 3600:
            raise InvalidOptionError(f"download_timeout must be between 1 and 3600 seconds, not {download_timeout:g}.")
        warnings = containerd.ignored_options_warnings("format", dest_format, containerd_namespace=containerd_namespace,
                                                       containerd_address=containerd_address,
                                                       containerd_ctr_path=containerd_ctr_path, unpack=unpack)
        if prune and dest_format != "oci":
            warnings.append(f"prune applies to format oci only (an archive holds this image alone, and containerd collects "
                            f"its own garbage), so it was ignored for format {dest_format}.")
        containerd_address = containerd.DEFAULT_ADDRESS if containerd_address is None else containerd_address
        if not containerd_address:
            raise InvalidOptionError("containerd_address must name containerd's socket, such as /run/containerd/containerd.sock.")
        return cls(ref=image_ref, dest=dest or "", dest_format=dest_format,
                   platform=manifest.parse_platform(platform) if platform else None,
                   all_platforms=all_platforms, policy=policy, max_connections=max_connections,
                   chunk_size=chunk_size, ranged=ranged, tls_verify=tls_verify, check_mode=check_mode,
                   containerd_address=containerd_address,
                   containerd_namespace=containerd.DEFAULT_NAMESPACE if containerd_namespace is None else containerd_namespace,
                   unpack=True if unpack is None else unpack,
                   max_attempts=max_attempts, download_timeout=download_timeout,
                   containerd_ctr_path=containerd_ctr_path or None, file_mode=_numeric_mode(mode), warnings=tuple(warnings),
                   prune=prune and dest_format == "oci")

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
    with contextlib.closing(target):
        result = _pull(options, connect, target, started)
        if options.prune:
            _prune(options, target, result)
    if options.warnings:  # for the module to pass to Ansible
        result["warnings"] = list(result.get("warnings", ())) + list(options.warnings)
    return result


def _pull(options: PullOptions, connect: Callable[[ImageRef], EcrRepository], target: _LayoutTarget,
          started: float) -> Dict[str, Any]:
    before = target.recorded_digest(options.image_name)
    previous = target.recorded_resolved(options.image_name, before)  # for the result: what was there

    if options.policy == "missing" and before:
        plan = target.local_plan(before)
        return _result(options, plan, previous, [], 0, started, changed=False, repository=None, target=target)

    repository = connect(options.ref)
    raw, media_type, reported = repository.get_manifest(options.ref.image_id, manifest.ACCEPTED_MANIFEST_TYPES)
    top = parse_manifest(raw, media_type or None, expected_digest=options.ref.digest)
    if reported and reported != top.digest:
        raise manifest.DigestMismatchError(
            f"ECR answered {options.ref} with a manifest whose bytes hash to {top.digest}, not to the {reported} it "
            "reported; nothing was stored.", expected=reported, actual=top.digest)
    entry = _entry_for(options, top)
    wanted = target.wanted_digest(top, entry)

    if before == wanted and target.complete(wanted):
        target.tidy(wanted)
        plan = target.local_plan(wanted, top)
        return _result(options, plan, previous, [], 0, started, changed=False, repository=repository, target=target)

    plan = _plan(options, repository, target.store, top, entry)
    missing = target.missing(plan.blobs)
    if not plan.platform and isinstance(plan.documents[-1], ImageManifest):
        plan.platform = _image_platform(target.store, plan.documents[-1]) if target.store is not None else "unknown"
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
        plan.platform = _image_platform(store, plan.documents[-1])
    target.finish(options, plan)
    # the destination lacked a blob, pointed elsewhere, or (containerd) was not unpacked: it changed
    return _result(options, plan, previous, missing, transferred, started, changed=True, repository=repository,
                   target=target)


def _record(store: OciLayout, options: PullOptions, plan: _Plan) -> None:
    """Point the image's full name at the entry, and its tag alone too unless another repository holds it.

    The entry records the full name (containerd's ``io.containerd.image.name``, which also tells whose
    a tag-only alias is) and what the reference resolved to (the index of a multi-platform image), which
    the next run reports as ``previous_digest``. The tag-only alias is for readers that know tags only;
    it never moves from one repository to another, so two repositories with one tag never flap.
    """
    descriptor = plan.entry.to_json()
    descriptor["annotations"] = dict(descriptor.get("annotations") or {},
                                     **{layout.IMAGE_NAME_ANNOTATION: options.image_name, layout.RESOLVED_ANNOTATION: plan.top.digest})
    with store.lock():
        store.set_tag(options.image_name, descriptor)
        alias = store.find_tag(options.short_name)
        if alias is None or (alias.get("annotations") or {}).get(layout.IMAGE_NAME_ANNOTATION) == options.image_name:
            store.set_tag(options.short_name, descriptor)


def _remote_platform(options: PullOptions, repository: EcrRepository, image: ImageManifest) -> str:
    """The platform of a single-platform image, from its config fetched into a private temporary
    directory (check mode writes nothing into the destination): one URL and one small GET."""
    with tempfile.TemporaryDirectory(prefix="ecrkit-config-") as directory:  # mkdtemp: mode 0700
        job = transfer.BlobJob(digest=image.config.digest, size=image.config.size, path=os.path.join(directory, "config"),
                               get_url=_url_provider(repository, image.config.digest))
        with transfer.TransferPool(1, verify=options.tls_verify, retry=options.blob_retry,
                                   read_timeout=options.download_timeout) as pool:
            result, = transfer.download_blobs(pool, [job], chunk_size=options.chunk_size, ranged=False)
        with open(result.path, "rb") as handle:
            return _config_platform(handle.read(manifest.MAX_MANIFEST_SIZE))


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
    if options.dest_format == "containerd" or not os.path.lexists(options.dest):
        return False
    changed = apply(options.dest)
    if options.dest_format == "oci":
        hostfs.verify_directory(options.dest, "the OCI layout")
    return changed


def _entry_for(options: PullOptions, top: Document) -> Descriptor:
    if isinstance(top, ImageIndex) and not options.all_platforms:
        return manifest.select_manifest(top, options.wanted_platform)
    return top.descriptor()


def _plan(options: PullOptions, repository: EcrRepository, store: Optional[OciLayout], top: Document,
          entry: Descriptor) -> _Plan:
    """Fetch the child manifest(s) the entry needs (from the destination when it has them) and list blobs."""

    def fetch(descriptor: Descriptor) -> Document:
        if store is not None and store.has_blob(descriptor.digest, descriptor.size):
            try:
                return manifest.parse_referenced(descriptor, store.read_blob(descriptor.digest), descriptor.media_type)
            except layout.BlobMismatchError:
                pass  # altered on disk: fetched again, and stored again with the other documents
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

    Each partial file is claimed when a worker starts on it and until it is committed, so two runs
    pulling into one layout never write the same file, and a pull holds a few descriptors per
    connection, not per blob; a blob another run committed while this one waited for the claim is
    not fetched again.
    """
    jobs = [transfer.BlobJob(digest=blob.digest, size=blob.size, path=store.partial_path(blob.digest),
                             get_url=_url_provider(repository, blob.digest), claim=_claim(store, blob),
                             commit=_committer(store)) for blob in blobs]
    results: List[transfer.DownloadResult] = []
    if jobs:
        with transfer.TransferPool(options.max_connections, verify=options.tls_verify, retry=options.blob_retry,
                                   read_timeout=options.download_timeout) as pool:
            results = transfer.download_blobs(pool, jobs, chunk_size=options.chunk_size, ranged=options.ranged)
    store.cleanup_partials()  # also what a killed run left of blobs it had committed
    return sum(result.bytes_transferred for result in results)


def _claim(store: OciLayout, blob: Descriptor) -> Callable[[], ContextManager[bool]]:
    @contextlib.contextmanager
    def claim() -> Iterator[bool]:
        with store.claim_partial(blob.digest):
            yield not _stored(store, blob)  # another run may have stored it while this one waited
    return claim


def _committer(store: OciLayout) -> Callable[[transfer.DownloadResult], None]:
    def commit(result: transfer.DownloadResult) -> None:
        store.commit_blob(result.path, result.digest, result.size)
    return commit


def _stored(store: OciLayout, blob: Descriptor, record: bool = True) -> bool:
    """Whether ``store`` holds ``blob`` with its bytes: hashed unless unchanged since they last matched
    (:meth:`OciLayout.verified_status`)."""
    return store.verified_status(blob.digest, blob.size, record=record) == layout.BLOB_PRESENT


def _refuse_symlink(dest: str, error: Callable[[str], EcrkitError], what: str) -> None:
    path = os.path.abspath(dest)
    if os.path.islink(path):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise error(f"The dest {path} is a symbolic link (to {target}); refusing to write {what} wherever it points: give the real "
                    "path instead.")


def _url_provider(repository: EcrRepository, digest: str) -> Callable[[bool], str]:
    def get_url(refresh: bool = False) -> str:  # pylint: disable=unused-argument
        # every call asks ECR: a fresh presigned URL is what a refresh needs, and the first call has none
        return repository.get_download_url(digest)
    return get_url


def _result(options: PullOptions, plan: _Plan, previous: Optional[str], missing: List[Descriptor],
            transferred: int, started: float, changed: bool, repository: Optional[EcrRepository],
            target: _LayoutTarget, check_mode: bool = False) -> Dict[str, Any]:
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
        "format": options.dest_format,
        "api_calls": repository.api_calls if repository else 0,
        "retries": repository.retries if repository else 0,
        "previous_digest": previous,
        "repository": options.ref.repository,
        "image": f"{options.ref.repository_uri}@{plan.top.digest}",
    }
    # keyed by the image's name, with the digest the result reports (the index of a multi-platform image)
    result["diff"] = {"before": {options.image_name: result["previous_digest"]}, "after": {options.image_name: plan.top.digest}}
    if check_mode and isinstance(target, _ContainerdTarget):
        result["would_unpack"] = options.unpack and not target.unpacked
    result.update(target.extra_result(plan))
    return result


# Destinations ---------------------------------------------------------------------------------------

class _LayoutTarget:
    """An OCI layout directory: the store is the destination itself."""

    def __init__(self, options: PullOptions) -> None:
        self.options = options
        self.root = options.dest
        _refuse_symlink(self.root, layout.LayoutSymlinkError, "an OCI layout")
        if os.path.lexists(self.root):  # before any API call: a layout another user can change is refused
            hostfs.verify_directory(self.root, "the OCI layout")
        self.store: Optional[OciLayout] = OciLayout(self.root) if _is_layout(self.root) else None
        if self.store is not None and not options.check_mode:
            try:  # before this run looks at what the layout holds, which a prune must not remove meanwhile
                self.store.begin_writing()
            except layout.LockTimeoutError:
                raise
            except EcrkitError:
                pass  # a layout this user cannot write is only read; open_for_writing says why if it must write

    def recorded_digest(self, name: str) -> Optional[str]:
        entry = self.store.find_tag(name) if self.store else None
        return entry["digest"] if entry else None

    def recorded_resolved(self, name: str, digest: Optional[str]) -> Optional[str]:
        """What the reference resolved to when the entry ``digest`` was recorded under ``name``."""
        entry = self.store.find_tag(name) if self.store else None
        return _resolved(entry, digest)

    def has_blob(self, blob: Descriptor) -> bool:
        return bool(self.store and _stored(self.store, blob, record=not self.options.check_mode))

    def missing(self, blobs: List[Descriptor]) -> List[Descriptor]:
        return [blob for blob in blobs if not self.has_blob(blob)]

    def wanted_digest(self, top: Document, entry: Descriptor) -> str:
        """What the destination's name must point at: the platform's manifest, or the index for all platforms."""
        return entry.digest

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

    def open_for_writing(self, plan: Optional[_Plan] = None) -> OciLayout:  # pylint: disable=unused-argument
        if self.store is None:
            self.store = OciLayout(self.root, create=True, root_mode=self.options.file_mode)
        self.store.begin_writing()  # until close(): OciLayout.prune leaves what this run stores alone
        return self.store

    def finish(self, options: PullOptions, plan: _Plan) -> None:
        """Nothing more: the layout is the destination."""

    def extra_result(self, plan: _Plan) -> Dict[str, Any]:  # pylint: disable=unused-argument
        return {}

    def tidy(self, digest: str) -> None:
        """On an unchanged run, remove what an interrupted run left: nothing for a layout or an archive."""

    def close(self) -> None:
        """Let prunes of the layout run again (this run's entry is stored, or it failed)."""
        if self.store is not None:
            self.store.end_writing()


class _ArchiveTarget(_LayoutTarget):
    """An archive file, assembled in a staging layout beside it.

    One pull at a time per archive path: a lock file beside it (``.NAME.ecrkit-lock``, removed after)
    is held from the first look at the archive to the end, so a second pull of the same image waits and
    then finds it done, and none removes the staging layout another is using. Under that lock, temporary
    archives that a killed run left (``.NAME.<random>.tmp``) are removed.
    """

    def __init__(self, options: PullOptions) -> None:  # pylint: disable=super-init-not-called
        self.options = options
        _refuse_symlink(options.dest, archive.UnsafeArchiveError, "an archive")
        directory, name = os.path.split(os.path.abspath(options.dest))
        self.lock_fd: Optional[int] = None
        if os.path.isdir(directory):  # else the archive writer says it is missing
            # /tmp will do (sticky): the staging layout and the lock beside the archive are then ours only
            directory = hostfs.verify_directory(directory, "the directory of the archive", shared=True)
            archive.check_archive_destination(os.path.join(directory, name))  # a FIFO, a link, another user's file
        self.root = os.path.join(directory, f".{name}.ecrkit-staging")
        self.lock_file = os.path.join(directory, f".{name}.ecrkit-lock")
        if not options.check_mode and os.path.isdir(directory):
            self.lock_fd = layout.lock_path(self.lock_file, layout.CLAIM_TIMEOUT, f"the archive {options.dest}")
            _remove_stale_temps(directory, name)
        self.store = OciLayout(self.root) if _is_layout(self.root) else None
        self.summary = _archive_summary(options.dest, options.dest_format)

    def close(self) -> None:
        if self.lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_file)  # a waiting run notices, and locks the file it creates anew
            os.close(self.lock_fd)
            self.lock_fd = None

    def _recorded_entry(self, name: str) -> Optional[Dict[str, Any]]:
        """The summary's entry for the image ``name``: by its full name (an oci-archive, or a docker-archive
        with an index.json), or by its RepoTags (any docker-archive). One holding the same tag of another
        repository is not it."""
        if not self.summary:
            return None
        for entry in self.summary["manifests"]:
            if (entry.get("annotations") or {}).get(layout.IMAGE_NAME_ANNOTATION) == name:
                return entry
        if self.options.dest_format == "docker-archive":
            for image in self.summary["images"]:
                if _repo_tag(self.options) in (image.get("repo_tags") or []) and image["manifest_digest"]:
                    return {"digest": image["manifest_digest"]}
        return None

    def recorded_digest(self, name: str) -> Optional[str]:
        entry = self._recorded_entry(name)
        return entry["digest"] if entry else None

    def recorded_resolved(self, name: str, digest: Optional[str]) -> Optional[str]:
        return _resolved(self._recorded_entry(name), digest)

    def complete(self, digest: str) -> bool:
        return self.summary is not None  # read_archive_summary checked every blob it references

    def local_plan(self, digest: str, top: Optional[Document] = None) -> _Plan:
        opener = archive.open_oci_archive if self.options.dest_format == "oci-archive" else archive.open_docker_archive
        with opener(self.options.dest, decompress=False, follow_symlinks=False) as reader:
            return _local_plan(self.options, reader, digest, top)

    def open_for_writing(self, plan: Optional[_Plan] = None) -> OciLayout:
        if self.store is None:
            self.store = OciLayout(self.root, create=True, private=True)
            directory, name = os.path.split(self.root)
            hostfs.private_directory(directory, name, f"the staging layout of {self.options.dest}")  # one made 0755 before
        return self.store

    def finish(self, options: PullOptions, plan: _Plan) -> None:
        store = self.open_for_writing()
        if options.dest_format == "oci-archive":
            archive.write_oci_archive(store, options.image_name, options.dest, file_mode=options.file_mode,
                                      ref_name=options.short_name)
        else:
            archive.write_docker_archive(store, options.image_name, options.dest, [_repo_tag(options)],
                                         file_mode=options.file_mode)
        shutil.rmtree(self.root, ignore_errors=True)


def _remove_stale_temps(directory: str, name: str) -> None:
    """Remove the temporary archives (``.NAME.<16 hex>.tmp``) of runs that were killed while writing."""
    pattern = re.compile(r"\." + re.escape(name) + r"\.[0-9a-f]{16}\.tmp")
    with contextlib.suppress(OSError):
        for entry in os.listdir(directory):
            if pattern.fullmatch(entry):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, entry))


def _resolved(entry: Optional[Dict[str, Any]], digest: Optional[str]) -> Optional[str]:
    """The resolved digest an entry records, else its own (an entry written before it was recorded)."""
    annotations = (entry or {}).get("annotations") or {}
    resolved = annotations.get(layout.RESOLVED_ANNOTATION)
    return resolved if layout.is_digest(resolved) else digest


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
        return _config_platform(reader.read_blob(image.config.digest))
    except EcrkitError:
        return "unknown"


def _config_platform(data: bytes) -> str:
    """``os/arch[/variant]`` from the bytes of an image config, or ``unknown``."""
    try:
        config = json.loads(data)
        return str(manifest.normalize_platform(Platform(os=config["os"], architecture=config["architecture"],
                                                        variant=config.get("variant"))))
    except (KeyError, TypeError, ValueError):
        return "unknown"


class _ContainerdContent:
    """containerd's content store, read like a layout by :func:`_plan` and :func:`_local_plan`."""

    def __init__(self, client: containerd.Containerd) -> None:
        self.client = client
        self.digests: set = set()
        self.refresh()

    def refresh(self) -> None:
        self.digests = self.client.content_digests()

    def has_blob(self, digest: str, size: int = 0) -> bool:  # pylint: disable=unused-argument
        return digest in self.digests  # containerd checked size and digest when it committed the blob

    def read_blob(self, digest: str) -> bytes:
        return self.client.read_blob(digest, manifest.MAX_MANIFEST_SIZE)


class _ContainerdTarget(_LayoutTarget):
    """containerd's image store: the image's names point at what the reference resolves to."""

    def __init__(self, options: PullOptions) -> None:  # pylint: disable=super-init-not-called
        self.options = options
        self.client = containerd.connect(options.containerd_address, options.containerd_namespace, must_exist=False,
                                         executable=options.containerd_ctr_path)
        self.content = _ContainerdContent(self.client)
        self.store = self.content  # type: ignore[assignment]  # read-only use in _plan
        self.names = containerd_names(options.ref)
        self.staging: Optional[OciLayout] = None
        self.staging_image = ""
        self.lock_fd: Optional[int] = None
        self.lock_file = ""
        self.unpacked = False

    def recorded_digest(self, name: str) -> Optional[str]:
        record = self.client.image(self.names[0])
        return record.digest if record else None

    def recorded_resolved(self, name: str, digest: Optional[str]) -> Optional[str]:
        return digest  # the name points at what the reference resolved to, an index included

    def wanted_digest(self, top: Document, entry: Descriptor) -> str:
        return top.digest  # as containerd's pull: the name points at the index, content for the platform(s)

    def has_blob(self, blob: Descriptor) -> bool:
        return self.content.has_blob(blob.digest)

    def missing(self, blobs: List[Descriptor]) -> List[Descriptor]:
        self.content.refresh()
        return [blob for blob in blobs if not self.has_blob(blob)]

    def complete(self, digest: str) -> bool:
        names = containerd_names(self.options.ref, digest)
        if any((self.client.image(name) or containerd.ImageRecord("", "", "")).digest != digest for name in names[1:]):
            return False
        try:
            plan = self.local_plan(digest)
        except EcrkitError:
            return False
        if not all(self.has_blob(blob) for blob in plan.blobs):
            return False
        self.unpacked = self._is_unpacked(plan)
        return self.unpacked or not self.options.unpack

    def local_plan(self, digest: str, top: Optional[Document] = None) -> _Plan:
        document = parse_manifest(self.content.read_blob(digest), None, expected_digest=digest)
        if isinstance(document, ImageIndex) and not self.options.all_platforms:
            entry = _entry_for(self.options, document)
            child = manifest.parse_referenced(entry, self.content.read_blob(entry.digest), entry.media_type)
            if not isinstance(child, ImageManifest):
                raise manifest.UnsupportedManifestError(f"The platform entry {entry.digest} is itself an index.")
            platform = str(entry.platform.normalized()) if entry.platform else str(self.options.wanted_platform)
            return _Plan(top=top or document, entry=entry, platform=platform, documents=[child],
                         blobs=manifest.distinct_blobs([child]))
        return _local_plan(self.options, self.content, digest, top)

    def _is_unpacked(self, plan: _Plan) -> bool:
        """Whether the snapshot of the unpacked image exists (its key is the top layer's chain ID)."""
        image = self._unpack_manifest(plan)
        if image is None:
            return False
        try:
            config = json.loads(self.content.read_blob(image.config.digest))
            chain = containerd.chain_ids(config["rootfs"]["diff_ids"])  # refuses what is not a digest
        except (EcrkitError, KeyError, TypeError, ValueError):
            return False  # an unusable config is not unpacked: the import unpacks it (and containerd refuses it)
        return not chain or self.client.has_snapshot(chain[-1])

    def _unpack_manifest(self, plan: _Plan) -> Optional[ImageManifest]:
        """The manifest containerd unpacks: the only one, or with all platforms the host's."""
        images = [document for document in plan.documents if isinstance(document, ImageManifest)]
        if len(images) == 1:
            return images[0]
        if isinstance(plan.top, ImageIndex):
            try:
                wanted = manifest.select_manifest(plan.top, manifest.host_platform())
            except EcrkitError:
                return None
            return next((image for image in images if image.digest == wanted.digest), None)
        return None

    def open_for_writing(self, plan: Optional[_Plan] = None) -> OciLayout:
        """Lock this image's staging layout, and protect its content in containerd under a staging name."""
        if plan is None:
            raise EcrkitError("containerd needs the plan before anything is stored.")
        root, self.lock_file = self._staging_paths(plan.top.digest, create=True)
        self.lock_fd = layout.lock_path(self.lock_file, layout.CLAIM_TIMEOUT, f"the pull of {plan.top.digest} into containerd")
        self.staging = OciLayout(root, create=True, private=True)
        self.staging_image = containerd.staging_name(plan.top.digest)
        self._keep_platforms(plan)  # before an import relabels the index with this platform only
        self._import(plan, [self.staging_image], unpack=False)
        self._keep_platforms(plan)
        return self.staging

    def _staging_paths(self, digest: str, create: bool) -> Tuple[str, str]:
        """The staging layout and lock file of the pull of ``digest``.

        In ``dest`` when given (a directory that only root and this user can change), else in
        ``ecrkit-<uid>`` under ``$TMPDIR`` or ``/var/tmp``: a directory of this user with mode 0700, as
        tmux keeps its sockets, so that nobody else can prepare, read or swap what is staged there.
        Without ``create``, nothing is made or checked (the caller looks whether anything is there).
        """
        if self.options.dest:
            base = self.options.dest
            if create:
                base = hostfs.verify_directory(base, "the staging directory", create=True, mode=hostfs.PRIVATE_MODE)
        else:
            temp = os.environ.get("TMPDIR") or "/var/tmp"
            if not os.path.isdir(temp):
                temp = tempfile.gettempdir()
            base = os.path.join(temp, f"ecrkit-{os.geteuid()}")
            if create:
                temp = hostfs.verify_directory(temp, "the temporary directory", shared=True)
                base = hostfs.private_directory(temp, f"ecrkit-{os.geteuid()}", "the staging area of containerd pulls")
        name = digest.replace(":", "-")
        return os.path.join(base, f".ecrkit-containerd-{name}"), os.path.join(base, f".ecrkit-containerd-{name}.lock")

    def tidy(self, digest: str) -> None:
        """On an unchanged run: remove what a run killed after naming the image left (staging name, layout, lock)."""
        if self.options.check_mode:
            return
        root, lock_file = self._staging_paths(digest, create=False)
        if not (os.path.lexists(root) or os.path.lexists(lock_file)):
            return
        root, lock_file = self._staging_paths(digest, create=True)  # checks whose it is before touching it
        try:
            fd = layout.lock_path(lock_file, 0, "a staging layout")
        except layout.LockTimeoutError:
            return  # another pull of this image is running: it cleans up after itself
        try:
            staging_image = containerd.staging_name(digest)
            if self.client.image(staging_image):
                self.client.remove_images([staging_image])
            shutil.rmtree(root, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(lock_file)
        finally:
            os.close(fd)

    def _keep_platforms(self, plan: _Plan) -> None:
        if isinstance(plan.top, ImageIndex):
            self.content.refresh()
            if plan.top.digest in self.content.digests:
                self.client.label_blob(plan.top.digest, containerd.index_labels([child.digest for child in plan.top.manifests]))

    def _import(self, plan: _Plan, names: List[str], unpack: bool) -> None:
        top = plan.top
        documents = [(document.digest, document.raw) for document in plan.documents if document.digest != top.digest]
        platform = None if plan.platform in (ALL_PLATFORMS, "", "unknown") else plan.platform
        self.client.import_manifests(names, (top.media_type, top.digest, top.raw), documents, unpack=unpack,
                                     platform=platform, all_platforms=plan.platform == ALL_PLATFORMS)

    def finish(self, options: PullOptions, plan: _Plan) -> None:
        """Ingest the staged blobs containerd lacks, then point the names at the image (and unpack it)."""
        staging = self.open_for_writing(plan) if self.staging is None else self.staging
        for blob in self.missing(plan.blobs):
            path = staging.blob_path(blob.digest)
            with staging.open_blob(blob.digest) as handle:  # O_NOFOLLOW, a regular file: never a swapped-in link
                self.client.ingest(handle, blob.digest, blob.size)
            with contextlib.suppress(OSError):
                os.unlink(path)  # containerd has its own copy now; keep the staging disk use to one image
        names = containerd_names(options.ref, plan.top.digest)
        self._import(plan, names, unpack=options.unpack)
        self.unpacked = options.unpack and self._is_unpacked(plan)
        self.client.remove_images([self.staging_image])
        shutil.rmtree(staging.root, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(self.lock_file)

    def extra_result(self, plan: _Plan) -> Dict[str, Any]:
        return {"containerd": {"namespace": self.options.containerd_namespace,
                               "images": containerd_names(self.options.ref, plan.top.digest),
                               "unpacked": self.unpacked, "commands": self.client.commands}}

    def close(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def containerd_names(ref: ImageRef, digest: Optional[str] = None) -> List[str]:
    """The image names a pull of ``ref`` creates in containerd, the one to look up first: ``REPO:TAG``
    (when the reference has a tag) and ``REPO@DIGEST``, as Kubernetes' CRI names a pulled image."""
    names = [f"{ref.repository_uri}:{ref.tag}"] if ref.tag else []
    digest = digest or ref.digest
    if digest:
        names.append(f"{ref.repository_uri}@{digest}")
    return names


def _target(options: PullOptions) -> _LayoutTarget:
    if options.dest_format == "containerd":
        return _ContainerdTarget(options)
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
    return f"{ref.host}/{ref.repository}:{options.short_name}"


PRUNE_WAIT = 60.0
"""Seconds a prune waits for other runs writing into the layout (documented under the module's prune)."""


def _prune(options: PullOptions, target: _LayoutTarget, result: Dict[str, Any]) -> None:
    """``prune``: once the pull stored its entry, remove the blobs of the layout that no entry references
    (:meth:`OciLayout.prune`), and report it: ``bytes_freed``, ``blobs_removed``, the diff, a warning when
    another run's writing kept the prune from running. Check mode counts what would go once this pull's
    entry replaced the image's current one."""
    target.close()  # this run's shared writers' lock would keep its own prune waiting
    store = target.store  # None only in check mode, before the layout exists
    pruned = layout.PruneResult(())
    if store is not None:
        replacing, keep = None, set()
        if options.check_mode and result["changed"]:
            replacing = options.image_name
            keep = {result["digest"], result["manifest_digest"]} | {blob["digest"] for blob in result["layers"]}
        pruned = store.prune(check_mode=options.check_mode, wait=PRUNE_WAIT, replacing=replacing, keep=keep)
    result["bytes_freed"] = pruned.bytes_freed
    result["blobs_removed"] = len(pruned.removed)
    result["changed"] = result["changed"] or bool(pruned.removed)
    if pruned.skipped:
        result["warnings"] = list(result.get("warnings", ())) + [pruned.skipped]
    diff = result.get("diff")
    if isinstance(diff, dict):
        diff.setdefault("before", {})["unreferenced_blobs"] = [f"{digest} ({size} bytes)" for digest, size in pruned.removed]
        diff.setdefault("after", {})["unreferenced_blobs"] = []
