# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a pull stores an image: an OCI layout, an archive, or containerd, behind one :class:`Destination`.

A destination answers what it records for the image's name, what it already holds, and which blobs it
lacks; it gives the pull an :class:`~layout.OciLayout` to download into, and turns that into the image
it is (:meth:`Destination.finish`). :func:`open_destination` picks the class for ``format``.

- :class:`LayoutDestination`: the layout is the destination itself.
- :class:`ArchiveDestination`: the archive is assembled in a staging layout beside it
  (``.NAME.ecrkit-staging``), which keeps partial downloads across interrupted runs and is removed
  once the archive is written.
- :class:`ContainerdDestination`: containerd records the image's names against what the reference
  resolves to, an index included, as containerd's own pull does. The blobs containerd lacks are staged
  in an OCI layout (under ``dest``, else ``$TMPDIR`` or ``/var/tmp``) and ingested one by one; see
  :mod:`containerd` for how they are kept safe from its garbage collector meanwhile.

What a destination holds is read through :class:`BlobStore` (an OCI layout, or containerd's content
store) and, for an archive, :class:`ManifestReader`; :class:`Plan` is what the pull of one image needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Tuple

from ansible_collections.ecrkit.images.plugins.module_utils import archive, archive_read, containerd, hostfs, layout_format, manifest, partial
from ansible_collections.ecrkit.images.plugins.module_utils.digest import is_digest
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.layout import OciLayout
from ansible_collections.ecrkit.images.plugins.module_utils.manifest import Descriptor, ImageIndex, ImageManifest
from ansible_collections.ecrkit.images.plugins.module_utils.manifest_parser import parse_manifest, parse_referenced
from ansible_collections.ecrkit.images.plugins.module_utils.platform import Platform, host_platform, normalize_platform
from ansible_collections.ecrkit.images.plugins.module_utils.platform_select import select_manifest
from ansible_collections.ecrkit.images.plugins.module_utils.reference import ImageRef

if TYPE_CHECKING:  # only for annotations: pull imports this module
    from ansible_collections.ecrkit.images.plugins.module_utils.pull import PullOptions

ALL_PLATFORMS = "all"

Document = manifest.ManifestDocument


@dataclass
class Plan:
    """What the pull of one image needs, and what the destination's entry points at."""

    top: Document
    entry: Descriptor  # what the destination's entry must point at
    platform: str
    documents: List[Document]  # every manifest/index to store, children first, the entry's last
    blobs: List[Descriptor]  # configs and layers, each once


class ManifestReader(Protocol):
    """Reads small blobs (manifests, indexes, configs) by digest: a layout, an archive, containerd."""

    def read_blob(self, digest: str) -> bytes:
        ...


class BlobStore(ManifestReader, Protocol):
    """A destination's store as the plan reads it: which blobs it has, and their bytes."""

    def has_blob(self, digest: str, size: int) -> bool:
        ...


class Destination(Protocol):
    """One kind of destination, as :func:`pull.pull` drives it."""

    @property
    def contents(self) -> Optional[BlobStore]:
        """What the destination holds, read by the plan; None while there is nothing (no layout yet)."""

    def recorded_digest(self, name: str) -> Optional[str]:
        """The digest the destination records for the image ``name``, if any."""

    def recorded_resolved(self, name: str, digest: Optional[str]) -> Optional[str]:
        """What the reference resolved to when the entry ``digest`` was recorded under ``name``."""

    def wanted_digest(self, top: Document, entry: Descriptor) -> str:
        """What the destination's name must point at once the pull of ``top`` is done."""

    def complete(self, digest: str) -> bool:
        """Whether the destination holds everything ``digest`` needs, in the state the options ask for."""

    def missing(self, blobs: List[Descriptor]) -> List[Descriptor]:
        """Those of ``blobs`` the destination lacks."""

    def local_plan(self, digest: str, top: Optional[Document] = None) -> Plan:
        """The plan of what the destination holds under ``digest``, without any API call."""

    def open_for_writing(self, plan: Plan) -> OciLayout:
        """The layout to download into."""

    def finish(self, plan: Plan) -> None:
        """Make the downloaded image what the destination is (an archive, an image in containerd)."""

    def tidy(self, digest: str) -> None:
        """On an unchanged run: remove what an interrupted run left."""

    def extra_result(self, plan: Plan, check_mode: bool) -> Dict[str, Any]:
        """What the module result says about this kind of destination."""

    def close(self) -> None:
        """Release the destination's locks."""


