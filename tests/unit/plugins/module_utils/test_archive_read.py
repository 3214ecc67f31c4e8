# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests for plugins/module_utils/archive_read.py: oci-archive and docker-archive read for what they hold.

OciArchive and DockerArchive opened with open_oci_archive and open_docker_archive (archives written here
and by skopeo, skipped only when the binary is missing), the summary a pull reads of what is at its
destination (read_archive_summary), docker-archives whose manifest.json is hostile or names files that
are not there, and oci-archives without their layout files or whose index names a manifest that is
missing or lies about its size.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils.archive import (
    DOCKER_ARCHIVE,
    OCI_ARCHIVE,
    ArchiveError,
    ArchiveFormatError,
    UnsafeArchiveError,
    image_blobs,
    write_docker_archive,
    write_oci_archive,
)
from ansible_collections.ecrkit.images.plugins.module_utils.archive_read import open_docker_archive, open_oci_archive, read_archive_summary
from ansible_collections.ecrkit.images.plugins.module_utils.layout_format import (
    BLOB_MISSING,
    BLOB_PRESENT,
    BLOB_SIZE_MISMATCH,
    REF_NAME_ANNOTATION,
    BlobNotFoundError,
)

HERE = os.path.dirname(os.path.abspath(__file__))
EMULATOR_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "..", "emulator"))
for directory in (HERE, EMULATOR_DIR):  # the helpers beside this file, the local ECR endpoint
    if directory not in sys.path:
        sys.path.insert(0, directory)

# pylint: disable=wrong-import-position
import sample_images as si  # noqa: E402
from archive_support import (  # noqa: E402,F401  pylint: disable=unused-import
    add_file, add_link, docker_manifest, fixture_images, needs_skopeo, read_as_push_source, tool, valid_members,
)


# summaries ---------------------------------------------------------------------------------------

def test_read_archive_summary(images, tmp_path):
    layout, built = images
    oci, docker = str(tmp_path / "oci.tar"), str(tmp_path / "docker.tar")
    assert read_archive_summary(oci, OCI_ARCHIVE) is None
    write_oci_archive(layout, "multi", oci)
    write_docker_archive(layout, "docker", docker, ["example.com/x:1"])
    assert read_archive_summary(oci, OCI_ARCHIVE) == {
        "format": OCI_ARCHIVE,
        "manifests": [{"tag": "multi", "digest": built["multi"].digest, "mediaType": si.OCI_INDEX, "size": built["multi"].size,
                       "annotations": {"org.opencontainers.image.ref.name": "multi"}}],
        "images": [],
    }
    image = built["docker"].manifests[0]
    summary = read_archive_summary(docker, DOCKER_ARCHIVE)
    assert summary["images"] == [{
        "repo_tags": ["example.com/x:1"],
        "config_digest": image.config.digest,
        "manifest_digest": image.digest,
        "layers": ["blobs/sha256/" + desc.hex for desc in image.layers],
    }]
    assert [(entry["tag"], entry["digest"]) for entry in summary["manifests"]] == [("1", image.digest)]
    with pytest.raises(ArchiveFormatError, match="has no manifest.json"):
        read_archive_summary(oci, DOCKER_ARCHIVE)
    (tmp_path / "junk.tar").write_bytes(b"not an archive at all" * 100)
    with pytest.raises(ArchiveFormatError, match="is not a readable tar archive"):
        read_archive_summary(str(tmp_path / "junk.tar"), OCI_ARCHIVE)
    with pytest.raises(ArchiveError, match="Unknown archive format"):
        read_archive_summary(oci, "tar")


def test_summary_of_an_oci_archive_missing_a_layer(images, tmp_path):
    layout, built = images
    image = built["single"]
    dest = str(tmp_path / "broken.tar")
    layer = "blobs/sha256/" + image.layers[0].hex
    with tarfile.open(dest, "w") as tar:
        for name in ["index.json", "oci-layout"] + ["blobs/sha256/" + desc.hex for desc in image.blob_descriptors()]:
            if name == layer:
                continue
            data = json.dumps({"schemaVersion": 2, "manifests": [image.descriptor.to_json()]}).encode() if name == "index.json" else \
                b'{"imageLayoutVersion":"1.0.0"}' if name == "oci-layout" else layout.read_blob("sha256:" + name[13:], 1 << 30)
            add_file(tar, name, data)
    with pytest.raises(ArchiveFormatError, match=f"lacks blob {image.layers[0].digest}"):
        read_archive_summary(dest, OCI_ARCHIVE)
    with open_oci_archive(dest) as archive:
        assert archive.blob_status(image.layers[0].digest, image.layers[0].size) == BLOB_MISSING
        with pytest.raises(BlobNotFoundError, match="is not in the archive"):
            archive.open_blob(image.layers[0].digest)


