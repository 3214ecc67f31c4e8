# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""oci-archive and docker-archive files read for what they hold: :class:`OciArchive` and
:class:`DockerArchive` on top of :class:`~.tararchive.TarArchive`, and :func:`read_archive_summary`, what
a pull reads of an archive already at its destination (never decompressed, layers only checked to be
there). :class:`OciArchive` offers the read side of :class:`~.layout.OciLayout`, so code that reads
images takes either.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

from ansible_collections.ecrkit.images.plugins.module_utils import manifest
from ansible_collections.ecrkit.images.plugins.module_utils.archive import (
    DOCKER_ARCHIVE, FORMATS, OCI_ARCHIVE, ArchiveError, ArchiveFormatError, image_blobs, show_name)
from ansible_collections.ecrkit.images.plugins.module_utils.digest import InvalidDigestError, digest_hex, matches as digest_matches
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.layout_format import (
    MAX_INDEX_SIZE,
    MAX_SMALL_BLOB,
    LayoutError,
    check_descriptor,
    find_in_index,
    parse_index,
    parse_oci_layout,
    ref_name,
)
from ansible_collections.ecrkit.images.plugins.module_utils.tararchive import TarArchive, failure_reason, normalise_name

MAX_CONFIG_SIZE = 32 << 20
"""The largest image config a docker-archive may name (real ones are a few KiB)."""


class OciArchive(TarArchive):
    """An oci-archive: an OCI image layout in a tar. Offers the read side of :class:`OciLayout`
    (``read_index``, ``find_tag``, ``list_tags``, ``blob_status``, ``has_blob``, ``open_blob``,
    ``read_blob``), so code that reads images takes either.
    """

    format = OCI_ARCHIVE

    def __init__(self, path: str | os.PathLike, tmpdir: str | None = None, *, decompress: bool = True,
                 follow_symlinks: bool = True) -> None:
        super().__init__(path, tmpdir, decompress=decompress, follow_symlinks=follow_symlinks)
        with self._closed_on_failure("oci-archive"):
            if not self.has_member("oci-layout") or not self.has_member("index.json"):
                raise ArchiveFormatError(f"{self.path} is not an oci-archive: it has no oci-layout or no index.json.")
            try:
                parse_oci_layout(self.read_member("oci-layout", 64 << 10), f"The oci-layout file of {self.path}")
                self._index = parse_index(self.read_member("index.json", MAX_INDEX_SIZE), f"index.json in {self.path}")
            except LayoutError as exc:
                raise ArchiveFormatError(str(exc)) from None

    @property
    def root(self) -> str:
        """The archive path, for messages (as OciLayout.root)."""
        return self.path

    def read_index(self) -> dict[str, Any]:
        """The parsed ``index.json`` (a copy)."""
        return copy.deepcopy(self._index)

    def find_tag(self, tag: str) -> dict[str, Any] | None:
        """The descriptor recorded for ``tag`` (ref.name), or None."""
        return find_in_index(self._index, tag, f"index.json in {self.path}")

    def list_tags(self) -> list[str]:
        """Every ref.name in ``index.json``, in order."""
        return [name for name in (ref_name(entry) for entry in self._index["manifests"]) if name is not None]


