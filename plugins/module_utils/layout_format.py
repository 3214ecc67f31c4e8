# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The OCI image layout as a format: its file names, its documents and its errors, without touching files.

What :class:`~.layout.OciLayout` (a directory) and the archive readers (a tar) share: ``oci-layout``
and ``index.json`` parsed and checked, descriptors validated, the entry of a tag found or replaced
(the ``org.opencontainers.image.ref.name`` annotation), and the errors every reader and writer of a
layout raises.
"""

from __future__ import annotations

import copy
import errno
import json
from typing import Any

from ansible_collections.ecrkit.images.plugins.module_utils.digest import digest_hex
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError, storage_error

OCI_LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
BLOBS_DIR = "blobs"
OCI_LAYOUT_VERSION = "1.0.0"
OCI_INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
IMAGE_NAME_ANNOTATION = "io.containerd.image.name"
"""The image's full name (``REGISTRY/REPOSITORY:TAG``), as containerd and Docker write it beside ref.name."""
RESOLVED_ANNOTATION = "ecrkit.images.resolved.digest"
"""What the reference resolved to when the entry was pulled (the index of a multi-platform image whose
platform manifest the entry points at)."""

# What a store holds under a digest: the answers of blob_status() (OciLayout and the archive readers).
BLOB_PRESENT = "present"
BLOB_MISSING = "missing"
BLOB_SIZE_MISMATCH = "size_mismatch"
BLOB_DIGEST_MISMATCH = "digest_mismatch"
BLOB_NOT_A_FILE = "not_a_file"

MAX_INDEX_SIZE = 16 << 20
"""index.json larger than this is refused (thousands of tags fit in a few hundred KiB)."""
MAX_SMALL_BLOB = 4 << 20
"""What a manifest or config read whole may weigh: ECR's manifest size limit."""


class LayoutError(EcrkitError):
    """Something about an OCI layout directory or a blob in it is wrong; the base of this file's errors."""

    code = "layout_error"


class NotALayoutError(LayoutError):
    """The path is missing, not a directory, or a directory that is not an OCI image layout."""

    code = "not_an_oci_layout"


class LayoutSymlinkError(LayoutError):
    """The layout root, or a file of the layout itself, is a symbolic link."""

    code = "layout_symlink"


class CorruptIndexError(LayoutError):
    """``index.json`` (or ``oci-layout``) cannot be parsed or does not have the OCI shape."""

    code = "corrupt_index"


class InvalidDescriptorError(LayoutError):
    """A descriptor that is not an object with a ``mediaType``, or a size that is not a count of bytes
    (a bad digest is :class:`~.digest.InvalidDigestError`)."""

    code = "invalid_descriptor"


class BlobNotFoundError(LayoutError):
    """A blob (or the partial file to commit) is not there."""

    code = "blob_not_found"


class BlobMismatchError(LayoutError):
    """Bytes whose size or digest is not the one they are stored or committed under."""

    code = "blob_mismatch"


def check_size(size: Any, what: str = "a blob") -> int:
    """Return ``size`` when it is a non-negative int (not a bool); raise InvalidDescriptorError otherwise."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidDescriptorError(f"The size of {what} must be a whole number of bytes, not {size!r}.")
    return size


def check_descriptor(value: Any, where: str = "a descriptor") -> dict[str, Any]:
    """Validate an OCI descriptor (``mediaType``, ``digest``, ``size``); return a deep copy of it."""
    if not isinstance(value, dict):
        raise InvalidDescriptorError(f"{_cap(where)} must be a JSON object, not {type(value).__name__}.")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise InvalidDescriptorError(f"{_cap(where)} has no mediaType.")
    digest_hex(value.get("digest"))
    check_size(value.get("size"), f"{value.get('digest')} in {where}")
    annotations = value.get("annotations")
    if annotations is not None and not isinstance(annotations, dict):
        raise InvalidDescriptorError(f"The annotations of {where} must be a JSON object.")
    return copy.deepcopy(value)


def ref_name(entry: Any) -> str | None:
    """The ``org.opencontainers.image.ref.name`` annotation of an index entry, or None."""
    if isinstance(entry, dict):
        annotations = entry.get("annotations")
        if isinstance(annotations, dict):
            name = annotations.get(REF_NAME_ANNOTATION)
            if isinstance(name, str):
                return name
    return None


def check_tag(tag: Any) -> str:
    """A tag to store as ref.name: a non-empty string without control characters."""
    if not isinstance(tag, str) or not tag or any(ord(char) < 0x20 or ord(char) == 0x7F for char in tag):
        raise LayoutError(f"{tag!r} cannot be used as a tag in an OCI layout: it must be a non-empty string without control characters.")
    return tag


def parse_index(data: bytes, where: str) -> dict[str, Any]:
    """Parse the bytes of an ``index.json``; entries other than the one looked up are kept as they are."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptIndexError(f"{where} is not valid JSON ({exc}); restore it or remove the layout.") from None
    if not isinstance(doc, dict):
        raise CorruptIndexError(f"{where} is not a JSON object, so it is not an OCI image index.")
    if doc.get("schemaVersion") != 2:
        raise CorruptIndexError(f"{where} has schemaVersion {doc.get('schemaVersion')!r}; an OCI image index has 2.")
    manifests = doc.get("manifests", [])
    if not isinstance(manifests, list) or not all(isinstance(entry, dict) for entry in manifests):
        raise CorruptIndexError(f"The manifests of {where} must be a list of JSON objects.")
    doc["manifests"] = manifests
    return doc


def parse_oci_layout(data: bytes, where: str) -> dict[str, Any]:
    """Parse an ``oci-layout`` file: ``{"imageLayoutVersion": "1.x.y"}``."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        doc = None
    version = doc.get("imageLayoutVersion") if isinstance(doc, dict) else None
    if not isinstance(version, str) or not version.startswith("1."):
        raise NotALayoutError(f"{where} does not declare an OCI image layout version 1.x, so this is not an OCI layout this collection can use.")
    return doc


def find_in_index(index: dict[str, Any], tag: str, where: str) -> dict[str, Any] | None:
    """The first entry of ``index`` whose ref.name is ``tag`` (validated, copied), or None."""
    check_tag(tag)
    for entry in index["manifests"]:
        if ref_name(entry) == tag:
            return check_descriptor(entry, f"the entry for tag {tag} in {where}")
    return None


def translate_os_error(exc: OSError, doing: str, path: str) -> EcrkitError:
    """An OSError met while ``doing`` something to ``path``, as the error to raise for the operator."""
    if exc.errno == errno.ELOOP:
        return LayoutSymlinkError(f"{path} is a symbolic link, which is refused while {doing}.")
    return storage_error(exc, doing, path)


def with_tag(index: dict[str, Any], tag: str, entry: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The manifests of ``index`` with ``entry`` as the entry of ``tag``, and the entry it replaced (or None).

    The first entry of that tag is replaced in place and further entries of the same tag are dropped; a
    tag not there yet is appended; every other entry is kept as it was."""
    previous = None
    manifests = []
    for item in index["manifests"]:
        if ref_name(item) == tag:
            if previous is None:
                previous = item
                manifests.append(entry)
            continue
        manifests.append(item)
    if previous is None:
        manifests.append(entry)
    return manifests, copy.deepcopy(previous)


def index_bytes(doc: dict[str, Any]) -> bytes:
    """A layout document as written: compact JSON, UTF-8."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]
