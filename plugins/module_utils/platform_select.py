# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Which entry of an image index to pull for a platform, and which platforms an index offers.

:func:`select_manifest` picks the entry for a wanted :class:`~.platform.Platform` (attestations and
entries of media types this collection cannot read are never picked; nested indexes are searched when a
``fetch`` is given); :func:`describe_platforms` lists what an index has, for a message or a result.
"""

from __future__ import annotations

from typing import Callable, List, Tuple

from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.manifest import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_INDEX_DEPTH,
    MAX_WALK_DOCUMENTS,
    SCHEMA1_TYPES,
    Descriptor,
    ImageIndex,
    ManifestDocument,
    ManifestError,
    check_document,
)
from ansible_collections.ecrkit.images.plugins.module_utils.platform import PLATFORM_PART_RE, Platform, normalize_platform
from ansible_collections.ecrkit.images.plugins.module_utils.untrusted import show

ATTESTATION_ANNOTATION = "vnd.docker.reference.type"
"""BuildKit marks the attestation (SBOM, provenance) manifests of an index with this annotation."""
ATTESTATION_VALUE = "attestation-manifest"
MAX_PLATFORMS_TEXT = 600
"""Most characters of platform names a :class:`PlatformNotFoundError` message lists (its ``available``
has them all); a real index's platforms take a few hundred."""


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
        plain = name in (_NO_PLATFORM, "(nested index)") or all(PLATFORM_PART_RE.fullmatch(part) for part in name.split("/"))
        text = name if plain else show(name)
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
