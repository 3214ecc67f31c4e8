# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests for plugins/module_utils/archive.py: oci-archive and docker-archive, written and read.

What is written is read back by skopeo (skipped only when the binary is missing); what is read
includes archives skopeo wrote and hand-made hostile ones.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.ecrkit.images.plugins.module_utils import archive as archive_module
from ansible_collections.ecrkit.images.plugins.module_utils import tararchive
from ansible_collections.ecrkit.images.plugins.module_utils.archive import (
    DOCKER_ARCHIVE,
    FORMATS,
    OCI_ARCHIVE,
    ArchiveError,
    ArchiveFormatError,
    UnsafeArchiveError,
    check_repo_tag,
    image_blobs,
    write_docker_archive,
    write_oci_archive,
)
from ansible_collections.ecrkit.images.plugins.module_utils.archive_read import open_docker_archive, open_oci_archive, read_archive_summary
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.layout import (
    BLOB_DIGEST_MISMATCH,
    BLOB_MISSING,
    BLOB_PRESENT,
    BLOB_SIZE_MISMATCH,
    REF_NAME_ANNOTATION,
    BlobMismatchError,
    BlobNotFoundError,
    OciLayout,
)

EMULATOR_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "emulator"))
if EMULATOR_DIR not in sys.path:
    sys.path.insert(0, EMULATOR_DIR)

import sample_images as si  # noqa: E402  pylint: disable=wrong-import-position

needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
PLATFORMS = ["linux/amd64", "linux/arm64/v8"]
REPO_TAGS = ["123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app:1.4.2", "app:latest"]


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path):
    with open(path, "rb") as handle:
        return sha(handle.read())


def tool(*argv):
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout


def uncompressed_digest(path):
    with open(path, "rb") as handle:
        magic = handle.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    with opener(path, "rb") as handle:
        return sha(handle.read())


@pytest.fixture(name="images", scope="module")
def fixture_images(tmp_path_factory):
    """One layout holding several images that share layers."""
    root = str(tmp_path_factory.mktemp("images") / "layout")
    built = {
        "single": si.build_image(root, "single", si.demo_layers()),
        "multi": si.build_demo_image(root, "multi", platforms=PLATFORMS),
        "docker": si.build_demo_image(root, "docker", docker=True),
        "plain": si.build_random_image(root, "plain", count=2, size=96 * 1024, seed=3, compress=False),
    }
    return OciLayout(root), built


def members(path):
    with tarfile.open(path) as tar:
        return [(info.name, info.type, info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname) for info in tar]


# oci-archive -------------------------------------------------------------------------------------

def test_oci_archive_holds_exactly_that_image_deterministically(images, tmp_path):
    layout, built = images
    image = built["single"]
    dest = str(tmp_path / "single.tar")
    result = write_oci_archive(layout, "single", dest)
    assert result["descriptor"] == dict(image.descriptor.to_json(), annotations={REF_NAME_ANNOTATION: "single"})
    assert result["size"] == os.path.getsize(dest)
    expected = ["blobs", "blobs/sha256"] + sorted("blobs/sha256/" + desc.hex for desc in image.blob_descriptors())
    listed = members(dest)
    assert [entry[0] for entry in listed] == expected + ["index.json", "oci-layout"]  # sorted, nothing of the others
    assert {entry[3:] for entry in listed} == {(0, 0, 0, "", "")}
    assert {(entry[1], entry[2]) for entry in listed} == {(tarfile.DIRTYPE, 0o755), (tarfile.REGTYPE, 0o644)}
    with tarfile.open(dest) as tar:
        index = json.loads(tar.extractfile("index.json").read())
        for desc in image.blob_descriptors():
            assert sha(tar.extractfile("blobs/sha256/" + desc.hex).read()) == desc.digest
    assert index == {"schemaVersion": 2, "mediaType": si.OCI_INDEX, "manifests": [result["descriptor"]]}
    # byte-identical on a second write, and from another layout holding the same image
    again = str(tmp_path / "again.tar")
    write_oci_archive(layout, "single", again)
    other = OciLayout(si.build_image(str(tmp_path / "other"), "single", si.demo_layers()).layout)
    third = str(tmp_path / "third.tar")
    write_oci_archive(other, "single", third)
    assert file_digest(dest) == file_digest(again) == file_digest(third)
    assert [name for name in os.listdir(tmp_path) if name.startswith(".")] == []  # no temp file left


@needs_skopeo
def test_skopeo_reads_and_copies_the_oci_archive(images, tmp_path):
    layout, built = images
    image = built["single"]
    dest = str(tmp_path / "single.tar")
    write_oci_archive(layout, "single", dest)
    inspected = json.loads(tool("skopeo", "inspect", f"oci-archive:{dest}"))
    assert inspected["Digest"] == image.digest
    assert inspected["Layers"] == [desc.digest for desc in image.layers]
    copied = OciLayout(str(tmp_path / "copied"), create=True)
    tool("skopeo", "copy", "--quiet", f"oci-archive:{dest}", f"oci:{copied.root}:single")
    assert copied.find_tag("single")["digest"] == image.digest
    for desc in image.blob_descriptors():
        assert copied.has_blob(desc.digest, desc.size, verify=True)


@needs_skopeo
def test_multi_platform_oci_archive(images, tmp_path):
    layout, built = images
    image = built["multi"]
    dest = str(tmp_path / "multi.tar")
    write_oci_archive(layout, "multi", dest)
    assert tool("skopeo", "inspect", "--raw", f"oci-archive:{dest}").encode() == image.manifest_bytes
    copied = OciLayout(str(tmp_path / "copied"), create=True)
    tool("skopeo", "copy", "--quiet", "--all", f"oci-archive:{dest}", f"oci:{copied.root}:multi")
    assert copied.find_tag("multi")["digest"] == image.digest
    for desc in image.blob_descriptors():
        assert copied.has_blob(desc.digest, desc.size, verify=True)


