# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests for tests/emulator/sample_images.py: deterministic OCI layouts, real-tool checks, ECR push."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import ssl
import subprocess
import sys
import tarfile
import tracemalloc
import urllib.request
import uuid
import zlib

import pytest

EMULATOR_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "emulator"))
if EMULATOR_DIR not in sys.path:
    sys.path.insert(0, EMULATOR_DIR)

import sample_images as si  # noqa: E402  pylint: disable=wrong-import-position

SCRIPT = os.path.join(EMULATOR_DIR, "sample_images.py")
ALL_MANIFEST_TYPES = [si.OCI_MANIFEST, si.OCI_INDEX, si.DOCKER_MANIFEST, si.DOCKER_MANIFEST_LIST]
PLATFORMS = ["linux/amd64", "linux/arm64/v8"]

needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
needs_umoci = pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")


# helpers -------------------------------------------------------------------------------------------

def tree_bytes(root):
    """relative path -> bytes of every file under root."""
    result = {}
    for dirpath, dummy, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as handle:
                result[os.path.relpath(path, root)] = handle.read()
    return result


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest(), os.path.getsize(path)


def uncompressed_sha256(path, media_type):
    digest = hashlib.sha256()
    opener = gzip.open if media_type.endswith("gzip") else open
    with opener(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def read_json(path):
    with open(path, "rb") as handle:
        return json.loads(handle.read().decode("utf-8"))


def build_all(layout):
    """A mix of everything the module builds, into one layout."""
    return [
        si.build_demo_image(layout, "demo"),
        si.build_random_image(layout, "random", count=2, size=300 * 1024, seed=7),
        si.build_demo_image(layout, "multi", platforms=PLATFORMS),
        si.build_demo_image(layout, "docker", docker=True),
        si.build_random_image(layout, "docker-multi", count=1, size=4096, platforms=PLATFORMS, docker=True),
        si.build_image(layout, "plain-tar", [{"a.txt": b"a"}, si.RandomLayer(size=5000, seed="x", compress=False)]),
    ]


def check_image_consistent(image):
    """Recompute every digest, size and diff_id of a built image from the layout files."""
    layout = image.layout
    top_path = image.blob_path(image.digest)
    assert file_sha256(top_path) == (image.digest, image.size)
    assert image.read_blob(image.digest) == image.manifest_bytes
    assert si.sha256_digest(image.manifest_bytes) == image.digest
    top = json.loads(image.manifest_bytes)
    assert top["mediaType"] == image.media_type
    assert top["schemaVersion"] == 2
    # canonical serialisation: sorted keys, compact separators
    assert si.canonical_json(top) == image.manifest_bytes
    for platform_image in image.manifests:
        manifest = json.loads(platform_image.manifest_bytes)
        assert si.sha256_digest(platform_image.manifest_bytes) == platform_image.digest
        assert len(platform_image.manifest_bytes) == platform_image.descriptor.size
        assert si.canonical_json(manifest) == platform_image.manifest_bytes
        with open(si.blob_path(layout, platform_image.digest), "rb") as handle:
            assert handle.read() == platform_image.manifest_bytes
        assert file_sha256(si.blob_path(layout, platform_image.config.digest)) == (platform_image.config.digest, platform_image.config.size)
        assert manifest["config"] == platform_image.config.to_json()
        assert manifest["layers"] == [desc.to_json() for desc in platform_image.layers]
        config = json.loads(platform_image.config_bytes)
        assert config["architecture"] == platform_image.platform["architecture"]
        assert config["os"] == platform_image.platform["os"]
        assert config.get("variant") == platform_image.platform.get("variant")
        assert config["created"] == si.DEFAULT_CREATED
        assert len(config["history"]) == len(platform_image.layers)
        assert config["rootfs"]["type"] == "layers"
        assert tuple(config["rootfs"]["diff_ids"]) == platform_image.diff_ids
        for desc, diff_id in zip(platform_image.layers, platform_image.diff_ids):
            path = si.blob_path(layout, desc.digest)
            assert file_sha256(path) == (desc.digest, desc.size)
            assert uncompressed_sha256(path, desc.media_type) == diff_id
            if not desc.media_type.endswith("gzip"):
                assert desc.digest == diff_id


# reproducibility and correctness -------------------------------------------------------------------

def test_build_is_byte_for_byte_reproducible(tmp_path):
    first = build_all(str(tmp_path / "one"))
    second = build_all(str(tmp_path / "two"))
    assert [image.digest for image in first] == [image.digest for image in second]
    assert [image.manifest_bytes for image in first] == [image.manifest_bytes for image in second]
    one, two = tree_bytes(tmp_path / "one"), tree_bytes(tmp_path / "two")
    assert sorted(one) == sorted(two)
    assert one == two


def test_known_digest_is_stable(tmp_path):
    """Changing how images are built changes every fixture that depends on them: make that visible."""
    image = si.build_image(str(tmp_path), "t", [{"hello.txt": b"hello\n"}])
    assert image.summary()["totalBytes"] == sum(desc.size for desc in image.blob_descriptors())
    again = si.build_image(str(tmp_path / "again"), "t", [si.FilesLayer({"./hello.txt": "hello\n"})])
    assert again.digest == image.digest


def test_digests_sizes_and_diff_ids(tmp_path):
    for image in build_all(str(tmp_path)):
        check_image_consistent(image)


def test_layer_tar_and_gzip_are_normalised(tmp_path):
    image = si.build_image(str(tmp_path), "t", [{"z/last.txt": b"z", "a/b/first.txt": "first", "m.txt": b"m" * 1000}])
    desc = image.layers[0]
    with open(image.blob_path(desc.digest), "rb") as handle:
        raw = handle.read()
    # gzip header: magic, deflate, no flags (so no file name), mtime 0
    assert raw[:4] == b"\x1f\x8b\x08\x00"
    assert raw[4:8] == b"\x00\x00\x00\x00"
    data = gzip.decompress(raw)
    assert len(data) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        names = [member.name for member in members]
        assert names == ["a", "a/b", "a/b/first.txt", "m.txt", "z", "z/last.txt"]
        for member in members:
            assert member.mtime == si.DEFAULT_EPOCH
            assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "root", "root")
            assert member.mode == (0o755 if member.isdir() else 0o644)
        assert tar.extractfile("a/b/first.txt").read() == b"first"
        assert tar.extractfile("m.txt").read() == b"m" * 1000