# reading -----------------------------------------------------------------------------------------

def test_open_oci_archive_streams_blobs(images, tmp_path):
    layout, built = images
    dest = str(tmp_path / "multi.tar")
    write_oci_archive(layout, "multi", dest)
    with open_oci_archive(dest) as archive:
        assert archive.format == OCI_ARCHIVE and archive.compression is None
        assert archive.list_tags() == ["multi"]
        top = archive.find_tag("multi")
        assert top["digest"] == built["multi"].digest and archive.find_tag("other") is None
        assert image_blobs(archive, top) == image_blobs(layout, layout.find_tag("multi"))
        for desc in built["multi"].blob_descriptors():
            assert archive.blob_status(desc.digest, desc.size, verify=True) == BLOB_PRESENT
            with archive.open_blob(desc.digest) as stream, layout.open_blob(desc.digest) as expected:
                assert stream.read() == expected.read()
        layer = built["multi"].layers[0]
        assert archive.blob_status(layer.digest, layer.size + 1) == BLOB_SIZE_MISMATCH
        with archive.open_blob(layer.digest) as one, archive.open_blob(layer.digest) as two:
            one.seek(10)
            assert one.read(5) == layout.read_blob(layer.digest, 1 << 30)[10:15]
            assert two.read(3) == layout.read_blob(layer.digest, 1 << 30)[:3]  # independent positions
            assert one.tell() == 15 and one.seek(-2, io.SEEK_END) == layer.size - 2
        assert archive.read_blob(built["multi"].digest) == built["multi"].manifest_bytes


@needs_skopeo
def test_open_a_docker_archive_written_by_skopeo(images, tmp_path):
    layout, built = images
    image = built["single"].manifests[0]
    dest = str(tmp_path / "skopeo.tar")
    tool("skopeo", "copy", "--quiet", f"oci:{layout.root}:single", f"docker-archive:{dest}:example.com/team/app:1")
    with open_docker_archive(dest) as archive:
        assert archive.oci_index is None
        entry = archive.manifest[0]
        assert entry["RepoTags"] == ["example.com/team/app:1"]
        assert archive.manifest_digest(entry) is None
        assert [archive.hash_member(layer) for layer in entry["Layers"]] == list(image.diff_ids)
        assert json.loads(archive.read_member(entry["Config"], 1 << 20))["rootfs"]["diff_ids"] == list(image.diff_ids)
        links = [name for name in archive.names() if name.endswith("/layer.tar")]
        assert links and all(archive.has_member(name) for name in links)  # skopeo's legacy symlinks resolve inside
    summary = read_archive_summary(dest, DOCKER_ARCHIVE)
    assert summary["manifests"] == [] and summary["images"][0]["repo_tags"] == ["example.com/team/app:1"]


def test_open_our_docker_archive(images, tmp_path):
    layout, built = images
    dest = str(tmp_path / "docker.tar")
    write_docker_archive(layout, "single", dest, ["app:1"])
    with open_docker_archive(dest) as archive:
        entry = archive.manifest[0]
        assert archive.config_digest(entry) == built["single"].config_digest
        assert archive.manifest_digest(entry) == built["single"].digest
        assert archive.oci_index["manifests"][0]["digest"] == built["single"].digest
        assert archive.member_size(entry["Layers"][0]) == built["single"].layers[0].size
        # the same blob API as an oci-archive: blobs/sha256 members, or names a classic archive maps
        assert archive.read_blob(built["single"].digest) == built["single"].manifest_bytes
        layer = built["single"].layers[0]
        assert archive.blob_status(layer.digest, layer.size, verify=True) == BLOB_PRESENT
        archive.blob_names[layer.digest] = entry["Layers"][1]
        assert archive.blob_status(layer.digest, layer.size, verify=True) != BLOB_PRESENT


# hostile archives --------------------------------------------------------------------------------

