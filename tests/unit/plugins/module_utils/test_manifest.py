# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import hashlib
import json
import platform

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils import manifest as m
from ansible_collections.ecrkit.images.plugins.module_utils.manifest import (
    ACCEPTED_MANIFEST_TYPES,
    MAX_BLOB_SIZE,
    MAX_INDEX_ENTRIES,
    MAX_LAYERS,
    MAX_MANIFEST_SIZE,
    Descriptor,
    DigestMismatchError,
    ForeignLayerError,
    ImageIndex,
    ImageManifest,
    InvalidDigestError,
    InvalidPlatformError,
    ManifestError,
    Platform,
    PlatformNotFoundError,
    Schema1ManifestError,
    UnsupportedManifestError,
    WalkStep,
    check_digest_format,
    check_document,
    describe_platforms,
    host_platform,
    is_attestation,
    layer_compression,
    normalize_platform,
    parse_manifest,
    parse_platform,
    parse_referenced,
    referenced_blobs,
    refuse_foreign_layers,
    select_manifest,
    sha256_digest,
    walk,
)

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


# --- media types and basic parsing ---------------------------------------------------------------------

def test_accepted_manifest_types_are_the_four_batchgetimage_types():
    assert ACCEPTED_MANIFEST_TYPES == (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
    assert set(ACCEPTED_MANIFEST_TYPES) == m.MANIFEST_TYPES | m.INDEX_TYPES
    assert not set(ACCEPTED_MANIFEST_TYPES) & m.SCHEMA1_TYPES


MEDIA_TYPE_CONSTANTS = {
    "MEDIA_TYPE_OCI_MANIFEST": "application/vnd.oci.image.manifest.v1+json",
    "MEDIA_TYPE_OCI_INDEX": "application/vnd.oci.image.index.v1+json",
    "MEDIA_TYPE_DOCKER_MANIFEST": "application/vnd.docker.distribution.manifest.v2+json",
    "MEDIA_TYPE_DOCKER_MANIFEST_LIST": "application/vnd.docker.distribution.manifest.list.v2+json",
    "MEDIA_TYPE_DOCKER_SCHEMA1": "application/vnd.docker.distribution.manifest.v1+json",
    "MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED": "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "MEDIA_TYPE_OCI_CONFIG": "application/vnd.oci.image.config.v1+json",
    "MEDIA_TYPE_DOCKER_CONFIG": "application/vnd.docker.container.image.v1+json",
    "MEDIA_TYPE_OCI_EMPTY": "application/vnd.oci.empty.v1+json",
    "MEDIA_TYPE_OCI_LAYER": "application/vnd.oci.image.layer.v1.tar",
    "MEDIA_TYPE_OCI_LAYER_GZIP": "application/vnd.oci.image.layer.v1.tar+gzip",
    "MEDIA_TYPE_OCI_LAYER_ZSTD": "application/vnd.oci.image.layer.v1.tar+zstd",
    "MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE": "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_GZIP": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_ZSTD": "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "MEDIA_TYPE_DOCKER_LAYER": "application/vnd.docker.image.rootfs.diff.tar",
    "MEDIA_TYPE_DOCKER_LAYER_GZIP": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "MEDIA_TYPE_DOCKER_LAYER_ZSTD": "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "MEDIA_TYPE_DOCKER_FOREIGN_LAYER": "application/vnd.docker.image.rootfs.foreign.diff.tar",
    "MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
}


@pytest.mark.parametrize("name, value", sorted(MEDIA_TYPE_CONSTANTS.items()))
def test_media_type_constants(name, value):
    assert getattr(m, name) == value


@pytest.mark.parametrize("media_type, compression, foreign", [
    (m.MEDIA_TYPE_OCI_LAYER, "uncompressed", False),
    (m.MEDIA_TYPE_OCI_LAYER_GZIP, "gzip", False),
    (m.MEDIA_TYPE_OCI_LAYER_ZSTD, "zstd", False),
    (m.MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE, "uncompressed", True),
    (m.MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_GZIP, "gzip", True),
    (m.MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_ZSTD, "zstd", True),
    (m.MEDIA_TYPE_DOCKER_LAYER, "uncompressed", False),
    (m.MEDIA_TYPE_DOCKER_LAYER_GZIP, "gzip", False),
    (m.MEDIA_TYPE_DOCKER_LAYER_ZSTD, "zstd", False),
    (m.MEDIA_TYPE_DOCKER_FOREIGN_LAYER, "uncompressed", True),
    (m.MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP, "gzip", True),
    ("application/vnd.cncf.helm.chart.content.v1.tar+gzip", None, False),
    (m.MEDIA_TYPE_OCI_CONFIG, None, False),
])
def test_every_layer_type_parses(media_type, compression, foreign):
    for family in (OCI_MANIFEST, DOCKER_MANIFEST):
        parsed = parse_manifest(encode(manifest_doc(family, layers=[desc(media_type, 7, 77)])))
        layer = parsed.layers[0]
        assert layer.media_type == media_type
        assert layer_compression(media_type) == compression
        assert layer.is_foreign is foreign
        assert (layer in parsed.unknown_layers) is (compression is None)
        assert (layer in parsed.foreign_layers) is foreign


@pytest.mark.parametrize("doc, media_type, expected_class, expected_type", [
    (manifest_doc(OCI_MANIFEST), None, ImageManifest, OCI_MANIFEST),
    (manifest_doc(OCI_MANIFEST), OCI_MANIFEST, ImageManifest, OCI_MANIFEST),
    (manifest_doc(None), None, ImageManifest, OCI_MANIFEST),
    (manifest_doc(None), OCI_MANIFEST, ImageManifest, OCI_MANIFEST),
    (manifest_doc(None), "", ImageManifest, OCI_MANIFEST),
    (manifest_doc(DOCKER_MANIFEST), None, ImageManifest, DOCKER_MANIFEST),
    (manifest_doc(DOCKER_MANIFEST), DOCKER_MANIFEST, ImageManifest, DOCKER_MANIFEST),
    (manifest_doc(None), DOCKER_MANIFEST, ImageManifest, DOCKER_MANIFEST),
    (index_doc([entry("linux/amd64")]), None, ImageIndex, OCI_INDEX),
    (index_doc([entry("linux/amd64")]), OCI_INDEX, ImageIndex, OCI_INDEX),
    (index_doc([entry("linux/amd64")], None), None, ImageIndex, OCI_INDEX),
    (index_doc([], None), OCI_INDEX, ImageIndex, OCI_INDEX),
    (index_doc([entry("linux/amd64", media_type=DOCKER_MANIFEST)], DOCKER_LIST), None, ImageIndex, DOCKER_LIST),
    (index_doc([entry("linux/amd64", media_type=DOCKER_MANIFEST)], None), DOCKER_LIST, ImageIndex, DOCKER_LIST),
    (index_doc([entry(None, media_type=OCI_INDEX)]), None, ImageIndex, OCI_INDEX),
])
def test_parse_each_manifest_type(doc, media_type, expected_class, expected_type):
    raw = encode(doc)
    parsed = parse_manifest(raw, media_type)
    assert isinstance(parsed, expected_class)
    assert parsed.media_type == expected_type
    assert parsed.raw == raw
    assert parsed.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert parsed.size == len(raw)
    assert parse_manifest(bytearray(raw), media_type) == parsed
    assert parse_manifest(raw.decode("utf-8"), media_type) == parsed


def test_manifest_fields():
    doc = manifest_doc(
        OCI_MANIFEST,
        annotations={"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
        artifactType="application/vnd.example.sbom+json",
        subject=desc(OCI_MANIFEST, "subject", 321),
    )
    doc["layers"][0]["annotations"] = {"a": "b"}
    doc["layers"][1]["urls"] = ["https://example.com/blob"]
    parsed = parse_manifest(encode(doc))
    assert parsed.config == Descriptor(m.MEDIA_TYPE_OCI_CONFIG, digest_of("config"), 123)
    assert [layer.digest for layer in parsed.layers] == [digest_of(1), digest_of(2)]
    assert parsed.layers[0].annotations == {"a": "b"}
    assert parsed.layers[1].urls == ("https://example.com/blob",)
    assert parsed.layers[1].is_foreign
    assert parsed.annotations == {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}
    assert parsed.artifact_type == "application/vnd.example.sbom+json"
    assert parsed.subject == Descriptor(OCI_MANIFEST, digest_of("subject"), 321)
    assert parsed.is_image
    assert parsed.total_size == 123 + 100 + 200
    assert hash(parsed) == hash(parse_manifest(encode(doc)))
    # descriptors serialise back to what was parsed
    assert [layer.to_json() for layer in parsed.layers] == doc["layers"]
    assert parsed.config.to_json() == doc["config"]


def test_index_fields_and_descriptor_round_trip():
    entries = [
        entry("linux/amd64", annotations={"k": "v"}),
        entry({"os": "windows", "architecture": "amd64", "os.version": "10.0.20348.2113", "os.features": ["win32k"]}),
        entry("linux/arm64/v8", artifactType="application/vnd.example+json"),
    ]
    parsed = parse_manifest(encode(index_doc(entries, annotations={"x": "y"})))
    assert isinstance(parsed, ImageIndex)
    assert [item.to_json() for item in parsed.manifests] == entries
    assert parsed.manifests[1].platform == Platform("windows", "amd64", None, "10.0.20348.2113", ("win32k",))
    assert parsed.annotations == {"x": "y"}
    assert parsed.descriptor().to_json() == {"mediaType": OCI_INDEX, "digest": parsed.digest, "size": len(parsed.raw)}
    assert hash(parsed.manifests[0]) == hash(Descriptor(**vars(parsed.manifests[0])))


def test_artifact_manifest_with_empty_config_is_accepted():
    doc = manifest_doc(
        OCI_MANIFEST,
        config={"mediaType": m.MEDIA_TYPE_OCI_EMPTY, "digest": sha256_digest(b"{}"), "size": 2, "data": "e30="},
        layers=[desc("application/vnd.cncf.helm.chart.content.v1.tar+gzip", 1, 5)],
        artifactType="application/vnd.cncf.helm.config.v1+json",
    )
    parsed = parse_manifest(encode(doc))
    assert not parsed.is_image
    assert [layer.media_type for layer in parsed.unknown_layers] == ["application/vnd.cncf.helm.chart.content.v1.tar+gzip"]


# --- digests -------------------------------------------------------------------------------------------

def test_sha256_digest():
    assert sha256_digest(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_digest(memoryview(b"abc")) == sha256_digest(b"abc")


@pytest.mark.parametrize("digest", ["sha256:" + "0" * 64, "sha256:" + "0123456789abcdef" * 4])
def test_check_digest_format_accepts(digest):
    assert check_digest_format(digest) == digest


@pytest.mark.parametrize("digest, fragment", [
    ("sha512:" + "a" * 128, 'uses the "sha512" algorithm; only sha256 digests are supported'),
    ("sha384:" + "a" * 96, "only sha256 digests are supported"),
    ("blake3:" + "a" * 64, "only sha256 digests are supported"),
    ("sha256:" + "A" * 64, "64 lowercase hexadecimal digits"),
    ("sha256:" + "a" * 63, "is not a valid digest"),
    ("sha256:" + "a" * 65, "is not a valid digest"),
    ("sha256:" + "g" * 64, "is not a valid digest"),
    ("sha256:" + "a" * 64 + "\n", "is not a valid digest"),
    ("SHA256:" + "a" * 64, "is not a valid digest"),
    ("a" * 64, "is not a valid digest"),
    ("", "is not a valid digest"),
    (None, "must be a digest string, not null"),
    (5, "must be a digest string, not 5"),
])
def test_check_digest_format_refuses(digest, fragment):
    with pytest.raises(InvalidDigestError) as caught:
        check_digest_format(digest, "layer digest")
    assert fragment in str(caught.value)
    assert str(caught.value).startswith("The layer digest ")
    assert_operator_message(caught.value)


def test_digest_is_over_the_exact_bytes():
    doc = manifest_doc()
    compact = json.dumps(doc, separators=(",", ":")).encode()
    pretty = json.dumps(doc, indent=3).encode()
    one, two = parse_manifest(compact), parse_manifest(pretty)
    assert one.digest == sha256_digest(compact) != two.digest == sha256_digest(pretty)
    assert one.config == two.config and one.layers == two.layers
    assert one.raw == compact and two.raw == pretty


def test_expected_digest_match_and_mismatch():
    raw = encode(manifest_doc())
    good = sha256_digest(raw)
    assert parse_manifest(raw, OCI_MANIFEST, good).digest == good
    wrong = digest_of("other")
    with pytest.raises(DigestMismatchError) as caught:
        parse_manifest(raw, OCI_MANIFEST, wrong)
    assert wrong in str(caught.value) and good in str(caught.value)
    assert caught.value.expected == wrong and caught.value.actual == good
    assert caught.value.code == "digest_mismatch"
    assert_operator_message(caught.value)
    # the check comes before parsing: wrong bytes are never interpreted
    with pytest.raises(DigestMismatchError):
        parse_manifest(b"not json", None, wrong)
    with pytest.raises(InvalidDigestError, match="only sha256"):
        parse_manifest(raw, None, "sha512:" + "a" * 128)


@pytest.mark.parametrize("doc, media_type", [
    (manifest_doc(OCI_MANIFEST), DOCKER_MANIFEST),
    (manifest_doc(DOCKER_MANIFEST), OCI_MANIFEST),
    (index_doc([], OCI_INDEX), DOCKER_LIST),
    (index_doc([], DOCKER_LIST), OCI_MANIFEST),
    (manifest_doc(OCI_MANIFEST), OCI_INDEX),
])
def test_conflicting_media_types(doc, media_type):
    with pytest.raises(ManifestError) as caught:
        parse_manifest(encode(doc), media_type)
    text = str(caught.value)
    assert f"was reported as {media_type} but says it is {doc['mediaType']}" in text
    assert_operator_message(caught.value)


# --- schema 1 ------------------------------------------------------------------------------------------

SCHEMA1_DOC = {
    "schemaVersion": 1,
    "name": "team/app",
    "tag": "1.0",
    "architecture": "amd64",
    "fsLayers": [{"blobSum": digest_of(1)}],
    "history": [{"v1Compatibility": "{\"id\":\"abc\"}"}],
}
SCHEMA1_SIGNED_DOC = dict(SCHEMA1_DOC, signatures=[{"header": {"alg": "ES256"}, "signature": "abc", "protected": "def"}])


@pytest.mark.parametrize("doc, media_type, reported", [
    (SCHEMA1_DOC, None, None),
    (SCHEMA1_SIGNED_DOC, None, None),
    (SCHEMA1_DOC, SCHEMA1, SCHEMA1),
    (SCHEMA1_SIGNED_DOC, SCHEMA1_SIGNED, SCHEMA1_SIGNED),
    (dict(SCHEMA1_DOC, mediaType=SCHEMA1), None, SCHEMA1),
    (manifest_doc(None), SCHEMA1_SIGNED, SCHEMA1_SIGNED),
])
def test_schema1_is_refused_with_a_clear_message(doc, media_type, reported):
    with pytest.raises(Schema1ManifestError) as caught:
        parse_manifest(encode(doc), media_type)
    text = str(caught.value)
    assert "Docker image manifest schema 1" in text
    assert "does not support" in text
    assert "ECR keeps schema 1 images only for old clients" in text
    assert "Docker and containerd have deprecated them" in text
    assert "re-push the image with a current" in text and "schema 2 or OCI" in text
    assert caught.value.media_type == reported
    assert isinstance(caught.value, UnsupportedManifestError)
    assert caught.value.code == "schema1_manifest"
    assert_operator_message(caught.value)


def test_schema_version_one_with_a_v2_media_type_is_a_version_error():
    with pytest.raises(ManifestError, match="schemaVersion must be 2"):
        parse_manifest(encode(dict(manifest_doc(), schemaVersion=1)))


# --- hostile and malformed input -----------------------------------------------------------------------

def _with(doc: dict, path: tuple, value: object) -> dict:
    """A deep copy of ``doc`` with the item at ``path`` set to ``value`` (deleted when value is DELETE)."""
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


DELETE = object()
GOOD = manifest_doc()
GOOD_INDEX = index_doc([entry("linux/amd64"), entry("linux/arm64/v8")])
LAYER_LIMIT_TEXT = "52,000 MiB ECR allows for a layer"

HOSTILE = [
    # name, raw bytes, media type argument, error class, message fragment
    ("empty", b"", None, ManifestError, "is empty"),
    ("over 4 MiB", b" " * (MAX_MANIFEST_SIZE + 1), None, ManifestError, "4 MiB ECR allows for a manifest"),
    ("not UTF-8", b'{"schemaVersion": 2, "x": "\xff"}', None, ManifestError, "is not UTF-8 text"),
    ("UTF-16", json.dumps(GOOD).encode("utf-16"), None, ManifestError, "is not UTF-8 text"),
    ("UTF-8 BOM", b"\xef\xbb\xbf" + encode(GOOD), None, ManifestError, "is not valid JSON"),
    ("truncated", encode(GOOD)[:-1], None, ManifestError, "is not valid JSON"),
    ("trailing data", encode(GOOD) + b"x", None, ManifestError, "is not valid JSON (Extra data"),
    ("top-level list", b"[]", None, ManifestError, "must be a JSON object, not a list"),
    ("top-level string", b'"x"', None, ManifestError, 'must be a JSON object, not "x"'),
    ("top-level null", b"null", None, ManifestError, "must be a JSON object, not null"),
    ("NaN", encode(GOOD).replace(b'"size": 100', b'"size": NaN'), None, ManifestError, "contains NaN, which JSON does not allow"),
    ("Infinity", encode(GOOD).replace(b'"size": 100', b'"size": -Infinity'), None, ManifestError, "-Infinity"),
    ("long number", encode(GOOD).replace(b'"size": 100', b'"size": 1' + b"0" * 30), None, ManifestError, "more than 20 digits"),
    ("huge exponent", encode(GOOD).replace(b'"size": 100', b'"size": 1e400'), None, ManifestError, "whole number of bytes, not inf"),
    ("duplicate key", encode(GOOD).replace(b'"schemaVersion": 2', b'"schemaVersion": 2, "schemaVersion": 2'), None,
     ManifestError, 'repeats the key "schemaVersion"'),
    ("duplicate digest key", encode(GOOD).replace(b'"size": 100', b'"size": 100, "digest": "' + digest_of(9).encode() + b'"'), None,
     ManifestError, 'repeats the key "digest"'),
    ("deep nesting", b'{"a": ' + b"[" * 50000 + b"]" * 50000 + b"}", None, ManifestError, "nests JSON objects or arrays too deeply"),
    ("too many containers", b"[" * 100001, None, ManifestError, "is not a plausible manifest"),
    ("lone surrogate", encode(dict(GOOD, annotations={"a": "\ud800"})), None, ManifestError, "unpaired UTF-16 surrogate"),
    ("lone surrogate key", encode(dict(GOOD, annotations={"\udfff": "a"})), None, ManifestError, "unpaired UTF-16 surrogate"),
    # media type
    ("mediaType not a string", encode(dict(GOOD, mediaType=5)), None, ManifestError, "mediaType must be a media type string, not 5"),
    ("mediaType null", encode(dict(GOOD, mediaType=None)), None, ManifestError, "mediaType must be a media type string, not null"),
    ("mediaType malformed", encode(dict(GOOD, mediaType="oci manifest")), None, ManifestError, '"oci manifest" is not a media type'),
    ("mediaType with parameters", encode(dict(GOOD, mediaType=OCI_MANIFEST + "; charset=utf-8")), None, ManifestError,
     "is not a media type"),
    ("unknown mediaType", encode(dict(GOOD, mediaType="application/vnd.example.manifest+json")), None,
     UnsupportedManifestError, '"application/vnd.example.manifest+json", which is not an image manifest or index'),
    ("OCI artifact manifest", encode(dict(GOOD, mediaType="application/vnd.oci.artifact.manifest.v1+json")), None,
     UnsupportedManifestError, "not an image manifest or index this collection can use"),
    ("unknown reported type", encode(manifest_doc(None)), "application/vnd.example+json", UnsupportedManifestError,
     "not an image manifest or index"),
    ("malformed reported type", encode(GOOD), "not a type", ManifestError, 'reported with the media type "not a type"'),
    ("reported type not a string", encode(GOOD), 5, ManifestError, "reported with the media type 5"),
    ("neither config nor manifests", encode({"schemaVersion": 2}), None, ManifestError, "no mediaType, no config and no manifests"),
    ("ambiguous without mediaType", encode(dict(manifest_doc(None), manifests=[])), None, ManifestError, "CVE-2021-41190"),
    ("manifest with manifests", encode(dict(GOOD, manifests=[])), None, ManifestError, "is ambiguous"),
    ("index with layers", encode(dict(GOOD_INDEX, layers=[])), None, ManifestError, 'also has "layers"'),
    ("index with config", encode(dict(GOOD_INDEX, config=desc())), None, ManifestError, 'also has "config"'),
    # schemaVersion
    ("schemaVersion missing", encode(_with(GOOD, ("schemaVersion",), DELETE)), None, ManifestError, "schemaVersion field is missing"),
    ("schemaVersion string", encode(dict(GOOD, schemaVersion="2")), None, ManifestError, 'schemaVersion must be 2 for'),
    ("schemaVersion bool", encode(dict(GOOD, schemaVersion=True)), None, ManifestError, "schemaVersion must be 2 for"),
    ("schemaVersion 3", encode(dict(GOOD, schemaVersion=3)), None, ManifestError, "not 3"),
    ("schemaVersion float", encode(dict(GOOD, schemaVersion=2.0)), None, ManifestError, "not 2.0"),
    # config and layers
    ("config missing", encode(_with(GOOD, ("config",), DELETE)), None, ManifestError, "config descriptor is missing"),
    ("config missing, Docker", encode(_with(manifest_doc(DOCKER_MANIFEST), ("config",), DELETE)), None, ManifestError,
     "config descriptor is missing"),
    ("config a list", encode(dict(GOOD, config=[])), None, ManifestError, "config must be a descriptor object, not a list"),
    ("config null", encode(dict(GOOD, config=None)), None, ManifestError, "config must be a descriptor object, not null"),
    ("layers missing", encode(_with(GOOD, ("layers",), DELETE)), None, ManifestError, "layers list is missing"),
    ("layers an object", encode(dict(GOOD, layers={})), None, ManifestError, "layers must be a list of descriptors, not an object"),
    ("layer a string", encode(dict(GOOD, layers=["sha256:" + "a" * 64])), None, ManifestError, "layers[0] must be a descriptor object"),
    ("manifests missing", encode(_with(GOOD_INDEX, ("manifests",), DELETE)), OCI_INDEX, ManifestError, "manifests list is missing"),
    ("manifests not a list", encode(dict(GOOD_INDEX, manifests={})), None, ManifestError, "manifests must be a list of descriptors"),
    # descriptor fields
    ("no mediaType", encode(_with(GOOD, ("layers", 1, "mediaType"), DELETE)), None, ManifestError, 'layers[1] has no "mediaType"'),
    ("no digest", encode(_with(GOOD, ("config", "digest"), DELETE)), None, ManifestError, 'config has no "digest"'),
    ("no size", encode(_with(GOOD, ("layers", 0, "size"), DELETE)), None, ManifestError, 'layers[0] has no "size"'),
    ("layer mediaType int", encode(_with(GOOD, ("layers", 0, "mediaType"), 1)), None, ManifestError,
     "layers[0].mediaType must be a media type string, not 1"),
    ("sha512 digest", encode(_with(GOOD, ("layers", 0, "digest"), "sha512:" + "a" * 128)), None, InvalidDigestError,
     'layers[0].digest "sha512:aaaa'),
    ("sha512 message", encode(_with(GOOD, ("layers", 0, "digest"), "sha512:" + "a" * 128)), None, InvalidDigestError,
     "only sha256 digests are supported"),
    ("uppercase digest", encode(_with(GOOD, ("config", "digest"), "sha256:" + "A" * 64)), None, InvalidDigestError,
     "64 lowercase hexadecimal digits"),
    ("short digest", encode(_with(GOOD, ("config", "digest"), "sha256:abc")), None, InvalidDigestError, "is not a valid digest"),
    ("digest with path", encode(_with(GOOD, ("config", "digest"), "sha256:../../etc/passwd")), None, InvalidDigestError,
     "is not a valid digest"),
    ("digest int", encode(_with(GOOD, ("config", "digest"), 7)), None, InvalidDigestError, "must be a digest string, not 7"),
    ("negative size", encode(_with(GOOD, ("layers", 0, "size"), -1)), None, ManifestError,
     "layers[0].size must be a whole number of bytes, not -1"),
    ("float size", encode(_with(GOOD, ("layers", 0, "size"), 1.5)), None, ManifestError, "whole number of bytes, not 1.5"),
    ("integral float size", encode(_with(GOOD, ("layers", 0, "size"), 100.0)), None, ManifestError, "whole number of bytes, not 100.0"),
    ("bool size", encode(_with(GOOD, ("layers", 0, "size"), True)), None, ManifestError, "whole number of bytes, not true"),
    ("string size", encode(_with(GOOD, ("layers", 0, "size"), "100")), None, ManifestError, 'whole number of bytes, not "100"'),
    ("null size", encode(_with(GOOD, ("layers", 0, "size"), None)), None, ManifestError, "whole number of bytes, not null"),
    ("absurd layer size", encode(_with(GOOD, ("layers", 0, "size"), MAX_BLOB_SIZE + 1)), None, ManifestError, LAYER_LIMIT_TEXT),
    ("int64 max size", encode(_with(GOOD, ("layers", 0, "size"), 2 ** 63 - 1)), None, ManifestError, LAYER_LIMIT_TEXT),
    ("absurd config size", encode(_with(GOOD, ("config", "size"), 10 ** 15)), None, ManifestError, "config.size is 1,000,000,000,000,000 bytes"),
    ("absurd index entry size", encode(_with(GOOD_INDEX, ("manifests", 0, "size"), MAX_MANIFEST_SIZE + 1)), None, ManifestError,
     "4 MiB ECR allows for a manifest"),
    ("urls not a list", encode(_with(GOOD, ("layers", 0, "urls"), "https://x")), None, ManifestError, "urls must be a list of strings"),
    ("url not a string", encode(_with(GOOD, ("layers", 0, "urls"), [1])), None, ManifestError, "layers[0].urls[0] must be a string"),
    ("annotations a list", encode(_with(GOOD, ("layers", 0, "annotations"), ["a"])), None, ManifestError,
     "annotations must be an object of strings"),
    ("annotation value int", encode(dict(GOOD, annotations={"a": 1})), None, ManifestError, 'annotations["a"] must be a string, not 1'),
    ("artifactType malformed", encode(dict(GOOD, artifactType="x")), None, ManifestError, 'artifactType "x" is not a media type'),
    ("subject bad digest", encode(dict(GOOD, subject=desc(OCI_MANIFEST, digest="md5:abc"))), None, InvalidDigestError,
     'subject.digest "md5:abc" uses the "md5" algorithm'),
    # platforms
    ("platform a string", encode(_with(GOOD_INDEX, ("manifests", 0, "platform"), "linux/amd64")), None, ManifestError,
     'manifests[0].platform must be an object, not "linux/amd64"'),
    ("platform without os", encode(_with(GOOD_INDEX, ("manifests", 0, "platform", "os"), DELETE)), None, ManifestError,
     'manifests[0].platform has no "os"'),
    ("platform empty architecture", encode(_with(GOOD_INDEX, ("manifests", 1, "platform", "architecture"), "")), None,
     ManifestError, "manifests[1].platform.architecture must not be empty"),
    ("platform variant int", encode(_with(GOOD_INDEX, ("manifests", 1, "platform", "variant"), 8)), None, ManifestError,
     "manifests[1].platform.variant must be a string, not 8"),
    ("platform os.features", encode(_with(GOOD_INDEX, ("manifests", 1, "platform", "os.features"), "win32k")), None,
     ManifestError, "os.features must be a list of strings"),
    # index entries
    ("index entry is a layer", encode(index_doc([entry("linux/amd64", media_type=m.MEDIA_TYPE_OCI_LAYER_GZIP)])), None,
     ManifestError, "the type of a layer or config blob, not of a manifest or index"),
    ("index entry is a config", encode(index_doc([entry("linux/amd64", media_type=m.MEDIA_TYPE_DOCKER_CONFIG)], DOCKER_LIST)), None,
     ManifestError, "manifests[0].mediaType is"),
]


@pytest.mark.parametrize("name, raw, media_type, error, fragment", HOSTILE, ids=[case[0] for case in HOSTILE])
def test_hostile_input_is_refused(name, raw, media_type, error, fragment):
    with pytest.raises(error) as caught:
        parse_manifest(raw, media_type)
    assert fragment in str(caught.value), name
    assert isinstance(caught.value, ManifestError)
    assert_operator_message(caught.value)


def test_messages_name_the_manifest_by_digest():
    raw = encode(_with(GOOD, ("layers", 0, "size"), -1))
    with pytest.raises(ManifestError) as caught:
        parse_manifest(raw)
    assert str(caught.value).startswith(f"The manifest {sha256_digest(raw)} is not valid: ")
    raw = encode(_with(GOOD_INDEX, ("manifests", 0, "size"), -1))
    with pytest.raises(ManifestError) as caught:
        parse_manifest(raw)
    assert str(caught.value).startswith(f"The image index {sha256_digest(raw)} is not valid: ")


def test_long_values_are_cut_short_in_messages():
    with pytest.raises(ManifestError) as caught:
        parse_manifest(encode(dict(GOOD, mediaType="x" * 100000)))
    assert len(str(caught.value)) < 300


def test_size_limits_are_inclusive():
    assert parse_manifest(encode(_with(GOOD, ("layers", 0, "size"), MAX_BLOB_SIZE))).layers[0].size == MAX_BLOB_SIZE == 54525952000
    assert parse_manifest(encode(_with(GOOD_INDEX, ("manifests", 0, "size"), MAX_MANIFEST_SIZE))).manifests[0].size == 4194304
    padded = encode(GOOD)
    padded += b" " * (MAX_MANIFEST_SIZE - len(padded))
    assert parse_manifest(padded).size == MAX_MANIFEST_SIZE


def test_layer_count_limit():
    layers = [desc(m.MEDIA_TYPE_OCI_LAYER_GZIP, position, 1) for position in range(MAX_LAYERS + 1)]
    assert len(parse_manifest(encode(manifest_doc(layers=layers[:MAX_LAYERS]))).layers) == MAX_LAYERS
    with pytest.raises(ManifestError) as caught:
        parse_manifest(encode(manifest_doc(layers=layers)))
    assert "has 1,001 layers, more than the 1,000 this collection accepts" in str(caught.value)
    assert_operator_message(caught.value)


def test_index_entry_limit():
    entries = [entry("linux/amd64", position) for position in range(MAX_INDEX_ENTRIES + 1)]
    assert len(parse_manifest(encode(index_doc(entries[:MAX_INDEX_ENTRIES]))).manifests) == MAX_INDEX_ENTRIES
    with pytest.raises(ManifestError) as caught:
        parse_manifest(encode(index_doc(entries)))
    assert "has 1,001 entries, more than the 1,000 this collection accepts" in str(caught.value)


def test_non_bytes_input():
    with pytest.raises(ManifestError, match="bytes are needed"):
        parse_manifest(None)
    with pytest.raises(ManifestError, match="surrogate"):
        parse_manifest("{\ud800}")


def test_unknown_index_entry_types_are_kept_but_never_selected():
    parsed = parse_manifest(encode(index_doc([
        entry("linux/amd64", 1, media_type="application/vnd.example.manifest.v9+json"),
        entry("linux/amd64", 2),
    ])))
    assert parsed.manifests[0].media_type == "application/vnd.example.manifest.v9+json"
    assert select_manifest(parsed, parse_platform("linux/amd64")) == parsed.manifests[1]


# --- property tests ------------------------------------------------------------------------------------

def _check_outcome(raw: bytes, media_type: object = None) -> None:
    """Either a ManifestError with an operator's message, or a document within every limit."""
    try:
        parsed = parse_manifest(raw, media_type)  # type: ignore[arg-type]
    except ManifestError as exc:
        assert_operator_message(exc, raw + str(media_type).encode("utf-8", "surrogatepass"))
        return
    assert parsed.digest == sha256_digest(raw) and parsed.raw == raw
    if isinstance(parsed, ImageManifest):
        assert len(parsed.layers) <= MAX_LAYERS
        listed = (parsed.config,) + parsed.layers
        for blob in listed:
            assert 0 <= blob.size <= MAX_BLOB_SIZE and check_digest_format(blob.digest)
    else:
        assert len(parsed.manifests) <= MAX_INDEX_ENTRIES
        listed = parsed.manifests
        for item in listed:
            assert 0 <= item.size <= MAX_MANIFEST_SIZE and check_digest_format(item.digest)
    assert len({(item.digest, item.size) for item in listed}) == len({item.digest for item in listed})  # one size a digest


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=15,
)
MEDIA_TYPES = st.sampled_from(sorted(ACCEPTED_MANIFEST_TYPES) + sorted(m.SCHEMA1_TYPES) + sorted(m.BLOB_TYPES) + ["x/y", "bad"])
PLAUSIBLE = st.one_of(
    MEDIA_TYPES,
    st.sampled_from([digest_of(1), "sha512:" + "a" * 128, "sha256:", 0, 1, 2, -1, MAX_BLOB_SIZE + 1, 2 ** 64, True, None]),
    JSON_VALUES,
)
PLATFORMS = st.dictionaries(st.sampled_from(["os", "architecture", "variant", "os.version", "os.features", "features"]),
                            st.one_of(st.sampled_from(["linux", "amd64", "arm64", "v8", "", "unknown"]), st.lists(st.text(max_size=5)), PLAUSIBLE),
                            max_size=6)
DESCRIPTORS = st.dictionaries(
    st.sampled_from(["mediaType", "digest", "size", "platform", "urls", "annotations", "artifactType", "data"]),
    st.one_of(PLAUSIBLE, PLATFORMS, st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2)),
    max_size=8,
) | JSON_VALUES
DOCUMENTS = st.fixed_dictionaries({}, optional={
    "schemaVersion": st.sampled_from([1, 2, 2, 2, 3, True, "2", None, 2.0]),
    "mediaType": MEDIA_TYPES | JSON_VALUES,
    "config": DESCRIPTORS,
    "layers": st.lists(DESCRIPTORS, max_size=4) | JSON_VALUES,
    "manifests": st.lists(DESCRIPTORS, max_size=4) | JSON_VALUES,
    "annotations": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2) | JSON_VALUES,
    "subject": DESCRIPTORS,
    "artifactType": MEDIA_TYPES | JSON_VALUES,
})
REPORTED = st.one_of(st.none(), st.just(""), MEDIA_TYPES, st.text(max_size=10))


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.binary(max_size=300), REPORTED)
def test_arbitrary_bytes_raise_only_manifest_errors(raw, media_type):
    _check_outcome(raw, media_type)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(JSON_VALUES, REPORTED)