def open_destination(options: PullOptions) -> Destination:
    """The destination ``options.format`` names, checked before any API call."""
    if options.format == "containerd":
        return ContainerdDestination(options)
    return LayoutDestination(options) if options.format == "oci" else ArchiveDestination(options)


def entry_for(options: PullOptions, top: Document) -> Descriptor:
    """What the destination's entry points at: the wanted platform's manifest of an index, else ``top``."""
    if isinstance(top, ImageIndex) and not options.all_platforms:
        return select_manifest(top, options.wanted_platform)
    return top.descriptor()


def local_plan(options: PullOptions, reader: ManifestReader, digest: str, top: Optional[Document]) -> Plan:
    """What a destination already holds under ``digest``, read from it (``reader.read_blob``) without
    any API call. With ``top`` (what ECR resolved), the plan reports it rather than the stored entry."""
    document = parse_manifest(reader.read_blob(digest), None, expected_digest=digest)

    def fetch(descriptor: Descriptor) -> Document:
        return parse_referenced(descriptor, reader.read_blob(descriptor.digest), descriptor.media_type)

    if isinstance(document, ImageIndex):
        documents = [step.document for step in manifest.walk(document, fetch)] + [document]
        platform = ALL_PLATFORMS
    else:
        documents = [document]
        platform = image_platform(reader, document)
    entry = document.descriptor()
    if isinstance(top, ImageIndex) and not options.all_platforms:
        entry = entry_for(options, top)
        platform = str(entry.platform.normalized()) if entry.platform else platform
    return Plan(top=top or document, entry=entry, platform=platform, documents=documents, blobs=manifest.distinct_blobs(documents))


def image_platform(reader: ManifestReader, image: ImageManifest) -> str:
    """``os/arch[/variant]`` from an image's config when the destination holds it, else ``unknown``."""
    try:
        return config_platform(reader.read_blob(image.config.digest))
    except EcrkitError:
        return "unknown"


def config_platform(data: bytes) -> str:
    """``os/arch[/variant]`` from the bytes of an image config, or ``unknown``."""
    try:
        config = json.loads(data)
        return str(normalize_platform(Platform(os=config["os"], architecture=config["architecture"],
                                               variant=config.get("variant"))))
    except (KeyError, TypeError, ValueError):
        return "unknown"


def stored(store: OciLayout, blob: Descriptor, record: bool = True) -> bool:
    """Whether ``store`` holds ``blob`` with its bytes: hashed unless unchanged since they last matched
    (:meth:`OciLayout.verified_status`)."""
    return store.verified_status(blob.digest, blob.size, record=record) == layout_format.BLOB_PRESENT


def containerd_names(ref: ImageRef, digest: Optional[str] = None) -> List[str]:
    """The image names a pull of ``ref`` creates in containerd, the one to look up first: ``REPO:TAG``
    (when the reference has a tag) and ``REPO@DIGEST``, as Kubernetes' CRI names a pulled image."""
    names = [f"{ref.repository_uri}:{ref.tag}"] if ref.tag else []
    digest = digest or ref.digest
    if digest:
        names.append(f"{ref.repository_uri}@{digest}")
    return names


# OCI layouts and archives -----------------------------------------------------------------------------

class _StagedInLayout:
    """What a layout and an archive destination share: the blobs are (or are staged) in an OCI layout."""

    def __init__(self, options: PullOptions, root: str) -> None:
        self.options = options
        self.root = root
        self.store: Optional[OciLayout] = OciLayout(root) if _is_layout(root) else None

    @property
    def contents(self) -> Optional[BlobStore]:
        return self.store

    def has_blob(self, blob: Descriptor) -> bool:
        return bool(self.store and stored(self.store, blob, record=not self.options.check_mode))

    def missing(self, blobs: List[Descriptor]) -> List[Descriptor]:
        return [blob for blob in blobs if not self.has_blob(blob)]

    def wanted_digest(self, top: Document, entry: Descriptor) -> str:  # pylint: disable=unused-argument
        """What the destination's name must point at: the platform's manifest, or the index for all platforms."""
        return entry.digest

    def extra_result(self, plan: Plan, check_mode: bool) -> Dict[str, Any]:  # pylint: disable=unused-argument
        return {}

    def tidy(self, digest: str) -> None:
        """On an unchanged run, remove what an interrupted run left: nothing for a layout or an archive."""