def test_image_blobs_lists_every_blob_once(images):
    layout, built = images
    for name, image in built.items():
        found = image_blobs(layout, layout.find_tag(name))
        assert sorted(desc["digest"] for desc in found) == sorted(desc.digest for desc in image.blob_descriptors())
        assert found[0]["digest"] == image.digest


# docker-archive ----------------------------------------------------------------------------------

def test_docker_archive_layout_and_determinism(images, tmp_path):
    layout, built = images
    image = built["single"].manifests[0]
    dest = str(tmp_path / "docker.tar")
    result = write_docker_archive(layout, "single", dest, REPO_TAGS + [REPO_TAGS[0]])
    assert result["descriptor"] == built["single"].descriptor.to_json()  # without the layout's ref.name
    assert result["config"]["digest"] == image.config.digest
    with tarfile.open(dest) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
        index = json.loads(tar.extractfile("index.json").read())
        names = tar.getnames()
    assert manifest == [{
        "Config": "blobs/sha256/" + image.config.hex,
        "RepoTags": REPO_TAGS,  # the duplicate is dropped
        "Layers": ["blobs/sha256/" + desc.hex for desc in image.layers],
    }]
    assert [entry["annotations"] for entry in index["manifests"]] == [
        {"io.containerd.image.name": REPO_TAGS[0], REF_NAME_ANNOTATION: "1.4.2"},
        {"io.containerd.image.name": "docker.io/library/app:latest", REF_NAME_ANNOTATION: "latest"},
    ]
    assert {entry["digest"] for entry in index["manifests"]} == {image.digest}
    assert names == sorted(names)
    again = str(tmp_path / "again.tar")
    write_docker_archive(layout, "single", again, REPO_TAGS)
    assert file_digest(dest) == file_digest(again)


@needs_skopeo
@pytest.mark.parametrize("name", ["single", "docker", "plain"])
def test_skopeo_reads_and_copies_the_docker_archive(images, tmp_path, name):
    layout, built = images
    image = built[name].manifests[0]
    dest = str(tmp_path / "docker.tar")
    write_docker_archive(layout, name, dest, ["example.com/team/app:1"])
    inspected = json.loads(tool("skopeo", "inspect", f"docker-archive:{dest}"))
    assert inspected["Layers"] == list(image.diff_ids)  # a docker-archive source reports uncompressed digests
    assert inspected["RepoTags"] == ["1"] or inspected["RepoTags"] == []
    copied = OciLayout(str(tmp_path / "copied"), create=True)
    tool("skopeo", "copy", "--quiet", f"docker-archive:{dest}:example.com/team/app:1", f"oci:{copied.root}:{name}")
    manifest = json.loads(copied.read_blob(copied.find_tag(name)["digest"]))
    # skopeo re-serialises the config when it converts to OCI; its content is the same
    config, original = json.loads(copied.read_blob(manifest["config"]["digest"])), json.loads(image.config_bytes)
    assert config["rootfs"] == original["rootfs"]
    assert (config["os"], config["architecture"], config["config"]["Env"]) == ("linux", "amd64", original["config"]["Env"])
    layer_digests = [uncompressed_digest(copied.blob_path(desc["digest"])) for desc in manifest["layers"]]
    assert layer_digests == list(image.diff_ids)  # same layer contents
    if name == "plain":  # stored uncompressed: skopeo reported the very blob digests of the layout
        assert inspected["Layers"] == [desc.digest for desc in image.layers]


def test_docker_archive_refuses_an_index_and_bad_repo_tags(images, tmp_path):
    layout, dummy = images
    dest = str(tmp_path / "docker.tar")
    with pytest.raises(ArchiveError, match="a docker-archive holds a single platform's image manifest, so select one platform"):
        write_docker_archive(layout, "multi", dest, [])
    for bad in ("App:1", "app", "app:", "app:-x", "a b:1", "app@sha256:" + "0" * 64, "/app:1", "app:" + "x" * 129, 5):
        with pytest.raises(ArchiveError, match="is not a repository:tag that a docker-archive can carry"):
            write_docker_archive(layout, "single", dest, [bad])
    assert os.listdir(tmp_path) == []
    for good in ("app:1", "localhost:5000/a/b:x", "123456789012.dkr.ecr.us-west-2.amazonaws.com/team/app:1.2", "a__b/c--d:v_1.0"):
        assert check_repo_tag(good) == good


def test_untagged_docker_archive(images, tmp_path):
    layout, built = images
    dest = str(tmp_path / "docker.tar")
    write_docker_archive(layout, "single", dest, [])
    summary = read_archive_summary(dest, DOCKER_ARCHIVE)
    assert summary["images"][0]["repo_tags"] == []
    assert summary["images"][0]["manifest_digest"] == built["single"].digest
    assert summary["manifests"] == [{"tag": None, "digest": built["single"].digest, "mediaType": si.OCI_MANIFEST,
                                     "size": built["single"].size, "annotations": {}}]


# atomicity and destinations ----------------------------------------------------------------------

