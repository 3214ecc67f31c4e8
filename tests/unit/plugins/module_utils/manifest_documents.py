# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Builders of manifests and indexes for the tests of manifest, platform and platform_select."""

from __future__ import annotations

import hashlib
import json

from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils import manifest as m
from ansible_collections.ecrkit.images.plugins.module_utils.manifest import Descriptor, ImageIndex
from ansible_collections.ecrkit.images.plugins.module_utils.manifest_parser import parse_manifest, parse_referenced

OCI_MANIFEST = m.MEDIA_TYPE_OCI_MANIFEST
OCI_INDEX = m.MEDIA_TYPE_OCI_INDEX
DOCKER_MANIFEST = m.MEDIA_TYPE_DOCKER_MANIFEST
DOCKER_LIST = m.MEDIA_TYPE_DOCKER_MANIFEST_LIST
SCHEMA1 = m.MEDIA_TYPE_DOCKER_SCHEMA1
SCHEMA1_SIGNED = m.MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED


def digest_of(seed: object) -> str:
    return "sha256:" + hashlib.sha256(str(seed).encode()).hexdigest()


def desc(media_type: str = m.MEDIA_TYPE_OCI_LAYER_GZIP, seed: object = 0, size: int = 10, **extra: object) -> dict:
    out = {"mediaType": media_type, "digest": digest_of(seed), "size": size}
    out.update(extra)
    return out


def manifest_doc(media_type: str | None = OCI_MANIFEST, layers: list | None = None, config: dict | None = None, **extra: object) -> dict:
    out: dict = {"schemaVersion": 2}
    if media_type is not None:
        out["mediaType"] = media_type
    config_type = m.MEDIA_TYPE_DOCKER_CONFIG if media_type == DOCKER_MANIFEST else m.MEDIA_TYPE_OCI_CONFIG
    layer_type = m.MEDIA_TYPE_DOCKER_LAYER_GZIP if media_type == DOCKER_MANIFEST else m.MEDIA_TYPE_OCI_LAYER_GZIP
    out["config"] = config if config is not None else desc(config_type, "config", 123)
    out["layers"] = layers if layers is not None else [desc(layer_type, 1, 100), desc(layer_type, 2, 200)]
    out.update(extra)
    return out


SEEDS: dict[str, object] = {}
"""Digest of each index entry built by entry() -> its seed, to tell which entry was selected."""


def entry(plat: str | dict | None, seed: object = 0, media_type: str = OCI_MANIFEST, **extra: object) -> dict:
    out = desc(media_type, ("entry", seed, str(plat)), 500)
    SEEDS[out["digest"]] = seed
    if isinstance(plat, str):
        parts = plat.split("/")
        out["platform"] = {"os": parts[0], "architecture": parts[1]}
        if len(parts) > 2:
            out["platform"]["variant"] = parts[2]
    elif isinstance(plat, dict):
        out["platform"] = plat
    out.update(extra)
    return out


def index_doc(entries: list, media_type: str | None = OCI_INDEX, **extra: object) -> dict:
    out: dict = {"schemaVersion": 2}
    if media_type is not None:
        out["mediaType"] = media_type
    out["manifests"] = entries
    out.update(extra)
    return out


def encode(doc: object) -> bytes:
    return json.dumps(doc).encode("utf-8")


ATTESTATION = {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": digest_of("x")}


def assert_operator_message(error: BaseException, given: object = b"") -> None:
    """One sentence for the operator: an EcrkitError with a code, one line of ASCII ending in a period, no
    Python leaking through (a traceback, a repr of None) unless the input itself said it."""
    text = str(error)
    assert isinstance(error, EcrkitError) and isinstance(error.code, str) and error.code
    assert text and "\n" not in text and text.isascii() and text.endswith(".")
    assert len(text) < 1000
    shown = given if isinstance(given, bytes) else str(given).encode("utf-8", "surrogatepass")
    for leak in ("Traceback", "None", "<object", "Error:"):
        assert leak not in text or leak.encode() in shown, leak


def index_of(entries: list, media_type: str = OCI_INDEX) -> ImageIndex:
    parsed = parse_manifest(encode(index_doc(entries, media_type)))
    assert isinstance(parsed, ImageIndex)
    return parsed


class Store:
    """Parsed documents by digest, and a fetch that records what it was asked for."""

    def __init__(self) -> None:
        self.raw: dict[str, bytes] = {}
        self.fetched: list[str] = []

    def add(self, doc: dict) -> Descriptor:
        raw = encode(doc)
        parsed = parse_manifest(raw)
        self.raw[parsed.digest] = raw
        return parsed.descriptor()

    def entry(self, doc: dict, plat: str | None = None) -> dict:
        out = self.add(doc).to_json()
        if plat:
            parts = plat.split("/")
            out["platform"] = dict(zip(("os", "architecture", "variant"), parts))
        return out

    def fetch(self, descriptor: Descriptor):
        self.fetched.append(descriptor.digest)
        return parse_referenced(descriptor, self.raw[descriptor.digest])


def image_doc(seed: object) -> dict:
    return manifest_doc(layers=[desc(seed=("layer", seed))])
