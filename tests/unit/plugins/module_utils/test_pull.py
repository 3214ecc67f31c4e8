# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pull use case end to end against the local ECR endpoint (module_utils only, no Ansible)."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils import archive, containerd, ecr, hostfs, layout, manifest, pull
from ansible_collections.ecrkit.images.plugins.module_utils.errors import DiskFullError, EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.manifest import ManifestError, PlatformNotFoundError

TESTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
for sub in ("containerd", "emulator"):
    if os.path.join(TESTS_DIR, sub) not in sys.path:
        sys.path.insert(0, os.path.join(TESTS_DIR, sub))

# pylint: disable=wrong-import-position,unused-import,redefined-outer-name
import sample_images  # noqa: E402
from fixture import ecr_endpoint, upload_blob  # noqa: E402,F401
from private_containerd import private_containerd  # noqa: E402,F401

MIB = 1024 * 1024


@pytest.fixture
def seeded(ecr_endpoint, tmp_path):
    """Two single-platform images sharing two layers, and a two-platform index."""
    source = str(tmp_path / "source")
    client = ecr_endpoint.client()
    images = {
        "one": sample_images.build_random_image(source, "one", count=2, size=3 * MIB, seed="s"),
        "two": sample_images.build_random_image(source, "two", count=3, size=3 * MIB, seed="s"),
        "multi": sample_images.build_demo_image(source, "multi", platforms=["linux/amd64", "linux/arm64/v8"]),
    }
    for tag, image in images.items():
        sample_images.push_image(client, image, "team/app", create_repository=True)
    return ecr_endpoint, images


def options(endpoint, tag, dest, **kwargs):
    ref = f"{endpoint.account_id}.dkr.ecr.{endpoint.region}.amazonaws.com/team/app:{tag}"
    kwargs.setdefault("chunk_size", MIB)
    kwargs.setdefault("max_connections", 4)
    return pull.PullOptions.from_params(ref=ref, dest=str(dest), **kwargs)


def run(endpoint, opts):
    return pull.pull(opts, lambda ref: ecr.EcrRepository(endpoint.client(), ref, ecr.RetryPolicy(attempts=2)))


def test_pull_then_nothing_to_do(seeded, tmp_path):
    endpoint, images = seeded
    dest = tmp_path / "dest"
    first = run(endpoint, options(endpoint, "one", dest))
    assert first["changed"] and first["digest"] == images["one"].digest
    assert {layer["action"] for layer in first["layers"]} == {"downloaded"}
    assert first["bytes_transferred"] == sum(blob["size"] for blob in first["layers"])
    assert first["platform"] == "linux/amd64"
    store = layout.OciLayout(str(dest))
    assert store.find_tag("one")["digest"] == images["one"].digest
    assert store.read_blob(images["one"].digest) == images["one"].manifest_bytes
    assert not os.listdir(dest / ".ecrkit" / "partial")

    endpoint.reset_stats()
    again = run(endpoint, options(endpoint, "one", dest))
    assert not again["changed"] and again["bytes_transferred"] == 0 and again["api_calls"] == 1
    assert {layer["action"] for layer in again["layers"]} == {"present"}
    assert endpoint.stats()["api_calls_total"] == 1
    name = f"{endpoint.account_id}.dkr.ecr.{endpoint.region}.amazonaws.com/team/app:one"
    assert again["diff"] == {"before": {name: images["one"].digest}, "after": {name: images["one"].digest}}


def test_shared_layers_are_not_downloaded_again(seeded, tmp_path):
    endpoint, dummy = seeded
    run(endpoint, options(endpoint, "one", tmp_path / "dest"))
    second = run(endpoint, options(endpoint, "two", tmp_path / "dest"))
    actions = [layer["action"] for layer in second["layers"]]
    assert actions.count("present") == 2 and actions.count("downloaded") == 2
    assert second["bytes_transferred"] < 4 * MIB


def test_check_mode_writes_nothing(seeded, tmp_path):
    endpoint, images = seeded
    planned = run(endpoint, options(endpoint, "one", tmp_path / "dest", check_mode=True))
    assert planned["changed"] and planned["digest"] == images["one"].digest
    assert {layer["action"] for layer in planned["layers"]} == {"download"}
    assert not (tmp_path / "dest").exists()


def test_missing_policy_makes_no_call(seeded, tmp_path):
    endpoint, images = seeded
    run(endpoint, options(endpoint, "one", tmp_path / "dest"))
    endpoint.reset_stats()
    result = run(endpoint, options(endpoint, "one", tmp_path / "dest", policy="missing"))
    assert not result["changed"] and result["api_calls"] == 0 and result["digest"] == images["one"].digest
    assert endpoint.stats()["api_calls_total"] == 0


def test_index_platform_selection_and_idempotency(seeded, tmp_path):
    endpoint, images = seeded
    arm = run(endpoint, options(endpoint, "multi", tmp_path / "dest", platform="linux/arm64"))
    child = [image for image in images["multi"].manifests if "arm64" in str(image.platform)][0]
    assert arm["digest"] == images["multi"].digest and arm["manifest_digest"] == child.digest
    assert arm["platform"] == "linux/arm64/v8"
    again = run(endpoint, options(endpoint, "multi", tmp_path / "dest", platform="linux/arm64/v8"))
    assert not again["changed"] and again["api_calls"] == 1
    amd = run(endpoint, options(endpoint, "multi", tmp_path / "dest", platform="linux/amd64"))
    assert amd["changed"] and amd["manifest_digest"] != child.digest


def test_all_platforms_keeps_the_index(seeded, tmp_path):
    endpoint, images = seeded
    result = run(endpoint, options(endpoint, "multi", tmp_path / "dest", all_platforms=True))
    assert result["platform"] == "all" and result["manifest_digest"] == images["multi"].digest
    store = layout.OciLayout(str(tmp_path / "dest"))
    for image in images["multi"].manifests:
        assert store.read_blob(image.digest) == image.manifest_bytes
    assert not run(endpoint, options(endpoint, "multi", tmp_path / "dest", all_platforms=True))["changed"]


def test_no_matching_platform_lists_what_there_is(seeded, tmp_path):
    endpoint, dummy = seeded
    with pytest.raises(PlatformNotFoundError) as info:
        run(endpoint, options(endpoint, "multi", tmp_path / "dest", platform="linux/s390x"))
    assert "linux/amd64" in str(info.value) and "linux/arm64/v8" in str(info.value)
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("dest_format", ["oci-archive", "docker-archive"])
def test_archives_are_written_once(seeded, tmp_path, dest_format):
    endpoint, images = seeded
    dest = tmp_path / "image.tar"
    first = run(endpoint, options(endpoint, "one", dest, dest_format=dest_format))
    assert first["changed"] and dest.is_file()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # staging removed
    again = run(endpoint, options(endpoint, "one", dest, dest_format=dest_format))
    assert not again["changed"] and again["api_calls"] == 1 and again["bytes_transferred"] == 0
    if shutil.which("skopeo"):
        inspected = json.loads(subprocess.run(["skopeo", "inspect", f"{dest_format}:{dest}"], check=True,
                                              capture_output=True, text=True).stdout)
        assert len(inspected["Layers"]) == 2
        if dest_format == "oci-archive":
            assert inspected["Digest"] == images["one"].digest


