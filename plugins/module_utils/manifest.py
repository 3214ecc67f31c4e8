# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Media types, image manifests and indexes: what they are, walking an index, listing the blobs of an image.

Everything here works on documents already in memory and makes no network call: the caller fetches
(``BatchGetImage`` for manifests, the blob store for layers) and this module tells what the bytes are,
whether they can be trusted, and what to fetch next.

Parsing the bytes of a manifest or index into these types, refusing hostile input, is
:mod:`.manifest_parser`'s; the limits it applies are here.

Decision, layers of unknown media type: accepted. The OCI image spec says that a layer ``mediaType``
unknown to an implementation MUST be ignored, and containerd stores and copies such layers: artifacts
(Helm charts, WASM modules, SBOMs), encrypted and lazily-pulled layers all use their own types. Such a
layer is still checked like any descriptor (digest, size, media type grammar).
:attr:`ImageManifest.unknown_layers` lists them (every destination stores them as they are). The
config may likewise be of any media type; :attr:`ImageManifest.is_image` tells whether it is a
container image config.

Decision, index entries: an entry whose media type is a known layer or config type is refused as
malformed (a blob is not a platform image). An entry of a media type that is neither a known manifest
or index type nor a known blob type (a future manifest format, say) is kept, as the image-index spec
says an unknown entry ``mediaType`` MUST be ignored: :func:`.platform_select.select_manifest` never picks it, and
:func:`walk` refuses to copy an index holding one (it could not be copied completely).

Platforms are :mod:`.platform`'s, and picking an index's entry for one is :mod:`.platform_select`'s.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from ansible_collections.ecrkit.images.plugins.module_utils.digest import InvalidDigestError
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.platform import Platform
from ansible_collections.ecrkit.images.plugins.module_utils.untrusted import show

# --- media types -------------------------------------------------------------------------------------

MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

MEDIA_TYPE_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_OCI_EMPTY = "application/vnd.oci.empty.v1+json"
"""The OCI 1.1 empty descriptor's type (``{}``), used as the config of artifacts."""

MEDIA_TYPE_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
MEDIA_TYPE_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_TYPE_DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
"""Not in Docker's spec; containerd and BuildKit write it for zstd layers under Docker media types."""
MEDIA_TYPE_DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar"
MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

ACCEPTED_MANIFEST_TYPES: Tuple[str, ...] = (
    MEDIA_TYPE_OCI_MANIFEST,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
)
"""What the pull sends as ``acceptedMediaTypes`` in ``BatchGetImage``."""

MANIFEST_TYPES = frozenset({MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST})
"""Media types of a single-platform image manifest that :func:`parse_manifest` reads."""
INDEX_TYPES = frozenset({MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST})
"""Media types of a multi-platform index that :func:`parse_manifest` reads."""
SCHEMA1_TYPES = frozenset({MEDIA_TYPE_DOCKER_SCHEMA1, MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED})
"""Docker image manifest schema 1, refused (see the module documentation)."""
CONFIG_TYPES = frozenset({MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_DOCKER_CONFIG})
"""Container image configs."""
FOREIGN_LAYER_TYPES = frozenset({
    MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE,
    MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_GZIP,
    MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
    MEDIA_TYPE_DOCKER_FOREIGN_LAYER,
    MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP,
})
"""Layers that registries do not store (Windows base layers, typically): fetched from their ``urls``."""

LAYER_TYPES = frozenset({
    MEDIA_TYPE_OCI_LAYER,
    MEDIA_TYPE_OCI_LAYER_GZIP,
    MEDIA_TYPE_OCI_LAYER_ZSTD,
    MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE,
    MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_GZIP,
    MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
    MEDIA_TYPE_DOCKER_LAYER,
    MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_DOCKER_LAYER_ZSTD,
    MEDIA_TYPE_DOCKER_FOREIGN_LAYER,
    MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP,
})
"""Filesystem layer (tar changeset) media types of both families, foreign ones included."""

