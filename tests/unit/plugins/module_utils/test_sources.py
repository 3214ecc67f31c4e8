# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Push sources (module_utils/sources.py): finding and validating the image in an OCI layout or an archive,
and reading only the blobs that were checked, through pushes to the local ECR endpoint."""

from __future__ import annotations

import gzip
import io
import json
import os
import sys
import tarfile
import threading

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils import archive, archive_read, ecr, layout, manifest, push, sources
from ansible_collections.ecrkit.images.plugins.module_utils.digest import of_bytes as digest_of_bytes

TESTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
for sub in ("emulator", os.path.join("unit", "plugins", "module_utils")):
    if os.path.join(TESTS_DIR, sub) not in sys.path:
        sys.path.insert(0, os.path.join(TESTS_DIR, sub))

# pylint: disable=wrong-import-position,unused-import,redefined-outer-name
import sample_images  # noqa: E402
from fixture import ecr_endpoint  # noqa: E402,F401
from push_support import MIB, built, ecr_tag, ref_for, run  # noqa: E402,F401


@pytest.mark.parametrize("damage", ["truncate", "flip", "remove"])
def test_broken_source_is_refused_before_any_call(ecr_endpoint, built, damage):
    source, image = built
    path = image.blob_path(image.layers[1].digest)
    if damage == "truncate":
        with open(path, "r+b") as handle:
            handle.truncate(100)
    elif damage == "flip":
        with open(path, "r+b") as handle:
            handle.seek(5000)
            byte = handle.read(1)
            handle.seek(5000)
            handle.write(bytes([byte[0] ^ 1]))
    else:
        os.unlink(path)
    with pytest.raises(sources.SourceError) as caught:
        run(ecr_endpoint, source)
    assert image.layers[1].digest in str(caught.value)
    calls = ecr_endpoint.stats()["api_calls"]
    if damage == "flip":  # same size: found when the blobs to upload are hashed, still before any upload
        assert "does not hash to its digest; nothing was pushed" in str(caught.value)
        assert set(calls) <= {"BatchGetImage", "BatchCheckLayerAvailability"}  # no repository created, nothing uploaded
    else:  # missing or the wrong size: before any call
        assert ecr_endpoint.stats()["api_calls_total"] == 0


def test_unchanged_push_does_not_hash_the_source(ecr_endpoint, built, monkeypatch):
    """When every tag already points at the image, nothing is read beyond the manifests and sizes."""
    source, image = built
    run(ecr_endpoint, source)
    hashed = []
    real = layout.OciLayout.blob_status

    def spy(self, digest, size, verify=False):
        hashed.append(verify)
        return real(self, digest, size, verify=verify)

    monkeypatch.setattr(layout.OciLayout, "blob_status", spy)
    again = run(ecr_endpoint, source)
    assert not again["changed"] and hashed and not any(hashed)


def test_ambiguous_source_needs_src_tag(ecr_endpoint, tmp_path):
    source = str(tmp_path / "src")
    sample_images.build_random_image(source, "a", count=1, size=1000, seed="a")
    sample_images.build_random_image(source, "b", count=1, size=1000, seed="b")
    with pytest.raises(sources.SourceError, match="src_tag"):
        run(ecr_endpoint, source)
    with pytest.raises(sources.SourceError, match="'c'"):
        run(ecr_endpoint, source, src_tag="c")


def test_oci_archive_source(ecr_endpoint, built, tmp_path):
    source, image = built
    path = str(tmp_path / "image.tar")
    archive.write_oci_archive(layout.OciLayout(source), "1.0", path)
    result = run(ecr_endpoint, path, src_format="oci-archive")
    assert result["digest"] == image.digest and result["changed"]
    assert ecr_tag(ecr_endpoint, "1.0") == (image.digest, image.manifest_bytes)


def _classic_docker_archive(path, image, gzip_layers):
    """A docker-archive as ``docker save`` wrote it before Docker 25: manifest.json, config, layer files."""
    platform = image.manifests[0]
    with tarfile.open(path, "w") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("config.json", platform.config_bytes)
        names = []
        for number, layer in enumerate(platform.layers):
            data = image.read_blob(layer.digest)
            if not gzip_layers:
                data = gzip.decompress(data)
            name = f"layer{number}/layer.tar"
            add(name, data)
            names.append(name)
        add("manifest.json", json.dumps([{"Config": "config.json", "RepoTags": ["app:1.0"], "Layers": names}]).encode())


@pytest.mark.parametrize("gzip_layers", [True, False])
def test_docker_archive_manifest_is_reproducible(ecr_endpoint, built, tmp_path, gzip_layers):
    dummy, image = built
    path = str(tmp_path / "docker.tar")
    _classic_docker_archive(path, image, gzip_layers)
    first = run(ecr_endpoint, path, src_format="docker-archive")
    assert first["media_type"] == manifest.MEDIA_TYPE_DOCKER_MANIFEST
    layer_type = manifest.MEDIA_TYPE_DOCKER_LAYER_GZIP if gzip_layers else manifest.MEDIA_TYPE_DOCKER_LAYER
    assert [layer["media_type"] for layer in first["layers"]][1:] == [layer_type] * 3
    digest, raw = ecr_tag(ecr_endpoint, "1.0")
    assert digest == first["digest"] and digest_of_bytes(raw) == digest
    with archive_read.open_docker_archive(path) as reader:
        assert sources.docker_manifest(reader, reader.manifest[0])[0] == raw
    ecr_endpoint.reset_stats()
    again = run(ecr_endpoint, path, src_format="docker-archive", src_tag="1.0")
    assert not again["changed"] and again["digest"] == first["digest"] and again["bytes_transferred"] == 0
    assert ecr_endpoint.stats()["api_calls_total"] == 1


def test_docker_archive_with_oci_manifest_pushes_it_exactly(ecr_endpoint, built, tmp_path):
    source, image = built
    path = str(tmp_path / "docker.tar")
    archive.write_docker_archive(layout.OciLayout(source), "1.0", path, ["app:1.0"])
    result = run(ecr_endpoint, path, src_format="docker-archive")
    assert result["digest"] == image.digest
    assert ecr_tag(ecr_endpoint, "1.0") == (image.digest, image.manifest_bytes)


def _owned_by_nobody(root):
    for directory, dummy, files in os.walk(root):
        os.chown(directory, 65534, 65534)
        for name in files:
            os.chown(os.path.join(directory, name), 65534, 65534)


def _push_after(monkeypatch, trap):
    """Run ``trap`` once the blobs to upload have been checked, just before the first is read."""
    real = push.upload_layers

    def trapped(*args, **kwargs):
        trap()
        return real(*args, **kwargs)

    monkeypatch.setattr(push, "upload_layers", trapped)


def _parts_sent(monkeypatch):
    sent = []
    real = ecr.EcrRepository.upload_layer_part

    def spy(self, upload_id, first, last, data, **kwargs):
        sent.append(bytes(data))
        return real(self, upload_id, first, last, data, **kwargs)

    monkeypatch.setattr(ecr.EcrRepository, "upload_layer_part", spy)
    return sent


@pytest.mark.parametrize("swapped", ["blob", "directory"])
def test_a_blob_swapped_for_a_link_after_its_check_sends_nothing_of_the_target(
        ecr_endpoint, built, tmp_path, monkeypatch, as_nobody, swapped):
    """The layout's owner (uid 65534) re-points a verified layer, or the directory holding it, at a file only
    root can read: the push fails naming the blob and ECR never receives a byte of that file."""
    source, image = built
    layer = image.layers[1]
    marker = b"ROOT-ONLY-SECRET"
    secret_dir = tmp_path / "private"
    secret_dir.mkdir(mode=0o700)
    name = layer.digest.split(":", 1)[1]
    secret = secret_dir / name
    for blob in list(image.layers) + [image.manifests[0].config]:
        # root-only files named and sized as the blobs: a push through a link would send them whole
        planted = secret_dir / blob.digest.split(":", 1)[1]
        planted.write_bytes((marker + os.urandom(blob.size))[:blob.size])
        os.chmod(str(planted), 0o600)
    _owned_by_nobody(source)
    blobs = os.open(os.path.join(source, "blobs"), os.O_RDONLY | os.O_DIRECTORY)
    sha256 = os.open(os.path.join(source, "blobs", "sha256"), os.O_RDONLY | os.O_DIRECTORY)

    def trap():
        if swapped == "blob":
            os.unlink(name, dir_fd=sha256)
            os.symlink(str(secret), name, dir_fd=sha256)
        else:
            os.rename("sha256", "old", src_dir_fd=blobs, dst_dir_fd=blobs)
            os.symlink(str(secret_dir), "sha256", dir_fd=blobs)

    reports = []
    _push_after(monkeypatch, lambda: reports.append(as_nobody(trap)))
    sent = _parts_sent(monkeypatch)
    try:
        with pytest.raises(push.EcrkitError) as caught:
            run(ecr_endpoint, source)
    finally:
        os.close(blobs)
        os.close(sha256)
    assert reports == ["ok"]
    assert not any(marker in part for part in sent)
    assert caught.value.code == "source_changed"
    # the directory swap strikes whichever blob is read first
    named = layer.digest if swapped == "blob" else next(digest for digest in [blob.digest for blob in image.layers] + [image.config_digest]
                                                        if digest in str(caught.value))
    assert str(caught.value).startswith(f"The blob {named} at {image.blob_path(named)} changed during the push")
    assert ecr_endpoint.api_calls("PutImage") == 0


def test_a_fifo_swapped_in_for_a_blob_fails_without_hanging(ecr_endpoint, built, monkeypatch, as_nobody):
    source, image = built
    layer = image.layers[0]
    path = image.blob_path(layer.digest)
    _owned_by_nobody(source)
    sha256 = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)

    def trap():
        os.unlink(os.path.basename(path), dir_fd=sha256)
        os.mkfifo(os.path.basename(path), dir_fd=sha256)

    reports = []
    _push_after(monkeypatch, lambda: reports.append(as_nobody(trap)))
    outcome = []

    def attempt():
        try:
            run(ecr_endpoint, source)
        except BaseException as exc:  # pylint: disable=broad-except
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(60)
    hung = worker.is_alive()
    if hung:  # let the blocked open() return: a writer that leaves at once
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        worker.join(30)
    os.close(sha256)
    assert not hung, "the push hung opening a FIFO in its source"
    assert reports == ["ok"]
    assert len(outcome) == 1 and getattr(outcome[0], "code", None) == "source_changed", outcome
    assert layer.digest in str(outcome[0])
