# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pull use case end to end against the local ECR endpoint (module_utils only, no Ansible)."""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils import containerd, ecr, layout, layout_format, manifest, pull
from ansible_collections.ecrkit.images.plugins.module_utils.digest import of_bytes as digest_of_bytes
from ansible_collections.ecrkit.images.plugins.module_utils.errors import DiskFullError, EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.manifest import ManifestError
from ansible_collections.ecrkit.images.plugins.module_utils.platform_select import PlatformNotFoundError
from ansible_collections.ecrkit.images.plugins.module_utils.prune import prune_layout

TESTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
for sub in ("emulator", os.path.join("unit", "plugins", "module_utils")):
    if os.path.join(TESTS_DIR, sub) not in sys.path:
        sys.path.insert(0, os.path.join(TESTS_DIR, sub))

# pylint: disable=wrong-import-position,unused-import,redefined-outer-name
import sample_images  # noqa: E402
from fixture import ecr_endpoint, upload_blob  # noqa: E402,F401
from layout_support import partials_of  # noqa: E402
from pull_support import MIB, options, run, seeded  # noqa: E402,F401


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
    result = run(endpoint, options(endpoint, "one", tmp_path / "dest", pull="missing"))
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


def test_killed_pull_resumes_where_it_stopped(seeded, tmp_path):
    endpoint, images = seeded
    dest = tmp_path / "dest"
    partials = dest / ".ecrkit" / "partial"
    # the first layer stalls half way through, so the child is surely mid-download when it is killed,
    # while the other connection completes ranges of the second layer
    endpoint.set_faults(f"stall-blob:after=524288,seconds=30,count=100,digest={images['one'].layers[0].digest}")
    child = multiprocessing.get_context("fork").Process(
        target=run, args=(endpoint, options(endpoint, "one", dest, max_concurrent_downloads=8)))
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
    ({"format": "docker-archive", "all_platforms": True}, "docker-archive holds one platform"),
    ({"max_concurrent_downloads": 0}, "between 1 and 64"),
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
    return digest_of_bytes(text.encode()), len(text.encode())


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
    assert store.blob_status(layer["digest"], layer["size"] - delta) == layout_format.BLOB_MISSING
    assert store.find_tag("liar") is None
    assert store.partials.path(layer["digest"]) not in [partial.path for partial in partials_of(store)]


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
    assert store.blob_status(config.digest, config.size, verify=True) == layout_format.BLOB_DIGEST_MISMATCH
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


def test_a_planted_partial_download_is_never_written_through(seeded, tmp_path):
    endpoint, images = seeded
    dest = tmp_path / "dest"
    store = layout.OciLayout(str(dest), create=True)
    outside = tmp_path / "precious"
    outside.write_bytes(b"do not touch")
    layer = images["one"].layers[0]
    os.symlink(outside, store.partials.path(layer.digest))
    endpoint.reset_stats()
    with pytest.raises(layout_format.LayoutSymlinkError) as info:
        run(endpoint, options(endpoint, "one", dest))
    assert store.partials.path(layer.digest) in str(info.value) and "remove it" in str(info.value)
    assert outside.read_bytes() == b"do not touch"
    assert endpoint.stats()["blob_requests"] == 0
    os.unlink(store.partials.path(layer.digest))
    assert run(endpoint, options(endpoint, "one", dest))["changed"]


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
    assert store.find_tag("latest")["annotations"][layout_format.IMAGE_NAME_ANNOTATION] == web
    again = [pull_named(endpoint, repository, "latest", dest) for repository in ("team/web", "team/sidecar")]
    assert [result["changed"] for result in again] == [False, False]
    endpoint.reset_stats()
    missing = pull_named(endpoint, "team/sidecar", "latest", dest, pull="missing")
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
        pull_named(endpoint, "team/web", "latest", dest, format=dest_format)
        endpoint.reset_stats()
        other = pull_named(endpoint, "team/sidecar", "latest", dest, format=dest_format, pull="missing")
        assert other["changed"] and other["digest"] == images["two"].digest and other["previous_digest"] is None
        assert pull_named(endpoint, "team/sidecar", "latest", dest, format=dest_format)["changed"] is False


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
    given = _checked_options(tmp_path, format="containerd", containerd_namespace="k8s.io", unpack=False)
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
        assert store.verified_status(digest, os.path.getsize(store.blob_path(digest))) == layout_format.BLOB_PRESENT
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
    again = pull_named(endpoint, "team/web", "stable", dest, prune=True, pull="missing")
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
        seen.append(prune_layout(layout.OciLayout(str(dest)), wait=0.2))
        return planned

    monkeypatch.setattr(pull, "_plan", plan_then_prune)
    again = pull_named(endpoint, "team/web", "stable", dest)
    assert seen[0].removed == () and seen[0].skipped
    assert again["changed"] and again["bytes_transferred"] == 0
    assert {layer["action"] for layer in again["layers"]} == {"present"}
    store = layout.OciLayout(str(dest))
    for blob in images["one"].blob_descriptors():
        assert store.has_blob(blob.digest, blob.size, verify=True)
    assert prune_layout(store, wait=0.2).removed == ()  # the run is over, and its image is referenced again


def test_prune_is_for_layouts_only(tmp_path):
    for dest_format in ("oci-archive", "docker-archive", "containerd"):
        opts = _checked_options(tmp_path, format=dest_format, prune=True)
        assert not opts.prune and any("prune applies to format oci only" in warning for warning in opts.warnings)
    assert _checked_options(tmp_path, prune=True).prune