BLOB_TYPES = CONFIG_TYPES | LAYER_TYPES | {MEDIA_TYPE_OCI_EMPTY}
"""Known media types of blobs (not manifests)."""

# --- limits ------------------------------------------------------------------------------------------

MAX_MANIFEST_SIZE = 4 * 1024 * 1024
"""The largest manifest ECR stores: 4 MiB."""
MAX_BLOB_SIZE = 52000 * 1024 * 1024
"""The largest layer ECR stores: 52,000 MiB."""
MAX_LAYERS = 1000
"""Most layers one manifest may have (see the module documentation)."""
MAX_INDEX_ENTRIES = 1000
"""Most entries one index may have."""
MAX_INDEX_DEPTH = 4
"""Most indexes on any path from the top index down to a manifest, the top one included."""
MAX_WALK_DOCUMENTS = 2000
"""Most manifests and indexes one :func:`walk` fetches."""


# --- errors ------------------------------------------------------------------------------------------

class ManifestError(EcrkitError):
    """A manifest or index that cannot be used: malformed, hostile, or not what was expected."""

    code = "invalid_manifest"


class ManifestDigestError(ManifestError, InvalidDigestError):
    """A digest in a manifest, or one a manifest is fetched by, that is not ``sha256:`` and 64 lowercase
    hex digits: an :class:`~.digest.InvalidDigestError` (its code) that also refuses the document."""

    code = InvalidDigestError.code