def test_arbitrary_json_values_raise_only_manifest_errors(value, media_type):
    _check_outcome(json.dumps(value).encode("utf-8", "surrogatepass"), media_type)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(DOCUMENTS, REPORTED)
def test_manifest_shaped_documents_raise_only_manifest_errors(document, media_type):
    _check_outcome(json.dumps(document).encode("utf-8"), media_type)


MUTATION_BASES = [
    GOOD,
    manifest_doc(DOCKER_MANIFEST),
    manifest_doc(None, annotations={"a": "b"}, subject=desc(OCI_MANIFEST, "s", 5), artifactType="application/x.y"),
    GOOD_INDEX,
    index_doc([entry({"os": "windows", "architecture": "amd64", "os.version": "10.0", "os.features": ["win32k"]}),
               entry("unknown/unknown", annotations=ATTESTATION)], None),
    index_doc([entry("linux/amd64", media_type=DOCKER_MANIFEST)], DOCKER_LIST),
]


def _paths(value: object, prefix: tuple = ()) -> list:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out.extend(_paths(item, prefix + (key,)))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            out.extend(_paths(item, prefix + (position,)))
    return out


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.data())
def test_mutated_manifests_raise_only_manifest_errors(data):
    """Valid documents with one to three values replaced or deleted anywhere: reaches every check."""
    doc = data.draw(st.sampled_from(MUTATION_BASES))
    for dummy in range(data.draw(st.integers(min_value=1, max_value=3))):
        paths = _paths(doc)
        if not paths:
            break
        doc = _with(doc, data.draw(st.sampled_from(paths)), data.draw(st.one_of(st.just(DELETE), PLAUSIBLE)))
    _check_outcome(json.dumps(doc).encode("utf-8"), data.draw(st.one_of(st.none(), MEDIA_TYPES)))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from([m.MEDIA_TYPE_OCI_LAYER, m.MEDIA_TYPE_DOCKER_LAYER_GZIP, "application/x.y", m.MEDIA_TYPE_OCI_CONFIG]),
                max_size=6),
       st.lists(st.integers(min_value=0, max_value=5), max_size=6),
       st.sampled_from([OCI_MANIFEST, DOCKER_MANIFEST, None]))
