# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Media types, image manifests and indexes, platform matching, and walking descriptors.

Everything here works on bytes already in memory and makes no network call: the caller fetches
(``BatchGetImage`` for manifests, the blob store for layers) and this module tells what the bytes are,
whether they can be trusted, and what to fetch next.

Parsing: :func:`parse_manifest` takes the exact bytes of a manifest (never a re-serialisation: the
digest of a manifest is the sha256 of its bytes) and returns an :class:`ImageManifest` or an
:class:`ImageIndex`. Anything else, for any input, is a :class:`ManifestError` (or a subclass) whose
message names the manifest by digest and says what is wrong. Hostile or broken input is refused before
anything large is allocated or downloaded:

- more than :data:`MAX_MANIFEST_SIZE` bytes (4 MiB, the largest manifest ECR stores) is refused unread;
  so is a document with more than :data:`MAX_JSON_CONTAINERS` ``{``/``[`` characters (the Python
  objects of a 4 MiB JSON text made of empty objects would take hundreds of MiB);
- the text must be UTF-8 JSON with one object at the top, no ``NaN``/``Infinity``, no key repeated in an
  object (two parsers that keep different copies of a key see different images), no number longer than
  20 digits (int64 needs 19; longer ones cost quadratic time to convert on Python 3.9);
- every descriptor needs a media type (RFC 6838 grammar), a digest that is ``sha256:`` and 64 lowercase
  hex digits (other algorithms are refused: ECR and this collection only use sha256) and a size that is
  a whole number from 0 to :data:`MAX_BLOB_SIZE` (52,000 MiB, ECR's largest layer) or, for a
  descriptor of a manifest or index, :data:`MAX_MANIFEST_SIZE`;
- one digest, one size: a manifest that lists a blob (config or layer) twice with different sizes, an
  index that lists a manifest twice with different sizes, or two manifests of one image that disagree
  on a blob's size are refused, since one of the sizes is a lie;
- at most :data:`MAX_LAYERS` layers (1,000) and :data:`MAX_INDEX_ENTRIES` index entries (1,000).
  Nothing in the specs limits either, but images that Docker or containerd can run stay far below
  1,000 layers (Docker's overlay2 driver stops at 128, the Linux overlay filesystem stacks at most
  500), and a real multi-platform index has a few dozen entries at most (platforms plus their
  attestations). The limit bounds the number of blob URLs, temp files and
  API calls that one manifest can cause, while leaving ample room for artifacts with many blobs;
- a manifest that also carries ``manifests``, or an index that carries ``config`` or ``layers``, is
  refused: such a document is read as an image by one client and as an index by another
  (CVE-2021-41190, the reason the OCI spec now asks for ``mediaType``).

Media type of the document: from the ``media_type`` argument (ECR's ``imageManifestMediaType``) and the
document's own ``mediaType``; when both are given they must agree. An OCI manifest or index may leave
``mediaType`` out (the spec says SHOULD): a document with ``config`` is then an OCI manifest, one with
``manifests`` an OCI index. ``schemaVersion`` must be 2.

Decision, Docker image manifest schema 1: refused, with :class:`Schema1ManifestError`, whose message
says that schema 1 images are not supported, that ECR keeps them only for old clients and that Docker
and containerd have deprecated them, and that re-pushing the image with a current client (which writes
schema 2 or OCI) fixes it. Converting (as containerd's resolver does) means synthesising an image config
from the ``v1Compatibility`` history strings and un-gzipping every layer to compute its diff ID; that is
a lot of risk for images that no current tool produces.

Decision, layers of unknown media type: accepted. The OCI image spec says that a layer ``mediaType``
unknown to an implementation MUST be ignored, and containerd stores and copies such layers: artifacts
(Helm charts, WASM modules, SBOMs), encrypted and lazily-pulled layers all use their own types. Such a
layer is still checked like any descriptor (digest, size, media type grammar).
:attr:`ImageManifest.unknown_layers` lists them so that the pull can warn, and a writer that must
understand layers (a docker-archive for ``docker load``) can refuse. The config may likewise be of any
media type; :attr:`ImageManifest.is_image` tells whether it is a container image config.

Decision, index entries: an entry whose media type is a known layer or config type is refused as
malformed (a blob is not a platform image). An entry of a media type that is neither a known manifest
or index type nor a known blob type (a future manifest format, say) is kept, as the image-index spec
says an unknown entry ``mediaType`` MUST be ignored: :func:`select_manifest` never picks it, and
:func:`walk` refuses to copy an index holding one (it could not be copied completely).

Platforms: :func:`parse_platform` reads ``os/arch[/variant]`` and normalises it as containerd does
(:func:`normalize_platform`); :func:`host_platform` describes the managed host; :func:`select_manifest`
picks the entry of an index for a platform. The normal form writes the default variant out:
``linux/arm64/v8`` (``arm64`` alone means v8) and ``linux/arm/v7`` (``arm`` alone means v7); ``amd64/v1``
is plain ``amd64``. Matching is exact after normalisation: there is no fallback from ``arm/v7`` to
``arm/v6`` or from ``amd64/v3`` to ``amd64``, so what is pulled is always what was asked for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform as pyplatform
import re
from typing import Any, Callable, Dict, List, NamedTuple, NoReturn, Optional, Sequence, Tuple, Union

from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError

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

_COMPRESSION = {
    MEDIA_TYPE_OCI_LAYER: "uncompressed",
    MEDIA_TYPE_OCI_LAYER_GZIP: "gzip",
    MEDIA_TYPE_OCI_LAYER_ZSTD: "zstd",
    MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE: "uncompressed",
    MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_GZIP: "gzip",
    MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_ZSTD: "zstd",
    MEDIA_TYPE_DOCKER_LAYER: "uncompressed",
    MEDIA_TYPE_DOCKER_LAYER_GZIP: "gzip",
    MEDIA_TYPE_DOCKER_LAYER_ZSTD: "zstd",
    MEDIA_TYPE_DOCKER_FOREIGN_LAYER: "uncompressed",
    MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP: "gzip",
}
LAYER_TYPES = frozenset(_COMPRESSION)
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
MAX_JSON_CONTAINERS = 100000
"""Most ``{`` and ``[`` characters in a manifest: an index at the entry limit needs a few thousand."""
MAX_PLATFORMS_TEXT = 600
"""Most characters of platform names a :class:`PlatformNotFoundError` message lists (its ``available``
has them all); a real index's platforms take a few hundred."""

_MAX_NUMBER_DIGITS = 20
_MAX_SHOWN = 80

_SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")
_ANY_DIGEST_RE = re.compile(r"(?P<algorithm>[a-z0-9]+(?:[+._-][a-z0-9]+)*):[A-Za-z0-9=_-]+")
# RFC 6838 section 4.2 restricted-name, for type and subtype; no parameters.
_MEDIA_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")
_PLATFORM_PART_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

ATTESTATION_ANNOTATION = "vnd.docker.reference.type"
"""BuildKit marks the attestation (SBOM, provenance) manifests of an index with this annotation."""
ATTESTATION_VALUE = "attestation-manifest"


# --- errors ------------------------------------------------------------------------------------------

class ManifestError(EcrkitError):
    """A manifest or index that cannot be used: malformed, hostile, or not what was expected."""

    code = "invalid_manifest"


class InvalidDigestError(ManifestError):
    """A digest that is not ``sha256:`` followed by 64 lowercase hexadecimal digits."""

    code = "invalid_digest"


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


class ForeignLayerError(ManifestError):
    """An image with a foreign (non-distributable) layer, which ECR does not store."""

    code = "foreign_layer"


class InvalidPlatformError(EcrkitError):
    """A platform text that is not ``os/arch[/variant]``, or a host whose platform cannot be told."""

    code = "invalid_platform"


class PlatformNotFoundError(EcrkitError):
    """An index with no manifest for the wanted platform.

    ``wanted`` is the platform asked for (``os/arch[/variant]``), ``available`` the sorted platforms the
    index has, ``index_digest`` the index's digest.
    """

    code = "platform_not_found"

    def __init__(self, message: str, wanted: str, available: List[str], index_digest: str) -> None:
        super().__init__(message)
        self.wanted = wanted
        self.available = available
        self.index_digest = index_digest


# --- digests -----------------------------------------------------------------------------------------

def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data`` (bytes, bytearray or memoryview)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _show(value: object) -> str:
    """``value`` for a message: ASCII only, one line, at most about 80 characters."""
    if isinstance(value, str):
        shown = json.dumps(value[:_MAX_SHOWN])
        return shown + "..." if len(value) > _MAX_SHOWN else shown
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        text = str(value)
        return text if len(text) <= 30 else f"a {len(text)}-digit number"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "a " + type(value).__name__


def _digest_problem(value: object) -> str | None:
    """Why ``value`` is not a sha256 digest (a predicate for a message), or None when it is one."""
    if isinstance(value, str) and _SHA256_RE.fullmatch(value):
        return None
    if not isinstance(value, str):
        return f"must be a digest string, not {_show(value)}"
    match = _ANY_DIGEST_RE.fullmatch(value)
    if match and match.group("algorithm") != "sha256":
        return f"{_show(value)} uses the {_show(match.group('algorithm'))} algorithm; only sha256 digests are supported"
    return f"{_show(value)} is not a valid digest; a digest is sha256: followed by 64 lowercase hexadecimal digits"


def check_digest_format(digest: object, what: str = "digest") -> str:
    """Return ``digest`` when it is ``sha256:`` and 64 lowercase hex digits; else raise :class:`InvalidDigestError`.

    ``what`` names the digest in the message (e.g. ``"layer digest"``); other algorithms (``sha512:``)
    are refused with a message saying that only sha256 is supported.
    """
    problem = _digest_problem(digest)
    if problem is not None:
        raise InvalidDigestError(f"The {what} {problem}.")
    return digest  # type: ignore[return-value]


# --- data model --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Platform:
    """An OCI platform. ``str()`` is ``os/arch[/variant]``, e.g. ``linux/arm64/v8``."""

    os: str
    architecture: str
    variant: Optional[str] = None
    os_version: Optional[str] = None
    os_features: Tuple[str, ...] = ()

    def __str__(self) -> str:
        parts = [self.os, self.architecture]
        if self.variant:
            parts.append(self.variant)
        return "/".join(parts)

    def normalized(self) -> Platform:
        """This platform in containerd's normal form, default variants written out (see :func:`normalize_platform`)."""
        return normalize_platform(self)

    def matches(self, other: Platform) -> bool:
        """Same OS, architecture and variant after normalisation (OS version and features are not compared)."""
        mine, theirs = self.normalized(), other.normalized()
        return (mine.os, mine.architecture, mine.variant) == (theirs.os, theirs.architecture, theirs.variant)

    def to_json(self) -> Dict[str, Any]:
        """The OCI ``platform`` object."""
        out: Dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version is not None:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant is not None:
            out["variant"] = self.variant
        return out


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

    @property
    def is_manifest(self) -> bool:
        """Points at a single-platform image manifest of a type :func:`parse_manifest` reads."""
        return self.media_type in MANIFEST_TYPES

    @property
    def is_index(self) -> bool:
        """Points at an index of a type :func:`parse_manifest` reads."""
        return self.media_type in INDEX_TYPES

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
class ImageManifest:
    """A single-platform image manifest (OCI or Docker schema 2). ``raw`` is its exact bytes."""

    media_type: str
    raw: bytes
    digest: str
    config: Descriptor
    layers: Tuple[Descriptor, ...]
    annotations: Dict[str, str] = dataclasses.field(default_factory=dict)
    subject: Optional[Descriptor] = None
    artifact_type: Optional[str] = None

    def __hash__(self) -> int:
        return hash((self.media_type, self.digest))

    @property
    def size(self) -> int:
        """Length of the manifest in bytes."""
        return len(self.raw)

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

    @property
    def total_size(self) -> int:
        """Bytes of the distinct blobs (config and layers) the manifest references."""
        return sum(blob.size for blob in referenced_blobs(self))

    def descriptor(self, platform: Platform | None = None, annotations: Dict[str, str] | None = None) -> Descriptor:
        """A descriptor of this manifest."""
        return Descriptor(self.media_type, self.digest, len(self.raw), platform=platform, annotations=dict(annotations or {}))


@dataclasses.dataclass(frozen=True)
class ImageIndex:
    """A multi-platform index (OCI image index or Docker manifest list). ``raw`` is its exact bytes."""

    media_type: str
    raw: bytes
    digest: str
    manifests: Tuple[Descriptor, ...]
    annotations: Dict[str, str] = dataclasses.field(default_factory=dict)
    subject: Optional[Descriptor] = None
    artifact_type: Optional[str] = None

    def __hash__(self) -> int:
        return hash((self.media_type, self.digest))

    @property
    def size(self) -> int:
        """Length of the index in bytes."""
        return len(self.raw)

    def descriptor(self, platform: Platform | None = None, annotations: Dict[str, str] | None = None) -> Descriptor:
        """A descriptor of this index."""
        return Descriptor(self.media_type, self.digest, len(self.raw), platform=platform, annotations=dict(annotations or {}))


ManifestDocument = Union[ImageManifest, ImageIndex]
"""What :func:`parse_manifest` returns."""


# --- parsing -----------------------------------------------------------------------------------------

class _Refused(ValueError):
    """Raised from inside ``json.loads`` hooks; ``str()`` ends a sentence that starts with "it"."""


def _object_without_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"repeats the key {_show(key)} in one object, so different clients could read different values")
        out[key] = value
    return out


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_NUMBER_DIGITS:
        raise _Refused(f"has a number with more than {_MAX_NUMBER_DIGITS} digits")
    return int(text)


def _no_constant(name: str) -> NoReturn:
    raise _Refused(f"contains {name}, which JSON does not allow")


class _Context:
    """Names the document in messages: ``The manifest sha256:... is not valid: ...``."""

    def __init__(self, digest: str, label: str = "manifest") -> None:
        self.digest = digest
        self.label = label

    def refuse(self, tail: str, error: type[ManifestError] = ManifestError) -> NoReturn:
        raise error(f"The {self.label} {self.digest} {tail}.")

    def fail(self, where: str, problem: str, error: type[ManifestError] = ManifestError) -> NoReturn:
        raise error(f"The {self.label} {self.digest} is not valid: {where} {problem}.")


def _load_json(raw: bytes, ctx: _Context) -> Any:
    containers = raw.count(b"{") + raw.count(b"[")
    if containers > MAX_JSON_CONTAINERS:
        ctx.refuse(f"is not a plausible manifest: it has {containers:,} '{{' and '[' characters, more than the "
                   f"{MAX_JSON_CONTAINERS:,} allowed (an index of {MAX_INDEX_ENTRIES:,} entries needs a few thousand)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        ctx.refuse(f"is not UTF-8 text (invalid byte at offset {exc.start})")
    try:
        return json.loads(text, object_pairs_hook=_object_without_duplicates, parse_int=_bounded_int, parse_constant=_no_constant)
    except _Refused as exc:
        ctx.refuse(f"is not valid: it {exc}")
    except RecursionError:
        ctx.refuse("is not valid: it nests JSON objects or arrays too deeply")
    except ValueError as exc:
        problem = getattr(exc, "msg", "cannot be parsed")
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        ctx.refuse(f"is not valid JSON ({problem}{where})")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _string(value: object, where: str, ctx: _Context, empty_ok: bool = True) -> str:
    if not isinstance(value, str):
        ctx.fail(where, f"must be a string, not {_show(value)}")
    if not empty_ok and not value:
        ctx.fail(where, "must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        ctx.fail(where, "contains an unpaired UTF-16 surrogate escape, which is not text")
    return value


def _media_type(value: object, where: str, ctx: _Context) -> str:
    if not isinstance(value, str):
        ctx.fail(where, f"must be a media type string, not {_show(value)}")
    if not _MEDIA_TYPE_RE.fullmatch(value):
        ctx.fail(where, f"{_show(value)} is not a media type (type/subtype, RFC 6838)")
    return value


def _string_list(value: object, where: str, ctx: _Context) -> Tuple[str, ...]:
    if not isinstance(value, list):
        ctx.fail(where, f"must be a list of strings, not {_show(value)}")
    return tuple(_string(item, f"{where}[{position}]", ctx) for position, item in enumerate(value))


def _annotations(value: object, where: str, ctx: _Context) -> Dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        ctx.fail(where, f"must be an object of strings, not {_show(value)}")
    out: Dict[str, str] = {}
    for key, item in value.items():
        _string(key, f"{where} key {_show(key)}", ctx)
        out[key] = _string(item, f"{where}[{_show(key)}]", ctx)
    return out


def _platform(value: object, where: str, ctx: _Context) -> Platform:
    if not isinstance(value, dict):
        ctx.fail(where, f"must be an object, not {_show(value)}")
    for key in ("os", "architecture"):
        if key not in value:
            ctx.fail(where, f"has no {_show(key)}")
    os_name = _string(value["os"], where + ".os", ctx, empty_ok=False)
    architecture = _string(value["architecture"], where + ".architecture", ctx, empty_ok=False)
    variant = value.get("variant")
    if variant is not None:
        variant = _string(variant, where + ".variant", ctx) or None
    os_version = value.get("os.version")
    if os_version is not None:
        os_version = _string(os_version, where + ".os.version", ctx) or None
    features: Tuple[str, ...] = ()
    if value.get("os.features") is not None:
        features = _string_list(value["os.features"], where + ".os.features", ctx)
    if value.get("features") is not None:
        _string_list(value["features"], where + ".features", ctx)
    return Platform(os_name, architecture, variant, os_version, features)


def _descriptor(value: object, where: str, ctx: _Context, max_size: int, limit_text: str) -> Descriptor:
    if not isinstance(value, dict):
        ctx.fail(where, f"must be a descriptor object, not {_show(value)}")
    for key in ("mediaType", "digest", "size"):
        if key not in value:
            ctx.fail(where, f"has no {_show(key)}")
    media_type = _media_type(value["mediaType"], where + ".mediaType", ctx)
    digest = value["digest"]
    problem = _digest_problem(digest)
    if problem is not None:
        ctx.fail(where + ".digest", problem, InvalidDigestError)
    size = value["size"]
    if not _is_int(size) or size < 0:
        ctx.fail(where + ".size", f"must be a whole number of bytes, not {_show(size)}")
    if size > max_size:
        ctx.fail(where + ".size", f"is {size:,} bytes, more than {limit_text}")
    urls: Tuple[str, ...] = ()
    if value.get("urls") is not None:
        urls = _string_list(value["urls"], where + ".urls", ctx)
    platform = None
    if value.get("platform") is not None:
        platform = _platform(value["platform"], where + ".platform", ctx)
    artifact_type = None
    if value.get("artifactType") is not None:
        artifact_type = _media_type(value["artifactType"], where + ".artifactType", ctx)
    annotations = _annotations(value.get("annotations"), where + ".annotations", ctx)
    return Descriptor(media_type, digest, size, platform, urls, annotations, artifact_type)


def _one_size_per_digest(listed: Sequence[Tuple[str, Descriptor]], ctx: _Context) -> None:
    """Refuse a document that gives one digest two sizes: the bytes behind a digest have one length."""
    seen: Dict[str, Tuple[str, int]] = {}
    for where, descriptor in listed:
        first_where, first_size = seen.setdefault(descriptor.digest, (where, descriptor.size))
        if first_size != descriptor.size:
            ctx.fail(where + ".size", f"is {descriptor.size:,} bytes, but {first_where} gives the same digest {descriptor.digest} "
                     f"{first_size:,} bytes; one of them is wrong, so the document cannot be trusted (re-push the image from a "
                     "correct source)")


_BLOB_LIMIT = f"the {MAX_BLOB_SIZE // (1024 * 1024):,} MiB ECR allows for a layer"
_MANIFEST_LIMIT = f"the {MAX_MANIFEST_SIZE // (1024 * 1024)} MiB ECR allows for a manifest"


def _common(document: Dict[str, Any], ctx: _Context) -> Tuple[Dict[str, str], Optional[Descriptor], Optional[str]]:
    annotations = _annotations(document.get("annotations"), "annotations", ctx)
    subject = None
    if document.get("subject") is not None:
        subject = _descriptor(document["subject"], "subject", ctx, MAX_MANIFEST_SIZE, _MANIFEST_LIMIT)
    artifact_type = None
    if document.get("artifactType") is not None:
        artifact_type = _media_type(document["artifactType"], "artifactType", ctx)
    return annotations, subject, artifact_type


def _parse_image_manifest(document: Dict[str, Any], raw: bytes, media_type: str, ctx: _Context) -> ImageManifest:
    if "manifests" in document:
        ctx.refuse("is ambiguous: it has both the config and layers of an image manifest and the manifests list of an index "
                   "(clients disagree on what such a document is, CVE-2021-41190)")
    if "config" not in document:
        ctx.fail("the", "config descriptor is missing")
    config = _descriptor(document["config"], "config", ctx, MAX_BLOB_SIZE, _BLOB_LIMIT)
    if "layers" not in document:
        ctx.fail("the", "layers list is missing")
    layers = document["layers"]
    if not isinstance(layers, list):
        ctx.fail("layers", f"must be a list of descriptors, not {_show(layers)}")
    if len(layers) > MAX_LAYERS:
        ctx.refuse(f"has {len(layers):,} layers, more than the {MAX_LAYERS:,} this collection accepts "
                   "(images that Docker or containerd can run have far fewer)")
    parsed = tuple(_descriptor(layer, f"layers[{position}]", ctx, MAX_BLOB_SIZE, _BLOB_LIMIT) for position, layer in enumerate(layers))
    _one_size_per_digest([("config", config)] + [(f"layers[{position}]", layer) for position, layer in enumerate(parsed)], ctx)
    annotations, subject, artifact_type = _common(document, ctx)
    return ImageManifest(media_type, raw, ctx.digest, config, parsed, annotations, subject, artifact_type)


def _parse_index(document: Dict[str, Any], raw: bytes, media_type: str, ctx: _Context) -> ImageIndex:
    ctx.label = "image index"
    for key in ("config", "layers"):
        if key in document:
            ctx.refuse(f"is ambiguous: it is an index but also has {_show(key)} like an image manifest "
                       "(clients disagree on what such a document is, CVE-2021-41190)")
    if "manifests" not in document:
        ctx.fail("the", "manifests list is missing")
    entries = document["manifests"]
    if not isinstance(entries, list):
        ctx.fail("manifests", f"must be a list of descriptors, not {_show(entries)}")
    if len(entries) > MAX_INDEX_ENTRIES:
        ctx.refuse(f"has {len(entries):,} entries, more than the {MAX_INDEX_ENTRIES:,} this collection accepts "
                   "(a multi-platform image has a few dozen at most)")
    parsed = []
    for position, entry in enumerate(entries):
        where = f"manifests[{position}]"
        descriptor = _descriptor(entry, where, ctx, MAX_MANIFEST_SIZE, _MANIFEST_LIMIT)
        if descriptor.media_type in BLOB_TYPES:
            ctx.fail(where + ".mediaType", f"is {_show(descriptor.media_type)}, the type of a layer or config blob, "
                     "not of a manifest or index")
        parsed.append(descriptor)
    _one_size_per_digest([(f"manifests[{position}]", descriptor) for position, descriptor in enumerate(parsed)], ctx)
    annotations, subject, artifact_type = _common(document, ctx)
    return ImageIndex(media_type, raw, ctx.digest, tuple(parsed), annotations, subject, artifact_type)


def _schema1_message(digest: str, media_type: str | None) -> str:
    kind = f" ({media_type})" if media_type else ""
    return (f"The manifest {digest} is a Docker image manifest schema 1{kind}, which this collection does not support: "
            "ECR keeps schema 1 images only for old clients, and Docker and containerd have deprecated them; "
            "re-push the image with a current Docker, containerd, buildah or skopeo, which writes a schema 2 or OCI manifest.")


def parse_manifest(raw: bytes, media_type: str | None = None, expected_digest: str | None = None) -> ManifestDocument:
    """Parse the exact bytes of an image manifest or index.

    ``media_type`` is what the source says the document is (ECR's ``imageManifestMediaType``; empty
    means unknown). ``expected_digest`` is the digest the bytes were fetched by (a ``@sha256:`` in the
    reference, or the digest ECR reports): a difference raises :class:`DigestMismatchError` naming both.
    Everything else that is wrong raises :class:`ManifestError` or a subclass; see the module
    documentation for the rules.
    """
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ManifestError("The manifest is not valid: its text contains an unpaired UTF-16 surrogate, which is not text.") from exc
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise ManifestError(f"The manifest is not valid: bytes are needed, not {_show(raw)}.")
    raw = bytes(raw)
    if not raw:
        raise ManifestError("The manifest is empty (0 bytes).")
    if len(raw) > MAX_MANIFEST_SIZE:
        raise ManifestError(f"The manifest is {len(raw):,} bytes, more than {_MANIFEST_LIMIT} "
                            f"({MAX_MANIFEST_SIZE:,} bytes), so it was refused unread.")
    digest = sha256_digest(raw)
    if expected_digest is not None:
        expected_digest = check_digest_format(expected_digest, "expected manifest digest")
        if digest != expected_digest:
            raise DigestMismatchError(f"The manifest fetched as {expected_digest} has the digest {digest}: its bytes are not "
                                      "the manifest that was asked for, so it was not used.", expected_digest, digest)
    ctx = _Context(digest)
    if media_type == "":
        media_type = None
    if media_type is not None:
        if not isinstance(media_type, str) or not _MEDIA_TYPE_RE.fullmatch(media_type):
            ctx.refuse(f"was reported with the media type {_show(media_type)}, which is not a media type")
    document = _load_json(raw, ctx)
    if not isinstance(document, dict):
        ctx.refuse(f"is not valid: it must be a JSON object, not {_show(document)}")
    declared = None
    if "mediaType" in document:
        declared = _media_type(document["mediaType"], "mediaType", ctx)
    if media_type is not None and declared is not None and media_type != declared:
        ctx.refuse(f"was reported as {media_type} but says it is {declared} (its mediaType field); "
                   "a manifest whose type is in doubt is not used")
    kind = media_type or declared
    schema_version = document.get("schemaVersion")
    if kind in SCHEMA1_TYPES or (kind is None and _is_int(schema_version) and schema_version == 1):
        raise Schema1ManifestError(_schema1_message(digest, kind), kind)
    if kind is None:
        has_config, has_manifests = "config" in document, "manifests" in document
        if has_config and has_manifests:
            ctx.refuse("is ambiguous: it has no mediaType and has both a config (like an image manifest) and a manifests list "
                       "(like an index); clients disagree on what such a document is (CVE-2021-41190)")
        if has_config:
            kind = MEDIA_TYPE_OCI_MANIFEST
        elif has_manifests:
            kind = MEDIA_TYPE_OCI_INDEX
        else:
            ctx.refuse("is not an image manifest or index: it has no mediaType, no config and no manifests list")
    if kind not in MANIFEST_TYPES and kind not in INDEX_TYPES:
        raise UnsupportedManifestError(
            f"The manifest {digest} has the media type {_show(kind)}, which is not an image manifest or index this collection "
            f"can use (it reads {', '.join(ACCEPTED_MANIFEST_TYPES)}).", kind)
    if "schemaVersion" not in document:
        ctx.fail("the", "schemaVersion field is missing (it must be 2)")
    if not _is_int(schema_version) or schema_version != 2:
        ctx.fail("schemaVersion", f"must be 2 for {kind}, not {_show(schema_version)}")
    if kind in MANIFEST_TYPES:
        return _parse_image_manifest(document, raw, kind, ctx)
    return _parse_index(document, raw, kind, ctx)


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


def parse_referenced(descriptor: Descriptor, raw: bytes, media_type: str | None = None) -> ManifestDocument:
    """Parse the bytes fetched for ``descriptor`` (an index entry) and check them against it.

    ``media_type`` is what the source reported (ECR's ``imageManifestMediaType``), if anything.
    """
    return check_document(descriptor, parse_manifest(raw, media_type, descriptor.digest))


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


def layer_compression(media_type: str) -> str | None:
    """``"gzip"``, ``"zstd"`` or ``"uncompressed"`` for a known layer type; None for any other type."""
    return _COMPRESSION.get(media_type)


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


# --- platforms ---------------------------------------------------------------------------------------

_ARCH_ALIASES: Dict[str, Tuple[str, Optional[str]]] = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "x64": ("amd64", None),
    "amd64": ("amd64", None),
    "i386": ("386", None),
    "i486": ("386", None),
    "i586": ("386", None),
    "i686": ("386", None),
    "x86": ("386", None),
    "386": ("386", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "armv8l": ("arm", "v7"),
    "armv7l": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv6": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "armv5tejl": ("arm", "v5"),
    "armv5l": ("arm", "v5"),
    "armv5": ("arm", "v5"),
    "ppc64el": ("ppc64le", None),
    "mips64el": ("mips64le", None),
    "loongarch64": ("loong64", None),
}
_OS_ALIASES = {"macos": "darwin", "osx": "darwin"}
_NUMBERED_VARIANT_RE = re.compile(r"v?([0-9]+)(?:\.0)?")


def _variant_number(variant: str) -> str:
    """``8``, ``v8``, ``v8.0`` -> ``v8``; anything else unchanged."""
    match = _NUMBERED_VARIANT_RE.fullmatch(variant)
    return "v" + match.group(1) if match else variant


def normalize_platform(platform: Platform) -> Platform:
    """``platform`` in containerd's normal form, with the default variant written out.

    OS and architecture are lowercased; ``macos`` is ``darwin``; ``x86_64``/``x86-64`` are ``amd64``
    (``amd64/v1`` is plain ``amd64``); ``i386``..``i686``/``x86`` are ``386``; ``aarch64`` is ``arm64``
    and its variant ``8``/``v8.0``/none is ``v8``; ``armhf`` is ``arm/v7``, ``armel`` ``arm/v6``,
    ``armv7l``/``armv6l``/``armv5tel`` (as ``uname -m`` says) ``arm/v7``/``arm/v6``/``arm/v5``;
    ``arm`` with no variant is ``arm/v7`` and ``arm/7`` is ``arm/v7``; Debian's ``ppc64el`` and
    ``mips64el`` are ``ppc64le`` and ``mips64le``; ``loongarch64`` is ``loong64``.
    """
    os_name = platform.os.lower()
    os_name = _OS_ALIASES.get(os_name, os_name)
    architecture = platform.architecture.lower()
    variant = platform.variant.lower() if platform.variant else None
    alias = _ARCH_ALIASES.get(architecture)
    if alias is not None:
        architecture = alias[0]
        if alias[1] is not None:
            variant = alias[1]
    if architecture == "amd64":
        if variant == "v1":
            variant = None
    elif architecture == "arm64":
        variant = _variant_number(variant) if variant else "v8"
    elif architecture == "arm":
        variant = _variant_number(variant) if variant else "v7"
    return dataclasses.replace(platform, os=os_name, architecture=architecture, variant=variant)


_PLATFORM_HINT = "write it as OS/ARCH or OS/ARCH/VARIANT, for example linux/amd64 or linux/arm64/v8"


def parse_platform(text: str) -> Platform:
    """Parse ``os/arch[/variant]`` (e.g. ``linux/arm64/v8``) into a normalised :class:`Platform`.

    Raises :class:`InvalidPlatformError` with a message that quotes ``text``.
    """
    if not isinstance(text, str):
        raise InvalidPlatformError(f"The platform must be a string such as linux/amd64, not {_show(text)}.")
    parts = text.strip().split("/")
    if len(parts) < 2 or len(parts) > 3:
        raise InvalidPlatformError(f"The platform {_show(text)} is not valid: {_PLATFORM_HINT}.")
    names = ("operating system", "architecture", "variant")
    for name, part in zip(names, parts):
        if not _PLATFORM_PART_RE.fullmatch(part):
            what = "is empty" if not part else f"{_show(part)} is not valid (letters, digits, '.', '_' and '-', up to 64 characters)"
            raise InvalidPlatformError(f"The platform {_show(text)} is not valid: its {name} {what}; {_PLATFORM_HINT}.")
    return normalize_platform(Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None))


def host_platform() -> Platform:
    """The managed host's platform, from ``platform.system()`` and ``platform.machine()``.

    Linux x86_64 is ``linux/amd64``, aarch64 ``linux/arm64/v8``, armv7l ``linux/arm/v7``, armv6l
    ``linux/arm/v6``, i686 ``linux/386``; other machines (``ppc64le``, ``s390x``, ``riscv64``...) keep
    their name. The CPU feature level (``amd64/v3``) is not detected: an index that has only such
    entries needs an explicit ``platform``.
    """
    system = pyplatform.system() or ""
    machine = pyplatform.machine() or ""
    for name, value in (("operating system", system), ("architecture", machine)):
        if not _PLATFORM_PART_RE.fullmatch(value):
            raise InvalidPlatformError(
                f"Cannot tell the managed host's {name} (Python reports {_show(value)}); set the platform option, "
                "for example linux/amd64.")
    return normalize_platform(Platform(system, machine))


def is_attestation(descriptor: Descriptor) -> bool:
    """An index entry that is not an image for a platform: BuildKit attestations (SBOM, provenance).

    They carry the annotation ``vnd.docker.reference.type: attestation-manifest`` and the platform
    ``unknown/unknown``.
    """
    if descriptor.annotations.get(ATTESTATION_ANNOTATION) == ATTESTATION_VALUE:
        return True
    platform = descriptor.platform
    return platform is not None and platform.os == "unknown" and platform.architecture == "unknown"


_NO_PLATFORM = "(no platform)"


def _platform_names(entries: List[Descriptor]) -> List[str]:
    names = set()
    for entry in entries:
        if is_attestation(entry) or (entry.media_type not in MANIFEST_TYPES | INDEX_TYPES | SCHEMA1_TYPES):
            continue
        if entry.platform is not None:
            names.add(str(entry.platform))
        elif entry.media_type in INDEX_TYPES:
            names.add("(nested index)")
        else:
            names.add(_NO_PLATFORM)
    return sorted(names)


def _list_platforms(names: List[str]) -> str:
    """``names`` for a message: odd ones (control characters, very long) quoted and cut short, and no
    more of them than fit in :data:`MAX_PLATFORMS_TEXT` characters."""
    shown: List[str] = []
    used = 0
    for name in names:
        plain = name in (_NO_PLATFORM, "(nested index)") or all(_PLATFORM_PART_RE.fullmatch(part) for part in name.split("/"))
        text = name if plain else _show(name)
        if shown and used + len(text) > MAX_PLATFORMS_TEXT:
            break
        shown.append(text)
        used += len(text) + 2
    more = f" and {len(names) - len(shown):,} more" if len(names) > len(shown) else ""
    return ", ".join(shown) + more


def describe_platforms(index: ImageIndex) -> List[str]:
    """The platforms an index offers, sorted, as ``os/arch[/variant]`` (as the index writes them).

    Attestations and entries of unknown media types are left out; an entry without a platform shows as
    ``(no platform)``, a nested index without one as ``(nested index)``.
    """
    return _platform_names(list(index.manifests))


def _rank(entry: Platform, wanted: Platform, given: Platform) -> int | None:
    """0: the index writes exactly the wanted platform; 1: equal after normalisation; None: no match."""
    if wanted.os_version is not None and entry.os_version != wanted.os_version:
        return None
    literal = (entry.os, entry.architecture, entry.variant)
    if literal in ((wanted.os, wanted.architecture, wanted.variant), (given.os, given.architecture, given.variant)):
        return 0
    return 1 if entry.matches(wanted) else None


def _fetch_nested(entry: Descriptor, fetch: Callable[[Descriptor], ManifestDocument], path: Tuple[str, ...],
                  max_depth: int, parent: ImageIndex) -> ImageIndex:
    if entry.digest in path:
        raise ManifestError(f"The image index {parent.digest} lists {entry.digest}, which is one of the indexes above it: "
                            "the indexes form a cycle.")
    if len(path) >= max_depth:
        raise ManifestError(f"The image index {parent.digest} lists the index {entry.digest}, nesting indexes more than "
                            f"{max_depth} deep, which this collection refuses.")
    document = check_document(entry, fetch(entry))
    if not isinstance(document, ImageIndex):
        raise ManifestError(f"The manifest {entry.digest} was listed as an index but is an image manifest.")
    return document


def select_manifest(index: ImageIndex, wanted: Platform, fetch: Callable[[Descriptor], ManifestDocument] | None = None,
                    max_depth: int = MAX_INDEX_DEPTH) -> Descriptor:
    """The entry of ``index`` to pull for ``wanted``.

    - Attestation entries (:func:`is_attestation`) and entries of media types that are not manifests or
      indexes are skipped.
    - Platforms match when equal after normalisation (``arm64`` without a variant is ``arm64/v8``); an
      entry that writes exactly the wanted platform is preferred; among equals, the first in the index.
      When ``wanted.os_version`` is set, it must also be equal.
    - An entry without a platform is taken only when no entry matched and it is the only image in the
      index (an index wrapping one image); with several such entries the choice would be a guess.
    - Nested indexes are searched only when ``fetch`` is given (it gets the nested index's descriptor
      and returns the parsed document), at most ``max_depth`` indexes deep, the top one included.

    No match raises :class:`PlatformNotFoundError`, listing the platforms the index has.
    """
    given = wanted
    wanted = normalize_platform(wanted)
    ranked: List[Tuple[int, int, Descriptor]] = []
    unplaced: List[Descriptor] = []
    seen_entries: List[Descriptor] = []
    scanned = set()

    def scan(current: ImageIndex, path: Tuple[str, ...]) -> None:
        for entry in current.manifests:
            if is_attestation(entry):
                continue
            seen_entries.append(entry)
            if entry.media_type in INDEX_TYPES:
                if fetch is not None and entry.digest not in scanned and (
                        entry.platform is None or _rank(entry.platform, wanted, given) is not None):
                    if len(scanned) >= MAX_WALK_DOCUMENTS:
                        raise ManifestError(f"The image index {index.digest} leads to more than {MAX_WALK_DOCUMENTS:,} "
                                            "nested indexes, which this collection refuses.")
                    nested = _fetch_nested(entry, fetch, path, max_depth, current)
                    scanned.add(entry.digest)
                    scan(nested, path + (nested.digest,))
                continue
            if entry.media_type not in MANIFEST_TYPES and entry.media_type not in SCHEMA1_TYPES:
                continue
            if entry.platform is None:
                unplaced.append(entry)
                continue
            rank = _rank(entry.platform, wanted, given)
            if rank is not None:
                ranked.append((rank, len(ranked), entry))

    scan(index, (index.digest,))
    if ranked:
        return min(ranked, key=lambda item: (item[0], item[1]))[2]
    if len(unplaced) == 1 and all(entry.platform is None for entry in seen_entries if entry.media_type not in INDEX_TYPES):
        return unplaced[0]
    available = _platform_names(seen_entries)
    has = f"it has {_list_platforms(available)}" if available else "it lists no platform images at all"
    raise PlatformNotFoundError(
        f"The image index {index.digest} has no manifest for the platform {wanted}; {has}. Set platform to one of "
        "those, or all_platforms: true to keep every platform.", str(wanted), available, index.digest)


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
                raise Schema1ManifestError(_schema1_message(entry.digest, entry.media_type), entry.media_type)
            if entry.media_type not in MANIFEST_TYPES and entry.media_type not in INDEX_TYPES:
                raise UnsupportedManifestError(
                    f"The image index {current.digest} lists {entry.digest} of the media type {_show(entry.media_type)}, "
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