class DigestMismatchError(ManifestError):
    """Bytes whose sha256 is not the digest they were fetched by. ``expected`` and ``actual`` are digests."""

    code = "digest_mismatch"

    def __init__(self, message: str, expected: str, actual: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class UnsupportedManifestError(ManifestError):
    """A well-formed document of a kind this collection does not handle. ``media_type`` is its type."""

    code = "unsupported_manifest"

    def __init__(self, message: str, media_type: str | None = None) -> None:
        super().__init__(message)
        self.media_type = media_type


class Schema1ManifestError(UnsupportedManifestError):
    """A Docker image manifest schema 1 (refused, see the module documentation)."""

    code = "schema1_manifest"


def schema1_message(digest: str, media_type: str | None) -> str:
    """What :class:`Schema1ManifestError` says about the manifest ``digest``: why it is refused, and the fix."""
    kind = f" ({media_type})" if media_type else ""
    return (f"The manifest {digest} is a Docker image manifest schema 1{kind}, which this collection does not support: "
            "ECR keeps schema 1 images only for old clients, and Docker and containerd have deprecated them; "
            "re-push the image with a current Docker, containerd, buildah or skopeo, which writes a schema 2 or OCI manifest.")


class ForeignLayerError(ManifestError):
    """An image with a foreign (non-distributable) layer, which ECR does not store."""

    code = "foreign_layer"


# --- data model --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor (also Docker's). ``annotations`` must not be changed."""

    media_type: str
    digest: str
    size: int
    platform: Optional[Platform] = None
    urls: Tuple[str, ...] = ()
    annotations: Dict[str, str] = dataclasses.field(default_factory=dict)
    artifact_type: Optional[str] = None

    def __hash__(self) -> int:
        return hash((self.media_type, self.digest, self.size, self.platform, self.urls))

    @property
    def is_foreign(self) -> bool:
        """A foreign / non-distributable layer: such a media type, or ``urls`` to fetch it from elsewhere."""
        return self.media_type in FOREIGN_LAYER_TYPES or bool(self.urls)

    def to_json(self) -> Dict[str, Any]:
        """The OCI descriptor object (for an ``index.json``, say)."""
        out: Dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.artifact_type is not None:
            out["artifactType"] = self.artifact_type
        return out


@dataclasses.dataclass(frozen=True)
class _Document:
    """What a manifest and an index share: their media type, exact bytes and digest."""

    media_type: str
    raw: bytes
    digest: str

    def __hash__(self) -> int:
        return hash((self.media_type, self.digest))

    @property
    def size(self) -> int:
        """Length of the document in bytes."""
        return len(self.raw)

    def descriptor(self, platform: Platform | None = None, annotations: Dict[str, str] | None = None) -> Descriptor:
        """A descriptor of this document."""
        return Descriptor(self.media_type, self.digest, len(self.raw), platform=platform, annotations=dict(annotations or {}))


@dataclasses.dataclass(frozen=True)
class ImageManifest(_Document):
    """A single-platform image manifest (OCI or Docker schema 2). ``raw`` is its exact bytes."""

    config: Descriptor
    layers: Tuple[Descriptor, ...]
    annotations: Dict[str, str] = dataclasses.field(default_factory=dict)
    subject: Optional[Descriptor] = None
    artifact_type: Optional[str] = None

    __hash__ = _Document.__hash__  # a frozen dataclass would otherwise hash every field, dicts included

    @property
    def is_image(self) -> bool:
        """The config is a container image config (OCI or Docker), not an artifact's."""
        return self.config.media_type in CONFIG_TYPES

    @property
    def unknown_layers(self) -> Tuple[Descriptor, ...]:
        """Layers whose media type is not a known filesystem layer type (artifacts, encrypted layers...)."""
        return tuple(layer for layer in self.layers if layer.media_type not in LAYER_TYPES)

    @property
    def foreign_layers(self) -> Tuple[Descriptor, ...]:
        """Layers that are foreign / non-distributable (see :attr:`Descriptor.is_foreign`)."""
        return tuple(layer for layer in self.layers if layer.is_foreign)


@dataclasses.dataclass(frozen=True)
class ImageIndex(_Document):
    """A multi-platform index (OCI image index or Docker manifest list). ``raw`` is its exact bytes."""

    manifests: Tuple[Descriptor, ...]
    annotations: Dict[str, str] = dataclasses.field(default_factory=dict)
    subject: Optional[Descriptor] = None
    artifact_type: Optional[str] = None

    __hash__ = _Document.__hash__


ManifestDocument = Union[ImageManifest, ImageIndex]
"""What :func:`parse_manifest` returns."""


def check_document(descriptor: Descriptor, document: ManifestDocument) -> ManifestDocument:
    """Check that ``document`` is what ``descriptor`` points at: same digest, size and media type.

    Returns ``document``; raises :class:`DigestMismatchError` or :class:`ManifestError`.
    """
    if document.digest != descriptor.digest:
        raise DigestMismatchError(f"The manifest fetched as {descriptor.digest} has the digest {document.digest}: its bytes "
                                  "are not the manifest that was asked for, so it was not used.", descriptor.digest, document.digest)
    if len(document.raw) != descriptor.size:
        raise ManifestError(f"The manifest {descriptor.digest} is {len(document.raw):,} bytes, but the index that lists it "
                            f"says {descriptor.size:,}.")
    if document.media_type != descriptor.media_type:
        raise ManifestError(f"The manifest {descriptor.digest} has the media type {document.media_type}, but the index that "
                            f"lists it says {descriptor.media_type}.")
    return document


# --- blobs -------------------------------------------------------------------------------------------

def referenced_blobs(manifest: ImageManifest) -> List[Descriptor]:
    """The config and the layers, in that order, each digest once (the first descriptor of it)."""
    seen = set()
    out = []
    for blob in (manifest.config,) + tuple(manifest.layers):
        if blob.digest not in seen:
            seen.add(blob.digest)
            out.append(blob)
    return out


def distinct_blobs(documents: Sequence[ManifestDocument]) -> List[Descriptor]:
    """The configs and layers of every image manifest among ``documents``, each digest once, in order;
    an image with a foreign layer is refused (:class:`ForeignLayerError`), and so are two manifests that
    give one blob different sizes (:class:`ManifestError`)."""
    seen: Dict[str, Descriptor] = {}
    for document in documents:
        if isinstance(document, ImageManifest):
            refuse_foreign_layers(document)
            for blob in referenced_blobs(document):
                first = seen.setdefault(blob.digest, blob)
                if first.size != blob.size:
                    raise ManifestError(
                        f"The image manifest {document.digest} gives blob {blob.digest} {blob.size:,} bytes, but another "
                        f"manifest of the same image gives it {first.size:,}; one of them is wrong, so the image cannot be "
                        "trusted (re-push it from a correct source).")
    return list(seen.values())


def refuse_foreign_layers(manifest: ImageManifest) -> ImageManifest:
    """Raise :class:`ForeignLayerError` when the image has a foreign layer; else return ``manifest``."""
    foreign = manifest.foreign_layers
    if foreign:
        first = foreign[0]
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise ForeignLayerError(
            f"The image manifest {manifest.digest} has a foreign (non-distributable) layer {first.digest}{more} of type "
            f"{first.media_type}, which ECR does not store and this collection cannot fetch; such layers (typically "
            "Windows base layers) come from their vendor's own servers.")
    return manifest


# --- walking -----------------------------------------------------------------------------------------

class WalkStep(NamedTuple):
    """One document :func:`walk` reached: the descriptor it was listed by, the parsed document, and
    the digest of the index that listed it."""

    descriptor: Descriptor
    document: ManifestDocument
    parent: str


def walk(index: ManifestDocument, fetch: Callable[[Descriptor], ManifestDocument], max_depth: int = MAX_INDEX_DEPTH,
         max_documents: int = MAX_WALK_DOCUMENTS) -> List[WalkStep]:
    """Every manifest and index below ``index``, children before the index that lists them.

    That is the order in which they must be pushed (``PutImage`` of an index needs its children); the
    top ``index`` itself is not in the list. ``fetch`` gets a descriptor and returns the parsed document
    (typically ``parse_referenced`` of what ``BatchGetImage`` returned); each result is checked against
    its descriptor (digest, size, media type). A document listed more than once is fetched once.

    Refused with :class:`ManifestError`, before fetching: more than ``max_depth`` indexes on a path
    (the top one included), a cycle (an index that lists one of the indexes above it; impossible with
    verified sha256 digests, checked anyway), more than ``max_documents`` documents, and an entry whose
    media type is not a manifest or index type this collection reads (the copy would be incomplete).
    A manifest passed as ``index`` has nothing below it: the result is empty.
    """
    out: List[WalkStep] = []
    done = set()
    fetched = 0

    def visit(current: ImageIndex, path: Tuple[str, ...]) -> None:
        nonlocal fetched
        for entry in current.manifests:
            if entry.digest in path:
                raise ManifestError(f"The image index {current.digest} lists {entry.digest}, which is one of the indexes "
                                    "above it: the indexes form a cycle.")
            if entry.digest in done:
                continue
            if entry.media_type in SCHEMA1_TYPES:
                raise Schema1ManifestError(schema1_message(entry.digest, entry.media_type), entry.media_type)
            if entry.media_type not in MANIFEST_TYPES and entry.media_type not in INDEX_TYPES:
                raise UnsupportedManifestError(
                    f"The image index {current.digest} lists {entry.digest} of the media type {show(entry.media_type)}, "
                    "which this collection cannot read, so the index cannot be copied whole.", entry.media_type)
            if entry.media_type in INDEX_TYPES and len(path) >= max_depth:
                raise ManifestError(f"The image index {current.digest} lists the index {entry.digest}, nesting indexes "
                                    f"more than {max_depth} deep, which this collection refuses.")
            if fetched >= max_documents:
                raise ManifestError(f"The image index {index.digest} leads to more than {max_documents:,} manifests and "
                                    "indexes, which this collection refuses.")
            fetched += 1
            document = check_document(entry, fetch(entry))
            if isinstance(document, ImageIndex):
                visit(document, path + (document.digest,))
            done.add(entry.digest)
            out.append(WalkStep(entry, document, current.digest))

    if isinstance(index, ImageIndex):
        visit(index, (index.digest,))
    return out