def test_valid_manifests_round_trip(layer_types, seeds, media_type):
    layers = [desc(layer_type, seed, seed * 10) for layer_type, seed in zip(layer_types, seeds)]
    doc = manifest_doc(media_type, layers=layers)
    parsed = parse_manifest(encode(doc))
    assert [layer.to_json() for layer in parsed.layers] == layers
    blobs = referenced_blobs(parsed)
    assert [blob.digest for blob in blobs] == list(dict.fromkeys([doc["config"]["digest"]] + [layer["digest"] for layer in layers]))


# --- blobs ---------------------------------------------------------------------------------------------

# Manifests that lie: every field a manifest or index can lie with, drawn from what a hostile or broken
# registry could send. Sizes negative, huge, floats, strings, bools; digests of unknown algorithms, bad or
# uppercase hex, wrong length; media types known, unknown and malformed; one to three distinct
# descriptors repeated up to just past the layer and entry limits; and JSON nested far too deep.

_HEX_DIGITS = "0123456789abcdef"
LYING_SIZES = st.one_of(
    st.integers(),
    st.integers(min_value=-(2 ** 70), max_value=-1),
    st.integers(min_value=MAX_BLOB_SIZE - 1, max_value=MAX_BLOB_SIZE + 1),
    st.integers(min_value=MAX_MANIFEST_SIZE - 1, max_value=MAX_MANIFEST_SIZE + 1),
    st.integers(min_value=2 ** 63 - 1, max_value=2 ** 70),
    st.floats(allow_nan=False),
    st.sampled_from([0, 1, True, False, None, "100", "", [], {}, 1.0, -0.0]),
)
LYING_DIGESTS = st.one_of(
    st.builds("{}:{}".format,
              st.sampled_from(["sha256", "sha512", "sha384", "md5", "blake3", "SHA256", "sha256+b64u", "", "sha-256", "sha256 "]),
              st.one_of(st.text(alphabet=_HEX_DIGITS, min_size=62, max_size=130),
                        st.text(alphabet=_HEX_DIGITS + "ABCDEF", min_size=64, max_size=64),
                        st.text(max_size=70))),
    st.builds(digest_of, st.integers(0, 3)),
    st.text(max_size=80),
    st.sampled_from([None, 0, [], {}, "sha256:../../etc/passwd", "sha256:" + "0" * 64 + "\n"]),
)
LYING_MEDIA_TYPES = st.one_of(
    st.sampled_from(sorted(set(ACCEPTED_MANIFEST_TYPES) | m.SCHEMA1_TYPES | m.BLOB_TYPES | m.FOREIGN_LAYER_TYPES)),
    st.from_regex(r"[a-z]{1,10}/[a-z0-9.+-]{1,30}", fullmatch=True),
    st.text(max_size=40),
    st.sampled_from([None, 1, [], "application/vnd.oci.image.manifest.v1+json; charset=utf-8", "x" * 300 + "/y"]),
)
_NESTED = "@nested@"