@pytest.mark.parametrize("writer", [write_oci_archive, lambda layout, tag, dest: write_docker_archive(layout, tag, dest, ["a:1"])])
def test_a_damaged_layer_leaves_the_destination_as_it_was(tmp_path, writer):
    built = si.build_image(str(tmp_path / "layout"), "v1", si.demo_layers())
    layout = OciLayout(built.layout)
    dest = tmp_path / "out" / "image.tar"
    dest.parent.mkdir()
    dest.write_bytes(b"the previous archive")
    layer = built.layers[1]
    with open(layout.blob_path(layer.digest), "r+b") as handle:  # same size, other bytes
        handle.seek(10)
        handle.write(b"\x00\x01")
    with pytest.raises(BlobMismatchError, match=f"Blob {layer.digest} in {layout.root} does not hash to its digest; pull the image again"):
        writer(layout, "v1", str(dest))
    assert dest.read_bytes() == b"the previous archive" and os.listdir(dest.parent) == ["image.tar"]
    with open(layout.blob_path(layer.digest), "ab") as handle:
        handle.write(b"!")
    with pytest.raises(BlobMismatchError, match="is damaged"):
        writer(layout, "v1", str(dest))
    os.unlink(layout.blob_path(layer.digest))
    with pytest.raises(BlobNotFoundError, match=f"Blob {layer.digest} is not in the OCI layout"):
        writer(layout, "v1", str(dest))
    assert dest.read_bytes() == b"the previous archive" and os.listdir(dest.parent) == ["image.tar"]


def test_destinations_that_are_refused(images, tmp_path):
    layout, dummy = images
    (tmp_path / "target").write_bytes(b"keep me")
    os.symlink(tmp_path / "target", tmp_path / "link.tar")
    with pytest.raises(UnsafeArchiveError, match="is a symbolic link .*refusing to replace it"):
        write_oci_archive(layout, "single", str(tmp_path / "link.tar"))
    assert (tmp_path / "target").read_bytes() == b"keep me"
    with pytest.raises(ArchiveError, match="does not exist"):
        write_oci_archive(layout, "single", str(tmp_path / "missing" / "x.tar"))
    with pytest.raises(ArchiveError, match="it is a directory"):
        write_oci_archive(layout, "single", str(tmp_path))
    with pytest.raises(BlobNotFoundError, match=r"No image is tagged nope in the OCI layout .* \(its tags: "):
        write_oci_archive(layout, "nope", str(tmp_path / "x.tar"))


def test_writing_streams_in_constant_memory(tmp_path):
    built = si.build_random_image(str(tmp_path / "layout"), "big", count=1, size=24 << 20, seed=1)
    layout = OciLayout(built.layout)
    tracemalloc.start()
    try:
        write_oci_archive(layout, "big", str(tmp_path / "big.tar"), fsync=False)
        write_docker_archive(layout, "big", str(tmp_path / "big-docker.tar"), ["big:1"], fsync=False)
        with open_oci_archive(str(tmp_path / "big.tar")) as archive:
            assert archive.blob_status(built.layers[0].digest, built.layers[0].size, verify=True) == BLOB_PRESENT
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6 << 20, peak


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