def test_killed_pull_resumes_where_it_stopped(seeded, tmp_path):
    endpoint, images = seeded
    dest = tmp_path / "dest"
    partials = dest / ".ecrkit" / "partial"
    # the first layer stalls half way through, so the child is surely mid-download when it is killed,
    # while the other connection completes ranges of the second layer
    endpoint.set_faults(f"stall-blob:after=524288,seconds=30,count=100,digest={images['one'].layers[0].digest}")
    child = multiprocessing.get_context("fork").Process(
        target=run, args=(endpoint, options(endpoint, "one", dest, max_connections=8)))
    child.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _journaled_bytes(partials):
            time.sleep(0.05)
        assert _journaled_bytes(partials), "the download never got going"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    endpoint.clear_faults()

    result = run(endpoint, options(endpoint, "one", dest))
    total = sum(blob["size"] for blob in result["layers"])
    assert result["changed"] and result["bytes_transferred"] < total
    store = layout.OciLayout(str(dest))
    assert all(store.has_blob(blob["digest"], blob["size"], verify=True) for blob in result["layers"])
    assert store.find_tag("one")["digest"] == images["one"].digest
    assert not os.listdir(partials)


def test_stalled_connection_times_out_and_resumes(seeded, tmp_path):
    endpoint, images = seeded
    endpoint.set_faults(f"stall-blob:after=100000,seconds=30,count=1,digest={images['one'].layers[0].digest}")
    started = time.monotonic()
    result = run(endpoint, options(endpoint, "one", tmp_path / "dest", download_timeout=1, max_attempts=3))
    assert result["changed"] and time.monotonic() - started < 25  # not the 30 s stall
    store = layout.OciLayout(str(tmp_path / "dest"))
    assert all(store.has_blob(blob["digest"], blob["size"], verify=True) for blob in result["layers"])


def test_throttling_is_retried_and_counted(seeded, tmp_path):
    endpoint, images = seeded
    endpoint.set_faults("throttle:every=2,count=3")
    opts = options(endpoint, "one", tmp_path / "dest", max_attempts=4)
    result = pull.pull(opts, lambda ref: ecr.EcrRepository(endpoint.client(), ref, opts.api_retry))
    assert result["changed"] and result["retries"] == 3 and result["digest"] == images["one"].digest
    endpoint.set_faults("throttle:every=1")
    opts = options(endpoint, "one", tmp_path / "other", max_attempts=2)
    with pytest.raises(ecr.EcrApiError, match="kept answering BatchGetImage with ThrottlingException after 1 retries"):
        pull.pull(opts, lambda ref: ecr.EcrRepository(endpoint.client(), ref, opts.api_retry))


def _journaled_bytes(partials):
    """True once a blob has ranges recorded as written (a journal holds a header line, then a line a range)."""
    if not partials.is_dir():
        return False
    for name in os.listdir(partials):
        try:
            if name.endswith(".journal") and len((partials / name).read_bytes().splitlines()) >= 2:
                return True
        except FileNotFoundError:
            continue  # that blob completed meanwhile: its journal is gone
    return False


@pytest.mark.parametrize("params, message", [
    ({"dest_format": "docker-archive", "all_platforms": True}, "docker-archive holds one platform"),
    ({"max_connections": 0}, "between 1 and 64"),
    ({"chunk_size": 1000}, "at least 1 MiB"),
    ({"platform": "linux"}, "linux"),
    ({"region": "eu-west-1"}, "eu-west-1"),
])
def test_options_are_checked_before_any_call(tmp_path, params, message):
    with pytest.raises(Exception) as info:
        pull.PullOptions.from_params(ref="123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app:1",
                                     dest=str(tmp_path / "dest"), **params)
    assert message in str(info.value)


def test_digest_only_reference_is_recorded_under_its_digest(seeded, tmp_path):
    endpoint, images = seeded
    ref = f"{endpoint.account_id}.dkr.ecr.{endpoint.region}.amazonaws.com/team/app@{images['one'].digest}"
    opts = pull.PullOptions.from_params(ref=ref, dest=str(tmp_path / "dest"))
    assert run(endpoint, opts)["changed"]
    tag = images["one"].digest.replace(":", "-")
    assert layout.OciLayout(str(tmp_path / "dest")).find_tag(tag)["digest"] == images["one"].digest


def test_foreign_layers_are_refused_before_any_download(ecr_endpoint, tmp_path):
    client = ecr_endpoint.client()
    client.create_repository(repositoryName="team/app")
    config = json.dumps({"architecture": "amd64", "os": "windows", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    config_digest = upload_blob(client, "team/app", config)
    document = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                    "digest": "sha256:" + "a" * 64, "size": 1024, "urls": ["https://example.invalid/layer"]}],
    }
    client.put_image(repositoryName="team/app", imageTag="windows", imageManifest=json.dumps(document))
    ecr_endpoint.reset_stats()
    with pytest.raises(ManifestError) as info:
        run(ecr_endpoint, options(ecr_endpoint, "windows", tmp_path / "dest"))
    assert "foreign" in str(info.value).lower()
    assert ecr_endpoint.stats()["api_calls"] == {"BatchGetImage": 1}
    assert not (tmp_path / "dest").exists()


# manifests that lie: refused after the one BatchGetImage (or the few an index needs), before any blob ------

OCI_LAYER = manifest.MEDIA_TYPE_OCI_LAYER_GZIP


def put_manifest(client, document, tag):
    text = json.dumps(document)
    client.put_image(repositoryName="team/app", imageTag=tag, imageManifest=text)
    return manifest.sha256_digest(text.encode()), len(text.encode())


