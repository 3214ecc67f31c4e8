# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Manifests and indexes as values: media types, descriptors, the blobs of an image, walking an index."""

from __future__ import annotations

import json
import os
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.ecrkit.images.plugins.module_utils import manifest as m
from ansible_collections.ecrkit.images.plugins.module_utils.digest import of_bytes
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.manifest import (
    ACCEPTED_MANIFEST_TYPES,
    Descriptor,
    DigestMismatchError,
    ForeignLayerError,
    ImageIndex,
    ManifestError,
    Schema1ManifestError,
    UnsupportedManifestError,
    WalkStep,
    check_document,
    referenced_blobs,
    refuse_foreign_layers,
    walk,
)
from ansible_collections.ecrkit.images.plugins.module_utils.manifest_parser import parse_manifest
from ansible_collections.ecrkit.images.plugins.module_utils.platform import Platform, parse_platform
from ansible_collections.ecrkit.images.plugins.module_utils.platform_select import select_manifest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the builders beside this file
# pylint: disable=wrong-import-position
from manifest_documents import (  # noqa: E402
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Store,
    assert_operator_message,
    desc,
    digest_of,
    encode,
    entry,
    image_doc,
    index_doc,
    index_of,
    manifest_doc,
)


SCHEMA1 = m.MEDIA_TYPE_DOCKER_SCHEMA1
SCHEMA1_SIGNED = m.MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED


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
        assert (media_type in m.LAYER_TYPES) is (compression is not None)
        assert layer.is_foreign is foreign
        assert (layer in parsed.unknown_layers) is (compression is None)
        assert (layer in parsed.foreign_layers) is foreign


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
    assert sum(blob.size for blob in referenced_blobs(parsed)) == 123 + 100 + 200
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
        config={"mediaType": m.MEDIA_TYPE_OCI_EMPTY, "digest": of_bytes(b"{}"), "size": 2, "data": "e30="},
        layers=[desc("application/vnd.cncf.helm.chart.content.v1.tar+gzip", 1, 5)],
        artifactType="application/vnd.cncf.helm.config.v1+json",
    )
    parsed = parse_manifest(encode(doc))
    assert not parsed.is_image
    assert [layer.media_type for layer in parsed.unknown_layers] == ["application/vnd.cncf.helm.chart.content.v1.tar+gzip"]


@st.composite
def document_graphs(draw):
    """An index over a graph of indexes and manifests (cycles allowed) whose entries may lie about size
    and media type, and a fetch that may answer with the wrong document."""
    count = draw(st.integers(1, 7))
    manifests = [parse_manifest(encode(image_doc(("graph", position)))) for position in range(count)]
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


def test_two_manifests_of_an_image_that_disagree_on_a_blob_size():
    shared = desc(m.MEDIA_TYPE_OCI_LAYER_GZIP, "shared", 100)
    one = parse_manifest(encode(manifest_doc(layers=[shared])))
    two = parse_manifest(encode(manifest_doc(layers=[desc(seed="other"), dict(shared, size=99)])))
    with pytest.raises(ManifestError) as caught:
        m.distinct_blobs([one, two])
    assert f"gives blob {shared['digest']} 99 bytes, but another manifest of the same image gives it 100" in str(caught.value)
    assert_operator_message(caught.value)


def test_referenced_blobs_in_order_without_duplicates():
    layers = [desc(seed=1), desc(seed=2), desc(seed=1), desc(seed="config", size=123), desc(seed=3)]
    parsed = parse_manifest(encode(manifest_doc(layers=layers)))
    assert [blob.digest for blob in referenced_blobs(parsed)] == [digest_of("config"), digest_of(1), digest_of(2), digest_of(3)]
    assert referenced_blobs(parsed)[0] is parsed.config
    assert sum(blob.size for blob in referenced_blobs(parsed)) == 123 + 10 + 10 + 10


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
    clean = parse_manifest(encode(manifest_doc()))
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


# --- nested indexes, fetch and walk --------------------------------------------------------------------


def test_walk_lists_children_before_parents_once_each():
    store = Store()
    amd, arm, s390 = image_doc("amd"), image_doc("arm"), image_doc("s390")
    inner = index_doc([store.entry(arm, "linux/arm64/v8"), store.entry(s390, "linux/s390x")])
    top = index_of([store.entry(amd, "linux/amd64"), store.entry(inner), store.entry(amd, "linux/amd64"), store.entry(arm)])
    steps = walk(top, store.fetch)
    inner_digest = of_bytes(encode(inner))
    assert [step.document.digest for step in steps] == [
        of_bytes(encode(amd)), of_bytes(encode(arm)), of_bytes(encode(s390)), inner_digest]
    assert [step.parent for step in steps] == [top.digest, inner_digest, inner_digest, top.digest]
    assert all(isinstance(step, WalkStep) and step.descriptor.digest == step.document.digest for step in steps)
    assert sorted(store.fetched) == sorted(set(store.fetched))
    assert walk(parse_manifest(encode(amd)), store.fetch) == []


def test_walk_depth_limit_is_checked_before_fetching():
    store = Store()
    doc = index_doc([store.entry(image_doc("deep"), "linux/amd64")])
    chain = [doc]
    for dummy in range(3):
        doc = index_doc([store.entry(doc)])
        chain.append(doc)
    four = index_of(doc["manifests"])  # top + 3 nested = 4 indexes
    assert len(walk(four, store.fetch)) == 4
    deeper = index_of([store.entry(doc)])
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
    top = index_of([store.entry(image_doc(seed), "linux/amd64") for seed in range(3)])
    assert len(walk(top, store.fetch, max_documents=3)) == 3
    with pytest.raises(ManifestError, match="more than 2 manifests and indexes"):
        walk(top, store.fetch, max_documents=2)


def test_walk_refuses_unreadable_entries():
    with pytest.raises(UnsupportedManifestError, match="cannot be copied whole"):
        walk(index_of([entry("linux/amd64", media_type="application/vnd.example.v9+json")]), pytest.fail)
    with pytest.raises(Schema1ManifestError, match="schema 1"):
        walk(index_of([entry("linux/amd64", media_type=SCHEMA1_SIGNED)]), pytest.fail)


def test_walk_checks_what_fetch_returns():
    store = Store()
    top = index_of([store.entry(image_doc("a"), "linux/amd64")])
    other = parse_manifest(encode(image_doc("b")))
    with pytest.raises(DigestMismatchError):
        walk(top, lambda descriptor: other)


def test_distinct_blobs_lists_each_blob_once_and_refuses_foreign_layers():
    layer = {"mediaType": m.MEDIA_TYPE_OCI_LAYER_GZIP, "digest": "sha256:" + "1" * 64, "size": 10}
    shared = {"mediaType": m.MEDIA_TYPE_OCI_LAYER_GZIP, "digest": "sha256:" + "2" * 64, "size": 20}
    config = {"mediaType": m.MEDIA_TYPE_OCI_CONFIG, "digest": "sha256:" + "3" * 64, "size": 30}

    def image(*layers):
        document = {"schemaVersion": 2, "mediaType": m.MEDIA_TYPE_OCI_MANIFEST, "config": config, "layers": list(layers)}
        return parse_manifest(json.dumps(document).encode())

    blobs = m.distinct_blobs([image(layer, shared), image(shared)])
    assert [blob.digest for blob in blobs] == [config["digest"], layer["digest"], shared["digest"]]
    foreign = dict(layer, mediaType=m.MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP, urls=["https://example.invalid/l"])
    with pytest.raises(m.ForeignLayerError):
        m.distinct_blobs([image(foreign)])