@pytest.mark.parametrize("compression", ["gzip", "bzip2", "xz"])
def test_compressed_archives_are_read_through_a_temporary_copy(images, tmp_path, compression):
    layout, built = images
    plain = str(tmp_path / "single.tar")
    write_oci_archive(layout, "single", plain)
    packed = str(tmp_path / ("single.tar." + compression))
    opener = {"gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open}[compression]
    with open(plain, "rb") as source, opener(packed, "wb") as target:
        shutil.copyfileobj(source, target)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with open_oci_archive(packed, tmpdir=str(scratch)) as archive:
        assert archive.compression == compression
        assert archive.find_tag("single")["digest"] == built["single"].digest
        for desc in built["single"].blob_descriptors():
            assert archive.has_blob(desc.digest, desc.size, verify=True)
        assert os.listdir(scratch) == []  # an anonymous file: nothing to clean up, even after a crash
    with pytest.raises(ArchiveFormatError, match=f"is compressed \\({compression}\\); it is not decompressed here"):
        read_archive_summary(packed, OCI_ARCHIVE)  # a pull rewrites it: it never decompresses to compare


def test_unreadable_compressions(tmp_path):
    (tmp_path / "a.tar.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 100)
    with pytest.raises(ArchiveFormatError, match=r"compressed with zstd, which cannot be read here; decompress it first \(zstd -d\)"):
        open_oci_archive(str(tmp_path / "a.tar.zst"))
    (tmp_path / "a.tar.gz").write_bytes(gzip.compress(b"x" * 10000)[:-20])
    with pytest.raises(ArchiveFormatError, match="is not a valid gzip file"):
        open_docker_archive(str(tmp_path / "a.tar.gz"))
    with pytest.raises(ArchiveFormatError, match="There is no archive at"):
        open_docker_archive(str(tmp_path / "none.tar"))
    with pytest.raises(ArchiveFormatError, match="not a regular file"):
        open_docker_archive(str(tmp_path))


@needs_skopeo
def test_open_a_docker_archive_written_by_skopeo(images, tmp_path):
    layout, built = images
    image = built["single"].manifests[0]
    dest = str(tmp_path / "skopeo.tar")
    tool("skopeo", "copy", "--quiet", f"oci:{layout.root}:single", f"docker-archive:{dest}:example.com/team/app:1")
    with open_docker_archive(dest) as archive:
        assert archive.oci_index is None
        entry = archive.find_repo_tag("example.com/team/app:1")
        assert entry is archive.manifest[0] and archive.find_repo_tag("other:1") is None
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

def add_file(tar, name, data=b"x", **fields):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


def add_link(tar, name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def docker_manifest(layers, config="config.json"):
    return json.dumps([{"Config": config, "RepoTags": ["a:1"], "Layers": layers}]).encode()


def valid_members(tar):
    add_file(tar, "config.json", b"{}")
    add_file(tar, "layer.tar", b"layer")


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


def test_links_inside_the_archive_are_followed(tmp_path):
    path = str(tmp_path / "links.tar")
    with tarfile.open(path, "w") as tar:
        valid_members(tar)
        add_link(tar, "legacy/layer.tar", "../layer.tar")
        add_link(tar, "hard.tar", "layer.tar", tarfile.LNKTYPE)
        add_link(tar, "chain.tar", "legacy/layer.tar")
        add_file(tar, "manifest.json", docker_manifest(["legacy/layer.tar", "hard.tar", "./chain.tar"]))
    with open_docker_archive(path) as archive:
        for name in archive.manifest[0]["Layers"]:
            with archive.open_member(name) as handle:
                assert handle.read() == b"layer"
        assert archive.config_digest(archive.manifest[0]) == sha(b"{}")


def test_truncated_and_malformed_tars(images, tmp_path):
    layout, dummy = images
    good = str(tmp_path / "good.tar")
    write_docker_archive(layout, "plain", good, ["a:1"])
    with open(good, "rb") as handle:
        data = handle.read()
    for name, content, message in (("cut.tar", data[:len(data) // 2], "truncated|not a readable tar"),
                                   ("empty.tar", b"", "not a readable tar archive"),
                                   ("noise.tar", os.urandom(4096), "not a readable tar archive")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ArchiveFormatError, match=message):
            open_docker_archive(str(tmp_path / name))


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


def test_tampered_blob_in_an_oci_archive(images, tmp_path):
    layout, built = images
    image = built["single"]
    path = str(tmp_path / "x.tar")
    write_oci_archive(layout, "single", path)
    with tarfile.open(path) as tar:
        offset = tar.getmember("blobs/sha256/" + image.layers[0].hex).offset_data
    with open(path, "r+b") as handle:
        handle.seek(offset + 3)
        handle.write(b"\xff")
    with open_oci_archive(path) as archive:
        assert archive.blob_status(image.layers[0].digest, image.layers[0].size) == BLOB_PRESENT
        assert archive.blob_status(image.layers[0].digest, image.layers[0].size, verify=True) == BLOB_DIGEST_MISMATCH


# hostile archives of both kinds, as a push reads its source and as a pull reads what is at its dest ------

def _pax_path(tar, name):
    """A member whose ustar name is harmless but whose PAX header renames it (readers apply the header)."""
    info = tarfile.TarInfo("innocent")
    info.size = 1
    info.pax_headers = {"path": name}
    tar.addfile(info, io.BytesIO(b"x"))


BLOB_NAME = "blobs/sha256/" + "ab" * 32
UNSAFE = {
    "dotdot": (lambda tar: add_file(tar, "../evil"), "path leaves the archive"),
    "dotdot deep": (lambda tar: add_file(tar, "blobs/sha256/../../../evil"), "path leaves the archive"),
    "dotdot in a PAX header": (lambda tar: _pax_path(tar, "../../evil"), "path leaves the archive"),
    "absolute in a PAX header": (lambda tar: _pax_path(tar, "/tmp/evil"), "absolute path"),
    "absolute": (lambda tar: add_file(tar, "/etc/evil"), "absolute path"),
    "absolute long name": (lambda tar: add_file(tar, "/" + "a" * 300), "absolute path"),
    "symlink to absolute": (lambda tar: add_link(tar, BLOB_NAME, "/etc/passwd"), "to an absolute path (/etc/passwd)"),
    "symlink escaping": (lambda tar: add_link(tar, BLOB_NAME, "../../../outside"), "pointing outside the archive"),
    "symlink escaping once normalised": (lambda tar: add_link(tar, "a", "b/../../c"), "pointing outside the archive"),
    "symlink to the archive root": (lambda tar: add_link(tar, "blobs/root", ".."), "pointing outside the archive"),
    "hardlink escaping": (lambda tar: add_link(tar, BLOB_NAME, "../outside", tarfile.LNKTYPE), "pointing outside the archive"),
    "hardlink to absolute": (lambda tar: add_link(tar, BLOB_NAME, "/etc/shadow", tarfile.LNKTYPE), "to an absolute path"),
    "duplicate index.json": (lambda tar: add_file(tar, "./index.json", b'{"schemaVersion": 2, "manifests": []}'),
                             "holds index.json more than once"),
    "duplicate blob": (lambda tar: (add_file(tar, BLOB_NAME, b"one"), add_file(tar, BLOB_NAME, b"two")), "more than once"),
    "device": (lambda tar: add_file(tar, "blobs/sda", b"", type=tarfile.CHRTYPE), "device, FIFO or sparse"),
    "fifo": (lambda tar: add_file(tar, "blobs/pipe", b"", type=tarfile.FIFOTYPE), "device, FIFO or sparse"),
    "line break in a name": (lambda tar: add_file(tar, "../a\nTraceback (most recent call last):"),
                             "leaves the archive (../a\\nTraceback (most recent call last):)"),
    "undecodable link target": (lambda tar: add_link(tar, "blobs/l", "../../\udcff"), "pointing outside the archive (../../\\udcff)"),
    "NUL in a PAX name": (lambda tar: _pax_path(tar, "blobs/a\x00/../../evil"), "NUL byte|leaves the archive"),
}


def _layout_members(tar, archive_format):
    """What makes the archive look like one of ``archive_format``, before the hostile member."""
    add_file(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    add_file(tar, "index.json", b'{"schemaVersion": 2, "manifests": []}')
    if archive_format == DOCKER_ARCHIVE:
        valid_members(tar)
        add_file(tar, "manifest.json", docker_manifest(["layer.tar"]))


def _read_as_push_source(path, archive_format):
    opener = open_oci_archive if archive_format == OCI_ARCHIVE else open_docker_archive
    with opener(path):
        pass


@pytest.mark.parametrize("reader", [_read_as_push_source, read_archive_summary], ids=["push source", "pull summary"])
@pytest.mark.parametrize("archive_format", [OCI_ARCHIVE, DOCKER_ARCHIVE])
@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archives_are_refused_whole_and_nothing_is_written(tmp_path, case, archive_format, reader):
    build, message = UNSAFE[case]
    outside = tmp_path / "outside"
    outside.write_bytes(b"untouched")
    work = tmp_path / "work"
    work.mkdir()
    path = str(work / "hostile.tar")
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT if "PAX" in case else tarfile.GNU_FORMAT) as tar:
        _layout_members(tar, archive_format)
        build(tar)
    before = {str(item): item.stat().st_mtime_ns for item in tmp_path.rglob("*")}
    with pytest.raises(UnsafeArchiveError) as caught:
        reader(path, archive_format)
    text = str(caught.value)
    assert any(part in text for part in message.split("|")), text
    assert text.endswith(".") and "\n" not in text and path in text
    assert {str(item): item.stat().st_mtime_ns for item in tmp_path.rglob("*")} == before  # nothing written anywhere
    assert outside.read_bytes() == b"untouched"


@pytest.mark.parametrize("reader", [_read_as_push_source, read_archive_summary], ids=["push source", "pull summary"])
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


def _small_archive(archive_format):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _layout_members(tar, archive_format)
        add_link(tar, "legacy/layer.tar", "../layer.tar")
    return buffer.getvalue()


SMALL_ARCHIVES = {archive_format: _small_archive(archive_format) for archive_format in FORMATS}


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(FORMATS)),
       st.lists(st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=8)), min_size=1, max_size=6),
       st.booleans())
def test_damaged_archives_raise_only_archive_errors(archive_format, edits, truncate):
    """Bytes of a small valid archive overwritten here and there (headers, sizes, names, checksums), or
    cut short: reading it raises an EcrkitError with a one-line message, or reads it; never anything else."""
    data = bytearray(SMALL_ARCHIVES[archive_format])
    for position, chunk in edits:
        position %= len(data)
        data[position:position + len(chunk)] = chunk
    if truncate:
        data = data[:edits[0][0] % len(data)]
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "damaged.tar")
        with open(path, "wb") as handle:
            handle.write(bytes(data))
        for reader in (_read_as_push_source, read_archive_summary):
            try:
                reader(path, archive_format)
            except EcrkitError as exc:
                assert str(exc) and "\n" not in str(exc) and "Traceback" not in str(exc)
        assert os.listdir(directory) == ["damaged.tar"]