class DockerArchive(TarArchive):
    """A docker-archive (``docker save``): ``manifest.json`` and the files it names.

    ``manifest`` is the parsed ``manifest.json``: a list of ``{"Config": str, "RepoTags": [str],
    "Layers": [str]}`` (RepoTags ``null`` becomes ``[]``), every named file present in the archive.
    ``oci_index`` is the parsed ``index.json`` when the archive also is an OCI layout (Docker 25 and
    later, and this collection's writer), else None.
    """

    format = DOCKER_ARCHIVE

    def __init__(self, path: str | os.PathLike, tmpdir: str | None = None, *, decompress: bool = True,
                 follow_symlinks: bool = True) -> None:
        super().__init__(path, tmpdir, decompress=decompress, follow_symlinks=follow_symlinks)
        with self._closed_on_failure("docker-archive"):
            self.manifest = self._parse_manifest()
            self.oci_index: dict[str, Any] | None = None
            if self.has_member("index.json") and self.has_member("oci-layout"):
                try:
                    self.oci_index = parse_index(self.read_member("index.json", MAX_INDEX_SIZE), f"index.json in {self.path}")
                except LayoutError as exc:
                    raise ArchiveFormatError(str(exc)) from None

    def _parse_manifest(self) -> list[dict[str, Any]]:
        if not self.has_member("manifest.json"):
            raise ArchiveFormatError(f"{self.path} is not a docker-archive: it has no manifest.json.")
        doc = self._json_member("manifest.json", MAX_INDEX_SIZE)
        if not isinstance(doc, list) or not doc:
            raise ArchiveFormatError(f"manifest.json in {self.path} is not a non-empty list of images.")
        images = []
        for number, item in enumerate(doc):
            where = f"image {number} of manifest.json in {self.path}"
            if not isinstance(item, dict):
                raise ArchiveFormatError(f"{_cap(where)} is not a JSON object.")
            config, layers, repo_tags = item.get("Config"), item.get("Layers"), item.get("RepoTags") or []
            if not isinstance(config, str) or not isinstance(layers, list) or not all(isinstance(layer, str) for layer in layers):
                raise ArchiveFormatError(f"{_cap(where)} needs a Config file name and a list of Layers file names.")
            if not isinstance(repo_tags, list) or not all(isinstance(repo_tag, str) for repo_tag in repo_tags):
                raise ArchiveFormatError(f"The RepoTags of {where} must be a list of strings.")
            for name in [config] + layers:
                if not self.has_member(name):
                    raise ArchiveFormatError(f"{_cap(where)} names {show_name(name)}, which is not a file in the archive.")
            images.append(dict(item, Config=config, Layers=list(layers), RepoTags=list(repo_tags)))
        return images

    def config_digest(self, image: dict[str, Any]) -> str:
        """The digest of an image's config file (hashed here: the file name is not trusted)."""
        if self.member_size(image["Config"]) > MAX_CONFIG_SIZE:
            raise ArchiveFormatError(f"The config {show_name(image['Config'])} in {self.path} is larger than {MAX_CONFIG_SIZE} bytes.")
        return self.hash_member(image["Config"])

    def manifest_digest(self, image: dict[str, Any]) -> str | None:
        """The digest of the OCI/Docker manifest the archive keeps for ``image`` (Docker 25+ style), or None.

        It is the ``index.json`` entry whose manifest names this image's config and, in order, blobs
        that are this image's layer files.
        """
        if self.oci_index is None:
            return None
        for entry in self.oci_index["manifests"]:
            try:
                entry = check_descriptor(entry)
                if entry["mediaType"] not in manifest.MANIFEST_TYPES or entry["size"] > MAX_SMALL_BLOB:
                    continue
                name = "blobs/sha256/" + digest_hex(entry["digest"])
                data = self.read_member(name, MAX_SMALL_BLOB)
                if not digest_matches(data, entry["digest"]):
                    continue
                doc = json.loads(data.decode("utf-8"))
                members = [self._blob_member(layer) for layer in doc["layers"]]
                if self._blob_member(doc["config"]) == normalise_name(image["Config"], self.path) and \
                        members == [normalise_name(layer, self.path) for layer in image["Layers"]]:
                    return entry["digest"]
            except (ArchiveError, LayoutError, InvalidDigestError, ValueError, KeyError, TypeError):
                continue
        return None

    @staticmethod
    def _blob_member(descriptor: Any) -> str:
        return "blobs/sha256/" + digest_hex(check_descriptor(descriptor)["digest"])


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def open_oci_archive(path: str | os.PathLike, tmpdir: str | None = None, *, decompress: bool = True,
                     follow_symlinks: bool = True) -> OciArchive:
    """Open an oci-archive for reading (a context manager). See the module docstring and TarArchive for
    what is refused."""
    return OciArchive(path, tmpdir, decompress=decompress, follow_symlinks=follow_symlinks)