_LIES = {"mediaType": LYING_MEDIA_TYPES, "digest": LYING_DIGESTS, "size": LYING_SIZES}
_EXTRA_FIELDS = {
    "platform": st.one_of(PLATFORMS, st.fixed_dictionaries({"os": st.text(max_size=20), "architecture": st.text(max_size=20)})),
    "urls": st.one_of(st.lists(st.text(max_size=20), max_size=3), LYING_SIZES),
    "annotations": st.one_of(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2), LYING_SIZES),
}
_WILD_DESCRIPTORS = st.fixed_dictionaries({}, optional=dict(_LIES, **_EXTRA_FIELDS))


@st.composite
def lying_documents(draw):
    """The bytes of a manifest or index that tells the truth but for up to three lies: a field of a
    descriptor (shared by many entries, up to just past the layer and entry limits), schemaVersion,
    mediaType, a stray field, JSON nested far too deep."""
    is_index = draw(st.booleans())
    doc: dict = {"schemaVersion": 2}
    if draw(st.booleans()):
        doc["mediaType"] = draw(st.sampled_from([OCI_INDEX, DOCKER_LIST] if is_index else [OCI_MANIFEST, DOCKER_MANIFEST]))
    honest_types = sorted(m.MANIFEST_TYPES | m.INDEX_TYPES) if is_index else [m.MEDIA_TYPE_OCI_LAYER_GZIP, "application/x.unknown"]
    distinct = [{"mediaType": draw(st.sampled_from(honest_types)), "digest": digest_of(draw(st.integers(0, 2))),
                 "size": draw(st.integers(0, 1000))} for dummy in range(draw(st.integers(1, 3)))]
    config = {"mediaType": draw(st.sampled_from([m.MEDIA_TYPE_OCI_CONFIG, m.MEDIA_TYPE_DOCKER_CONFIG])), "digest": digest_of("config"),
              "size": draw(st.integers(0, 1000))}
    depth = 0
    for dummy in range(draw(st.integers(0, 3))):
        site = draw(st.sampled_from(["schemaVersion", "mediaType", "config", "entry", "entry", "entry", "stray", "nesting"]))
        if site == "schemaVersion":
            doc[site] = draw(st.sampled_from([DELETE, 1, 3, "2", 2.0, True, None, 2 ** 64]))
        elif site == "mediaType":
            doc[site] = draw(st.one_of(st.just(DELETE), LYING_MEDIA_TYPES))
        elif site in ("config", "entry"):
            target = config if site == "config" else draw(st.sampled_from(distinct))
            field = draw(st.sampled_from(sorted(_LIES) + sorted(_EXTRA_FIELDS)))
            target[field] = draw(st.one_of(st.just(DELETE), _LIES[field] if field in _LIES else _EXTRA_FIELDS[field]))
        elif site == "stray":
            doc[draw(st.sampled_from(["annotations", "subject", "artifactType", "manifests", "config", "layers"]))] = draw(
                st.one_of(JSON_VALUES, _WILD_DESCRIPTORS, st.lists(_WILD_DESCRIPTORS, max_size=3)))
        else:
            depth = draw(st.sampled_from([1, 900, 1100, 5000, 60000]))
    limit = MAX_INDEX_ENTRIES if is_index else MAX_LAYERS
    count = draw(st.one_of(st.integers(0, 4), st.integers(limit - 1, limit + 1)))
    listed = [{key: value for key, value in distinct[position % len(distinct)].items() if value is not DELETE} for position in range(count)]
    doc.setdefault("manifests" if is_index else "layers", listed)
    if not is_index:
        doc.setdefault("config", {key: value for key, value in config.items() if value is not DELETE})
    doc = {key: value for key, value in doc.items() if value is not DELETE}
    if depth:
        doc[draw(st.sampled_from(["annotations", "subject", "config", "layers", "manifests", "extra"]))] = _NESTED
    raw = json.dumps(doc).encode("utf-8", "surrogatepass")
    if depth:
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        raw = raw.replace(json.dumps(_NESTED).encode(), opener * depth + b"1" + closer * depth, 1)
    return raw


