# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pruning an OCI layout: remove the blobs that no entry of its ``index.json`` references any more.

A pull commits blobs before its index.json entry points at them, and decides which blobs the layout
already has before it downloads the rest, so "unreferenced right now" does not make a blob garbage.
Every run of this collection that writes into a layout holds a shared lock from before it looks at
what the layout holds until its entry is stored (:meth:`OciLayout.begin_writing`); a prune works only
while it holds that lock exclusively (:meth:`OciLayout.writers_excluded`), so no such run is between
those two points, and a run that starts meanwhile waits for the prune (a few file operations).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Set

from ansible_collections.ecrkit.images.plugins.module_utils import manifest, manifest_parser
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.layout import OciLayout
from ansible_collections.ecrkit.images.plugins.module_utils.layout_format import IMAGE_NAME_ANNOTATION, INDEX_FILE, check_descriptor, ref_name


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune_layout` removed (in check mode: would remove), and why it removed nothing."""

    removed: tuple  # of (digest, bytes)
    skipped: str = ""  # why nothing was removed although something might be garbage (a warning), or ""

    @property
    def bytes_freed(self) -> int:
        return sum(size for dummy, size in self.removed)


def prune_layout(store: OciLayout, check_mode: bool = False, wait: Optional[float] = None,
                 replacing: Optional[str] = None, keep: Iterable[str] = ()) -> PruneResult:
    """Remove every blob of ``blobs/sha256`` that no entry of ``index.json`` references; say what went.

    Referenced: the blob of each entry, and when it is a manifest its config, layers and subject, when
    it is an index everything :func:`manifest.walk` reaches from it; a blob that does not parse as a
    manifest is a leaf. A manifest or index that cannot be read whole (a listed child missing, schema 1,
    a damaged document) leaves its references unknown, so nothing is removed and
    :attr:`PruneResult.skipped` says why. Partial downloads, temp files and anything in
    ``blobs/sha256`` that is not a regular file with a digest's name are never touched; the
    verification stamps of removed blobs (and stamps left without a blob) go with them.

    Unless ``check_mode``, this waits for the runs writing into the layout to finish (``wait`` seconds at
    most, default the layout's ``lock_timeout``) and works under the index lock; when they do not finish
    in time, nothing is removed and ``skipped`` says so. The store's own writer's lock ends first.
    ``check_mode`` removes and locks nothing (so it may count blobs another run has just committed);
    ``replacing`` (an image name: its ref.name or ``io.containerd.image.name``) and ``keep`` (digests)
    describe the entry a pull in check mode would store instead of that name's.
    """
    store.end_writing()
    if check_mode:
        return _sweep(store, True, replacing, frozenset(keep))
    wait = store.lock_timeout if wait is None else wait
    with store.writers_excluded(wait) as excluded:
        if not excluded:
            return PruneResult((), f"Nothing was pruned from the OCI layout {store.root}: another run was still writing "
                               f"into it after {wait:g} s (its new blobs are not referenced yet); run the task again to "
                               "prune.")
        return _sweep(store, False, replacing, frozenset(keep))


def _sweep(store: OciLayout, check_mode: bool, replacing: Optional[str], keep: frozenset) -> PruneResult:
    entries = [entry for entry in store.read_index()["manifests"]
               if replacing is None or replacing not in (ref_name(entry), _image_name(entry))]
    try:
        referenced = referenced_digests(store, entries) | keep
    except EcrkitError as exc:
        return PruneResult((), f"Nothing was pruned from the OCI layout {store.root}, since what it references is not "
                           f"certain: {exc}")
    removed = [(digest, size) for digest, size in store.stored_blobs()
               if digest not in referenced and (check_mode or store.remove_blob(digest))]
    if not check_mode:
        store.stamps.remove_orphans(store.blob_path)
    return PruneResult(tuple(removed))


def referenced_digests(store: OciLayout, entries: Iterable[dict]) -> Set[str]:
    """The digests the index entries ``entries`` reference, directly or through manifests and indexes
    stored in ``store`` (see :func:`prune_layout`); an EcrkitError when a document cannot be read whole."""
    where = f"{store.root}/{INDEX_FILE}"

    def fetch(descriptor: manifest.Descriptor) -> manifest.ManifestDocument:
        return manifest_parser.parse_referenced(descriptor, store.read_blob(descriptor.digest), descriptor.media_type)

    referenced: Set[str] = set()
    for entry in entries:
        descriptor = check_descriptor(entry, f"the entry {ref_name(entry) or entry.get('digest')} of {where}")
        referenced.add(descriptor["digest"])
        document = _stored_document(store, descriptor["mediaType"], descriptor["digest"])
        steps = manifest.walk(document, fetch) if document is not None else []
        for step in steps:
            referenced.add(step.descriptor.digest)
        for reached in ([document] if document is not None else []) + [step.document for step in steps]:
            if isinstance(reached, manifest.ImageManifest):
                referenced.update(blob.digest for blob in manifest.referenced_blobs(reached))
            if reached.subject is not None:
                referenced.add(reached.subject.digest)
    return referenced


def _stored_document(store: OciLayout, media_type: str, digest: str) -> Optional[manifest.ManifestDocument]:
    """The manifest or index stored as ``digest``; None for a leaf (not stored, or not a manifest).

    A blob whose media type says manifest or index must parse as one, as must anything that says it is
    schema 1 (whose layers this collection cannot list): otherwise an EcrkitError."""
    readable = media_type in manifest.MANIFEST_TYPES | manifest.INDEX_TYPES | manifest.SCHEMA1_TYPES
    if not os.path.lexists(store.blob_path(digest)):
        return None  # a dangling entry: there is nothing stored below it to keep
    try:
        return manifest_parser.parse_manifest(store.read_blob(digest), media_type if readable else None, digest)
    except manifest.Schema1ManifestError:
        raise
    except EcrkitError:
        if readable:
            raise
        return None


def _image_name(entry: dict[str, Any]) -> Optional[str]:
    annotations = entry.get("annotations")
    name = annotations.get(IMAGE_NAME_ANNOTATION) if isinstance(annotations, dict) else None
    return name if isinstance(name, str) else None
