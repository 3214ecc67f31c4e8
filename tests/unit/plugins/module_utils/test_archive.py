# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests for plugins/module_utils/archive.py: oci-archive and docker-archive written from a layout.

What is written (deterministic, sorted, exactly the image's blobs; a docker-archive's RepoTags checked)
is read back by skopeo, skipped only when the binary is missing; image_blobs; a damaged layer or a
refused destination leaves the destination as it was; writing streams in constant memory; FIFOs,
sockets and another user's file at the destination are refused without waiting; a replaced archive
keeps its mode and owner, new ones get the default mode or file_mode, and the temporary file is private.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import stat
import sys
import tarfile
import tracemalloc

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils import archive as archive_module
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
from ansible_collections.ecrkit.images.plugins.module_utils.archive_read import open_oci_archive, read_archive_summary
from ansible_collections.ecrkit.images.plugins.module_utils.layout import OciLayout
from ansible_collections.ecrkit.images.plugins.module_utils.layout_format import (
    BLOB_PRESENT,
    REF_NAME_ANNOTATION,
    BlobMismatchError,
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
    fixture_images, needs_skopeo, one_sentence, release_fifo, sha, tool, within_deadline,
)


REPO_TAGS = ["123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app:1.4.2", "app:latest"]


def file_digest(path):
    with open(path, "rb") as handle:
        return sha(handle.read())


def uncompressed_digest(path):
    with open(path, "rb") as handle:
        magic = handle.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    with opener(path, "rb") as handle:
        return sha(handle.read())


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


# hostile hosts (issue 11): FIFOs and other non-regular files are refused without waiting on them ---

NOBODY = 65534  # the other local user of the as_nobody and shared_tmp fixtures (conftest.py)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files away")


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


# a replaced archive keeps its mode and owner; temporary files are private; file_mode -------------

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
