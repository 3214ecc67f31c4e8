# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Reading the exact bytes of an image manifest or index into :mod:`.manifest`'s types.

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
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple

from ansible_collections.ecrkit.images.plugins.module_utils.digest import ANY_DIGEST_RE, is_digest, of_bytes
from ansible_collections.ecrkit.images.plugins.module_utils.manifest import (
    ACCEPTED_MANIFEST_TYPES,
    BLOB_TYPES,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_BLOB_SIZE,
    MAX_INDEX_ENTRIES,
    MAX_LAYERS,
    MAX_MANIFEST_SIZE,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    SCHEMA1_TYPES,
    Descriptor,
    DigestMismatchError,
    ImageIndex,
    ImageManifest,
    ManifestDigestError,
    ManifestDocument,
    ManifestError,
    Schema1ManifestError,
    UnsupportedManifestError,
    check_document,
    schema1_message,
)
from ansible_collections.ecrkit.images.plugins.module_utils.platform import Platform
from ansible_collections.ecrkit.images.plugins.module_utils.untrusted import show

MAX_JSON_CONTAINERS = 100000
"""Most ``{`` and ``[`` characters in a manifest: an index at the entry limit needs a few thousand."""

_MAX_NUMBER_DIGITS = 20

# RFC 6838 section 4.2 restricted-name, for type and subtype; no parameters.
_MEDIA_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")


# --- digests -----------------------------------------------------------------------------------------

def _digest_problem(value: object) -> str | None:
    """Why ``value`` is not a sha256 digest (a predicate for a message), or None when it is one."""
    if is_digest(value):
        return None
    if not isinstance(value, str):
        return f"must be a digest string, not {show(value)}"
    match = ANY_DIGEST_RE.fullmatch(value)
    if match and match.group("algorithm") != "sha256":
        return f"{show(value)} uses the {show(match.group('algorithm'))} algorithm; only sha256 digests are supported"
    return f"{show(value)} is not a valid digest; a digest is sha256: followed by 64 lowercase hexadecimal digits"


def check_digest_format(digest: object, what: str = "digest") -> str:
    """Return ``digest`` when it is ``sha256:`` and 64 lowercase hex digits; else raise :class:`ManifestDigestError`.

    ``what`` names the digest in the message (e.g. ``"layer digest"``); other algorithms (``sha512:``)
    are refused with a message saying that only sha256 is supported.
    """
    problem = _digest_problem(digest)
    if problem is not None:
        raise ManifestDigestError(f"The {what} {problem}.")
    return digest  # type: ignore[return-value]


# --- parsing -----------------------------------------------------------------------------------------

class _Refused(ValueError):
    """Raised from inside ``json.loads`` hooks; ``str()`` ends a sentence that starts with "it"."""