class LayoutDestination(_StagedInLayout):
    """An OCI layout directory: the store is the destination itself.

    A ``dest`` that is a symbolic link is refused before any API call (the layout is written at the
    path given, never wherever a link planted there points). What it already holds counts as present
    when it is a regular file of the right size whose bytes hash to its digest; a blob unchanged
    (inode, size, mtime, ctime) since it last matched is not read again (:meth:`OciLayout.verified_status`),
    so a tampered blob is found and fetched again while a run that changes nothing reads no layer.
    """

    def __init__(self, options: PullOptions) -> None:
        _refuse_symlink(options.dest, layout_format.LayoutSymlinkError, "an OCI layout")
        if os.path.lexists(options.dest):  # before any API call: a layout another user can change is refused
            hostfs.verify_directory(options.dest, "the OCI layout")
        super().__init__(options, options.dest)
        if self.store is not None and not options.check_mode:
            try:  # before this run looks at what the layout holds, which a prune must not remove meanwhile
                self.store.begin_writing()
            except hostfs.LockTimeoutError:
                raise
            except EcrkitError:
                pass  # a layout this user cannot write is only read; open_for_writing says why if it must write

    def recorded_digest(self, name: str) -> Optional[str]:
        entry = self.store.find_tag(name) if self.store else None
        return entry["digest"] if entry else None

    def recorded_resolved(self, name: str, digest: Optional[str]) -> Optional[str]:
        entry = self.store.find_tag(name) if self.store else None
        return _resolved(entry, digest)

    def complete(self, digest: str) -> bool:
        try:
            plan = self.local_plan(digest)
        except EcrkitError:
            return False
        return all(self.has_blob(blob) for blob in plan.blobs)

    def local_plan(self, digest: str, top: Optional[Document] = None) -> Plan:
        if self.store is None:
            raise EcrkitError(f"{self.root} holds no OCI image layout.")
        return local_plan(self.options, self.store, digest, top)

    def open_for_writing(self, plan: Plan) -> OciLayout:  # pylint: disable=unused-argument
        if self.store is None:
            self.store = OciLayout(self.root, create=True, root_mode=self.options.file_mode)
        self.store.begin_writing()  # until close(): OciLayout.prune leaves what this run stores alone
        return self.store

    def finish(self, plan: Plan) -> None:
        """Nothing more: the layout is the destination."""

    def close(self) -> None:
        """Let prunes of the layout run again (this run's entry is stored, or it failed)."""
        if self.store is not None:
            self.store.end_writing()