def open_docker_archive(path: str | os.PathLike, tmpdir: str | None = None, *, decompress: bool = True,
                        follow_symlinks: bool = True) -> DockerArchive:
    """Open a docker-archive for reading (a context manager). See the module docstring and TarArchive for
    what is refused."""
    return DockerArchive(path, tmpdir, decompress=decompress, follow_symlinks=follow_symlinks)


def read_archive_summary(path: str | os.PathLike, archive_format: str) -> dict[str, Any] | None:
    """What an existing archive at ``path`` holds, for an idempotency check; None when there is no file.

    Layers are not read, only checked to be there with the right sizes; manifests are read and their
    digests checked. The result::

        {"format": "oci-archive" | "docker-archive",
         "manifests": [{"tag": ref.name or None, "digest": ..., "mediaType": ..., "size": ...}],
         "images": [{"repo_tags": [...], "config_digest": ..., "manifest_digest": ... or None,
                     "layers": [member names]}]}

    ``manifests`` lists ``index.json`` (a docker-archive without one gives ``[]``); ``images`` lists
    ``manifest.json`` (``[]`` for an oci-archive). An archive that is unreadable, of the other format,
    or that lacks a blob its index names raises ArchiveError: the caller should then rewrite it. So does
    anything that is not a regular file (a FIFO is not waited on), a symbolic link, and a compressed
    archive, which is never decompressed for this: this collection writes none.
    """
    if archive_format not in FORMATS:
        raise ArchiveError(f"Unknown archive format {archive_format!r}; expected one of {', '.join(FORMATS)}.")
    if not os.path.lexists(path):
        return None
    opener = open_oci_archive if archive_format == OCI_ARCHIVE else open_docker_archive
    with opener(path, decompress=False, follow_symlinks=False) as archive:
        try:
            if isinstance(archive, OciArchive):
                return _oci_summary(archive)
            return _docker_summary(archive)  # type: ignore[arg-type]
        except (LayoutError, InvalidDigestError) as exc:
            raise ArchiveFormatError(f"The archive {archive.path} is not usable: {exc}") from None
        except EcrkitError:
            raise
        except Exception as exc:  # pylint: disable=broad-except  # hostile input: whatever breaks, one sentence
            raise ArchiveFormatError(f"The archive {archive.path} is not usable ({failure_reason(exc)}).") from None


def _oci_summary(archive: OciArchive) -> dict[str, Any]:
    manifests = []
    for entry in archive.read_index()["manifests"]:
        entry = check_descriptor(entry, f"an entry of index.json in {archive.path}")
        for blob in image_blobs(archive, entry, f"the archive {archive.path}"):
            if not archive.has_blob(blob["digest"], blob["size"]):
                raise ArchiveFormatError(f"The archive {archive.path} lacks blob {blob['digest']} ({blob['size']} bytes), which its index needs.")
        manifests.append(_summary_entry(entry))
    return {"format": OCI_ARCHIVE, "manifests": manifests, "images": []}


def _docker_summary(archive: DockerArchive) -> dict[str, Any]:
    manifests = []
    for entry in (archive.oci_index or {"manifests": []})["manifests"]:
        try:
            manifests.append(_summary_entry(check_descriptor(entry)))
        except (LayoutError, InvalidDigestError):
            continue
    images = [{
        "repo_tags": list(image["RepoTags"]),
        "config_digest": archive.config_digest(image),
        "manifest_digest": archive.manifest_digest(image),
        "layers": [normalise_name(layer, archive.path) for layer in image["Layers"]],
    } for image in archive.manifest]
    return {"format": DOCKER_ARCHIVE, "manifests": manifests, "images": images}


def _summary_entry(entry: dict[str, Any]) -> dict[str, Any]:
    return {"tag": ref_name(entry), "digest": entry["digest"], "mediaType": entry["mediaType"], "size": entry["size"],
            "annotations": dict(entry.get("annotations") or {})}