def test_bad_layer_specs_are_refused(tmp_path):
    with pytest.raises(ValueError):
        si.build_image(str(tmp_path), "t", [{"../escape": b"x"}])
    with pytest.raises(ValueError):
        si.build_image(str(tmp_path), "t", [{"a": b"x", "a/b": b"y"}])
    with pytest.raises(ValueError):
        si.parse_platform("linux")
    with pytest.raises(TypeError):
        si.build_image(str(tmp_path), "t", [b"not a layer"])
    # nothing half-written stays behind
    assert not [name for name in os.listdir(tmp_path / "blobs" / "sha256") if name.startswith(".tmp-")]


def test_several_images_share_one_layout(tmp_path):
    layout = str(tmp_path)
    first = si.build_demo_image(layout, "one")
    second = si.build_image(layout, "two", si.demo_layers()[:2] + [{"extra.txt": b"extra"}])
    assert first.layers[:2] == second.layers[:2]
    assert si.list_tags(layout) == ["one", "two"]
    assert read_json(tmp_path / "oci-layout") == {"imageLayoutVersion": "1.0.0"}
    index = read_json(tmp_path / "index.json")
    assert index["schemaVersion"] == 2
    by_tag = {entry["annotations"][si.REF_NAME_ANNOTATION]: entry for entry in index["manifests"]}
    assert by_tag["one"]["digest"] == first.digest and by_tag["one"]["size"] == first.size
    assert by_tag["two"]["digest"] == second.digest and by_tag["two"]["mediaType"] == si.OCI_MANIFEST
    wanted = {desc.digest for image in (first, second) for desc in image.blob_descriptors()}
    stored = set("sha256:" + name for name in os.listdir(tmp_path / "blobs" / "sha256"))
    assert stored == wanted  # every blob stored once, nothing else (no temporary files)
    assert len(wanted) < len(first.blob_descriptors()) + len(second.blob_descriptors())

    # re-adding a tag replaces its entry
    moved = si.build_random_image(layout, "one", count=1, size=1000)
    index = read_json(tmp_path / "index.json")
    assert len(index["manifests"]) == 2
    assert si.list_tags(layout) == ["one", "two"]
    assert si.load_image(layout, "one").digest == moved.digest
    assert si.load_image(layout, "two").digest == second.digest
    # the old image's blobs stay (a layout is not garbage-collected here)
    assert os.path.exists(first.blob_path(first.digest))