class ArchiveDestination(_StagedInLayout):
    """An archive file, assembled in a staging layout beside it.

    One pull at a time per archive path: a lock file beside it (``.NAME.ecrkit-lock``, removed after)
    is held from the first look at the archive to the end, so a second pull of the same image waits and
    then finds it done, and none removes the staging layout another is using. Under that lock, temporary
    archives that a killed run left (``.NAME.<random>.tmp``) are removed.
    """

    def __init__(self, options: PullOptions) -> None:
        _refuse_symlink(options.dest, archive.UnsafeArchiveError, "an archive")
        directory, name = os.path.split(os.path.abspath(options.dest))
        self.lock_fd: Optional[int] = None
        if os.path.isdir(directory):  # else the archive writer says it is missing
            # /tmp will do (sticky): the staging layout and the lock beside the archive are then ours only
            directory = hostfs.verify_directory(directory, "the directory of the archive", shared=True)
            archive.check_archive_destination(os.path.join(directory, name))  # a FIFO, a link, another user's file
        self.lock_file = os.path.join(directory, f".{name}.ecrkit-lock")
        if not options.check_mode and os.path.isdir(directory):
            self.lock_fd = hostfs.flock(self.lock_file, partial.CLAIM_TIMEOUT, f"the archive {options.dest}")
            _remove_stale_temps(directory, name)
        super().__init__(options, os.path.join(directory, f".{name}.ecrkit-staging"))
        self.summary = _archive_summary(options.dest, options.format)

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
            if (entry.get("annotations") or {}).get(layout_format.IMAGE_NAME_ANNOTATION) == name:
                return entry
        if self.options.format == "docker-archive":
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

    def local_plan(self, digest: str, top: Optional[Document] = None) -> Plan:
        opener = archive_read.open_oci_archive if self.options.format == "oci-archive" else archive_read.open_docker_archive
        with opener(self.options.dest, decompress=False, follow_symlinks=False) as reader:
            return local_plan(self.options, reader, digest, top)

    def open_for_writing(self, plan: Plan) -> OciLayout:  # pylint: disable=unused-argument
        if self.store is None:
            self.store = OciLayout(self.root, create=True, private=True)
            directory, name = os.path.split(self.root)
            hostfs.private_directory(directory, name, f"the staging layout of {self.options.dest}")  # one made 0755 before
        return self.store

    def finish(self, plan: Plan) -> None:
        store = self.open_for_writing(plan)
        options = self.options
        if options.format == "oci-archive":
            archive.write_oci_archive(store, options.image_name, options.dest, file_mode=options.file_mode,
                                      ref_name=options.short_name)
        else:
            archive.write_docker_archive(store, options.image_name, options.dest, [_repo_tag(options)],
                                         file_mode=options.file_mode)
        shutil.rmtree(self.root, ignore_errors=True)


def _is_layout(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "oci-layout"))


def _refuse_symlink(dest: str, error: Callable[[str], EcrkitError], what: str) -> None:
    path = os.path.abspath(dest)
    if os.path.islink(path):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise error(f"The dest {path} is a symbolic link (to {target}); refusing to write {what} wherever it points: give the real "
                    "path instead.")


def _archive_summary(path: str, dest_format: str) -> Optional[Dict[str, Any]]:
    try:
        return archive_read.read_archive_summary(path, dest_format)
    except archive.ArchiveError:
        return None  # unusable: rewritten by this pull


def _repo_tag(options: PullOptions) -> str:
    """The RepoTags entry of a docker-archive: the reference without digest, with a tag."""
    ref = options.ref
    return f"{ref.host}/{ref.repository}:{options.short_name}"


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
    resolved = annotations.get(layout_format.RESOLVED_ANNOTATION)
    return resolved if is_digest(resolved) else digest


# containerd -------------------------------------------------------------------------------------------

class ContainerdContent:
    """containerd's content store, read like a layout by the plan (:class:`BlobStore`)."""

    def __init__(self, client: containerd.Containerd) -> None:
        self.client = client
        self.digests = client.content_digests()

    def refresh(self) -> None:
        self.digests = self.client.content_digests()

    def has_blob(self, digest: str, size: int = 0) -> bool:  # pylint: disable=unused-argument
        return digest in self.digests  # containerd checked size and digest when it committed the blob

    def read_blob(self, digest: str) -> bytes:
        return self.client.read_blob(digest, manifest.MAX_MANIFEST_SIZE)


