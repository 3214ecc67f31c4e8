# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Reading the bytes of a manifest or index: every rule that refuses hostile or broken input."""

from __future__ import annotations

import hashlib
import json
import os
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.ecrkit.images.plugins.module_utils import manifest as m
from ansible_collections.ecrkit.images.plugins.module_utils.digest import InvalidDigestError, of_bytes
from ansible_collections.ecrkit.images.plugins.module_utils.manifest import (
    ACCEPTED_MANIFEST_TYPES,
    MAX_BLOB_SIZE,
    MAX_INDEX_ENTRIES,
    MAX_LAYERS,
    MAX_MANIFEST_SIZE,
    Descriptor,
    DigestMismatchError,
    ImageIndex,
    ImageManifest,
    ManifestError,
    Schema1ManifestError,
    UnsupportedManifestError,
    check_document,
    referenced_blobs,
)
from ansible_collections.ecrkit.images.plugins.module_utils.manifest_parser import check_digest_format, parse_manifest, parse_referenced
from ansible_collections.ecrkit.images.plugins.module_utils.platform import parse_platform
from ansible_collections.ecrkit.images.plugins.module_utils.platform_select import select_manifest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the builders beside this file
# pylint: disable=wrong-import-position
from manifest_documents import (  # noqa: E402
    ATTESTATION,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    assert_operator_message,
    desc,
    digest_of,
    encode,
    entry,
    image_doc,
    index_doc,
    manifest_doc,
)


SCHEMA1 = m.MEDIA_TYPE_DOCKER_SCHEMA1
SCHEMA1_SIGNED = m.MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED


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


# --- digests -------------------------------------------------------------------------------------------

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
    assert one.digest == of_bytes(compact) != two.digest == of_bytes(pretty)
    assert one.config == two.config and one.layers == two.layers
    assert one.raw == compact and two.raw == pretty


def test_expected_digest_match_and_mismatch():
    raw = encode(manifest_doc())
    good = of_bytes(raw)
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
    assert str(caught.value).startswith(f"The manifest {of_bytes(raw)} is not valid: ")
    raw = encode(_with(GOOD_INDEX, ("manifests", 0, "size"), -1))
    with pytest.raises(ManifestError) as caught:
        parse_manifest(raw)
    assert str(caught.value).startswith(f"The image index {of_bytes(raw)} is not valid: ")


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
    assert parsed.digest == of_bytes(raw) and parsed.raw == raw
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


def test_parse_referenced_and_check_document():
    raw = encode(image_doc("a"))
    parsed = parse_manifest(raw)
    good = Descriptor(OCI_MANIFEST, parsed.digest, len(raw))
    assert parse_referenced(good, raw) == parsed
    assert parse_referenced(good, raw, OCI_MANIFEST) == parsed
    with pytest.raises(DigestMismatchError):
        parse_referenced(good, encode(image_doc("b")))
    with pytest.raises(ManifestError) as caught:
        parse_referenced(Descriptor(DOCKER_MANIFEST, parsed.digest, len(raw)), raw)
    assert f"has the media type {OCI_MANIFEST}, but the index that lists it says {DOCKER_MANIFEST}." in str(caught.value)
    with pytest.raises(ManifestError, match="but the index that lists it says 5"):
        check_document(Descriptor(OCI_MANIFEST, parsed.digest, 5), parsed)
    with pytest.raises(ManifestError, match="was reported as"):
        parse_referenced(good, raw, DOCKER_MANIFEST)