def test_load_image_round_trip(tmp_path):
    for built in build_all(str(tmp_path)):
        loaded = si.load_image(str(tmp_path), built.tag)
        assert loaded == built
    with pytest.raises(KeyError):
        si.load_image(str(tmp_path), "no-such-tag")


@pytest.mark.parametrize("docker", [False, True])
def test_multi_platform_index(tmp_path, docker):
    image = si.build_demo_image(str(tmp_path), "multi", platforms=PLATFORMS, docker=docker)
    assert image.is_index
    assert image.config_digest is None
    assert image.platforms == tuple(PLATFORMS)
    index = json.loads(image.manifest_bytes)
    assert index["mediaType"] == (si.DOCKER_MANIFEST_LIST if docker else si.OCI_INDEX)
    children = index["manifests"]
    assert [child["platform"] for child in children] == [
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
    ]
    child_type = si.DOCKER_MANIFEST if docker else si.OCI_MANIFEST
    assert all(child["mediaType"] == child_type for child in children)
    assert [child["digest"] for child in children] == [platform_image.digest for platform_image in image.manifests]
    assert len({child["digest"] for child in children}) == 2
    amd64, arm64 = image.manifests
    # the demo layers are shared between platforms except the one naming the platform
    assert amd64.layers[:2] == arm64.layers[:2] and amd64.layers[2] != arm64.layers[2]
    assert json.loads(arm64.config_bytes)["variant"] == "v8"
    assert "variant" not in json.loads(amd64.config_bytes)
    check_image_consistent(image)

    random_multi = si.build_random_image(str(tmp_path), "rnd", count=2, size=2048, platforms=PLATFORMS, docker=docker)
    first, second = random_multi.manifests
    assert not set(first.layers) & set(second.layers)  # random layers differ per platform


def test_single_platform_can_be_chosen(tmp_path):
    image = si.build_image(str(tmp_path), "arm", si.demo_layers(), platform="linux/arm64/v8")
    assert not image.is_index
    config = json.loads(image.read_blob(image.config_digest))
    assert (config["os"], config["architecture"], config["variant"]) == ("linux", "arm64", "v8")
    index = si.build_image(str(tmp_path), "one-platform-index", si.demo_layers(), platforms=["linux/arm/v7"])
    assert index.is_index and index.platforms == ("linux/arm/v7",)


@pytest.mark.parametrize("docker", [False, True])
def test_media_types(tmp_path, docker):
    image = si.build_image(str(tmp_path), "t", [{"a": b"a"}, si.RandomLayer(size=100, compress=False)], docker=docker)
    manifest = json.loads(image.manifest_bytes)
    if docker:
        assert image.media_type == manifest["mediaType"] == si.DOCKER_MANIFEST
        assert manifest["config"]["mediaType"] == si.DOCKER_CONFIG
        assert [layer["mediaType"] for layer in manifest["layers"]] == [si.DOCKER_LAYER_GZIP, si.DOCKER_LAYER_TAR]
    else:
        assert image.media_type == manifest["mediaType"] == si.OCI_MANIFEST
        assert manifest["config"]["mediaType"] == si.OCI_CONFIG
        assert [layer["mediaType"] for layer in manifest["layers"]] == [si.OCI_LAYER_GZIP, si.OCI_LAYER_TAR]
    assert read_json(tmp_path / "index.json")["manifests"][0]["mediaType"] == image.media_type