def _object_without_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"repeats the key {show(key)} in one object, so different clients could read different values")
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
        ctx.fail(where, f"must be a string, not {show(value)}")
    if not empty_ok and not value:
        ctx.fail(where, "must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        ctx.fail(where, "contains an unpaired UTF-16 surrogate escape, which is not text")
    return value


def _media_type(value: object, where: str, ctx: _Context) -> str:
    if not isinstance(value, str):
        ctx.fail(where, f"must be a media type string, not {show(value)}")
    if not _MEDIA_TYPE_RE.fullmatch(value):
        ctx.fail(where, f"{show(value)} is not a media type (type/subtype, RFC 6838)")
    return value


def _string_list(value: object, where: str, ctx: _Context) -> Tuple[str, ...]:
    if not isinstance(value, list):
        ctx.fail(where, f"must be a list of strings, not {show(value)}")
    return tuple(_string(item, f"{where}[{position}]", ctx) for position, item in enumerate(value))


def _annotations(value: object, where: str, ctx: _Context) -> Dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        ctx.fail(where, f"must be an object of strings, not {show(value)}")
    out: Dict[str, str] = {}
    for key, item in value.items():
        _string(key, f"{where} key {show(key)}", ctx)
        out[key] = _string(item, f"{where}[{show(key)}]", ctx)
    return out


def _platform(value: object, where: str, ctx: _Context) -> Platform:
    if not isinstance(value, dict):
        ctx.fail(where, f"must be an object, not {show(value)}")
    for key in ("os", "architecture"):
        if key not in value:
            ctx.fail(where, f"has no {show(key)}")
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
        ctx.fail(where, f"must be a descriptor object, not {show(value)}")
    for key in ("mediaType", "digest", "size"):
        if key not in value:
            ctx.fail(where, f"has no {show(key)}")
    media_type = _media_type(value["mediaType"], where + ".mediaType", ctx)
    digest = value["digest"]
    problem = _digest_problem(digest)
    if problem is not None:
        ctx.fail(where + ".digest", problem, ManifestDigestError)
    size = value["size"]
    if not _is_int(size) or size < 0:
        ctx.fail(where + ".size", f"must be a whole number of bytes, not {show(size)}")
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


def _bounded_list(document: Dict[str, Any], key: str, ctx: _Context, limit: int, noun: str, why: str) -> List[Any]:
    """The list of descriptors under ``key``, refused when missing, not a list, or longer than ``limit``."""
    if key not in document:
        ctx.fail("the", f"{key} list is missing")
    items = document[key]
    if not isinstance(items, list):
        ctx.fail(key, f"must be a list of descriptors, not {show(items)}")
    if len(items) > limit:
        ctx.refuse(f"has {len(items):,} {noun}, more than the {limit:,} this collection accepts ({why})")
    return items


def _parse_image_manifest(document: Dict[str, Any], raw: bytes, media_type: str, ctx: _Context) -> ImageManifest:
    if "manifests" in document:
        ctx.refuse("is ambiguous: it has both the config and layers of an image manifest and the manifests list of an index "
                   "(clients disagree on what such a document is, CVE-2021-41190)")
    if "config" not in document:
        ctx.fail("the", "config descriptor is missing")
    config = _descriptor(document["config"], "config", ctx, MAX_BLOB_SIZE, _BLOB_LIMIT)
    layers = _bounded_list(document, "layers", ctx, MAX_LAYERS, "layers", "images that Docker or containerd can run have far fewer")
    parsed = tuple(_descriptor(layer, f"layers[{position}]", ctx, MAX_BLOB_SIZE, _BLOB_LIMIT) for position, layer in enumerate(layers))
    _one_size_per_digest([("config", config)] + [(f"layers[{position}]", layer) for position, layer in enumerate(parsed)], ctx)
    annotations, subject, artifact_type = _common(document, ctx)
    return ImageManifest(media_type, raw, ctx.digest, config, parsed, annotations, subject, artifact_type)


def _parse_index(document: Dict[str, Any], raw: bytes, media_type: str, ctx: _Context) -> ImageIndex:
    ctx.label = "image index"
    for key in ("config", "layers"):
        if key in document:
            ctx.refuse(f"is ambiguous: it is an index but also has {show(key)} like an image manifest "
                       "(clients disagree on what such a document is, CVE-2021-41190)")
    entries = _bounded_list(document, "manifests", ctx, MAX_INDEX_ENTRIES, "entries", "a multi-platform image has a few dozen at most")
    parsed = []
    for position, entry in enumerate(entries):
        where = f"manifests[{position}]"
        descriptor = _descriptor(entry, where, ctx, MAX_MANIFEST_SIZE, _MANIFEST_LIMIT)
        if descriptor.media_type in BLOB_TYPES:
            ctx.fail(where + ".mediaType", f"is {show(descriptor.media_type)}, the type of a layer or config blob, "
                     "not of a manifest or index")
        parsed.append(descriptor)
    _one_size_per_digest([(f"manifests[{position}]", descriptor) for position, descriptor in enumerate(parsed)], ctx)
    annotations, subject, artifact_type = _common(document, ctx)
    return ImageIndex(media_type, raw, ctx.digest, tuple(parsed), annotations, subject, artifact_type)


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
        raise ManifestError(f"The manifest is not valid: bytes are needed, not {show(raw)}.")
    raw = bytes(raw)
    if not raw:
        raise ManifestError("The manifest is empty (0 bytes).")
    if len(raw) > MAX_MANIFEST_SIZE:
        raise ManifestError(f"The manifest is {len(raw):,} bytes, more than {_MANIFEST_LIMIT} "
                            f"({MAX_MANIFEST_SIZE:,} bytes), so it was refused unread.")
    digest = of_bytes(raw)
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
            ctx.refuse(f"was reported with the media type {show(media_type)}, which is not a media type")
    document = _load_json(raw, ctx)
    if not isinstance(document, dict):
        ctx.refuse(f"is not valid: it must be a JSON object, not {show(document)}")
    declared = None
    if "mediaType" in document:
        declared = _media_type(document["mediaType"], "mediaType", ctx)
    if media_type is not None and declared is not None and media_type != declared:
        ctx.refuse(f"was reported as {media_type} but says it is {declared} (its mediaType field); "
                   "a manifest whose type is in doubt is not used")
    kind = media_type or declared
    schema_version = document.get("schemaVersion")
    if kind in SCHEMA1_TYPES or (kind is None and _is_int(schema_version) and schema_version == 1):
        raise Schema1ManifestError(schema1_message(digest, kind), kind)
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
            f"The manifest {digest} has the media type {show(kind)}, which is not an image manifest or index this collection "
            f"can use (it reads {', '.join(ACCEPTED_MANIFEST_TYPES)}).", kind)
    if "schemaVersion" not in document:
        ctx.fail("the", "schemaVersion field is missing (it must be 2)")
    if not _is_int(schema_version) or schema_version != 2:
        ctx.fail("schemaVersion", f"must be 2 for {kind}, not {show(schema_version)}")
    if kind in MANIFEST_TYPES:
        return _parse_image_manifest(document, raw, kind, ctx)
    return _parse_index(document, raw, kind, ctx)


def parse_referenced(descriptor: Descriptor, raw: bytes, media_type: str | None = None) -> ManifestDocument:
    """Parse the bytes fetched for ``descriptor`` (an index entry) and check them against it.

    ``media_type`` is what the source reported (ECR's ``imageManifestMediaType``), if anything.
    """
    return check_document(descriptor, parse_manifest(raw, media_type, descriptor.digest))