_NAME_PARTS = st.sampled_from(["blobs", "sha256", "ab" * 32, "..", ".", "", "layer.tar", "manifest.json", "index.json", "oci-layout",
                               "a", "/", "\\", "~", "\u00e9", " ", "\n", "\udcff", "x" * 300])
_MEMBER_NAMES = st.lists(_NAME_PARTS, min_size=1, max_size=5).map("/".join)
_MEMBERS = st.lists(st.tuples(st.sampled_from([tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                                               tarfile.FIFOTYPE, tarfile.CHRTYPE]),
                              _MEMBER_NAMES, _MEMBER_NAMES, st.binary(max_size=4)), max_size=6)


@settings(max_examples=250, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(FORMATS)), _MEMBERS)
def test_archives_of_any_members_are_read_safely_or_refused(archive_format, members):
    """Members of every kind with names and link targets built from '..', '/', '.', real names: an archive
    that opens has only relative, '..'-free names, and every link leads to a member; else an EcrkitError."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _layout_members(tar, archive_format)
        for kind, name, target, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = target
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "members.tar")
        with open(path, "wb") as handle:
            handle.write(buffer.getvalue())
        opener = open_oci_archive if archive_format == OCI_ARCHIVE else open_docker_archive
        try:
            with opener(path) as archive:
                for name in archive.names():
                    assert not name.startswith("/") and ".." not in name.split("/") and name
                    if archive.has_member(name):
                        assert archive.member_size(name) >= 0
                read_archive_summary(path, archive_format)
        except EcrkitError as exc:
            text = str(exc)
            assert text.endswith(".") and "\n" not in text and len(text) < 1000 + len(path)
            text.encode("utf-8")  # no undecodable name shows through as a lone surrogate
        assert os.listdir(directory) == ["members.tar"]


# hostile hosts and hostile archives (issue 11) ------------------------------------------------------

NOBODY = 65534  # the other local user of the as_nobody and shared_tmp fixtures (conftest.py)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files away")


def within_deadline(action, release=None, timeout=30):
    """``action()`` in a thread: ("returned", value) or ("raised", exception); ("hung", None) when it is
    still running after ``timeout`` seconds, after which ``release()`` unblocks it, so a regression fails
    the test instead of hanging it."""
    outcome = []

    def run():
        try:
            outcome.append(("returned", action()))
        except BaseException as exc:  # pylint: disable=broad-except
            outcome.append(("raised", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if release is not None:
            release()
        thread.join(timeout)
        return ("hung", None)
    return outcome[0]


def release_fifo(path):
    """Unblock whoever waits to open the FIFO at ``path`` for reading."""
    def release():
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    return release


def one_sentence(exc):
    text = str(exc)
    assert text.endswith(".") and "\n" not in text and "Traceback" not in text, text
    return text


# FIFOs and other non-regular files are refused without waiting on them

def test_a_fifo_another_user_put_at_the_destination_is_refused_without_waiting(images, as_nobody, shared_tmp):
    layout, dummy = images
    dest = os.path.join(shared_tmp, "app.tar")
    assert as_nobody(lambda: os.mkfifo(dest, 0o666)) == "ok"
    assert os.stat(dest).st_uid == NOBODY
    for archive_format in FORMATS:  # the idempotency check of a pull, before any API call
        kind, result = within_deadline(lambda fmt=archive_format: read_archive_summary(dest, fmt), release_fifo(dest))
        assert kind == "raised" and isinstance(result, ArchiveFormatError), (kind, result)
        assert f"{dest} is a FIFO, not a regular file" in one_sentence(result)
    kind, result = within_deadline(lambda: archive_module.check_archive_destination(dest), release_fifo(dest))
    assert kind == "raised" and isinstance(result, UnsafeArchiveError), (kind, result)
    for writer in (lambda: write_oci_archive(layout, "single", dest), lambda: write_docker_archive(layout, "docker", dest, ["a:1"])):
        kind, result = within_deadline(writer, release_fifo(dest))
        assert kind == "raised" and isinstance(result, UnsafeArchiveError), (kind, result)
        assert f"{dest} is a FIFO, not a regular file; refusing to replace it" in one_sentence(result)
    assert stat.S_ISFIFO(os.lstat(dest).st_mode) and os.listdir(shared_tmp) == ["app.tar"]


def test_non_regular_sources_are_refused_without_waiting(tmp_path):
    fifo = str(tmp_path / "pipe.tar")
    os.mkfifo(fifo)
    os.symlink(fifo, tmp_path / "link-to-pipe.tar")
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(tmp_path / "sock.tar"))
    cases = {fifo: "a FIFO", str(tmp_path / "link-to-pipe.tar"): "a FIFO", str(tmp_path / "sock.tar"): "a socket",
             str(tmp_path): "a directory"}
    if os.geteuid() == 0:
        os.mknod(tmp_path / "null.tar", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        cases[str(tmp_path / "null.tar")] = "a character device"
    try:
        for path, kind_text in cases.items():
            for opener in (open_oci_archive, open_docker_archive):
                kind, result = within_deadline(lambda p=path, o=opener: o(p).close(), release_fifo(fifo))
                assert kind == "raised" and isinstance(result, ArchiveFormatError), (path, kind, result)
                assert f"is {kind_text}, not a regular file, so it is not an image archive" in one_sentence(result)
    finally:
        listening.close()


def test_a_symbolic_link_at_the_destination_is_not_followed_by_the_summary(images, tmp_path):
    layout, dummy = images
    real = str(tmp_path / "real.tar")
    write_oci_archive(layout, "single", real)
    os.symlink(real, tmp_path / "link.tar")
    with pytest.raises(UnsafeArchiveError, match="is a symbolic link, which is not followed here"):
        read_archive_summary(str(tmp_path / "link.tar"), OCI_ARCHIVE)
    with open_oci_archive(str(tmp_path / "link.tar")) as archive:  # a push source given as a link is followed
        assert archive.find_tag("single")


def test_other_special_destinations_are_refused(images, tmp_path):
    layout, dummy = images
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(tmp_path / "sock.tar"))
    try:
        with pytest.raises(UnsafeArchiveError, match="is a socket, not a regular file; refusing to replace it"):
            write_oci_archive(layout, "single", str(tmp_path / "sock.tar"))
        assert stat.S_ISSOCK(os.lstat(tmp_path / "sock.tar").st_mode)
    finally:
        listening.close()


# decompression bombs: bounded by the tar's own headers and by the free space; never for a summary

BOMB_SIZE = 256 << 20


def compress_stream(compression, pieces):
    """Compress an iterable of byte strings as one stream, without holding the whole input."""
    compressor = {"gzip": lambda: zlib.compressobj(9, zlib.DEFLATED, 31), "bzip2": lambda: bz2.BZ2Compressor(9),
                  "xz": lambda: lzma.LZMACompressor(preset=1)}[compression]()
    out = [compressor.compress(piece) for piece in pieces]
    out.append(compressor.flush())
    return b"".join(out)


def zeros(count):
    chunk = bytes(1 << 20)
    for dummy in range(count // len(chunk)):
        yield chunk


@pytest.fixture(name="zero_bombs", scope="module")
def fixture_zero_bombs(tmp_path_factory):
    """256 MiB of zeros, compressed each way (from 208 bytes to 255 KiB)."""
    directory = tmp_path_factory.mktemp("bombs")
    bombs = {}
    for compression in ("gzip", "bzip2", "xz"):
        path = directory / f"zeros.tar.{compression}"
        path.write_bytes(compress_stream(compression, zeros(BOMB_SIZE)))
        bombs[compression] = str(path)
    return bombs


@pytest.fixture(name="temp_copies")
def fixture_temp_copies(tmp_path, monkeypatch):
    """A private TMPDIR, and every temporary file the code makes there, kept open so that its size can be
    read after the code dropped it (the copies are anonymous files: a directory listing would not show them)."""
    private = tmp_path / "tmpdir"
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    kept = []
    real = tempfile.TemporaryFile

    def recording(*args, **kwargs):
        handle = real(*args, **kwargs)
        kept.append(os.dup(handle.fileno()))
        return handle

    monkeypatch.setattr(tempfile, "TemporaryFile", recording)

    class Copies:
        directory = private

        @staticmethod
        def largest():
            assert os.listdir(private) == []
            return max((os.fstat(fd).st_size for fd in kept), default=0)

        @staticmethod
        def count():
            return len(kept)

    yield Copies
    for fd in kept:
        os.close(fd)


@pytest.mark.parametrize("compression", ["gzip", "bzip2", "xz"])
def test_a_compressed_bomb_at_the_destination_is_not_decompressed(zero_bombs, temp_copies, compression):
    for archive_format in FORMATS:
        with pytest.raises(ArchiveFormatError, match=f"is compressed \\({compression}\\); it is not decompressed here") as caught:
            read_archive_summary(zero_bombs[compression], archive_format)
        one_sentence(caught.value)
    assert temp_copies.count() == 0


@pytest.mark.parametrize("compression", ["gzip", "bzip2", "xz"])
def test_a_compressed_bomb_as_a_push_source_stops_where_its_tar_ends(zero_bombs, temp_copies, compression):
    for opener in (open_oci_archive, open_docker_archive):
        with pytest.raises(ArchiveFormatError, match="has no oci-layout|has no manifest.json"):
            opener(zero_bombs[compression])
    assert temp_copies.largest() < 1 << 20  # the first zero block ends the tar: nothing after it is decompressed


@pytest.mark.parametrize("compression", ["gzip", "xz"])
def test_data_after_the_end_of_a_compressed_tar_is_not_decompressed(images, tmp_path, temp_copies, compression):
    layout, built = images
    plain = tmp_path / "single.tar"
    write_oci_archive(layout, "single", str(plain))
    packed = tmp_path / ("single.tar." + compression)
    packed.write_bytes(compress_stream(compression, [plain.read_bytes()] + list(zeros(BOMB_SIZE))))
    with open_oci_archive(str(packed)) as archive:
        for desc in built["single"].blob_descriptors():
            assert archive.has_blob(desc.digest, desc.size, verify=True)
    assert temp_copies.largest() <= plain.stat().st_size


def tar_header(name, size, kind=tarfile.REGTYPE):
    """One ustar header block, its size in base-256 when octal cannot hold it (as GNU tar writes it)."""
    block = bytearray(tarfile.BLOCKSIZE)
    block[0:len(name)] = name.encode()
    block[100:108] = b"0000644\x00"
    block[108:116] = block[116:124] = b"0000000\x00"
    if size < 8 ** 11:
        block[124:136] = b"%011o\x00" % size
    else:
        block[124:136] = b"\x80" + size.to_bytes(11, "big")
    block[136:148] = b"00000000000\x00"
    block[156:157] = kind
    block[257:265] = b"ustar\x0000"
    block[148:156] = b"        "
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def pax_header(records):
    payload = b""
    for key, value in records.items():
        record = f" {key}={value}\n".encode()
        length = len(record) + len(str(len(record)))
        length += len(str(length)) - len(str(len(record)))
        payload += str(length).encode() + record
    return tar_header("PaxHeader", len(payload), tarfile.XHDTYPE) + payload + bytes(-len(payload) % tarfile.BLOCKSIZE)


def test_a_member_declared_larger_than_the_free_space_is_refused_before_decompressing(tmp_path, temp_copies):
    data = pax_header({"size": 2 ** 60}) + tar_header("blobs/sha256/" + "ab" * 32, 0)
    path = tmp_path / "huge.tar.gz"
    path.write_bytes(compress_stream("gzip", [data] + list(zeros(64 << 20))))
    with pytest.raises(archive_module.ArchiveTooLargeError, match=r"declares at least \d+ bytes, more than the \d+ bytes that "
                       + f"{temp_copies.directory} can spare for decompressing it") as caught:
        open_oci_archive(str(path))
    one_sentence(caught.value)
    assert temp_copies.largest() < 1 << 20


def test_decompression_stops_at_the_free_space_less_a_reserve(tmp_path, temp_copies, monkeypatch):
    budget = []
    real = tararchive._decompression_budget  # pylint: disable=protected-access

    def small(fd):
        budget.append(real(fd))
        return 2 << 20

    monkeypatch.setattr(tararchive, "_decompression_budget", small)
    path = tmp_path / "big.tar.xz"
    path.write_bytes(compress_stream("xz", [tar_header("layer.tar", 4 << 20)] + list(zeros(4 << 20)) + [bytes(1024)]))
    with pytest.raises(archive_module.ArchiveTooLargeError, match="more than the 2097152 bytes"):
        open_docker_archive(str(path))
    assert temp_copies.largest() <= 2 << 20
    info = os.statvfs(temp_copies.directory)
    assert 0 <= budget[0] <= info.f_bavail * info.f_frsize  # the real budget: what is free, less a reserve


# any failure of a scan is one ArchiveError sentence; PAX headers are bounded before tarfile reads them

HUGE_HEADERS = {
    "PAX header of 2**46 bytes": tar_header("PaxHeader", 2 ** 46, tarfile.XHDTYPE) + bytes(2048),
    "global PAX header of 2**46 bytes": tar_header("GlobalHead", 2 ** 46, tarfile.XGLTYPE) + bytes(2048),
    "GNU long name of 2**46 bytes": tar_header("././@LongLink", 2 ** 46, tarfile.GNUTYPE_LONGNAME) + bytes(2048),
    "PAX header after a member": tar_header("oci-layout", 0) + tar_header("PaxHeader", 2 ** 46, tarfile.XHDTYPE) + bytes(2048),
}


@pytest.mark.parametrize("compressed", [False, True], ids=["tar", "tar.gz"])
@pytest.mark.parametrize("case", sorted(HUGE_HEADERS))
def test_a_huge_extended_header_is_refused_in_one_sentence(tmp_path, temp_copies, case, compressed):
    data = HUGE_HEADERS[case]
    path = tmp_path / ("hostile.tar.gz" if compressed else "hostile.tar")
    path.write_bytes(gzip.compress(data) if compressed else data)
    readers = [_read_as_push_source] + ([] if compressed else [read_archive_summary])
    for reader in readers:
        for archive_format in FORMATS:
            with pytest.raises(ArchiveFormatError, match=r"The extended tar header at offset \d+ of the archive .* declares 70368744177664 bytes, "
                               "more than the 1048576 an image archive could need; the archive is refused") as caught:
                reader(str(path), archive_format)
            one_sentence(caught.value)
    assert temp_copies.largest() < 1 << 20


def test_sparse_members_are_refused_before_tarfile_reads_their_map(tmp_path):
    data = (pax_header({"GNU.sparse.major": 1, "GNU.sparse.minor": 0, "GNU.sparse.name": "layer.tar", "GNU.sparse.realsize": 10})
            + tar_header("GNUSparseFile.0/layer.tar", 1024) + b"99999999999999\n" + b"1\n" * 504 + bytes(1024))
    (tmp_path / "sparse.tar").write_bytes(data)
    with pytest.raises(UnsafeArchiveError, match="has a sparse member at offset 0 of the archive"):
        open_docker_archive(str(tmp_path / "sparse.tar"))


SCAN_FAILURES = [MemoryError(), OverflowError("int too large to convert"), ValueError("bad"), EOFError(), RecursionError("deep"),
                 zlib.error("Error -3 while decompressing"), lzma.LZMAError("Corrupt input data"), OSError("no errno")]


@pytest.mark.parametrize("failure", SCAN_FAILURES, ids=[type(failure).__name__ for failure in SCAN_FAILURES])
def test_any_failure_while_scanning_is_one_archive_error_sentence(images, tmp_path, monkeypatch, failure):
    layout, dummy = images
    path = str(tmp_path / "single.tar")
    write_oci_archive(layout, "single", path)
    packed = str(tmp_path / "single.tar.gz")
    with open(path, "rb") as source, gzip.open(packed, "wb") as target:
        shutil.copyfileobj(source, target)

    def fail(*args, **kwargs):
        raise failure

    with monkeypatch.context() as patch:
        patch.setattr(tararchive.TarArchive, "_add_member", fail)
        for reader in (_read_as_push_source, read_archive_summary):
            with pytest.raises(ArchiveFormatError, match=f"{path} is not a readable tar archive") as caught:
                reader(path, OCI_ARCHIVE)
            one_sentence(caught.value)
    with monkeypatch.context() as patch:
        patch.setattr(gzip.GzipFile, "read", fail)
        with pytest.raises(ArchiveFormatError, match=f"{packed} (is not a valid gzip file|could not be decompressed as gzip)") as caught:
            open_oci_archive(packed)
        one_sentence(caught.value)


# a replaced archive keeps its mode and owner; temporary files are private; file_mode

WRITERS = {OCI_ARCHIVE: lambda layout, dest, **kw: write_oci_archive(layout, "single", dest, **kw),
           DOCKER_ARCHIVE: lambda layout, dest, **kw: write_docker_archive(layout, "docker", dest, ["a:1"], **kw)}


@needs_root
@pytest.mark.parametrize("archive_format", FORMATS)
def test_a_replaced_archive_keeps_its_mode_and_owner(images, tmp_path, archive_format):
    layout, dummy = images
    dest = str(tmp_path / "app.tar")
    WRITERS[archive_format](layout, dest)
    os.chmod(dest, 0o600)
    os.chown(dest, NOBODY, NOBODY)
    os.truncate(dest, 0)  # so that the rewrite is seen
    WRITERS[archive_format](layout, dest)
    info = os.stat(dest)
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o600, NOBODY, NOBODY)
    assert info.st_size > 0 and read_archive_summary(dest, archive_format)


@pytest.mark.parametrize("archive_format", FORMATS)
def test_new_archives_get_the_default_mode_or_file_mode(images, tmp_path, archive_format):
    layout, dummy = images
    dest = str(tmp_path / "app.tar")
    old = os.umask(0o027)
    try:
        WRITERS[archive_format](layout, dest)
        assert stat.S_IMODE(os.stat(dest).st_mode) == 0o640
        WRITERS[archive_format](layout, dest, file_mode=0o604)  # an explicit mode wins over the old file's
        assert stat.S_IMODE(os.stat(dest).st_mode) == 0o604
        os.unlink(dest)
        WRITERS[archive_format](layout, dest, file_mode=0o600)
        assert stat.S_IMODE(os.stat(dest).st_mode) == 0o600
    finally:
        os.umask(old)
    assert os.listdir(tmp_path) == ["app.tar"]


@pytest.mark.parametrize("archive_format", FORMATS)
def test_the_archive_being_written_is_readable_by_its_owner_only(images, tmp_path, monkeypatch, archive_format):
    layout, dummy = images
    dest = tmp_path / "app.tar"
    seen = []
    real = archive_module._add_blob  # pylint: disable=protected-access

    def watching(*args, **kwargs):
        seen.extend(stat.S_IMODE(os.stat(path).st_mode) for path in tmp_path.glob(".app.tar.*.tmp"))
        return real(*args, **kwargs)

    monkeypatch.setattr(archive_module, "_add_blob", watching)
    old = os.umask(0)  # the most open umask: the temporary file's mode must not come from it
    try:
        WRITERS[archive_format](layout, str(dest))
    finally:
        os.umask(old)
    assert seen and all(mode & 0o077 == 0 for mode in seen), [oct(mode) for mode in seen]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666  # the finished archive: as any new file under that umask


def test_another_users_file_in_a_shared_directory_is_not_replaced(images, as_nobody, shared_tmp):
    layout, dummy = images
    dest = os.path.join(shared_tmp, "app.tar")

    def plant():
        with open(dest, "wb") as handle:
            handle.write(b"planted")
        os.chmod(dest, 0o666)

    assert as_nobody(plant) == "ok"
    for check in (lambda: write_oci_archive(layout, "single", dest), lambda: archive_module.check_archive_destination(dest)):
        with pytest.raises(UnsafeArchiveError, match=f"{dest} belongs to user {NOBODY} in the shared directory {shared_tmp}; refusing") as caught:
            check()
        one_sentence(caught.value)
    assert os.listdir(shared_tmp) == ["app.tar"] and os.stat(dest).st_uid == NOBODY
    with open(dest, "rb") as handle:
        assert handle.read() == b"planted"
    os.unlink(dest)  # once it is gone, the archive is ours
    write_oci_archive(layout, "single", dest)
    assert os.stat(dest).st_uid == os.geteuid()