def test_large_random_layer_is_streamed(tmp_path):
    size = 8 << 20
    layer = si.RandomLayer(size=size, seed="big", path="blob.bin")
    tracemalloc.start()
    try:
        si.init_layout(str(tmp_path))
        desc, diff_id = si.write_layer(str(tmp_path), layer)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6 << 20, f"peak Python allocation {peak} bytes while writing an 8 MiB layer"
    path = si.blob_path(str(tmp_path), desc.digest)
    assert file_sha256(path) == (desc.digest, desc.size)
    assert uncompressed_sha256(path, desc.media_type) == diff_id
    assert size < desc.size < size + 64 * 1024  # incompressible: gzip adds a little
    expected = hashlib.sha256()
    for chunk in si.random_bytes(size, "big"):
        expected.update(chunk)
    with gzip.open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        member = tar.next()
        assert member.name == "blob.bin" and member.size == size
        got = hashlib.sha256()
        source = tar.extractfile(member)
        for chunk in iter(lambda: source.read(1 << 20), b""):
            got.update(chunk)
    assert got.hexdigest() == expected.hexdigest()
    # really incompressible
    sample = b"".join(si.random_bytes(1 << 20, "big"))
    assert len(zlib.compress(sample, 9)) > len(sample)


def test_random_bytes_properties():
    assert b"".join(si.random_bytes(3000, 1)) == b"".join(si.random_bytes(3000, "1"))
    assert b"".join(si.random_bytes(3000, 1)) != b"".join(si.random_bytes(3000, 2))
    long = b"".join(si.random_bytes((1 << 20) + 10, 5))
    assert long[:100] == b"".join(si.random_bytes(100, 5))
    assert len(long) == (1 << 20) + 10 and b"".join(si.random_bytes(0, 5)) == b""


# command line --------------------------------------------------------------------------------------