@settings(max_examples=300, deadline=None, derandomize=True)
@given(lying_documents(), st.one_of(st.none(), MEDIA_TYPES))
def test_lying_manifests_raise_only_manifest_errors(raw, media_type):
    _check_outcome(raw, media_type)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(lying_documents(), LYING_DIGESTS)
def test_lying_manifests_fetched_by_digest_raise_only_manifest_errors(raw, expected):
    """As parse_manifest is called on what BatchGetImage answered for a digest (any digest text)."""
    try:
        parsed = parse_manifest(raw, None, expected_digest=expected)
    except ManifestError as exc:
        assert_operator_message(exc, raw + str(expected).encode("utf-8", "surrogatepass"))
    else:
        assert expected is None or parsed.digest == expected  # None: no digest to check against


@st.composite
def document_graphs(draw):
    """An index over a graph of indexes and manifests (cycles allowed) whose entries may lie about size
    and media type, and a fetch that may answer with the wrong document."""
    count = draw(st.integers(1, 7))
    manifests = [parse_manifest(encode(_image(("graph", position)))) for position in range(count)]
    kinds = draw(st.lists(st.booleans(), min_size=count, max_size=count))  # True: an index
    nodes: dict = {}
    digests = [digest_of(("node", position)) if kinds[position] else manifests[position].digest for position in range(count)]
    media_types = [draw(st.sampled_from([OCI_INDEX, DOCKER_LIST])) if kinds[position] else manifests[position].media_type
                   for position in range(count)]
    raws = [b"i" * (position + 1) if kinds[position] else manifests[position].raw for position in range(count)]
    lie = st.integers(0, 9)
    for position in range(count):
        if not kinds[position]:
            nodes[digests[position]] = manifests[position]
            continue
        entries = []
        for target in draw(st.lists(st.integers(0, count - 1), max_size=4)):
            size = len(raws[target]) if draw(lie) else draw(st.integers(0, 100))
            media_type = media_types[target] if draw(lie) else draw(st.sampled_from(sorted(m.INDEX_TYPES | m.MANIFEST_TYPES) + ["x/y"]))
            platform = draw(st.sampled_from([None, Platform("linux", "amd64"), Platform("linux", "arm64", "v8"),
                                             Platform("linux\nTraceback", "x" * 100), Platform("unknown", "unknown")]))
            entries.append(Descriptor(media_type, digests[target], size, platform))
        nodes[digests[position]] = ImageIndex(media_types[position], raws[position], digests[position], tuple(entries))
    wrong = draw(st.sampled_from(digests))
    wrong_answers = draw(st.sets(st.integers(0, 12), max_size=2))  # which calls of fetch answer with the wrong document
    calls = []

    def fetch(descriptor: Descriptor):
        calls.append(descriptor.digest)
        return nodes[wrong] if len(calls) - 1 in wrong_answers else nodes[descriptor.digest]

    top_entries = tuple(nodes[digests[0]].manifests) if kinds[0] else (manifests[0].descriptor(Platform("linux", "amd64")),)
    top = ImageIndex(OCI_INDEX, b"top", digest_of("top"), top_entries)
    return top, fetch, draw(st.integers(1, 5))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(document_graphs(), st.sampled_from(["linux/amd64", "linux/arm64", "linux/s390x"]))