HOSTILE = {
    "dotdot": (lambda tar: add_file(tar, "../evil"), UnsafeArchiveError, r"path leaves the archive \(../evil\)"),
    "nested dotdot": (lambda tar: add_file(tar, "blobs/../../evil"), UnsafeArchiveError, "path leaves the archive"),
    "absolute": (lambda tar: add_file(tar, "/etc/evil"), UnsafeArchiveError, r"absolute path \(/etc/evil\)"),
    "symlink to absolute": (lambda tar: add_link(tar, "layer.tar", "/etc/passwd"), UnsafeArchiveError,
                            r"link layer.tar to an absolute path \(/etc/passwd\)"),
    "symlink escaping": (lambda tar: add_link(tar, "dir/layer.tar", "../../outside"), UnsafeArchiveError,
                         "pointing outside the archive"),
    "hardlink escaping": (lambda tar: add_link(tar, "layer.tar", "../outside", tarfile.LNKTYPE), UnsafeArchiveError,
                          "pointing outside the archive"),
    "hardlink to absolute": (lambda tar: add_link(tar, "layer.tar", "/etc/shadow", tarfile.LNKTYPE), UnsafeArchiveError,
                             "to an absolute path"),
    "duplicate": (lambda tar: (add_file(tar, "manifest.json", docker_manifest(["layer.tar"])), valid_members(tar),
                               add_file(tar, "./manifest.json", docker_manifest(["other.tar"]))),
                  UnsafeArchiveError, "holds manifest.json more than once"),
    "device": (lambda tar: add_file(tar, "dev/sda", b"", type=tarfile.BLKTYPE), UnsafeArchiveError, "device, FIFO or sparse"),
    "fifo": (lambda tar: add_file(tar, "pipe", b"", type=tarfile.FIFOTYPE), UnsafeArchiveError, "device, FIFO or sparse"),
    "missing layer": (lambda tar: (valid_members(tar), add_file(tar, "manifest.json", docker_manifest(["layer.tar", "gone.tar"]))),
                      ArchiveFormatError, "names gone.tar, which is not a file in the archive"),
    "manifest naming a path outside": (lambda tar: (valid_members(tar), add_file(tar, "manifest.json", docker_manifest(["../../etc/passwd"]))),
                                       UnsafeArchiveError, "path leaves the archive"),
    "manifest naming a directory": (lambda tar: (valid_members(tar), add_file(tar, "d", b"", type=tarfile.DIRTYPE),
                                                 add_file(tar, "manifest.json", docker_manifest(["d"]))),
                                    ArchiveFormatError, "names d, which is not a file"),
    "link loop": (lambda tar: (valid_members(tar), add_link(tar, "a.tar", "b.tar"), add_link(tar, "b.tar", "a.tar"),
                               add_file(tar, "manifest.json", docker_manifest(["a.tar"]))),
                  ArchiveFormatError, "part of a loop"),
    "dangling link": (lambda tar: (valid_members(tar), add_link(tar, "a.tar", "nothing.tar")), ArchiveFormatError,
                      "points to nothing.tar, which is not in the archive"),
    "no manifest": (valid_members, ArchiveFormatError, "has no manifest.json"),
    "manifest not json": (lambda tar: add_file(tar, "manifest.json", b"[{"), ArchiveFormatError, "manifest.json .* is not valid JSON"),
    "manifest wrong shape": (lambda tar: add_file(tar, "manifest.json", b'[{"Config": 1}]'), ArchiveFormatError,
                             "needs a Config file name and a list of Layers"),
    "empty manifest": (lambda tar: add_file(tar, "manifest.json", b"[]"), ArchiveFormatError, "not a non-empty list"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_docker_archives_are_refused(tmp_path, case):
    build, error, message = HOSTILE[case]
    work = tmp_path / "work"
    work.mkdir()
    path = str(work / "hostile.tar")
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        build(tar)
    before = sorted(os.listdir(tmp_path)), sorted(os.listdir(work))
    with pytest.raises(error, match=message) as info:
        open_docker_archive(path)
    assert str(info.value).endswith(".") and "\n" not in str(info.value)
    assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(work))) == before  # nothing written anywhere


