# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pull use case end to end against the local ECR endpoint (module_utils only, no Ansible)."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils import containerd, ecr, layout, pull
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
    assert again["diff"] == {"before": {"tag": images["one"].digest}, "after": {"tag": images["one"].digest}}


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


def _journaled_bytes(partials):
    """True once a blob has ranges recorded as written (a journal holds a header line, then a line a range)."""
    if not partials.is_dir():
        return False
    return any(name.endswith(".journal") and len((partials / name).read_bytes().splitlines()) >= 2
               for name in os.listdir(partials))


@pytest.mark.parametrize("params, message", [
    ({"dest_format": "docker-archive", "all_platforms": True}, "docker-archive holds one platform"),
    ({"max_connections": 0}, "between 1 and 64"),
    ({"chunk_size": 1000}, "at least 1MB"),
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