def lying_image(client, layers=None, config_size=None):
    """Upload a config and two small layers; return the manifest document (descriptors honest unless
    ``layers`` replaces them: a function of the honest layer descriptors)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    config_digest = upload_blob(client, "team/app", config)
    honest = []
    for seed in (b"one", b"two"):
        data = seed * 1000
        honest.append({"mediaType": OCI_LAYER, "digest": upload_blob(client, "team/app", data), "size": len(data)})
    return {
        "schemaVersion": 2,
        "mediaType": manifest.MEDIA_TYPE_OCI_MANIFEST,
        "config": {"mediaType": manifest.MEDIA_TYPE_OCI_CONFIG, "digest": config_digest,
                   "size": len(config) if config_size is None else config_size},
        "layers": layers(honest) if layers else honest,
    }


LYING_MANIFESTS = {
    "layer larger than ECR allows": (lambda layers: [dict(layers[0], size=manifest.MAX_BLOB_SIZE + 1)], None,
                                     "more than the 52,000 MiB ECR allows for a layer"),
    "negative layer size": (lambda layers: [dict(layers[0], size=-1)], None, "layers[0].size must be a whole number of bytes, not -1"),
    "absurd config size": (None, 10 ** 15, "config.size is 1,000,000,000,000,000 bytes"),
    "more layers than sane": (lambda layers: layers[:1] * (manifest.MAX_LAYERS + 1), None, "has 1,001 layers, more than the 1,000"),
    "one layer, two sizes": (lambda layers: [layers[0], dict(layers[0], size=layers[0]["size"] + 1)], None,
                             "layers[1].size is 3,001 bytes, but layers[0] gives the same digest"),
    "unknown digest algorithm": (lambda layers: layers + [{"mediaType": manifest.MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_GZIP,
                                                           "digest": "sha512:" + "ab" * 64, "size": 10,
                                                           "urls": ["https://example.invalid/l"]}], None, "only sha256 digests"),
}


@pytest.mark.parametrize("case", sorted(LYING_MANIFESTS))
def test_lying_manifests_are_refused_before_any_download(ecr_endpoint, tmp_path, case):
    """ECR stores these (the local endpoint, like ECR, checks only that the blobs exist); the pull refuses
    them from the manifest alone: one API call, no blob URL asked for, nothing written."""
    layers, config_size, message = LYING_MANIFESTS[case]
    client = ecr_endpoint.client()
    client.create_repository(repositoryName="team/app")
    put_manifest(client, lying_image(client, layers, config_size), "liar")
    ecr_endpoint.reset_stats()
    with pytest.raises(ManifestError) as info:
        run(ecr_endpoint, options(ecr_endpoint, "liar", tmp_path / "dest"))
    assert message in str(info.value)
    assert str(info.value).endswith(".") and "\n" not in str(info.value)
    assert ecr_endpoint.stats()["api_calls"] == {"BatchGetImage": 1}
    assert ecr_endpoint.stats()["blob_requests"] == 0
    assert not (tmp_path / "dest").exists()


def test_lying_indexes_are_refused_before_any_download(ecr_endpoint, tmp_path):
    client = ecr_endpoint.client()
    client.create_repository(repositoryName="team/app")
    child_digest, child_size = put_manifest(client, lying_image(client), "child")
    child = {"mediaType": manifest.MEDIA_TYPE_OCI_MANIFEST, "digest": child_digest, "size": child_size,
             "platform": {"os": "linux", "architecture": "amd64"}}

    def index(*entries):
        return {"schemaVersion": 2, "mediaType": manifest.MEDIA_TYPE_OCI_INDEX, "manifests": list(entries)}

    # an entry whose size is not that of the manifest it names
    put_manifest(client, index(dict(child, size=child_size + 1)), "wrong-size")
    # an entry of a media type this collection does not know: never selected, and the index cannot be copied whole
    put_manifest(client, index(dict(child, mediaType="application/vnd.example.manifest.v9+json")), "unknown-type")
    # five indexes on the way down to the manifest, the top one included
    nested = child
    for dummy in range(4):
        digest, size = put_manifest(client, index(nested), "nested")
        nested = {"mediaType": manifest.MEDIA_TYPE_OCI_INDEX, "digest": digest, "size": size}
    put_manifest(client, index(nested), "deep")

    for tag, kwargs, error, message, calls in (
            ("wrong-size", {"platform": "linux/amd64"}, ManifestError, f"is {child_size:,} bytes, but the index that lists it says", 2),
            ("unknown-type", {"all_platforms": True}, manifest.UnsupportedManifestError, "cannot be copied whole", 1),
            ("unknown-type", {"platform": "linux/amd64"}, PlatformNotFoundError, "lists no platform images at all", 1),
            ("deep", {"all_platforms": True}, ManifestError, "nesting indexes more than 4 deep", 4)):
        ecr_endpoint.reset_stats()
        with pytest.raises(error) as info:
            run(ecr_endpoint, options(ecr_endpoint, tag, tmp_path / "dest", **kwargs))
        assert message in str(info.value), tag
        assert ecr_endpoint.stats()["api_calls"] == {"BatchGetImage": calls}, tag
        assert ecr_endpoint.stats()["blob_requests"] == 0
        assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("delta", [1, -1])
def test_a_layer_whose_size_is_not_its_descriptors_is_never_stored(ecr_endpoint, tmp_path, delta):
    """A size that lies plausibly can only be caught by the download, which checks it against what the
    server sends, and keeps nothing of the blob."""
    client = ecr_endpoint.client()
    client.create_repository(repositoryName="team/app")
    document = lying_image(client, lambda layers: [dict(layers[0], size=layers[0]["size"] + delta)])
    put_manifest(client, document, "liar")
    with pytest.raises(EcrkitError) as info:
        run(ecr_endpoint, options(ecr_endpoint, "liar", tmp_path / "dest"))
    layer = document["layers"][0]
    assert layer["digest"] in str(info.value) and "failed verification" in str(info.value) and "\n" not in str(info.value)
    store = layout.OciLayout(str(tmp_path / "dest"))
    assert store.blob_status(layer["digest"], layer["size"] - delta) == layout.BLOB_MISSING
    assert store.find_tag("liar") is None
    assert store.partial_path(layer["digest"]) not in [partial.path for partial in store.list_partials()]


def test_sizes_larger_than_the_disk_are_refused_before_the_first_byte(ecr_endpoint, tmp_path):
    """Each layer within ECR's limit, together more than the destination's free space: refused before
    any blob is requested, and the (sparse) partial files take no room."""
    stats = os.statvfs(str(tmp_path))
    claimed = 50000 * MIB
    count = stats.f_bavail * stats.f_frsize // claimed + 2
    client = ecr_endpoint.client()
    client.create_repository(repositoryName="team/app")
    layers = [{"mediaType": OCI_LAYER, "digest": upload_blob(client, "team/app", b"small %d" % number), "size": claimed}
              for number in range(count)]
    put_manifest(client, lying_image(client, lambda honest: layers), "huge")
    ecr_endpoint.reset_stats()
    with pytest.raises(DiskFullError) as info:
        run(ecr_endpoint, options(ecr_endpoint, "huge", tmp_path / "dest"))
    assert "free space or choose another destination" in str(info.value)
    assert ecr_endpoint.stats()["blob_requests"] == 0
    used = sum(os.lstat(os.path.join(root, name)).st_blocks * 512 for root, dummy, names in os.walk(tmp_path / "dest") for name in names)
    assert used < MIB


# a destination that was tampered with --------------------------------------------------------------

def layer_actions(result):
    return {layer["digest"]: layer["action"] for layer in result["layers"]}


def test_a_damaged_layer_in_dest_is_fetched_again(seeded, tmp_path):
    endpoint, images = seeded
    dest = tmp_path / "dest"
    run(endpoint, options(endpoint, "one", dest))
    store = layout.OciLayout(str(dest))
    first, second = images["one"].layers
    with open(store.blob_path(first.digest), "r+b") as handle:  # cut short, as a full disk or a killed copy leaves it
        handle.truncate(first.size // 2)
    outside = tmp_path / "outside"
    outside.write_bytes(b"x" * second.size)
    os.unlink(store.blob_path(second.digest))
    os.symlink(outside, store.blob_path(second.digest))  # replaced by a link to a file of the right size
    again = run(endpoint, options(endpoint, "one", dest))
    assert again["changed"]
    actions = layer_actions(again)
    assert actions[first.digest] == actions[second.digest] == "downloaded"
    assert actions[images["one"].config_digest] == "present"
    assert again["bytes_transferred"] == first.size + second.size
    assert store.has_blob(first.digest, first.size, verify=True) and store.has_blob(second.digest, second.size, verify=True)
    assert not os.path.islink(store.blob_path(second.digest)) and outside.read_bytes() == b"x" * second.size
    assert not run(endpoint, options(endpoint, "one", dest))["changed"]


@pytest.mark.parametrize("keep_times", [False, True])
def test_a_layer_altered_in_place_is_fetched_again(seeded, tmp_path, monkeypatch, keep_times):
    """Same size, one byte flipped in a 3 MiB layer (its mtime even put back): the change of ctime shows
    the blob changed since it was verified, so it is hashed, found wrong and fetched again. A run that
    changes nothing hashes nothing."""
    endpoint, images = seeded
    dest = tmp_path / "dest"
    run(endpoint, options(endpoint, "one", dest))
    store = layout.OciLayout(str(dest))
    hashed = []
    real = layout.OciLayout.blob_status

    def spy(self, digest, size, verify=False):
        if verify:
            hashed.append(digest)
        return real(self, digest, size, verify=verify)

    monkeypatch.setattr(layout.OciLayout, "blob_status", spy)
    assert not run(endpoint, options(endpoint, "one", dest))["changed"] and hashed == []
    layer = images["one"].layers[0]
    path = store.blob_path(layer.digest)
    before = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(layer.size // 2)
        byte = handle.read(1)
        handle.seek(layer.size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    if keep_times:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    again = run(endpoint, options(endpoint, "one", dest))
    assert again["changed"] and layer_actions(again)[layer.digest] == "downloaded"
    assert layer.digest in hashed and images["one"].layers[1].digest not in hashed  # only what changed is read
    assert again["bytes_transferred"] == layer.size
    assert store.has_blob(layer.digest, layer.size, verify=True)


def test_an_altered_config_in_dest_is_fetched_again(seeded, tmp_path):
    """Same size, other bytes: the config changed since it was verified, so it is hashed and fetched again."""
    endpoint, images = seeded
    dest = tmp_path / "dest"
    run(endpoint, options(endpoint, "one", dest))
    store = layout.OciLayout(str(dest))
    config = images["one"].manifests[0].config
    path = store.blob_path(config.digest)
    with open(path, "rb") as handle:
        altered = handle.read().replace(b'"amd64"', b'"arm64"')
    with open(path, "wb") as handle:
        handle.write(altered)
    assert store.blob_status(config.digest, config.size, verify=True) == layout.BLOB_DIGEST_MISMATCH
    again = run(endpoint, options(endpoint, "one", dest))
    assert again["changed"] and layer_actions(again)[config.digest] == "downloaded"
    assert again["bytes_transferred"] == config.size and again["platform"] == "linux/amd64"
    assert store.has_blob(config.digest, config.size, verify=True)


def test_an_altered_manifest_in_dest_is_fetched_again(seeded, tmp_path):
    endpoint, images = seeded
    dest = tmp_path / "dest"
    run(endpoint, options(endpoint, "multi", dest, platform="linux/arm64"))
    store = layout.OciLayout(str(dest))
    child = [image for image in images["multi"].manifests if "arm64" in image.platform_string][0]
    path = store.blob_path(child.digest)
    with open(path, "rb") as handle:
        altered = handle.read().replace(b'"schemaVersion":2', b'"schemaVersion":3')
    assert altered != child.manifest_bytes and len(altered) == child.descriptor.size
    with open(path, "wb") as handle:
        handle.write(altered)
    endpoint.reset_stats()
    again = run(endpoint, options(endpoint, "multi", dest, platform="linux/arm64"))
    assert again["changed"] and again["bytes_transferred"] == 0
    assert endpoint.stats()["api_calls"] == {"BatchGetImage": 2}  # the index, then the manifest again
    assert store.read_blob(child.digest) == child.manifest_bytes
    assert not run(endpoint, options(endpoint, "multi", dest, platform="linux/arm64"))["changed"]


def test_a_symlinked_dest_is_refused_before_any_call(seeded, tmp_path):
    """An OCI layout or archive is written at the path given, never wherever a link planted there points."""
    endpoint, dummy = seeded
    real = tmp_path / "real"
    run(endpoint, options(endpoint, "one", real))
    run(endpoint, options(endpoint, "one", tmp_path / "real.tar", dest_format="oci-archive"))
    kept = [real / "index.json", tmp_path / "real.tar"] + list((real / "blobs" / "sha256").iterdir())
    before = {str(item): (item.stat().st_mtime_ns, item.stat().st_size) for item in kept}
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "link.tar").symlink_to(tmp_path / "real.tar")
    endpoint.reset_stats()
    for dest, kwargs, error in ((tmp_path / "link", {}, layout.LayoutSymlinkError),
                                (tmp_path / "dangling", {}, layout.LayoutSymlinkError),
                                (str(tmp_path / "link") + "/", {}, layout.LayoutSymlinkError),
                                (tmp_path / "link", {"check_mode": True}, layout.LayoutSymlinkError),
                                (tmp_path / "link.tar", {"dest_format": "oci-archive"}, archive.UnsafeArchiveError),
                                (tmp_path / "link.tar", {"dest_format": "docker-archive"}, archive.UnsafeArchiveError)):
        with pytest.raises(error) as info:
            run(endpoint, options(endpoint, "one", dest, **kwargs))
        assert f"is a symbolic link (to {os.readlink(str(dest).rstrip('/'))})" in str(info.value)
        assert "give the real path instead" in str(info.value)
    assert endpoint.stats()["api_calls_total"] == 0
    assert not (tmp_path / "nowhere").exists()
    assert {str(item): (item.stat().st_mtime_ns, item.stat().st_size) for item in kept} == before
    assert sorted(os.listdir(real)) == [".ecrkit", "blobs", "index.json", "oci-layout"]


def test_a_symlinked_staging_layout_is_refused_before_any_download(seeded, tmp_path):
    endpoint, dummy = seeded
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / ".image.tar.ecrkit-staging").symlink_to(elsewhere)
    endpoint.reset_stats()
    with pytest.raises(layout.LayoutSymlinkError, match="is a symbolic link"):
        run(endpoint, options(endpoint, "one", tmp_path / "image.tar", dest_format="oci-archive"))
    assert endpoint.stats()["blob_requests"] == 0
    assert not os.listdir(elsewhere) and not (tmp_path / "image.tar").exists()


def test_a_planted_partial_download_is_never_written_through(seeded, tmp_path):
    endpoint, images = seeded
    dest = tmp_path / "dest"
    store = layout.OciLayout(str(dest), create=True)
    outside = tmp_path / "precious"
    outside.write_bytes(b"do not touch")
    layer = images["one"].layers[0]
    os.symlink(outside, store.partial_path(layer.digest))
    endpoint.reset_stats()
    with pytest.raises(layout.LayoutSymlinkError) as info:
        run(endpoint, options(endpoint, "one", dest))
    assert store.partial_path(layer.digest) in str(info.value) and "remove it" in str(info.value)
    assert outside.read_bytes() == b"do not touch"
    assert endpoint.stats()["blob_requests"] == 0
    os.unlink(store.partial_path(layer.digest))
    assert run(endpoint, options(endpoint, "one", dest))["changed"]


def _hostile_archive(path, kind):
    with tarfile.open(path, "w") as tar:
        for name, data in (("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'), ("index.json", b'{"schemaVersion": 2, "manifests": []}'),
                           ("manifest.json", b'[{"Config": "c.json", "RepoTags": [], "Layers": []}]'), ("c.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo({"dotdot": "../../evil", "absolute": "/tmp/evil", "duplicate": "./index.json",
                                "symlink": "blobs/sha256/" + "ab" * 32, "hardlink": "blobs/x"}[kind])
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "../../outside"
        tar.addfile(info, io.BytesIO(b"") if info.isreg() else None)


@pytest.mark.parametrize("dest_format, kind", [("oci-archive", "dotdot"), ("docker-archive", "absolute"), ("oci-archive", "duplicate"),
                                               ("docker-archive", "symlink"), ("oci-archive", "hardlink")])
def test_a_hostile_archive_at_dest_is_replaced_and_nothing_is_written_outside(seeded, tmp_path, dest_format, kind):
    """The pull reads what is at dest to tell whether it holds the image already: a hostile archive there
    is refused whole (nothing extracted, nothing written), so the pull writes the image over it. (Every
    kind of hostile member against both readers of both formats: test_archive.py.)"""
    endpoint, images = seeded
    sandbox = tmp_path / "sandbox"
    work = sandbox / "deep" / "er"
    work.mkdir(parents=True)
    dest = work / "image.tar"
    _hostile_archive(str(dest), kind)
    with pytest.raises(archive.UnsafeArchiveError):
        archive.read_archive_summary(str(dest), dest_format)
    result = run(endpoint, options(endpoint, "one", dest, dest_format=dest_format))
    assert result["changed"]
    assert sorted(str(item.relative_to(sandbox)) for item in sandbox.rglob("*")) == ["deep", "deep/er", "deep/er/image.tar"]
    summary = archive.read_archive_summary(str(dest), dest_format)
    if dest_format == "oci-archive":
        assert summary["manifests"][0]["digest"] == images["one"].digest
    else:
        assert summary["images"][0]["manifest_digest"] == images["one"].digest


# containerd -----------------------------------------------------------------------------------------

def into_containerd(endpoint, daemon, tag, staging, **kwargs):
    kwargs.setdefault("containerd_address", daemon.address)
    return options(endpoint, tag, staging, dest_format="containerd", **kwargs)


def collect_garbage(daemon, some_image):
    """Make containerd run its garbage collector now: remove a throwaway name with --sync."""
    daemon.ctr("images", "tag", some_image, "example.test/throwaway:1")
    daemon.ctr("images", "rm", "--sync", "example.test/throwaway:1")


def snapshot_keys(daemon, namespace="default"):
    return [line.split()[0] for line in daemon.ctr("snapshots", "ls", namespace=namespace).splitlines()[1:]]


def test_containerd_pull_then_nothing_to_do(seeded, private_containerd, tmp_path):
    endpoint, images = seeded
    staging = tmp_path / "staging"
    first = run(endpoint, into_containerd(endpoint, private_containerd, "one", staging))
    repo = f"{endpoint.account_id}.dkr.ecr.{endpoint.region}.amazonaws.com/team/app"
    names = [f"{repo}:one", f"{repo}@{images['one'].digest}"]
    assert first["changed"] and first["format"] == "containerd" and first["digest"] == images["one"].digest
    assert first["containerd"]["images"] == names and first["containerd"]["unpacked"]
    assert first["bytes_transferred"] == sum(blob["size"] for blob in first["layers"])
    assert private_containerd.image_names() == sorted(names)  # the staging name is gone
    check = private_containerd.ctr("images", "check", f'name=="{names[0]}"')
    assert "complete (3/3)" in check and check.split()[-1] == "true"
    assert len(snapshot_keys(private_containerd)) == 2
    assert not os.listdir(staging)  # staged layers removed once containerd had them

    endpoint.reset_stats()
    again = run(endpoint, into_containerd(endpoint, private_containerd, "one", staging))
    assert not again["changed"] and again["bytes_transferred"] == 0 and again["api_calls"] == 1
    assert {layer["action"] for layer in again["layers"]} == {"present"}
    assert endpoint.stats()["api_calls_total"] == 1


def test_containerd_downloads_only_layers_it_lacks(seeded, private_containerd, tmp_path):
    endpoint, dummy = seeded
    run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "staging"))
    second = run(endpoint, into_containerd(endpoint, private_containerd, "two", tmp_path / "staging"))
    actions = [layer["action"] for layer in second["layers"]]
    assert actions.count("present") == 2 and actions.count("downloaded") == 2
    assert second["bytes_transferred"] == sum(layer["size"] for layer in second["layers"] if layer["action"] == "downloaded")


def test_containerd_index_platforms(seeded, private_containerd, tmp_path):
    endpoint, images = seeded
    index = images["multi"]
    amd = run(endpoint, into_containerd(endpoint, private_containerd, "multi", tmp_path / "s"))
    assert amd["platform"] == "linux/amd64" and amd["digest"] == index.digest
    client = containerd.connect(private_containerd.address, "default", must_exist=True)
    assert client.image(amd["containerd"]["images"][0]).digest == index.digest  # the name points at the index
    arm_child = [image for image in index.manifests if "arm64" in str(image.platform)][0]
    assert arm_child.digest not in client.content_digests()
    assert not run(endpoint, into_containerd(endpoint, private_containerd, "multi", tmp_path / "s"))["changed"]

    arm = run(endpoint, into_containerd(endpoint, private_containerd, "multi", tmp_path / "s", platform="linux/arm64/v8"))
    assert arm["changed"] and arm["platform"] == "linux/arm64/v8" and arm["containerd"]["unpacked"]
    collect_garbage(private_containerd, amd["containerd"]["images"][0])
    amd_child = [image for image in index.manifests if "amd64" in str(image.platform)][0]
    assert {amd_child.digest, amd_child.config.digest} <= client.content_digests()  # the first platform is kept
    every = run(endpoint, into_containerd(endpoint, private_containerd, "multi", tmp_path / "s", all_platforms=True))
    assert every["platform"] == "all" and every["bytes_transferred"] == 0  # both platforms were there already
    assert not run(endpoint, into_containerd(endpoint, private_containerd, "multi", tmp_path / "s", all_platforms=True))["changed"]


def test_containerd_unpack_later_downloads_nothing(seeded, private_containerd, tmp_path):
    endpoint, dummy = seeded
    private_containerd.ctr("namespaces", "create", "plain")
    packed = run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s", unpack=False,
                                           containerd_namespace="plain"))
    assert packed["changed"] and not packed["containerd"]["unpacked"]
    assert not snapshot_keys(private_containerd, "plain")
    assert not run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s", unpack=False,
                                             containerd_namespace="plain"))["changed"]
    unpacked = run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s", containerd_namespace="plain"))
    assert unpacked["changed"] and unpacked["bytes_transferred"] == 0 and unpacked["containerd"]["unpacked"]
    assert len(snapshot_keys(private_containerd, "plain")) == 2


def test_containerd_check_mode_stores_nothing(seeded, private_containerd, tmp_path):
    endpoint, dummy = seeded
    planned = run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s", check_mode=True))
    assert planned["changed"] and {layer["action"] for layer in planned["layers"]} == {"download"}
    assert private_containerd.image_names() == [] and not (tmp_path / "s").exists()


def test_containerd_errors_before_any_call(seeded, private_containerd, tmp_path):
    endpoint, dummy = seeded
    endpoint.reset_stats()
    with pytest.raises(containerd.UnknownNamespaceError, match="no namespace 'k8s.io'"):
        run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s", containerd_namespace="k8s.io"))
    with pytest.raises(containerd.SocketMissingError):
        run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s", containerd_address="/nonexistent.sock"))
    assert endpoint.stats()["api_calls_total"] == 0


def test_containerd_interrupted_pull_keeps_its_blobs_from_gc_and_resumes(seeded, private_containerd, tmp_path, monkeypatch):
    """Killed after ingesting one blob: containerd's garbage collector keeps it (the staging name's
    labels reference it), nothing is named after the image yet, and the next run finishes the job."""
    endpoint, images = seeded
    real_ingest = containerd.Containerd.ingest
    calls = []

    def ingest_once_then_die(self, path, digest, size):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(digest)
        real_ingest(self, path, digest, size)

    monkeypatch.setattr(containerd.Containerd, "ingest", ingest_once_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s"))
    monkeypatch.setattr(containerd.Containerd, "ingest", real_ingest)
    staging_name = containerd.staging_name(images["one"].digest)
    assert private_containerd.image_names() == [staging_name]
    collect_garbage(private_containerd, staging_name)
    assert calls[0] in containerd.connect(private_containerd.address, "default", must_exist=True).content_digests()

    endpoint.reset_stats()
    again = run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s"))
    assert again["changed"] and again["bytes_transferred"] == 0  # the other blobs were staged already
    assert private_containerd.image_names() == sorted(again["containerd"]["images"])
    assert not os.listdir(tmp_path / "s")


def test_containerd_unchanged_run_removes_what_a_late_kill_left(seeded, private_containerd, tmp_path, monkeypatch):
    """Killed after the image was named but before the staging name was removed: the next run finds the
    image complete (unchanged) and removes the staging name, layout and lock."""
    endpoint, images = seeded

    def killed(self, names):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(containerd.Containerd, "remove_images", killed)
    with pytest.raises(KeyboardInterrupt):
        run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s"))
    monkeypatch.undo()
    assert containerd.staging_name(images["one"].digest) in private_containerd.image_names()
    assert os.listdir(tmp_path / "s")
    again = run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s"))
    assert not again["changed"] and again["api_calls"] == 1
    assert private_containerd.image_names() == sorted(again["containerd"]["images"])
    assert not os.listdir(tmp_path / "s")


# Another user on the host (uid 65534) lays traps where a root pull writes (issue: security review) -------

def _plant_staging_trap(as_nobody, monkeypatch, staging_roots, target):
    """As another user: staging layouts with a harmless partial directory, swapped for a link to
    ``target`` once the pull has checked it and is about to download (the race of the security review).
    Returns the list of what ``target`` held right after the download (a commit renames files away)."""
    def plant():
        for root in staging_roots:
            os.makedirs(os.path.join(root, ".ecrkit", "partial"), mode=0o777)
    assert as_nobody(plant) == "ok"

    def swap():
        for root in staging_roots:
            partial = os.path.join(root, ".ecrkit", "partial")
            if os.path.isdir(partial):
                os.rename(partial, partial + ".checked")
                os.symlink(target, partial)
    real_download = pull.transfer.download_blobs

    written_there = []

    def download_after_the_swap(*args, **kwargs):
        assert as_nobody(swap) == "ok"
        try:
            return real_download(*args, **kwargs)
        finally:
            written_there.extend(os.listdir(target))
    monkeypatch.setattr(pull.transfer, "download_blobs", download_after_the_swap)
    return written_there


def _run_with_deadline(call, seconds=60):
    """``call()`` in a thread: what it returned or raised, or "hung" (a regression must fail, not hang)."""
    outcome = []

    def target():
        try:
            outcome.append(call())
        except BaseException as exc:  # pylint: disable=broad-except
            outcome.append(exc)
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    return outcome[0] if outcome else "hung"


def test_containerd_staging_without_dest_cannot_be_prepared_by_another_user(
        seeded, private_containerd, shared_tmp, tmp_path, as_nobody, monkeypatch):
    endpoint, images = seeded
    cron = tmp_path / "cron.d"
    cron.mkdir()
    monkeypatch.setenv("TMPDIR", shared_tmp)
    name = images["one"].digest.replace(":", "-")
    # the names a pull would stage under: today's private directory, and the predictable one of before
    assert as_nobody(lambda: os.mkdir(os.path.join(shared_tmp, f"ecrkit-{os.geteuid()}"), 0o777)) == "ok"
    written = _plant_staging_trap(as_nobody, monkeypatch, [
        os.path.join(shared_tmp, f"ecrkit-{os.geteuid()}", f".ecrkit-containerd-{name}"), os.path.join(shared_tmp, f".ecrkit-containerd-{name}")], cron)
    endpoint.reset_stats()
    try:
        with pytest.raises(hostfs.UntrustedPathError, match=f"ecrkit-{os.geteuid()}, where the staging area of containerd pulls is "
                                                            "kept, belongs to uid 65534"):
            run(endpoint, into_containerd(endpoint, private_containerd, "one", ""))
    finally:
        assert written == [] and os.listdir(cron) == []  # (on 008009b: the layers, written as root)
    assert endpoint.stats()["blob_requests"] == 0


def test_containerd_staging_is_private_to_the_user(seeded, private_containerd, shared_tmp, as_nobody, monkeypatch):
    endpoint, images = seeded
    monkeypatch.setenv("TMPDIR", shared_tmp)

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt("killed after the download")

    monkeypatch.setattr(containerd.Containerd, "ingest", killed)
    with pytest.raises(KeyboardInterrupt):
        run(endpoint, into_containerd(endpoint, private_containerd, "one", ""))
    monkeypatch.undo()
    monkeypatch.setenv("TMPDIR", shared_tmp)
    base = os.path.join(shared_tmp, f"ecrkit-{os.geteuid()}")
    staging = os.path.join(base, ".ecrkit-containerd-" + images["one"].digest.replace(":", "-"))
    assert os.stat(base).st_mode & 0o777 == 0o700 and os.stat(staging).st_mode & 0o777 == 0o700
    assert os.listdir(os.path.join(staging, "blobs", "sha256"))  # the downloaded layers wait there for the next run
    assert as_nobody(lambda: os.listdir(staging)).startswith("PermissionError")
    assert run(endpoint, into_containerd(endpoint, private_containerd, "one", ""))["changed"]
    assert not os.path.exists(staging)


def test_an_archive_staging_layout_prepared_by_another_user_is_refused(seeded, shared_tmp, tmp_path, as_nobody, monkeypatch):
    endpoint, dummy = seeded
    cron = tmp_path / "cron.d"
    cron.mkdir()
    written = _plant_staging_trap(as_nobody, monkeypatch, [os.path.join(shared_tmp, ".app.tar.ecrkit-staging")], cron)
    endpoint.reset_stats()
    try:
        with pytest.raises(hostfs.UntrustedPathError, match="ecrkit-staging .*belongs to uid 65534 in the shared directory"):
            run(endpoint, options(endpoint, "one", os.path.join(shared_tmp, "app.tar"), dest_format="oci-archive"))
    finally:
        assert written == [] and os.listdir(cron) == []  # (on 008009b: the layers, written as root)
    assert endpoint.stats()["blob_requests"] == 0


def test_an_archive_lock_another_user_holds_or_made_a_fifo_fails_at_once(seeded, shared_tmp, as_nobody):
    endpoint, dummy = seeded
    assert as_nobody(lambda: os.mkfifo(os.path.join(shared_tmp, ".fifo.tar.ecrkit-lock"))) == "ok"
    fifo_options = options(endpoint, "one", os.path.join(shared_tmp, "fifo.tar"), dest_format="oci-archive")
    outcome = _run_with_deadline(lambda: run(endpoint, fifo_options))
    assert isinstance(outcome, hostfs.UntrustedPathError) and "is not a regular file" in str(outcome)
    lock = os.path.join(shared_tmp, ".held.tar.ecrkit-lock")
    system_python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")  # one another user can run
    holder = subprocess.Popen([system_python, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'w'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)", lock],
                              stdout=subprocess.PIPE, user=65534, group=65534, extra_groups=[])
    try:
        assert holder.stdout.readline() == b"held\n"
        held_options = options(endpoint, "one", os.path.join(shared_tmp, "held.tar"), dest_format="oci-archive")
        outcome = _run_with_deadline(lambda: run(endpoint, held_options))
        assert isinstance(outcome, hostfs.UntrustedPathError) and "belongs to uid 65534" in str(outcome)
    finally:
        holder.kill()
        holder.wait()


def test_an_empty_layout_directory_made_by_another_user_is_refused_before_any_call(seeded, shared_tmp, as_nobody):
    endpoint, dummy = seeded
    dest = os.path.join(shared_tmp, "images")
    assert as_nobody(lambda: os.mkdir(dest, 0o755)) == "ok"
    endpoint.reset_stats()
    with pytest.raises(hostfs.UntrustedPathError, match="belongs to uid 65534"):
        run(endpoint, options(endpoint, "one", dest))
    assert endpoint.stats()["api_calls_total"] == 0 and os.listdir(dest) == []


def test_an_image_of_a_thousand_layers_is_pulled_with_few_open_files(ecr_endpoint, tmp_path):
    """Each blob's files (partial, journal, claim) are open only while a worker is on it: 1,000 layers
    pull under a limit of 128 open files, where holding three per blob needed over 3,000."""
    image = sample_images.build_random_image(str(tmp_path / "source"), "many", count=1000, size=64, seed="many",
                                             compress=False)
    sample_images.push_image(ecr_endpoint.client(), image, "team/app", create_repository=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
    try:
        result = run(ecr_endpoint, options(ecr_endpoint, "many", tmp_path / "dest"))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert result["changed"] and len(result["layers"]) == 1001
    assert {layer["action"] for layer in result["layers"]} == {"downloaded"}
    store = layout.OciLayout(str(tmp_path / "dest"))
    assert all(store.has_blob(layer["digest"], layer["size"], verify=True) for layer in result["layers"])


# A fleet operator's view: many repositories in one layout, results to register and template -------------

def _by_name(endpoint, repository, tag):
    return f"{endpoint.account_id}.dkr.ecr.{endpoint.region}.amazonaws.com/{repository}:{tag}"


@pytest.fixture
def same_tag(seeded):
    """team/web:latest and team/sidecar:latest: two repositories, one tag, two different images."""
    endpoint, images = seeded
    client = endpoint.client()
    sample_images.push_image(client, images["one"], "team/web", tags=["latest"], create_repository=True)
    sample_images.push_image(client, images["two"], "team/sidecar", tags=["latest"], create_repository=True)
    return endpoint, images


def pull_named(endpoint, repository, tag, dest, **kwargs):
    kwargs.setdefault("chunk_size", MIB)
    return run(endpoint, pull.PullOptions.from_params(ref=_by_name(endpoint, repository, tag), dest=str(dest), **kwargs))


def test_two_repositories_with_one_tag_share_a_layout_without_flapping(same_tag, tmp_path):
    endpoint, images = same_tag
    dest = tmp_path / "shared"
    web, sidecar = _by_name(endpoint, "team/web", "latest"), _by_name(endpoint, "team/sidecar", "latest")
    first = pull_named(endpoint, "team/web", "latest", dest)
    second = pull_named(endpoint, "team/sidecar", "latest", dest)
    third = pull_named(endpoint, "team/web", "latest", dest)
    assert first["changed"] and second["changed"] and not third["changed"]
    assert (first["digest"], second["digest"], third["digest"]) == (images["one"].digest, images["two"].digest, images["one"].digest)
    store = layout.OciLayout(str(dest))
    assert store.find_tag(web)["digest"] == images["one"].digest and store.find_tag(sidecar)["digest"] == images["two"].digest
    # the tag alone stays with the repository that had it first: it never moves between repositories
    assert store.find_tag("latest")["annotations"][layout.IMAGE_NAME_ANNOTATION] == web
    again = [pull_named(endpoint, repository, "latest", dest) for repository in ("team/web", "team/sidecar")]
    assert [result["changed"] for result in again] == [False, False]
    endpoint.reset_stats()
    missing = pull_named(endpoint, "team/sidecar", "latest", dest, policy="missing")
    assert not missing["changed"] and missing["api_calls"] == 0 and missing["digest"] == images["two"].digest
    assert endpoint.stats()["api_calls_total"] == 0
    for name, image in ((web, images["one"]), (sidecar, images["two"]), ("latest", images["one"])):
        inspected = json.loads(subprocess.run(["skopeo", "inspect", f"oci:{dest}:{name}"], check=True, capture_output=True).stdout)
        assert inspected["Digest"] == image.digest
    listed = subprocess.run(["umoci", "ls", "--layout", str(dest)], check=True, capture_output=True, text=True).stdout.split()
    assert sorted(listed) == sorted([web, sidecar, "latest"])


def test_an_archive_of_another_repository_with_the_same_tag_is_not_taken_for_this_one(same_tag, tmp_path):
    endpoint, images = same_tag
    for dest_format in ("oci-archive", "docker-archive"):
        dest = tmp_path / f"image.{dest_format}"
        pull_named(endpoint, "team/web", "latest", dest, dest_format=dest_format)
        endpoint.reset_stats()
        other = pull_named(endpoint, "team/sidecar", "latest", dest, dest_format=dest_format, policy="missing")
        assert other["changed"] and other["digest"] == images["two"].digest and other["previous_digest"] is None
        assert pull_named(endpoint, "team/sidecar", "latest", dest, dest_format=dest_format)["changed"] is False


def test_results_say_what_was_there_before_and_name_the_image_for_templates(seeded, tmp_path):
    endpoint, images = seeded
    dest = tmp_path / "dest"
    name = _by_name(endpoint, "team/app", "multi")
    first = run(endpoint, options(endpoint, "multi", dest))
    index = images["multi"].digest
    assert first["digest"] == index and first["manifest_digest"] != index  # one platform of an index
    assert first["previous_digest"] is None and first["repository"] == "team/app"
    assert first["image"] == f"{endpoint.account_id}.dkr.ecr.{endpoint.region}.amazonaws.com/team/app@{index}"
    assert first["diff"] == {"before": {name: None}, "after": {name: index}}
    again = run(endpoint, options(endpoint, "multi", dest))
    assert not again["changed"] and again["previous_digest"] == index
    assert again["diff"] == {"before": {name: index}, "after": {name: index}}
    moved = run(endpoint, options(endpoint, "one", dest))
    assert moved["previous_digest"] is None  # another tag: its own entry


def test_check_mode_reports_the_platform_of_a_single_platform_image_it_has_not_pulled(seeded, tmp_path):
    endpoint, images = seeded
    planned = run(endpoint, options(endpoint, "one", tmp_path / "new", check_mode=True))
    assert planned["changed"] and planned["platform"] == "linux/amd64"
    assert not (tmp_path / "new").exists()


def test_check_mode_says_when_the_only_change_is_an_unpack(seeded, private_containerd, tmp_path):
    endpoint, dummy = seeded
    run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s", unpack=False))
    planned = run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s", check_mode=True))
    assert planned["changed"] and planned["would_unpack"] is True
    assert {layer["action"] for layer in planned["layers"]} == {"present"}
    assert run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s"))["changed"]
    settled = run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s", check_mode=True))
    assert not settled["changed"] and "would_unpack" not in settled


def _checked_options(tmp_path, **params):
    return pull.PullOptions.from_params(ref="123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app:1",
                                        dest=str(tmp_path / "dest"), **params)


def test_all_platforms_false_with_a_platform_is_accepted(tmp_path):
    """Issue 12: all_platforms: false is the default, not a conflict with platform."""
    opts = _checked_options(tmp_path, platform="linux/amd64", all_platforms=False)
    assert str(opts.platform) == "linux/amd64" and not opts.all_platforms
    with pytest.raises(pull.InvalidOptionError) as caught:
        _checked_options(tmp_path, platform="linux/arm64", all_platforms=True)
    assert str(caught.value) == ("platform picks one platform and all_platforms: true keeps them all; "
                                 "drop one of the two.")


@pytest.mark.parametrize("given, size", [
    ("16MiB", 16 * MIB), ("16MB", 16 * MIB), ("16M", 16 * MIB), ("16m", 16 * MIB), ("16Mi", 16 * MIB),
    ("16 MiB", 16 * MIB), ("1GiB", 1024 * MIB), ("1.5GiB", 1536 * MIB), ("2048KiB", 2 * MIB), ("1048576", MIB),
    ("1048576B", MIB), (4 * MIB, 4 * MIB),
])
def test_sizes_take_binary_units_as_the_docs_write_them(tmp_path, given, size):
    assert pull.parse_size(given, "chunk_size") == size
    assert _checked_options(tmp_path, chunk_size=given).chunk_size == size


@pytest.mark.parametrize("given", ["lots", "16XB", "-1MiB", "1.2.3MiB", "MiB", "16 M iB", "", "16iB"])
def test_a_size_that_is_not_one_is_one_clear_error(tmp_path, given):
    with pytest.raises(pull.InvalidOptionError) as caught:
        _checked_options(tmp_path, chunk_size=given)
    assert str(caught.value) == (f"chunk_size '{given}' is not a size; write a number of bytes or one with a binary unit, "
                                 "such as 16MiB, 512KiB or 1GiB.")


def test_chunk_size_below_one_mib_is_refused_with_the_limit(tmp_path):
    with pytest.raises(pull.InvalidOptionError, match=r"chunk_size must be at least 1 MiB \(1048576 bytes\), not 524288 bytes"):
        _checked_options(tmp_path, chunk_size="512KiB")


def test_containerd_options_with_another_format_warn_and_defaults_apply(seeded, tmp_path):
    endpoint, dummy = seeded
    plain = _checked_options(tmp_path)
    assert plain.warnings == () and plain.unpack is True
    assert (plain.containerd_namespace, plain.containerd_address) == (containerd.DEFAULT_NAMESPACE, containerd.DEFAULT_ADDRESS)
    result = run(endpoint, options(endpoint, "one", tmp_path / "dest", containerd_namespace="k8s.io", unpack=False))
    assert result["changed"]
    assert result["warnings"] == ["containerd_namespace, unpack apply only to format containerd and were ignored (format is oci)."]
    assert "warnings" not in run(endpoint, options(endpoint, "one", tmp_path / "dest"))
    given = _checked_options(tmp_path, dest_format="containerd", containerd_namespace="k8s.io", unpack=False)
    assert given.warnings == () and given.containerd_namespace == "k8s.io" and given.unpack is False


# prune: disk on edge boxes ------------------------------------------------------------------------------

@pytest.fixture
def stable(seeded):
    """team/web:stable at image one; moving it to image two leaves one's manifest and config unreferenced."""
    endpoint, images = seeded
    sample_images.push_image(endpoint.client(), images["one"], "team/web", tags=["stable"], create_repository=True)
    return endpoint, images