def test_walking_lying_indexes_raises_only_ecrkit_errors(graph, wanted):
    """Cycles, depth past the limit, sizes and media types that do not match what is fetched, a fetch
    that answers with another document: walk and select_manifest refuse with an operator's message."""
    top, fetch, max_depth = graph
    try:
        steps = walk(top, fetch, max_depth=max_depth)
    except EcrkitError as exc:
        assert_operator_message(exc)
    else:
        for step in steps:
            assert check_document(step.descriptor, step.document) is step.document
    try:
        chosen = select_manifest(top, parse_platform(wanted), fetch=fetch, max_depth=max_depth)
    except EcrkitError as exc:
        assert_operator_message(exc, b"Traceback")  # a hostile platform name may say it, on one line, quoted
    else:
        assert chosen.media_type in m.MANIFEST_TYPES


def test_one_digest_one_size():
    layer = desc(m.MEDIA_TYPE_OCI_LAYER_GZIP, 1, 100)
    with pytest.raises(ManifestError) as caught:
        parse_manifest(encode(manifest_doc(layers=[layer, dict(layer, size=101)])))
    assert f"layers[1].size is 101 bytes, but layers[0] gives the same digest {layer['digest']} 100 bytes" in str(caught.value)
    assert "re-push the image" in str(caught.value)
    assert_operator_message(caught.value)
    config = desc(m.MEDIA_TYPE_OCI_CONFIG, "config", 123)
    with pytest.raises(ManifestError, match="layers.0..size is 5 bytes, but config gives the same digest"):
        parse_manifest(encode(manifest_doc(config=config, layers=[dict(config, size=5)])))
    twice = entry("linux/amd64", 7)
    with pytest.raises(ManifestError, match=r"The image index .* manifests\[1\]\.size is 501 bytes, but manifests\[0\]"):
        parse_manifest(encode(index_doc([twice, dict(twice, size=501, platform={"os": "linux", "architecture": "arm64"})])))
    # the same blob with the same size, as often as it likes
    assert len(parse_manifest(encode(manifest_doc(layers=[layer, layer, dict(config, mediaType=m.MEDIA_TYPE_OCI_LAYER)]))).layers) == 3


def test_two_manifests_of_an_image_that_disagree_on_a_blob_size():
    shared = desc(m.MEDIA_TYPE_OCI_LAYER_GZIP, "shared", 100)
    one = parse_manifest(encode(manifest_doc(layers=[shared])))
    two = parse_manifest(encode(manifest_doc(layers=[desc(seed="other"), dict(shared, size=99)])))
    with pytest.raises(ManifestError) as caught:
        m.distinct_blobs([one, two])
    assert f"gives blob {shared['digest']} 99 bytes, but another manifest of the same image gives it 100" in str(caught.value)
    assert_operator_message(caught.value)


def test_platform_names_in_a_message_are_quoted_and_bounded():
    hostile = [entry({"os": "linux\nTraceback (most recent call last):", "architecture": "x" * 5000}, 0)]
    many = [entry(f"linux/arch{position:03d}", position) for position in range(400)]
    index = parse_manifest(encode(index_doc(hostile + many)))
    with pytest.raises(PlatformNotFoundError) as caught:
        select_manifest(index, parse_platform("linux/amd64"))
    text = str(caught.value)
    assert_operator_message(caught.value, b"Traceback")
    assert '"linux\\nTraceback (most recent call last):/xxx' in text and "linux/arch000" in text
    assert "more. Set platform to one of those" in text and len(text) < m.MAX_PLATFORMS_TEXT + 400
    assert len(caught.value.available) == 401  # the exception keeps them all


def test_referenced_blobs_in_order_without_duplicates():
    layers = [desc(seed=1), desc(seed=2), desc(seed=1), desc(seed="config", size=123), desc(seed=3)]
    parsed = parse_manifest(encode(manifest_doc(layers=layers)))
    assert [blob.digest for blob in referenced_blobs(parsed)] == [digest_of("config"), digest_of(1), digest_of(2), digest_of(3)]
    assert referenced_blobs(parsed)[0] is parsed.config
    assert parsed.total_size == 123 + 10 + 10 + 10


@pytest.mark.parametrize("media_type, urls, foreign", [
    (m.MEDIA_TYPE_OCI_LAYER_GZIP, (), False),
    (m.MEDIA_TYPE_OCI_LAYER_GZIP, ("https://example.com/layer",), True),
    (m.MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP, ("https://mcr.microsoft.com/x",), True),
    (m.MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP, (), True),
    (m.MEDIA_TYPE_DOCKER_FOREIGN_LAYER, (), True),
    (m.MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE, (), True),
    (m.MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_GZIP, (), True),
    (m.MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_ZSTD, (), True),
    (m.MEDIA_TYPE_DOCKER_LAYER_GZIP, (), False),
    ("application/vnd.example+tar", (), False),
])
def test_descriptor_is_foreign(media_type, urls, foreign):
    assert Descriptor(media_type, digest_of(1), 1, urls=urls).is_foreign is foreign


def test_refuse_foreign_layers():
    clean = parse_manifest(encode(GOOD))
    assert refuse_foreign_layers(clean) is clean
    layers = [desc(m.MEDIA_TYPE_DOCKER_LAYER_GZIP, 1), desc(m.MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP, 2, urls=["https://example.com/a"]),
              desc(m.MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP, 3)]
    windows = parse_manifest(encode(manifest_doc(DOCKER_MANIFEST, layers=layers)))
    with pytest.raises(ForeignLayerError) as caught:
        refuse_foreign_layers(windows)
    text = str(caught.value)
    assert digest_of(2) in text and "(and 1 more)" in text and "ECR does not store" in text
    assert "example.com" not in text
    assert_operator_message(caught.value)


# --- platforms -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("linux/amd64", "linux/amd64"),
    ("linux/x86_64", "linux/amd64"),
    ("linux/x86-64", "linux/amd64"),
    ("linux/amd64/v1", "linux/amd64"),
    ("linux/amd64/v3", "linux/amd64/v3"),
    ("Linux/AMD64", "linux/amd64"),
    ("linux/arm64", "linux/arm64/v8"),
    ("linux/aarch64", "linux/arm64/v8"),
    ("linux/arm64/v8", "linux/arm64/v8"),
    ("linux/arm64/8", "linux/arm64/v8"),
    ("linux/arm64/v8.0", "linux/arm64/v8"),
    ("linux/arm64/v9", "linux/arm64/v9"),
    ("linux/arm64/v8.2", "linux/arm64/v8.2"),
    ("linux/arm", "linux/arm/v7"),
    ("linux/arm/7", "linux/arm/v7"),
    ("linux/arm/v6", "linux/arm/v6"),
    ("linux/arm/v5", "linux/arm/v5"),
    ("linux/armhf", "linux/arm/v7"),
    ("linux/armel", "linux/arm/v6"),
    ("linux/armv7l", "linux/arm/v7"),
    ("linux/i386", "linux/386"),
    ("linux/i686", "linux/386"),
    ("linux/386", "linux/386"),
    ("linux/ppc64le", "linux/ppc64le"),
    ("linux/ppc64el", "linux/ppc64le"),
    ("linux/s390x", "linux/s390x"),
    ("linux/riscv64", "linux/riscv64"),
    ("linux/mips64el", "linux/mips64le"),
    ("linux/loongarch64", "linux/loong64"),
    ("windows/amd64", "windows/amd64"),
    ("macos/arm64", "darwin/arm64/v8"),
    ("  linux/amd64 ", "linux/amd64"),
])
def test_parse_platform(text, expected):
    parsed = parse_platform(text)
    assert str(parsed) == expected
    assert parse_platform(str(parsed)) == parsed


@pytest.mark.parametrize("text, fragment", [
    ("linux", "write it as OS/ARCH or OS/ARCH/VARIANT"),
    ("amd64", "write it as OS/ARCH"),
    ("linux/amd64/v3/x", "write it as OS/ARCH"),
    ("", "write it as OS/ARCH"),
    ("linux/", "its architecture is empty"),
    ("/amd64", "its operating system is empty"),
    ("linux/arm64/", "its variant is empty"),
    ("linux/amd 64", 'its architecture "amd 64" is not valid'),
    ("linux/amd64;rm", 'its architecture "amd64;rm" is not valid'),
    ("li\u00f1ux/amd64", "its operating system"),
    ("linux/" + "a" * 65, "up to 64 characters"),
    (None, "must be a string such as linux/amd64, not null"),
    (["linux", "amd64"], "not a list"),
])
def test_parse_platform_refuses(text, fragment):
    with pytest.raises(InvalidPlatformError) as caught:
        parse_platform(text)
    assert fragment in str(caught.value)
    assert caught.value.code == "invalid_platform"
    assert_operator_message(caught.value)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from(["linux", "Linux", "windows", "macos", "darwin", "freebsd"]),
       st.sampled_from(sorted(m._ARCH_ALIASES) + ["arm", "ARM64", "riscv64", "s390x", "x"]),  # pylint: disable=protected-access
       st.sampled_from([None, "", "v1", "v2", "8", "v8", "v8.0", "7", "v7", "V6", "v9.0", "x"]))