def run_cli(*args):
    proc = subprocess.run([sys.executable, SCRIPT] + list(args), capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_cli_build(tmp_path):
    out = str(tmp_path / "layout")
    demo = run_cli("build", "--out", out, "--tag", "demo")
    assert demo["tag"] == "demo" and len(demo["layers"]) == 3
    assert demo["digest"] == si.build_demo_image(str(tmp_path / "api"), "demo").digest
    rnd = run_cli("build", "--out", out, "--tag", "rnd", "--layers", "3", "--layer-size", "64k", "--seed", "9", "--docker")
    assert rnd["mediaType"] == si.DOCKER_MANIFEST and len(rnd["layers"]) == 3
    multi = run_cli("build", "--out", out, "--tag", "multi", "--platforms", "linux/amd64,linux/arm64/v8")
    assert multi["mediaType"] == si.OCI_INDEX and multi["platforms"] == PLATFORMS
    assert si.list_tags(out) == ["demo", "multi", "rnd"]
    for summary in (demo, rnd, multi):
        assert si.load_image(out, summary["tag"]).digest == summary["digest"]


# real tools ----------------------------------------------------------------------------------------

def skopeo(*args):
    proc = subprocess.run(["skopeo"] + list(args), capture_output=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    return proc.stdout


@needs_skopeo
def test_skopeo_inspect(tmp_path):
    layout = str(tmp_path)
    demo = si.build_demo_image(layout, "demo")
    rnd = si.build_random_image(layout, "rnd", count=2, size=100 * 1024, compress=False)
    multi = si.build_demo_image(layout, "multi", platforms=PLATFORMS)
    for image in (demo, rnd):
        info = json.loads(skopeo("inspect", f"oci:{layout}:{image.tag}"))
        assert info["Digest"] == image.digest
        assert info["Layers"] == [desc.digest for desc in image.layers]
        assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
        assert skopeo("inspect", "--raw", f"oci:{layout}:{image.tag}") == image.manifest_bytes
        assert skopeo("inspect", "--config", "--raw", f"oci:{layout}:{image.tag}") == image.manifests[0].config_bytes
    assert skopeo("inspect", "--raw", f"oci:{layout}:multi") == multi.manifest_bytes
    info = json.loads(skopeo("--override-arch", "arm64", "--override-variant", "v8", "inspect", f"oci:{layout}:multi"))
    assert info["Architecture"] == "arm64"
    assert info["Layers"] == [desc.digest for desc in multi.manifests[1].layers]


@needs_skopeo
def test_skopeo_copy(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    demo = si.build_demo_image(src, "demo")
    multi = si.build_random_image(src, "multi", count=2, size=50 * 1024, platforms=PLATFORMS)
    skopeo("copy", f"oci:{src}:demo", f"oci:{dst}:demo")
    skopeo("copy", "--all", f"oci:{src}:multi", f"oci:{dst}:multi")
    for image in (demo, multi):
        copied = si.load_image(dst, image.tag)
        assert copied.digest == image.digest
        assert copied.manifest_bytes == image.manifest_bytes
        for desc in image.blob_descriptors():
            assert file_sha256(si.blob_path(dst, desc.digest)) == (desc.digest, desc.size)


@needs_umoci
def test_umoci_unpack(tmp_path):
    layout = str(tmp_path / "layout")
    bundle = str(tmp_path / "bundle")
    layers = si.demo_layers()
    si.build_image(layout, "demo", layers)
    proc = subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:demo", bundle],
                          capture_output=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    rootfs = os.path.join(bundle, "rootfs")
    expected = {}
    for layer in layers:
        expected.update({path: content.encode("utf-8") for path, content in layer.files.items()})
    found = {path.replace(os.sep, "/"): data for path, data in tree_bytes(rootfs).items()}
    assert found == expected
    assert oct(os.stat(os.path.join(rootfs, "etc", "motd")).st_mode & 0o777) == oct(0o644)


# push to ECR ---------------------------------------------------------------------------------------

class FakeECR:
    """In-memory stand-in for the boto3 ECR client: just enough of ECR's rules to check push_image."""

    def __init__(self, part_size=5 << 20, available=()):
        from botocore.exceptions import ClientError  # pylint: disable=import-outside-toplevel
        self.error = ClientError
        self.part_size = part_size
        self.blobs = {digest: b"" for digest in available}
        self.uploads = {}
        self.manifests = {}
        self.tags = {}
        self.calls = []
        self.repositories = set()

    def fail(self, code, operation):
        raise self.error({"Error": {"Code": code, "Message": code}}, operation)

    # the methods take keyword arguments named as boto3 names them
    def create_repository(self, **kwargs):
        self.calls.append("CreateRepository")
        if kwargs["repositoryName"] in self.repositories:
            self.fail("RepositoryAlreadyExistsException", "CreateRepository")
        self.repositories.add(kwargs["repositoryName"])

    def batch_check_layer_availability(self, **kwargs):
        self.calls.append("BatchCheckLayerAvailability")
        assert kwargs["repositoryName"] and len(kwargs["layerDigests"]) <= 100
        return {"layers": [{"layerDigest": digest, "layerAvailability": "AVAILABLE" if digest in self.blobs else "UNAVAILABLE"}
                           for digest in kwargs["layerDigests"]], "failures": []}

    def initiate_layer_upload(self, **kwargs):
        self.calls.append("InitiateLayerUpload")
        assert set(kwargs) == {"repositoryName"}
        upload_id = uuid.uuid4().hex
        self.uploads[upload_id] = []
        return {"uploadId": upload_id, "partSize": self.part_size}

    def upload_layer_part(self, **kwargs):
        self.calls.append("UploadLayerPart")
        parts = self.uploads[kwargs["uploadId"]]
        blob = kwargs["layerPartBlob"]
        received = sum(len(part) for part in parts)
        assert kwargs["partFirstByte"] == received and kwargs["partLastByte"] - kwargs["partFirstByte"] + 1 == len(blob)
        assert len(blob) <= self.part_size
        parts.append(bytes(blob))
        return {"lastByteReceived": kwargs["partLastByte"]}

    def complete_layer_upload(self, **kwargs):
        self.calls.append("CompleteLayerUpload")
        parts = self.uploads.pop(kwargs["uploadId"])
        assert all(len(part) >= 5 << 20 for part in parts[:-1])
        data = b"".join(parts)
        (digest,) = kwargs["layerDigests"]
        assert si.sha256_digest(data) == digest
        if digest in self.blobs:
            self.fail("LayerAlreadyExistsException", "CompleteLayerUpload")
        self.blobs[digest] = data
        return {"layerDigest": digest}

    def put_image(self, **kwargs):
        self.calls.append("PutImage")
        data = kwargs["imageManifest"].encode("utf-8")
        digest, tag = kwargs["imageDigest"], kwargs.get("imageTag")
        assert si.sha256_digest(data) == digest
        manifest = json.loads(data)
        referenced = [manifest["config"]] + manifest["layers"] if "config" in manifest else manifest["manifests"]
        missing = [desc["digest"] for desc in referenced if desc["digest"] not in self.blobs and desc["digest"] not in self.manifests]
        assert not missing, missing
        if digest in self.manifests and (tag is None or self.tags.get(tag) == digest):
            self.fail("ImageAlreadyExistsException", "PutImage")
        self.manifests[digest] = (data, kwargs["imageManifestMediaType"])
        if tag is not None:
            self.tags[tag] = digest
        return {"image": {"imageId": {"imageDigest": digest, "imageTag": tag}}}


@pytest.mark.parametrize("kind", ["single", "multi", "docker-multi"])
def test_push_image_with_fake_client(tmp_path, kind):
    layout = str(tmp_path)
    if kind == "single":
        image = si.build_random_image(layout, "v1", count=2, size=(11 << 20) + 5)  # several parts per layer
    else:
        image = si.build_random_image(layout, "v1", count=1, size=100, platforms=PLATFORMS, docker=kind.startswith("docker"))
    fake = FakeECR(available=[image.layers[0].digest] if kind == "single" else ())
    result = si.push_image(fake, image, "team/app", tags=["v1", "latest"], create_repository=True)
    blobs = {desc.digest for platform_image in image.manifests for desc in list(platform_image.layers) + [platform_image.config]}
    expected_upload = blobs - ({image.layers[0].digest} if kind == "single" else set())
    assert set(result["uploaded"]) == expected_upload
    assert result["repositoryCreated"] is True
    for digest in expected_upload:
        assert fake.blobs[digest] == image.read_blob(digest)
    assert fake.manifests[image.digest] == (image.manifest_bytes, image.media_type)
    assert fake.tags == {"v1": image.digest, "latest": image.digest}
    for platform_image in image.manifests:
        assert fake.manifests[platform_image.digest] == (platform_image.manifest_bytes, platform_image.media_type)
    if kind == "single":
        assert fake.calls.count("UploadLayerPart") == 3 + 1  # 11 MiB layer in 5 MiB parts, config in one

    # a second push changes nothing and uploads nothing
    fake.calls.clear()
    again = si.push_image(fake, image, "team/app", tags=["v1", "latest"], create_repository=True)
    assert not again["uploaded"] and not again["manifestsPut"]
    assert "InitiateLayerUpload" not in fake.calls
    # a blob that turns up between check and completion is fine
    racing = FakeECR()
    racing.batch_check_layer_availability = lambda **kwargs: {"layers": [], "failures": []}
    si.push_image(racing, image, "team/app")
    result = si.push_image(racing, image, "team/app")
    assert not result["uploaded"] and set(result["alreadyExisted"]) == blobs


def _emulator_endpoint(request, tmp_path):
    """The `ecr_endpoint` fixture of tests/unit/emulator/conftest.py, else tests/emulator/fixture.run_emulator."""
    try:
        return request.getfixturevalue("ecr_endpoint")
    except pytest.FixtureLookupError:
        pass
    import fixture  # pylint: disable=import-outside-toplevel,import-error
    handle = fixture.run_emulator(tmp_path / "emulator")
    if hasattr(handle, "__enter__"):
        stack = contextlib.ExitStack()
        endpoint = stack.enter_context(handle)
        request.addfinalizer(stack.close)
        return endpoint
    for name in ("close", "stop"):
        if hasattr(handle, name):
            request.addfinalizer(getattr(handle, name))
            break
    return handle


def _download(url, ca_bundle=None):
    context = ssl.create_default_context(cafile=ca_bundle) if url.startswith("https:") else None
    digest = hashlib.sha256()
    size = 0
    with urllib.request.urlopen(url, timeout=60, context=context) as response:  # nosec - test endpoint
        for chunk in iter(lambda: response.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return "sha256:" + digest.hexdigest(), size


@pytest.mark.parametrize("kind", ["demo", "large", "multi", "docker-multi"])
def test_push_to_emulator(request, tmp_path, kind):
    endpoint = _emulator_endpoint(request, tmp_path)
    client = endpoint.client()
    layout = str(tmp_path / "layout")
    if kind == "demo":
        image = si.build_demo_image(layout, "v1")
    elif kind == "large":
        image = si.build_random_image(layout, "v1", count=2, size=(12 << 20) + 123)  # more than one part
    else:
        image = si.build_demo_image(layout, "v1", platforms=PLATFORMS, docker=kind.startswith("docker"))
    repository = f"sample/{kind}-{uuid.uuid4().hex[:8]}"
    result = si.push_image(client, image, repository, tags=["v1", "latest"], create_repository=True)
    assert result["digest"] == image.digest
    blobs = [desc for platform_image in image.manifests for desc in list(platform_image.layers) + [platform_image.config]]
    assert set(result["uploaded"]) == {desc.digest for desc in blobs}

    for tag in ("v1", "latest"):
        got = client.batch_get_image(repositoryName=repository, imageIds=[{"imageTag": tag}], acceptedMediaTypes=ALL_MANIFEST_TYPES)
        assert not got.get("failures"), got.get("failures")
        (found,) = got["images"]
        assert found["imageManifest"].encode("utf-8") == image.manifest_bytes
        assert found["imageId"]["imageDigest"] == image.digest
        assert found.get("imageManifestMediaType", image.media_type) == image.media_type
    for platform_image in image.manifests:
        got = client.batch_get_image(repositoryName=repository, imageIds=[{"imageDigest": platform_image.digest}],
                                     acceptedMediaTypes=ALL_MANIFEST_TYPES)
        (found,) = got["images"]
        assert found["imageManifest"].encode("utf-8") == platform_image.manifest_bytes

    ca_bundle = getattr(endpoint, "ca_bundle", None)
    for desc in blobs:
        url = client.get_download_url_for_layer(repositoryName=repository, layerDigest=desc.digest)["downloadUrl"]
        assert _download(url, ca_bundle) == (desc.digest, desc.size)

    # pushing again uploads nothing and puts no manifest
    again = si.push_image(client, image, repository, tags=["v1", "latest"], create_repository=True)
    assert not again["uploaded"] and not again["manifestsPut"]
    assert again["repositoryCreated"] is False


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed for the emulator's TLS certificate")
def test_cli_push_over_tls(tmp_path):
    import fixture  # pylint: disable=import-outside-toplevel,import-error
    layout = str(tmp_path / "layout")
    built = run_cli("build", "--out", layout, "--tag", "v2", "--platforms", "linux/amd64,linux/arm64/v8")
    with fixture.run_emulator(tmp_path / "emulator", tls=True) as endpoint:
        env = dict(os.environ, **endpoint.env())
        env.pop("AWS_ENDPOINT_URL_ECR")
        env.pop("AWS_CA_BUNDLE")
        args = ["push", "--layout", layout, "--tag", "v2", "--endpoint-url", endpoint.url, "--region", endpoint.region,
                "--repository", "cli/tls", "--create-repository", "--ca-bundle", endpoint.ca_bundle]
        proc = subprocess.run([sys.executable, SCRIPT] + args, capture_output=True, text=True, check=False, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        (line,) = proc.stdout.splitlines()
        result = json.loads(line)
        assert result["digest"] == built["digest"] and result["tags"] == ["v2"] and result["repositoryCreated"] is True
        got = endpoint.client().batch_get_image(repositoryName="cli/tls", imageIds=[{"imageTag": "v2"}], acceptedMediaTypes=ALL_MANIFEST_TYPES)
        assert got["images"][0]["imageManifest"].encode("utf-8") == si.load_image(layout, "v2").manifest_bytes