class ContainerdDestination:
    """containerd's image store: the image's names point at what the reference resolves to."""

    def __init__(self, options: PullOptions) -> None:
        self.options = options
        self.client = containerd.connect(options.containerd_address, options.containerd_namespace, must_exist=False,
                                         executable=options.containerd_ctr_path)
        self.content = ContainerdContent(self.client)
        self.names = containerd_names(options.ref)
        self.staging: Optional[OciLayout] = None
        self.staging_image = ""
        self.lock_fd: Optional[int] = None
        self.lock_file = ""
        self.unpacked = False

    @property
    def contents(self) -> Optional[BlobStore]:
        return self.content

    def recorded_digest(self, name: str) -> Optional[str]:  # pylint: disable=unused-argument
        record = self.client.image(self.names[0])
        return record.digest if record else None

    def recorded_resolved(self, name: str, digest: Optional[str]) -> Optional[str]:  # pylint: disable=unused-argument
        return digest  # the name points at what the reference resolved to, an index included

    def wanted_digest(self, top: Document, entry: Descriptor) -> str:  # pylint: disable=unused-argument
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

    def local_plan(self, digest: str, top: Optional[Document] = None) -> Plan:
        document = parse_manifest(self.content.read_blob(digest), None, expected_digest=digest)
        if isinstance(document, ImageIndex) and not self.options.all_platforms:
            entry = entry_for(self.options, document)
            child = parse_referenced(entry, self.content.read_blob(entry.digest), entry.media_type)
            if not isinstance(child, ImageManifest):
                raise manifest.UnsupportedManifestError(f"The platform entry {entry.digest} is itself an index.")
            platform = str(entry.platform.normalized()) if entry.platform else str(self.options.wanted_platform)
            return Plan(top=top or document, entry=entry, platform=platform, documents=[child],
                        blobs=manifest.distinct_blobs([child]))
        return local_plan(self.options, self.content, digest, top)

    def _is_unpacked(self, plan: Plan) -> bool:
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

    def _unpack_manifest(self, plan: Plan) -> Optional[ImageManifest]:
        """The manifest containerd unpacks: the only one, or with all platforms the host's."""
        images = [document for document in plan.documents if isinstance(document, ImageManifest)]
        if len(images) == 1:
            return images[0]
        if isinstance(plan.top, ImageIndex):
            try:
                wanted = select_manifest(plan.top, host_platform())
            except EcrkitError:
                return None
            return next((image for image in images if image.digest == wanted.digest), None)
        return None

    def open_for_writing(self, plan: Plan) -> OciLayout:
        """Lock this image's staging layout, and protect its content in containerd under a staging name."""
        root, self.lock_file = self._staging_paths(plan.top.digest, create=True)
        self.lock_fd = hostfs.flock(self.lock_file, partial.CLAIM_TIMEOUT, f"the pull of {plan.top.digest} into containerd")
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
            fd = hostfs.flock(lock_file, 0, "a staging layout")
        except hostfs.LockTimeoutError:
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

    def _keep_platforms(self, plan: Plan) -> None:
        if isinstance(plan.top, ImageIndex):
            self.content.refresh()
            if plan.top.digest in self.content.digests:
                self.client.label_blob(plan.top.digest, containerd.index_labels([child.digest for child in plan.top.manifests]))

    def _import(self, plan: Plan, names: List[str], unpack: bool) -> None:
        top = plan.top
        documents = [(document.digest, document.raw) for document in plan.documents if document.digest != top.digest]
        platform = None if plan.platform in (ALL_PLATFORMS, "", "unknown") else plan.platform
        self.client.import_manifests(names, (top.media_type, top.digest, top.raw), documents, unpack=unpack,
                                     platform=platform, all_platforms=plan.platform == ALL_PLATFORMS)

    def finish(self, plan: Plan) -> None:
        """Ingest the staged blobs containerd lacks, then point the names at the image (and unpack it)."""
        staging = self.open_for_writing(plan) if self.staging is None else self.staging
        for blob in self.missing(plan.blobs):
            path = staging.blob_path(blob.digest)
            with staging.open_blob(blob.digest) as handle:  # O_NOFOLLOW, a regular file: never a swapped-in link
                self.client.ingest(handle, blob.digest, blob.size)
            with contextlib.suppress(OSError):
                os.unlink(path)  # containerd has its own copy now; keep the staging disk use to one image
        names = containerd_names(self.options.ref, plan.top.digest)
        self._import(plan, names, unpack=self.options.unpack)
        self.unpacked = self.options.unpack and self._is_unpacked(plan)
        self.client.remove_images([self.staging_image])
        shutil.rmtree(staging.root, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(self.lock_file)

    def extra_result(self, plan: Plan, check_mode: bool) -> Dict[str, Any]:
        result: Dict[str, Any] = {}
        if check_mode:
            result["would_unpack"] = self.options.unpack and not self.unpacked
        result["containerd"] = {"namespace": self.options.containerd_namespace,
                                "images": containerd_names(self.options.ref, plan.top.digest),
                                "unpacked": self.unpacked, "commands": self.client.commands}
        return result

    def close(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None