def test_normalisation_is_idempotent(os_name, architecture, variant):
    once = normalize_platform(Platform(os_name, architecture, variant))
    assert normalize_platform(once) == once
    assert once.matches(Platform(os_name, architecture, variant))


@pytest.mark.parametrize("one, two, same", [
    (Platform("linux", "arm64"), Platform("linux", "arm64", "v8"), True),
    (Platform("linux", "aarch64"), Platform("linux", "arm64", "8"), True),
    (Platform("linux", "arm64"), Platform("linux", "arm64", "v9"), False),
    (Platform("linux", "arm"), Platform("linux", "arm", "v7"), True),
    (Platform("linux", "arm"), Platform("linux", "arm", "v6"), False),
    (Platform("linux", "amd64"), Platform("linux", "amd64", "v1"), True),
    (Platform("linux", "amd64"), Platform("linux", "amd64", "v2"), False),
    (Platform("linux", "x86_64"), Platform("linux", "amd64"), True),
    (Platform("linux", "amd64"), Platform("windows", "amd64"), False),
    (Platform("windows", "amd64", os_version="1"), Platform("windows", "amd64", os_version="2"), True),
])
def test_platform_matches(one, two, same):
    assert one.matches(two) is same and two.matches(one) is same


def test_platform_to_json():
    assert Platform("linux", "arm64", "v8").to_json() == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert Platform("windows", "amd64", None, "10.0", ("win32k",)).to_json() == {
        "architecture": "amd64", "os": "windows", "os.version": "10.0", "os.features": ["win32k"]}


@pytest.mark.parametrize("system, machine, expected", [
    ("Linux", "x86_64", "linux/amd64"),
    ("Linux", "aarch64", "linux/arm64/v8"),
    ("Linux", "armv7l", "linux/arm/v7"),
    ("Linux", "armv6l", "linux/arm/v6"),
    ("Linux", "armv5tel", "linux/arm/v5"),
    ("Linux", "armv8l", "linux/arm/v7"),
    ("Linux", "i686", "linux/386"),
    ("Linux", "i386", "linux/386"),
    ("Linux", "ppc64le", "linux/ppc64le"),
    ("Linux", "s390x", "linux/s390x"),
    ("Linux", "riscv64", "linux/riscv64"),
    ("Linux", "loongarch64", "linux/loong64"),
    ("Darwin", "arm64", "darwin/arm64/v8"),
    ("Darwin", "x86_64", "darwin/amd64"),
    ("Windows", "AMD64", "windows/amd64"),
    ("Windows", "ARM64", "windows/arm64/v8"),
    ("FreeBSD", "amd64", "freebsd/amd64"),
])
def test_host_platform(monkeypatch, system, machine, expected):
    monkeypatch.setattr(platform, "system", lambda: system)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert str(host_platform()) == expected


@pytest.mark.parametrize("system, machine, fragment", [
    ("Linux", "", "architecture"),
    ("", "x86_64", "operating system"),
    ("Linux", "Power Macintosh", "architecture"),
])
def test_host_platform_unknown(monkeypatch, system, machine, fragment):
    monkeypatch.setattr(platform, "system", lambda: system)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    with pytest.raises(InvalidPlatformError) as caught:
        host_platform()
    assert fragment in str(caught.value) and "set the platform option" in str(caught.value)
    assert_operator_message(caught.value)


def test_host_platform_of_this_machine():
    assert isinstance(host_platform(), Platform)


# --- selection -----------------------------------------------------------------------------------------

MULTI = [
    entry("linux/amd64", "amd64"),
    entry("linux/arm64", "arm64-plain"),
    entry("linux/arm64/v8", "arm64-v8"),
    entry("linux/arm/v7", "armv7"),
    entry("linux/arm/v6", "armv6"),
    entry("linux/ppc64le", "ppc"),
    entry("unknown/unknown", "att-1", annotations=ATTESTATION),
    entry("unknown/unknown", "att-2"),
]


def _index(entries: list, media_type: str = OCI_INDEX) -> ImageIndex:
    parsed = parse_manifest(encode(index_doc(entries, media_type)))
    assert isinstance(parsed, ImageIndex)
    return parsed


@pytest.mark.parametrize("entries, wanted, chosen", [
    (MULTI, "linux/amd64", "amd64"),
    (MULTI, "linux/x86_64", "amd64"),
    (MULTI, "linux/arm64", "arm64-v8"),
    (MULTI, "linux/arm64/v8", "arm64-v8"),
    (MULTI, "linux/aarch64", "arm64-v8"),
    (MULTI, "linux/arm/v7", "armv7"),
    (MULTI, "linux/arm", "armv7"),
    (MULTI, "linux/armhf", "armv7"),
    (MULTI, "linux/arm/v6", "armv6"),
    (MULTI, "linux/armel", "armv6"),
    (MULTI, "linux/ppc64el", "ppc"),
    ([entry("linux/arm64", "plain")], "linux/arm64/v8", "plain"),
    ([entry("linux/arm64/v8", "v8")], "linux/arm64", "v8"),
    ([entry("linux/arm64/8", "eight")], "linux/arm64/v8", "eight"),
    ([entry("linux/arm64", "plain"), entry("linux/arm64/v8", "v8")], "linux/arm64/v8", "v8"),
    ([entry("linux/arm", "plain"), entry("linux/arm/v7", "v7")], "linux/arm/v7", "v7"),
    ([entry("linux/arm", "plain")], "linux/arm/v7", "plain"),
    ([entry("linux/amd64/v1", "v1")], "linux/amd64", "v1"),
    ([entry("linux/amd64/v3", "v3"), entry("linux/amd64", "base")], "linux/amd64", "base"),
    ([entry("linux/amd64/v3", "v3"), entry("linux/amd64", "base")], "linux/amd64/v3", "v3"),
    ([entry("linux/AMD64", "upper")], "linux/amd64", "upper"),
    ([entry("linux/amd64", "first"), entry("linux/amd64", "second")], "linux/amd64", "first"),
    # attestation annotations hide an entry even with a real platform
    ([entry("linux/amd64", "att", annotations=ATTESTATION), entry("linux/amd64", "image")], "linux/amd64", "image"),
    # an index wrapping one image without a platform
    ([entry(None, "only"), entry("unknown/unknown", "att", annotations=ATTESTATION)], "linux/riscv64", "only"),
    # schema 1 entries are chosen, so that fetching them gives the schema 1 message
    ([entry("linux/amd64", "s1", media_type=SCHEMA1_SIGNED)], "linux/amd64", "s1"),
    # Docker manifest lists
    ([entry("linux/amd64", "docker", media_type=DOCKER_MANIFEST)], "linux/amd64", "docker"),
])
def test_select_manifest(entries, wanted, chosen):
    index = _index(entries, DOCKER_LIST if entries and entries[0]["mediaType"] == DOCKER_MANIFEST else OCI_INDEX)
    selected = select_manifest(index, parse_platform(wanted))
    assert SEEDS[selected.digest] == chosen
    assert selected in index.manifests


def test_select_manifest_with_unnormalised_wanted_platform():
    index = _index(MULTI)
    assert select_manifest(index, Platform("Linux", "aarch64")).platform == Platform("linux", "arm64", "v8")
    assert select_manifest(index, Platform("linux", "arm64")).platform == Platform("linux", "arm64")


def test_select_manifest_by_os_version():
    index = _index([
        entry({"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.5329"}, "1809"),
        entry({"os": "windows", "architecture": "amd64", "os.version": "10.0.20348.2227"}, "ltsc2022"),
    ])
    assert select_manifest(index, Platform("windows", "amd64", os_version="10.0.20348.2227")) == index.manifests[1]
    assert select_manifest(index, parse_platform("windows/amd64")) == index.manifests[0]
    with pytest.raises(PlatformNotFoundError):
        select_manifest(index, Platform("windows", "amd64", os_version="10.0.1"))