def test_oci_archive_without_layout_files(tmp_path):
    path = str(tmp_path / "x.tar")
    with tarfile.open(path, "w") as tar:
        add_file(tar, "index.json", b'{"schemaVersion": 2, "manifests": []}')
    with pytest.raises(ArchiveFormatError, match="is not an oci-archive: it has no oci-layout or no index.json"):
        open_oci_archive(path)
    with tarfile.open(path, "w") as tar:
        add_file(tar, "index.json", b'{"schemaVersion": 2, "manifests": []}')
        add_file(tar, "oci-layout", b'{"imageLayoutVersion": "9"}')
    with pytest.raises(ArchiveFormatError, match="does not declare an OCI image layout version 1.x"):
        open_oci_archive(path)
    with tarfile.open(path, "w") as tar:
        add_file(tar, "index.json", b'{"schemaVersion": 2, "manifests": [{"mediaType": "x", "digest": "sha256:../../etc", "size": 1,'
                                    b' "annotations": {"org.opencontainers.image.ref.name": "t"}}]}')
        add_file(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    with open_oci_archive(path) as archive:
        with pytest.raises(Exception, match="not a valid digest"):
            archive.find_tag("t")
        with pytest.raises(Exception, match="not a valid digest"):
            archive.open_blob("sha256:../../../etc/passwd")
    with pytest.raises(ArchiveFormatError, match="not a valid digest"):
        read_archive_summary(path, OCI_ARCHIVE)


# archives that name what they do not hold, as a push source and as a pull summary -----------------

@pytest.mark.parametrize("reader", [read_as_push_source, read_archive_summary], ids=["push source", "pull summary"])
def test_docker_archive_naming_files_that_are_not_there(tmp_path, reader):
    path = str(tmp_path / "x.tar")
    for layers, config, missing in ((["layer.tar", "gone.tar"], "config.json", "gone.tar"), (["layer.tar"], "gone.json", "gone.json"),
                                    (["blobs/sha256/" + "cd" * 32], "config.json", "blobs/sha256/" + "cd" * 32)):
        with tarfile.open(path, "w") as tar:
            valid_members(tar)
            add_file(tar, "manifest.json", docker_manifest(layers, config))
        with pytest.raises(ArchiveFormatError, match=f"names {missing}, which is not a file in the archive"):
            reader(path, DOCKER_ARCHIVE)


def test_oci_archive_whose_index_names_a_manifest_that_is_not_there(images, tmp_path):
    layout, built = images
    image = built["single"]
    path = str(tmp_path / "x.tar")
    index = json.dumps({"schemaVersion": 2, "manifests": [dict(image.descriptor.to_json(), annotations={REF_NAME_ANNOTATION: "t"})]})
    with tarfile.open(path, "w") as tar:
        add_file(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add_file(tar, "index.json", index.encode())
    with pytest.raises(ArchiveFormatError) as caught:
        read_archive_summary(path, OCI_ARCHIVE)
    assert f"Blob {image.digest} is not in the archive" in str(caught.value)
    with open_oci_archive(path) as archive:  # a push finds it missing when it reads the image
        assert archive.find_tag("t")["digest"] == image.digest
        with pytest.raises(BlobNotFoundError):
            image_blobs(archive, archive.find_tag("t"))


def test_oci_archive_whose_manifest_lies_about_its_size(images, tmp_path):
    layout, built = images
    image = built["single"]
    path = str(tmp_path / "x.tar")
    with tarfile.open(path, "w") as tar:
        add_file(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add_file(tar, "index.json", json.dumps({"schemaVersion": 2, "manifests": [dict(image.descriptor.to_json(), size=10 ** 12)]}).encode())
        for blob in image.blob_descriptors():
            add_file(tar, "blobs/sha256/" + blob.hex, layout.read_blob(blob.digest, 1 << 30))
    with pytest.raises(ArchiveFormatError, match="claims 1000000000000 bytes, more than a manifest may have"):
        read_archive_summary(path, OCI_ARCHIVE)


# a symbolic link at the destination (issue 11) ---------------------------------------------------

def test_a_symbolic_link_at_the_destination_is_not_followed_by_the_summary(images, tmp_path):
    layout, dummy = images
    real = str(tmp_path / "real.tar")
    write_oci_archive(layout, "single", real)
    os.symlink(real, tmp_path / "link.tar")
    with pytest.raises(UnsafeArchiveError, match="is a symbolic link, which is not followed here"):
        read_archive_summary(str(tmp_path / "link.tar"), OCI_ARCHIVE)
    with open_oci_archive(str(tmp_path / "link.tar")) as archive:  # a push source given as a link is followed
        assert archive.find_tag("single")
