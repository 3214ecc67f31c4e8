# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Picking the entry of an index for a platform, and describing what an index offers."""

from __future__ import annotations

import os
import sys

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils import platform_select
from ansible_collections.ecrkit.images.plugins.module_utils.manifest import MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED as SCHEMA1_SIGNED, Descriptor, ManifestError
from ansible_collections.ecrkit.images.plugins.module_utils.manifest_parser import parse_manifest
from ansible_collections.ecrkit.images.plugins.module_utils.platform import Platform, parse_platform
from ansible_collections.ecrkit.images.plugins.module_utils.platform_select import PlatformNotFoundError, describe_platforms, is_attestation, select_manifest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the builders beside this file
# pylint: disable=wrong-import-position
from manifest_documents import (  # noqa: E402
    ATTESTATION,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    SEEDS,
    Store,
    assert_operator_message,
    digest_of,
    encode,
    entry,
    image_doc,
    index_doc,
    index_of,
)


def test_platform_names_in_a_message_are_quoted_and_bounded():
    hostile = [entry({"os": "linux\nTraceback (most recent call last):", "architecture": "x" * 5000}, 0)]
    many = [entry(f"linux/arch{position:03d}", position) for position in range(400)]
    index = parse_manifest(encode(index_doc(hostile + many)))
    with pytest.raises(PlatformNotFoundError) as caught:
        select_manifest(index, parse_platform("linux/amd64"))
    text = str(caught.value)
    assert_operator_message(caught.value, b"Traceback")
    assert '"linux\\nTraceback (most recent call last):/xxx' in text and "linux/arch000" in text
    assert "more. Set platform to one of those" in text and len(text) < platform_select.MAX_PLATFORMS_TEXT + 400
    assert len(caught.value.available) == 401  # the exception keeps them all


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
    index = index_of(entries, DOCKER_LIST if entries and entries[0]["mediaType"] == DOCKER_MANIFEST else OCI_INDEX)
    selected = select_manifest(index, parse_platform(wanted))
    assert SEEDS[selected.digest] == chosen
    assert selected in index.manifests


def test_select_manifest_with_unnormalised_wanted_platform():
    index = index_of(MULTI)
    assert select_manifest(index, Platform("Linux", "aarch64")).platform == Platform("linux", "arm64", "v8")
    assert select_manifest(index, Platform("linux", "arm64")).platform == Platform("linux", "arm64")


def test_select_manifest_by_os_version():
    index = index_of([
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
    index = index_of(entries)
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


def test_select_manifest_in_nested_indexes():
    store = Store()
    inner = index_doc([store.entry(image_doc("amd"), "linux/amd64"), store.entry(image_doc("arm"), "linux/arm64/v8")])
    top = index_of([store.entry(inner), store.entry(image_doc("s390"), "linux/s390x")])
    chosen = select_manifest(top, parse_platform("linux/arm64"), fetch=store.fetch)
    assert chosen.platform == Platform("linux", "arm64", "v8")
    assert chosen.digest == parse_manifest(encode(image_doc("arm"))).digest
    # without fetch the nested index is not searched
    with pytest.raises(PlatformNotFoundError) as caught:
        select_manifest(top, parse_platform("linux/arm64"))
    assert caught.value.available == ["(nested index)", "linux/s390x"]
    # a nested index with a platform that does not match is not fetched
    store.fetched.clear()
    top = index_of([dict(store.entry(inner), platform={"os": "windows", "architecture": "amd64"}),
                    store.entry(image_doc("s390"), "linux/s390x")])
    assert select_manifest(top, parse_platform("linux/s390x"), fetch=store.fetch).platform == Platform("linux", "s390x")
    assert not store.fetched


def test_select_manifest_nested_depth_limit():
    store = Store()
    doc = index_doc([store.entry(image_doc("deep"), "linux/amd64")])
    for dummy in range(4):
        doc = index_doc([store.entry(doc)])
    top = index_of(doc["manifests"])  # 5 indexes on the path, top included
    with pytest.raises(ManifestError, match="nesting indexes more than 4 deep"):
        select_manifest(top, parse_platform("linux/amd64"), fetch=store.fetch)
    assert select_manifest(top, parse_platform("linux/amd64"), fetch=store.fetch, max_depth=5).platform == Platform("linux", "amd64")