@pytest.mark.parametrize("entries, wanted, listed", [
    (MULTI, "linux/riscv64", ["linux/amd64", "linux/arm/v6", "linux/arm/v7", "linux/arm64", "linux/arm64/v8", "linux/ppc64le"]),
    (MULTI, "linux/arm/v5", ["linux/amd64", "linux/arm/v6", "linux/arm/v7", "linux/arm64", "linux/arm64/v8", "linux/ppc64le"]),
    (MULTI, "unknown/unknown", ["linux/amd64", "linux/arm/v6", "linux/arm/v7", "linux/arm64", "linux/arm64/v8", "linux/ppc64le"]),
    (MULTI, "windows/amd64", ["linux/amd64", "linux/arm/v6", "linux/arm/v7", "linux/arm64", "linux/arm64/v8", "linux/ppc64le"]),
    ([entry("linux/amd64/v3")], "linux/amd64", ["linux/amd64/v3"]),
    ([entry("linux/arm64/v9")], "linux/arm64", ["linux/arm64/v9"]),
    ([], "linux/amd64", []),
    ([entry("unknown/unknown", annotations=ATTESTATION)], "linux/amd64", []),
    ([entry(None, 1), entry(None, 2)], "linux/amd64", ["(no platform)"]),
    ([entry(None, 1), entry("linux/arm64", 2)], "linux/amd64", ["(no platform)", "linux/arm64"]),
    ([entry(None, media_type=OCI_INDEX), entry("linux/s390x")], "linux/amd64", ["(nested index)", "linux/s390x"]),
])
def test_platform_not_found(entries, wanted, listed):
    index = _index(entries)
    with pytest.raises(PlatformNotFoundError) as caught:
        select_manifest(index, parse_platform(wanted))
    error = caught.value
    text = str(error)
    assert error.available == listed == describe_platforms(index)
    assert error.wanted == str(parse_platform(wanted))
    assert error.index_digest == index.digest
    assert f"has no manifest for the platform {parse_platform(wanted)}" in text
    assert (f"it has {', '.join(listed)}." in text) if listed else ("it lists no platform images at all" in text)
    assert "Set platform to one of those, or all_platforms: true" in text
    assert "unknown/unknown" not in text.rsplit("; it has", maxsplit=1)[-1]
    assert_operator_message(error)


def test_is_attestation():
    assert is_attestation(Descriptor(OCI_MANIFEST, digest_of(1), 1, Platform("unknown", "unknown")))
    assert is_attestation(Descriptor(OCI_MANIFEST, digest_of(1), 1, annotations=dict(ATTESTATION)))
    assert not is_attestation(Descriptor(OCI_MANIFEST, digest_of(1), 1, Platform("linux", "unknown")))
    assert not is_attestation(Descriptor(OCI_MANIFEST, digest_of(1), 1))


# --- nested indexes, fetch and walk --------------------------------------------------------------------

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


def _image(seed: object) -> dict:
    return manifest_doc(layers=[desc(seed=("layer", seed))])


def test_select_manifest_in_nested_indexes():
    store = Store()
    inner = index_doc([store.entry(_image("amd"), "linux/amd64"), store.entry(_image("arm"), "linux/arm64/v8")])
    top = _index([store.entry(inner), store.entry(_image("s390"), "linux/s390x")])
    chosen = select_manifest(top, parse_platform("linux/arm64"), fetch=store.fetch)
    assert chosen.platform == Platform("linux", "arm64", "v8")
    assert chosen.digest == parse_manifest(encode(_image("arm"))).digest
    # without fetch the nested index is not searched
    with pytest.raises(PlatformNotFoundError) as caught:
        select_manifest(top, parse_platform("linux/arm64"))
    assert caught.value.available == ["(nested index)", "linux/s390x"]
    # a nested index with a platform that does not match is not fetched
    store.fetched.clear()
    top = _index([dict(store.entry(inner), platform={"os": "windows", "architecture": "amd64"}),
                  store.entry(_image("s390"), "linux/s390x")])
    assert select_manifest(top, parse_platform("linux/s390x"), fetch=store.fetch).platform == Platform("linux", "s390x")
    assert not store.fetched


def test_select_manifest_nested_depth_limit():
    store = Store()
    doc = index_doc([store.entry(_image("deep"), "linux/amd64")])
    for dummy in range(4):
        doc = index_doc([store.entry(doc)])
    top = _index(doc["manifests"])  # 5 indexes on the path, top included
    with pytest.raises(ManifestError, match="nesting indexes more than 4 deep"):
        select_manifest(top, parse_platform("linux/amd64"), fetch=store.fetch)
    assert select_manifest(top, parse_platform("linux/amd64"), fetch=store.fetch, max_depth=5).platform == Platform("linux", "amd64")


def test_walk_lists_children_before_parents_once_each():
    store = Store()
    amd, arm, s390 = _image("amd"), _image("arm"), _image("s390")
    inner = index_doc([store.entry(arm, "linux/arm64/v8"), store.entry(s390, "linux/s390x")])
    top = _index([store.entry(amd, "linux/amd64"), store.entry(inner), store.entry(amd, "linux/amd64"), store.entry(arm)])
    steps = walk(top, store.fetch)
    inner_digest = sha256_digest(encode(inner))
    assert [step.document.digest for step in steps] == [
        sha256_digest(encode(amd)), sha256_digest(encode(arm)), sha256_digest(encode(s390)), inner_digest]
    assert [step.parent for step in steps] == [top.digest, inner_digest, inner_digest, top.digest]
    assert all(isinstance(step, WalkStep) and step.descriptor.digest == step.document.digest for step in steps)
    assert sorted(store.fetched) == sorted(set(store.fetched))
    assert walk(parse_manifest(encode(amd)), store.fetch) == []


def test_walk_depth_limit_is_checked_before_fetching():
    store = Store()
    doc = index_doc([store.entry(_image("deep"), "linux/amd64")])
    chain = [doc]
    for dummy in range(3):
        doc = index_doc([store.entry(doc)])
        chain.append(doc)
    four = _index(doc["manifests"])  # top + 3 nested = 4 indexes
    assert len(walk(four, store.fetch)) == 4
    deeper = _index([store.entry(doc)])
    store.fetched.clear()
    with pytest.raises(ManifestError) as caught:
        walk(deeper, store.fetch)
    assert "nesting indexes more than 4 deep" in str(caught.value)
    assert_operator_message(caught.value)
    assert len(store.fetched) == 3
    assert len(walk(deeper, store.fetch, max_depth=5)) == 5


def _fake_index(digest: str, children: list[str]) -> ImageIndex:
    raw = b"x" * 10
    return ImageIndex(OCI_INDEX, raw, digest, tuple(Descriptor(OCI_INDEX, child, 10) for child in children))


def test_walk_refuses_cycles():
    one, two = digest_of("one"), digest_of("two")
    documents = {one: _fake_index(one, [two]), two: _fake_index(two, [one])}
    with pytest.raises(ManifestError) as caught:
        walk(documents[one], lambda descriptor: documents[descriptor.digest])
    assert "form a cycle" in str(caught.value) and one in str(caught.value)
    itself = _fake_index(one, [one])
    with pytest.raises(ManifestError, match="form a cycle"):
        walk(itself, lambda descriptor: itself)
    with pytest.raises(ManifestError, match="form a cycle"):
        select_manifest(documents[one], parse_platform("linux/amd64"), fetch=lambda descriptor: documents[descriptor.digest])


def test_walk_document_limit():
    store = Store()
    top = _index([store.entry(_image(seed), "linux/amd64") for seed in range(3)])
    assert len(walk(top, store.fetch, max_documents=3)) == 3
    with pytest.raises(ManifestError, match="more than 2 manifests and indexes"):
        walk(top, store.fetch, max_documents=2)


def test_walk_refuses_unreadable_entries():
    with pytest.raises(UnsupportedManifestError, match="cannot be copied whole"):
        walk(_index([entry("linux/amd64", media_type="application/vnd.example.v9+json")]), pytest.fail)
    with pytest.raises(Schema1ManifestError, match="schema 1"):
        walk(_index([entry("linux/amd64", media_type=SCHEMA1_SIGNED)]), pytest.fail)


def test_walk_checks_what_fetch_returns():
    store = Store()
    top = _index([store.entry(_image("a"), "linux/amd64")])
    other = parse_manifest(encode(_image("b")))
    with pytest.raises(DigestMismatchError):
        walk(top, lambda descriptor: other)


def test_parse_referenced_and_check_document():
    raw = encode(_image("a"))
    parsed = parse_manifest(raw)
    good = Descriptor(OCI_MANIFEST, parsed.digest, len(raw))
    assert parse_referenced(good, raw) == parsed
    assert parse_referenced(good, raw, OCI_MANIFEST) == parsed
    with pytest.raises(DigestMismatchError):
        parse_referenced(good, encode(_image("b")))
    with pytest.raises(ManifestError) as caught:
        parse_referenced(Descriptor(DOCKER_MANIFEST, parsed.digest, len(raw)), raw)
    assert f"has the media type {OCI_MANIFEST}, but the index that lists it says {DOCKER_MANIFEST}." in str(caught.value)
    with pytest.raises(ManifestError, match="but the index that lists it says 5"):
        check_document(Descriptor(OCI_MANIFEST, parsed.digest, 5), parsed)
    with pytest.raises(ManifestError, match="was reported as"):
        parse_referenced(good, raw, DOCKER_MANIFEST)


def test_distinct_blobs_lists_each_blob_once_and_refuses_foreign_layers():
    layer = {"mediaType": m.MEDIA_TYPE_OCI_LAYER_GZIP, "digest": "sha256:" + "1" * 64, "size": 10}
    shared = {"mediaType": m.MEDIA_TYPE_OCI_LAYER_GZIP, "digest": "sha256:" + "2" * 64, "size": 20}
    config = {"mediaType": m.MEDIA_TYPE_OCI_CONFIG, "digest": "sha256:" + "3" * 64, "size": 30}

    def image(*layers):
        document = {"schemaVersion": 2, "mediaType": m.MEDIA_TYPE_OCI_MANIFEST, "config": config, "layers": list(layers)}
        return m.parse_manifest(json.dumps(document).encode())

    blobs = m.distinct_blobs([image(layer, shared), image(shared)])
    assert [blob.digest for blob in blobs] == [config["digest"], layer["digest"], shared["digest"]]
    foreign = dict(layer, mediaType=m.MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP, urls=["https://example.invalid/l"])
    with pytest.raises(m.ForeignLayerError):
        m.distinct_blobs([image(foreign)])
