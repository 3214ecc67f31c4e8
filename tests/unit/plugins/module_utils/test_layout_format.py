# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The layout documents as data: index.json and oci-layout parsed and refused, descriptors and tags
checked, the entry of a tag found and replaced (the files themselves are test_layout.py's)."""

from __future__ import annotations

import errno
import json

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils.digest import InvalidDigestError
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.layout_format import (
    REF_NAME_ANNOTATION,
    CorruptIndexError,
    InvalidDescriptorError,
    LayoutError,
    LayoutSymlinkError,
    NotALayoutError,
    check_descriptor,
    check_size,
    check_tag,
    find_in_index,
    index_bytes,
    parse_index,
    parse_oci_layout,
    ref_name,
    translate_os_error,
    with_tag,
)

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def entry(digest, tag=None, **fields):
    value = {"mediaType": MANIFEST, "digest": digest, "size": 10, **fields}
    if tag is not None:
        value["annotations"] = {REF_NAME_ANNOTATION: tag}
    return value


def test_an_index_round_trips_and_keeps_what_it_does_not_know():
    doc = {"schemaVersion": 2, "manifests": [entry(DIGEST_A, "v1", platform={"os": "linux"})], "x-vendor": [1]}
    assert parse_index(index_bytes(doc), "index.json") == doc
    assert parse_index(b'{"schemaVersion": 2}', "index.json")["manifests"] == []


@pytest.mark.parametrize("data, message", [
    (b"{", "is not valid JSON"),
    (b"\xff", "is not valid JSON"),
    (b"[]", "is not a JSON object"),
    (b'{"schemaVersion": 1, "manifests": []}', "has schemaVersion 1"),
    (b'{"schemaVersion": 2, "manifests": {}}', "must be a list of JSON objects"),
    (b'{"schemaVersion": 2, "manifests": [1]}', "must be a list of JSON objects"),
])
def test_a_damaged_index_is_refused_in_one_sentence(data, message):
    with pytest.raises(CorruptIndexError) as caught:
        parse_index(data, "/srv/img/index.json")
    assert message in str(caught.value) and "/srv/img/index.json" in str(caught.value)
    assert "\n" not in str(caught.value) and isinstance(caught.value, LayoutError)


@pytest.mark.parametrize("data", [b"", b"{}", b'{"imageLayoutVersion": "2.0.0"}', b'{"imageLayoutVersion": 1}', b"[1]"])
def test_only_layout_version_1_is_a_layout(data):
    with pytest.raises(NotALayoutError, match="does not declare an OCI image layout version 1.x"):
        parse_oci_layout(data, "oci-layout")
    assert parse_oci_layout(b'{"imageLayoutVersion": "1.0.0"}', "oci-layout") == {"imageLayoutVersion": "1.0.0"}


def test_descriptors_are_checked_and_copied():
    original = entry(DIGEST_A, "v1")
    checked = check_descriptor(original)
    assert checked == original
    checked["annotations"]["x"] = "y"
    assert "x" not in original["annotations"]  # a copy: changing it leaves the index alone
    with pytest.raises(InvalidDescriptorError, match="^The entry must be a JSON object, not list.$"):
        check_descriptor([], "the entry")
    with pytest.raises(InvalidDescriptorError, match="has no mediaType"):
        check_descriptor({"digest": DIGEST_A, "size": 1})
    with pytest.raises(InvalidDigestError):
        check_descriptor({"mediaType": MANIFEST, "digest": "sha256:../../etc", "size": 1})
    with pytest.raises(InvalidDescriptorError, match="annotations of a descriptor must be a JSON object"):
        check_descriptor(dict(original, annotations=["v1"]))


@pytest.mark.parametrize("size", [-1, 1.5, "10", True, None])
def test_sizes_are_whole_byte_counts(size):
    with pytest.raises(InvalidDescriptorError, match="must be a whole number of bytes"):
        check_size(size)
    with pytest.raises(InvalidDescriptorError):
        check_descriptor({"mediaType": MANIFEST, "digest": DIGEST_A, "size": size})


@pytest.mark.parametrize("tag", ["", "a\nb", "tab\there", "del\x7f", None, 3])
def test_a_tag_is_a_string_without_control_characters(tag):
    with pytest.raises(LayoutError, match="cannot be used as a tag in an OCI layout"):
        check_tag(tag)
    assert check_tag("v1.2_rc-3 with spaces/ok") == "v1.2_rc-3 with spaces/ok"


def test_ref_name_reads_only_a_string_annotation():
    assert ref_name(entry(DIGEST_A, "v1")) == "v1"
    assert ref_name(entry(DIGEST_A)) is None
    assert ref_name({"annotations": {REF_NAME_ANNOTATION: 5}}) is None
    assert ref_name({"annotations": "v1"}) is None and ref_name("v1") is None


def test_find_in_index_returns_the_first_entry_of_a_tag_checked():
    index = {"manifests": [entry(DIGEST_A, "other"), entry(DIGEST_B, "v1"), entry(DIGEST_A, "v1")]}
    assert find_in_index(index, "v1", "index.json")["digest"] == DIGEST_B
    assert find_in_index(index, "absent", "index.json") is None
    broken = {"manifests": [{"annotations": {REF_NAME_ANNOTATION: "v1"}}]}
    with pytest.raises(InvalidDescriptorError, match="^The entry for tag v1 in index.json has no mediaType.$"):
        find_in_index(broken, "v1", "index.json")


def test_with_tag_replaces_in_place_drops_duplicates_and_keeps_the_rest():
    foreign = {"mediaType": MANIFEST, "digest": DIGEST_B, "size": 3, "x-vendor": True}
    index = {"manifests": [entry(DIGEST_A, "v1"), foreign, entry(DIGEST_B, "v1")]}
    new = entry(DIGEST_B, "v1", platform={"os": "linux"})
    manifests, previous = with_tag(index, "v1", new)
    assert manifests == [new, foreign] and previous == entry(DIGEST_A, "v1")
    manifests, previous = with_tag(index, "v2", new)
    assert manifests == index["manifests"] + [new] and previous is None
    assert index["manifests"][0] == entry(DIGEST_A, "v1")  # the index given is not changed


def test_index_bytes_are_compact_utf8():
    data = index_bytes({"schemaVersion": 2, "manifests": [], "annotations": {"note": "café"}})
    assert data == '{"schemaVersion":2,"manifests":[],"annotations":{"note":"café"}}'.encode("utf-8")
    assert json.loads(data)["annotations"]["note"] == "café"


def test_os_errors_are_told_as_the_operator_meets_them():
    looped = translate_os_error(OSError(errno.ELOOP, "Too many levels of symbolic links"), "reading index.json", "/srv/img/index.json")
    assert isinstance(looped, LayoutSymlinkError) and looped.code == "layout_symlink"
    assert str(looped) == "/srv/img/index.json is a symbolic link, which is refused while reading index.json."
    denied = translate_os_error(PermissionError(errno.EACCES, "Permission denied"), "reading index.json", "/srv/img/index.json")
    assert isinstance(denied, EcrkitError) and not isinstance(denied, LayoutError) and "/srv/img/index.json" in str(denied)