def _stored(dest):
    return {"sha256:" + name for name in os.listdir(os.path.join(dest, "blobs", "sha256"))}


def _digests(*images):
    return {blob.digest for image in images for blob in image.blob_descriptors()}


def test_prune_frees_what_a_moved_tag_left_and_keeps_shared_layers(stable, tmp_path):
    endpoint, images = stable
    dest = tmp_path / "edge"
    first = pull_named(endpoint, "team/web", "stable", dest, prune=True)
    assert first["changed"] and first["bytes_freed"] == 0 and first["blobs_removed"] == 0
    run(endpoint, options(endpoint, "multi", dest))  # another image in the layout (one platform of an index)
    amd64 = [image for image in images["multi"].manifests if image.platform["architecture"] == "amd64"][0]
    sidecar = {amd64.digest, amd64.config.digest} | {blob.digest for blob in amd64.layers}
    sample_images.push_image(endpoint.client(), images["two"], "team/web", tags=["stable"])
    freed = images["one"].size + images["one"].manifests[0].config.size

    before = _stored(dest)
    planned = pull_named(endpoint, "team/web", "stable", dest, prune=True, check_mode=True)
    assert planned["changed"] and planned["bytes_freed"] == freed and planned["blobs_removed"] == 2
    assert _stored(dest) == before
    moved = pull_named(endpoint, "team/web", "stable", dest, prune=True)
    assert moved["changed"] and moved["digest"] == images["two"].digest
    assert moved["bytes_freed"] == freed and moved["blobs_removed"] == 2
    assert sorted(moved["diff"]["before"]["unreferenced_blobs"]) == sorted(
        f"{digest} ({os.path.getsize(os.path.join(images['one'].layout, 'blobs', 'sha256', digest[7:]))} bytes)"
        for digest in (images["one"].digest, images["one"].manifests[0].config.digest))
    assert moved["diff"]["after"]["unreferenced_blobs"] == []
    assert [layer["action"] for layer in moved["layers"]].count("present") == 2  # the layers one and two share
    assert _stored(dest) == _digests(images["two"]) | sidecar
    store = layout.OciLayout(str(dest))
    for digest in _stored(dest):
        assert store.verified_status(digest, os.path.getsize(store.blob_path(digest))) == layout.BLOB_PRESENT
    for name, digest in ((_by_name(endpoint, "team/web", "stable"), images["two"].digest),
                         (_by_name(endpoint, "team/app", "multi"), amd64.digest)):
        inspected = json.loads(subprocess.run(["skopeo", "inspect", f"oci:{dest}:{name}"], check=True,
                                              capture_output=True, timeout=60).stdout)
        assert inspected["Digest"] == digest

    again = pull_named(endpoint, "team/web", "stable", dest, prune=True)
    assert not again["changed"] and again["bytes_freed"] == 0 and again["blobs_removed"] == 0
    assert "warnings" not in again


def test_prune_on_an_unchanged_run_frees_what_was_left_before(stable, tmp_path):
    endpoint, images = stable
    dest = tmp_path / "edge"
    pull_named(endpoint, "team/web", "stable", dest)
    sample_images.push_image(endpoint.client(), images["two"], "team/web", tags=["stable"])
    pull_named(endpoint, "team/web", "stable", dest)  # without prune: one's manifest and config stay
    again = pull_named(endpoint, "team/web", "stable", dest, prune=True, policy="missing")
    assert again["changed"] and again["api_calls"] == 0 and again["blobs_removed"] == 2
    assert _stored(dest) == _digests(images["two"])


HOLD_THE_LAYOUT = """
import os, sys, time
from ansible_collections.ecrkit.images.plugins.module_utils.layout import OciLayout
root, ready, go = sys.argv[1], sys.argv[2], sys.argv[3]
layout = OciLayout(root)
layout.begin_writing()
digest = layout.write_blob(b"committed by a pull that has not stored its entry yet")
open(ready, "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.01)
print(digest)
"""


def _release(worker, go):
    """Let the worker finish, and never leave it running."""
    go.touch()
    if worker.poll() is None:
        worker.kill()
        worker.communicate()


def test_prune_leaves_another_pull_in_progress_alone_and_says_so(stable, tmp_path, monkeypatch):
    endpoint, images = stable
    dest, ready, go = tmp_path / "edge", tmp_path / "ready", tmp_path / "go"
    pull_named(endpoint, "team/web", "stable", dest)
    sample_images.push_image(endpoint.client(), images["two"], "team/web", tags=["stable"])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    worker = subprocess.Popen([sys.executable, "-c", HOLD_THE_LAYOUT, str(dest), str(ready), str(go)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert worker.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        monkeypatch.setattr(pull, "PRUNE_WAIT", 0.5)
        moved = pull_named(endpoint, "team/web", "stable", dest, prune=True)
        assert moved["changed"] and moved["digest"] == images["two"].digest  # the pull itself is not held up
        assert moved["bytes_freed"] == 0 and moved["blobs_removed"] == 0
        assert len(moved["warnings"]) == 1 and "another run was still writing into it" in moved["warnings"][0]
        go.touch()
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
    finally:
        _release(worker, go)
    store = layout.OciLayout(str(dest))
    held = b"committed by a pull that has not stored its entry yet"
    assert store.has_blob(out.strip(), len(held), verify=True)  # the other run's blob was never removed
    later = pull_named(endpoint, "team/web", "stable", dest, prune=True)  # it is gone without storing an entry
    assert "warnings" not in later
    assert later["changed"] and later["blobs_removed"] == 3


def test_a_pull_holds_off_prunes_from_before_it_looks_at_the_layout(stable, tmp_path, monkeypatch):
    endpoint, images = stable
    dest = tmp_path / "edge"
    pull_named(endpoint, "team/web", "stable", dest)
    with open(dest / "index.json", "w", encoding="utf-8") as handle:  # its entry removed: every blob is garbage now
        json.dump({"schemaVersion": 2, "manifests": []}, handle)
    seen = []
    planner = pull._plan

    def plan_then_prune(*args):
        planned = planner(*args)  # this run is about to find every blob it needs present, and rely on them
        seen.append(layout.OciLayout(str(dest)).prune(wait=0.2))
        return planned

    monkeypatch.setattr(pull, "_plan", plan_then_prune)
    again = pull_named(endpoint, "team/web", "stable", dest)
    assert seen[0].removed == () and seen[0].skipped
    assert again["changed"] and again["bytes_transferred"] == 0
    assert {layer["action"] for layer in again["layers"]} == {"present"}
    store = layout.OciLayout(str(dest))
    for blob in images["one"].blob_descriptors():
        assert store.has_blob(blob.digest, blob.size, verify=True)
    assert store.prune(wait=0.2).removed == ()  # the run is over, and its image is referenced again


def test_prune_is_for_layouts_only(tmp_path):
    for dest_format in ("oci-archive", "docker-archive", "containerd"):
        opts = _checked_options(tmp_path, dest_format=dest_format, prune=True)
        assert not opts.prune and any("prune applies to format oci only" in warning for warning in opts.warnings)
    assert _checked_options(tmp_path, prune=True).prune
