# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The push use case end to end against the local ECR endpoint (module_utils only, no Ansible)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils import containerd, ecr, layout, manifest, pull, push, retry, sources
from ansible_collections.ecrkit.images.plugins.module_utils.errors import InvalidOptionError, InvalidReferenceError

TESTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
for sub in ("containerd", "emulator", os.path.join("unit", "plugins", "module_utils")):
    if os.path.join(TESTS_DIR, sub) not in sys.path:
        sys.path.insert(0, os.path.join(TESTS_DIR, sub))

# pylint: disable=wrong-import-position,unused-import,redefined-outer-name
import sample_images  # noqa: E402
from fixture import ecr_endpoint  # noqa: E402,F401
from push_support import MIB, built, ecr_tag, ref_for, run  # noqa: E402,F401
from private_containerd import private_containerd  # noqa: E402,F401


def test_push_then_nothing_to_do(ecr_endpoint, built):
    source, image = built
    first = run(ecr_endpoint, source, tags=["latest", "stable"])
    assert first["changed"] and first["repository_created"]
    assert first["digest"] == image.digest and first["media_type"] == image.media_type
    assert {layer["action"] for layer in first["layers"]} == {"uploaded"}
    assert first["bytes_transferred"] == sum(layer["size"] for layer in first["layers"])
    assert [(tag["tag"], tag["previous_digest"]) for tag in first["tags"]] == [("1.0", None), ("latest", None), ("stable", None)]
    for tag in ("1.0", "latest", "stable"):
        assert ecr_tag(ecr_endpoint, tag) == (image.digest, image.manifest_bytes)
    # 6 MiB layers with ECR's 20 MiB parts go in one part each; the config is small
    assert ecr_endpoint.api_calls("UploadLayerPart") == len(first["layers"])

    ecr_endpoint.reset_stats()
    again = run(ecr_endpoint, source, tags=["latest", "stable"])
    assert not again["changed"] and again["bytes_transferred"] == 0 and not again["repository_created"]
    assert {layer["action"] for layer in again["layers"]} == {"present"}
    assert again["api_calls"] == 1 and ecr_endpoint.stats()["api_calls_total"] == 1
    assert ecr_endpoint.api_calls("BatchGetImage") == 1
    assert again["diff"]["before"] == again["diff"]["after"] == {"1.0": image.digest, "latest": image.digest, "stable": image.digest}


def test_planner_uploads_only_missing_blobs(ecr_endpoint, tmp_path):
    source = str(tmp_path / "src")
    one = sample_images.build_random_image(source, "one", count=2, size=2 * MIB, seed="s")
    two = sample_images.build_random_image(source, "two", count=3, size=2 * MIB, seed="s")  # shares 2 layers with one
    run(ecr_endpoint, source, tag="one", src_tag="one")
    ecr_endpoint.reset_stats()
    result = run(ecr_endpoint, source, tag="two", src_tag="two")
    shared = {layer.digest for layer in one.layers}
    actions = {layer["digest"]: layer["action"] for layer in result["layers"]}
    assert {digest for digest, action in actions.items() if action == "present"} == shared
    uploaded = [layer for layer in result["layers"] if layer["action"] == "uploaded"]
    assert {layer["digest"] for layer in uploaded} == {two.config_digest} | {layer.digest for layer in two.layers} - shared
    assert result["bytes_transferred"] == sum(layer["size"] for layer in uploaded)
    assert ecr_endpoint.api_calls("InitiateLayerUpload") == len(uploaded)
    assert ecr_endpoint.api_calls("BatchCheckLayerAvailability") == 1
    assert ecr_endpoint.api_calls("PutImage") == 1


def test_large_layer_goes_in_ordered_parts(ecr_endpoint, tmp_path):
    source = str(tmp_path / "src")
    sample_images.build_random_image(source, "big", count=1, size=45 * MIB, seed="big")
    result = run(ecr_endpoint, source, tag="big")
    assert result["changed"]
    assert ecr_endpoint.api_calls("UploadLayerPart") == 3 + 1  # 45 MiB in 20 MiB parts, and the config


class _PartWatch:
    """botocore events on the parts of big layers (the config's small part is left out): when each was
    built, sent (after the push's own before-send hook) and answered; with ``hold``, part N is held at
    sending until part N+1 is being built (10 s at most), which only a pipelined upload can satisfy."""

    def __init__(self, hold=False):
        self.hold = hold
        self.log = []
        self.held_in_vain = []
        self.building = {}
        self.in_memory = 0
        self.most_in_memory = 0
        self._current = threading.local()
        self._lock = threading.Lock()

    def repositories(self, endpoint):
        """A repository factory for push.push() whose client's parts are watched."""
        def make(ref):
            client = endpoint.client()
            made = ecr.EcrRepository(client, ref, retry.RetryPolicy(attempts=2))
            self.attach(client)  # after the repository's own before-send hook: "sent" is when it goes out
            return made
        return make

    def attach(self, client):
        events = client.meta.events
        events.register("provide-client-params.ecr.UploadLayerPart", self._built)
        events.register("before-send.ecr.UploadLayerPart", self._sent)
        events.register("after-call.ecr.UploadLayerPart", self._answered)

    def _part(self, first_byte):
        return first_byte // (20 * MIB)

    def _event(self, number):
        with self._lock:
            return self.building.setdefault(number, threading.Event())

    def _built(self, params, **dummy):
        big = len(params["layerPartBlob"]) >= MIB
        self._current.part = self._part(params["partFirstByte"]) if big else None
        if big:
            self.log.append(("built", self._current.part))
            self._event(self._current.part).set()
            with self._lock:
                self.in_memory += 1
                self.most_in_memory = max(self.most_in_memory, self.in_memory)

    def _sent(self, **dummy):
        number = self._current.part
        if number is not None:
            self.log.append(("sent", number))
            if self.hold and number + 1 < 3 and not self._event(number + 1).wait(10):
                self.held_in_vain.append(number)

    def _answered(self, parsed, **dummy):
        if self._current.part is not None and "lastByteReceived" in parsed:
            self.log.append(("answered", self._part(parsed["lastByteReceived"])))
            with self._lock:
                self.in_memory -= 1


def test_the_next_part_is_built_while_the_previous_one_is_on_its_way(ecr_endpoint, tmp_path):
    source = str(tmp_path / "src")
    image = sample_images.build_random_image(source, "big", count=1, size=45 * MIB, seed="pipe")
    watch = _PartWatch(hold=True)

    options = push.PushOptions.from_params(ref=ref_for(ecr_endpoint, "big"), src=source, create_repository=True,
                                           max_concurrent_uploads=1)  # the config, then the big layer alone
    result = push.push(options, watch.repositories(ecr_endpoint))
    assert result["changed"] and ecr_tag(ecr_endpoint, "big") == (image.digest, image.manifest_bytes)
    assert watch.held_in_vain == []  # parts 2 and 3 were being built while parts 1 and 2 were on their way
    log = watch.log
    assert [number for kind, number in log if kind == "sent"] == [0, 1, 2]
    for number in (1, 2):  # and each was sent only once the one before was in
        assert log.index(("sent", number)) > log.index(("answered", number - 1))


def test_layers_in_flight_together_build_no_part_ahead(ecr_endpoint, tmp_path):
    """Memory stays at a part per layer in flight, plus one: the layers overlap each other already."""
    source = str(tmp_path / "src")
    image = sample_images.build_random_image(source, "3", count=3, size=45 * MIB, seed="three")
    watch = _PartWatch()

    options = push.PushOptions.from_params(ref=ref_for(ecr_endpoint, "3"), src=source, create_repository=True,
                                           max_concurrent_uploads=2)
    assert push.push(options, watch.repositories(ecr_endpoint))["changed"]
    assert ecr_tag(ecr_endpoint, "3") == (image.digest, image.manifest_bytes)
    assert len([entry for entry in watch.log if entry[0] == "built"]) == 9
    assert watch.most_in_memory <= 2 + 1


def test_a_refused_part_stops_the_parts_built_after_it(ecr_endpoint, tmp_path):
    source = str(tmp_path / "src")
    sample_images.build_random_image(source, "big", count=1, size=45 * MIB, seed="refused")
    ecr_endpoint.set_faults("access-denied:every=2,ops=UploadLayerPart")  # the big layer's first part
    watch = _PartWatch(hold=True)  # which waits until the second is built

    options = push.PushOptions.from_params(ref=ref_for(ecr_endpoint, "big"), src=source, create_repository=True,
                                           max_concurrent_uploads=1)  # the config, then the big layer
    with pytest.raises(ecr.AccessDeniedError, match="UploadLayerPart"):
        push.push(options, watch.repositories(ecr_endpoint))
    built = [number for kind, number in watch.log if kind == "built"]
    sent = [number for kind, number in watch.log if kind == "sent"]
    assert built == [0, 1] and sent == [0] and not watch.held_in_vain  # part 2 waited, then was dropped
    assert ecr_endpoint.api_calls("UploadLayerPart") == 2
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("ecrkit-transfer-")]
    assert not [fd for fd in os.listdir("/proc/self/fd")  # the source's blob was closed
                if os.path.realpath(f"/proc/self/fd/{fd}").startswith(os.path.realpath(source))]


class _FlippingClient:
    """A boto3 ECR client whose UploadLayerPart calls number ``flip`` (1-based) carry one byte flipped:
    bytes altered after the source was read and hashed."""

    def __init__(self, client, flip):
        self._client = client
        self._flip = set(flip)
        self._calls = 0
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._client, name)

    def upload_layer_part(self, **params):
        with self._lock:
            self._calls += 1
            flip = self._calls in self._flip
        if flip:
            data = bytearray(params["layerPartBlob"])
            data[len(data) // 2] ^= 0xFF
            params = dict(params, layerPartBlob=bytes(data))
        return self._client.upload_layer_part(**params)


def test_a_layer_refused_for_bytes_altered_on_the_way_is_uploaded_again(ecr_endpoint, tmp_path):
    source = str(tmp_path / "src")
    image = sample_images.build_random_image(source, "1.0", count=1, size=25 * MIB, seed="flip")
    client = _FlippingClient(ecr_endpoint.client(), flip=[2])  # the big layer's first part (after the config's)
    options = push.PushOptions.from_params(ref=ref_for(ecr_endpoint), src=source, create_repository=True,
                                           max_concurrent_uploads=1)
    result = push.push(options, lambda ref: ecr.EcrRepository(client, ref, retry.RetryPolicy(attempts=2)))
    assert result["changed"] and ecr_tag(ecr_endpoint, "1.0") == (image.digest, image.manifest_bytes)
    assert ecr_endpoint.api_calls("InitiateLayerUpload") == 3  # the config, the big layer twice
    assert ecr_endpoint.stats()["api_errors"]["CompleteLayerUpload"] == {"InvalidLayerException": 1}
    sizes = [layer["size"] for layer in result["layers"]]
    assert result["bytes_transferred"] == sum(sizes) + max(sizes)  # the big layer went twice


def test_a_layer_refused_twice_fails_in_one_sentence(ecr_endpoint, tmp_path):
    source = str(tmp_path / "src")
    sample_images.build_random_image(source, "1.0", count=1, size=2 * MIB, seed="flip2")
    client = _FlippingClient(ecr_endpoint.client(), flip=range(1, 100))
    options = push.PushOptions.from_params(ref=ref_for(ecr_endpoint), src=source, create_repository=True)
    with pytest.raises(ecr.LayerRefusedError) as caught:
        push.push(options, lambda ref: ecr.EcrRepository(client, ref, retry.RetryPolicy(attempts=2)))
    assert str(caught.value).startswith("ECR refused the layer sha256:")
    assert str(caught.value).endswith(": the uploaded bytes do not hash to it, in two uploads from the source; something on "
                                      "the way to ECR (a proxy?) alters the bytes, or the source changes while it is pushed.")
    assert ecr_tag(ecr_endpoint, "1.0") == (None, None)


@pytest.mark.parametrize("operation", ["UploadLayerPart", "CompleteLayerUpload", "PutImage", "InitiateLayerUpload"])
def test_a_lost_answer_is_retried_to_success(ecr_endpoint, tmp_path, operation):
    """ECR carried the call out but the answer was lost (500): the retry meets the call's effect
    (InvalidLayerPartException at the part's last byte, UploadNotFoundException, ImageAlreadyExists...)
    and the push still completes, byte for byte."""
    image = sample_images.build_random_image(str(tmp_path / "src"), "1.0", count=1, size=12 * MIB, seed="lost")
    ecr_endpoint.set_faults({"kind": "lost-response", "every": 1, "count": 1, "ops": [operation]})
    pushed = run(ecr_endpoint, str(tmp_path / "src"))
    assert pushed["changed"] and pushed["retries"] >= 1
    assert ecr_endpoint.stats()["faults_fired"] == {"lost-response": 1}
    assert ecr_tag(ecr_endpoint, "1.0") == (image.digest, image.manifest_bytes)


def test_check_mode_reports_without_uploading(ecr_endpoint, built):
    source, image = built
    result = run(ecr_endpoint, source, tags=["latest"], check_mode=True)
    assert result["changed"] and result["repository_created"] and result["bytes_transferred"] == 0
    assert {layer["action"] for layer in result["layers"]} == {"upload"}
    assert result["diff"] == {"before": {"1.0": None, "latest": None}, "after": {"1.0": image.digest, "latest": image.digest}}
    stats = ecr_endpoint.stats()["api_calls"]
    assert not set(stats) & {"CreateRepository", "InitiateLayerUpload", "UploadLayerPart", "PutImage"}
    assert ecr_endpoint.client().describe_repositories()["repositories"] == []


def test_missing_repository_without_create_repository(ecr_endpoint, built):
    source, dummy = built
    with pytest.raises(ecr.RepositoryNotFoundError) as caught:
        run(ecr_endpoint, source, create_repository=False)
    assert "'team/app'" in str(caught.value) and "create_repository" in str(caught.value)
    assert ecr_endpoint.api_calls("InitiateLayerUpload") == 0


def test_create_repository_with_immutable_tags_then_refuse_moving_tag(ecr_endpoint, tmp_path):
    source = str(tmp_path / "src")
    first = sample_images.build_random_image(source, "a", count=1, size=MIB, seed="a")
    second = sample_images.build_random_image(source, "b", count=1, size=MIB, seed="b")
    result = run(ecr_endpoint, source, src_tag="a", image_tag_mutability="IMMUTABLE")
    assert result["repository_created"]
    repository = ecr_endpoint.client().describe_repositories()["repositories"][0]
    assert repository["imageTagMutability"] == "IMMUTABLE"
    # the same image again: unchanged, not an error (ECR itself would refuse the PutImage)
    assert not run(ecr_endpoint, source, src_tag="a")["changed"]
    ecr_endpoint.reset_stats()
    with pytest.raises(push.ImmutableTagError) as caught:
        run(ecr_endpoint, source, src_tag="b")
    message = str(caught.value)
    assert "'1.0'" in message and first.digest in message and second.digest in message
    assert ecr_endpoint.api_calls("InitiateLayerUpload") == 0 and ecr_endpoint.api_calls("PutImage") == 0


def test_moving_a_mutable_tag_reports_previous_digest(ecr_endpoint, tmp_path):
    source = str(tmp_path / "src")
    first = sample_images.build_random_image(source, "a", count=1, size=MIB, seed="a")
    second = sample_images.build_random_image(source, "b", count=1, size=MIB, seed="b")
    run(ecr_endpoint, source, src_tag="a", tags=["latest"])
    result = run(ecr_endpoint, source, src_tag="b", tags=["latest"])
    assert result["changed"]
    assert result["tags"] == [{"tag": "1.0", "previous_digest": first.digest, "changed": True},
                              {"tag": "latest", "previous_digest": first.digest, "changed": True}]
    assert ecr_tag(ecr_endpoint, "latest")[0] == second.digest


def test_multi_platform_index(ecr_endpoint, tmp_path):
    source = str(tmp_path / "src")
    image = sample_images.build_demo_image(source, "multi", platforms=["linux/amd64", "linux/arm64/v8"])
    result = run(ecr_endpoint, source, tag="multi")
    assert result["digest"] == image.digest and result["media_type"] == manifest.MEDIA_TYPE_OCI_INDEX
    assert ecr_tag(ecr_endpoint, "multi") == (image.digest, image.manifest_bytes)
    assert ecr_endpoint.api_calls("PutImage") == 3  # two children by digest, then the index under its tag
    for child in image.manifests:
        answer = ecr_endpoint.client().batch_get_image(repositoryName="team/app", imageIds=[{"imageDigest": child.digest}],
                                                       acceptedMediaTypes=list(manifest.ACCEPTED_MANIFEST_TYPES))
        assert answer["images"][0]["imageManifest"].encode("utf-8") == child.manifest_bytes
    ecr_endpoint.reset_stats()
    assert not run(ecr_endpoint, source, tag="multi")["changed"]
    assert ecr_endpoint.stats()["api_calls_total"] == 1


def test_untagged_push_by_digest(ecr_endpoint, built):
    source, image = built
    result = run(ecr_endpoint, source, tag="@" + image.digest)
    assert result["changed"] and result["tags"] == []
    answer = ecr_endpoint.client().describe_images(repositoryName="team/app")["imageDetails"]
    assert [detail["imageDigest"] for detail in answer] == [image.digest] and not answer[0].get("imageTags")
    assert not run(ecr_endpoint, source, tag="@" + image.digest)["changed"]


def test_reference_digest_must_match_source(ecr_endpoint, built):
    source, dummy = built
    with pytest.raises(sources.SourceError):
        run(ecr_endpoint, source, tag="@sha256:" + "0" * 64)


def test_options_are_checked():
    good = "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app"
    with pytest.raises(InvalidReferenceError):
        push.PushOptions.from_params(ref=good, src="/x")  # neither tag nor digest
    with pytest.raises(InvalidOptionError):
        push.PushOptions.from_params(ref=good + ":1", src="/x", tags=["bad tag"])
    with pytest.raises(InvalidOptionError):
        push.PushOptions.from_params(ref=good + ":1", src="/x", max_concurrent_uploads=0)
    with pytest.raises(InvalidOptionError):
        push.PushOptions.from_params(ref=good + ":1", src="/x", src_format="tar")
    options = push.PushOptions.from_params(ref=good + ":1", src="/x", tags=["latest", "1"])
    assert options.all_tags == ["1", "latest"]


def test_round_trip_through_pull(ecr_endpoint, tmp_path):
    source = str(tmp_path / "src")
    image = sample_images.build_demo_image(source, "rt", platforms=["linux/amd64", "linux/arm64/v8"], docker=True)
    run(ecr_endpoint, source, tag="rt")
    dest = str(tmp_path / "dest")
    options = pull.PullOptions.from_params(ref=ref_for(ecr_endpoint, "rt"), dest=dest, all_platforms=True)
    pulled = pull.pull(options, lambda ref: ecr.EcrRepository(ecr_endpoint.client(), ref))
    assert pulled["digest"] == image.digest
    store = layout.OciLayout(dest)
    assert store.read_blob(image.digest) == image.manifest_bytes
    for child in image.manifests:
        assert store.read_blob(child.digest) == child.manifest_bytes
    for blob in image.blob_descriptors():
        with open(image.blob_path(blob.digest), "rb") as want, store.open_blob(blob.digest) as got:
            assert want.read() == got.read()


@pytest.mark.skipif(not shutil.which("umoci"), reason="umoci is not installed")
def test_umoci_layout(ecr_endpoint, tmp_path):
    source = str(tmp_path / "umoci")
    subprocess.run(["umoci", "init", "--layout", source], check=True)
    subprocess.run(["umoci", "new", "--image", f"{source}:1.0"], check=True)
    result = run(ecr_endpoint, source, src_tag="1.0")
    assert result["changed"]
    assert ecr_tag(ecr_endpoint, "1.0")[0] == result["digest"]


# containerd as the source -------------------------------------------------------------------------

@pytest.fixture
def in_containerd(ecr_endpoint, private_containerd, tmp_path):
    """Images pulled from the endpoint into the private containerd: a single-platform one and an index
    with only the host's platform."""
    source = str(tmp_path / "src")
    client = ecr_endpoint.client()
    single = sample_images.build_random_image(source, "one", count=2, size=3 * MIB, seed="c")
    multi = sample_images.build_demo_image(source, "multi", platforms=["linux/amd64", "linux/arm64/v8"])
    names = {}
    for tag, image in (("one", single), ("multi", multi)):
        sample_images.push_image(client, image, "team/origin", create_repository=True)
        options = pull.PullOptions.from_params(ref=ref_for(ecr_endpoint, tag, "team/origin"), dest=str(tmp_path / "staging"),
                                               format="containerd", containerd_address=private_containerd.address)
        result = pull.pull(options, lambda ref: ecr.EcrRepository(ecr_endpoint.client(), ref, retry.RetryPolicy(attempts=2)))
        names[tag] = result["containerd"]["images"][0]
    return ecr_endpoint, private_containerd, names, {"one": single, "multi": multi}


def from_containerd(endpoint, daemon, name, tag, **kwargs):
    kwargs.setdefault("containerd_address", daemon.address)
    return run(endpoint, name, tag, src_format="containerd", repository="team/copy", **kwargs)


def test_containerd_round_trip_is_byte_identical(in_containerd):
    endpoint, daemon, names, images = in_containerd
    pushed = from_containerd(endpoint, daemon, names["one"], "one")
    assert pushed["changed"] and pushed["digest"] == images["one"].digest
    assert {layer["action"] for layer in pushed["layers"]} == {"uploaded"}
    assert ecr_tag(endpoint, "one", "team/copy") == (images["one"].digest, images["one"].manifest_bytes)
    endpoint.reset_stats()
    again = from_containerd(endpoint, daemon, names["one"], "one")
    assert not again["changed"] and again["api_calls"] == 1 and again["bytes_transferred"] == 0


def test_containerd_source_uploads_only_what_ecr_lacks(in_containerd):
    endpoint, daemon, names, images = in_containerd
    sample_images.push_image(endpoint.client(), images["one"], "team/copy", tags=["older"], create_repository=True)  # ECR has the layers already
    pushed = from_containerd(endpoint, daemon, names["one"], "one")
    assert pushed["changed"] and pushed["bytes_transferred"] == 0
    assert {layer["action"] for layer in pushed["layers"]} == {"present"}


def test_containerd_partial_index_is_refused_clearly(in_containerd):
    endpoint, daemon, names, dummy = in_containerd
    endpoint.reset_stats()
    with pytest.raises(sources.SourceError, match="containerd keeps only the platforms it pulled"):
        from_containerd(endpoint, daemon, names["multi"], "multi")
    assert endpoint.stats()["api_calls_total"] == 0


def test_containerd_unknown_image_and_namespace(in_containerd):
    endpoint, daemon, names, dummy = in_containerd
    with pytest.raises(containerd.UnknownImageError, match="containerd has no image named 'example.test/nope:1' in namespace 'default'"):
        from_containerd(endpoint, daemon, "example.test/nope:1", "x")
    with pytest.raises(containerd.UnknownNamespaceError, match="no namespace 'k8s.io'"):
        from_containerd(endpoint, daemon, names["one"], "x", containerd_namespace="k8s.io")
    with pytest.raises(InvalidOptionError, match="src_tag does not apply"):
        from_containerd(endpoint, daemon, names["one"], "x", src_tag="one")


def test_containerd_blob_that_does_not_hash_is_never_accepted(in_containerd):
    """A layer damaged on containerd's disk is caught while it streams, before CompleteLayerUpload."""
    endpoint, daemon, names, images = in_containerd
    layer = images["one"].layers[0]
    path = os.path.join(daemon.root, "io.containerd.content.v1.content", "blobs", "sha256", layer.digest.split(":")[1])
    with open(path, "r+b") as handle:
        handle.seek(layer.size // 2)
        byte = handle.read(1)
        handle.seek(layer.size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(sources.SourceError, match=f"The blob {layer.digest} in containerd namespace 'default' does not hash"):
        from_containerd(endpoint, daemon, names["one"], "one")
    available = endpoint.client().batch_check_layer_availability(repositoryName="team/copy", layerDigests=[layer.digest])
    assert available["layers"][0]["layerAvailability"] == "UNAVAILABLE"


# -- a source changed under the push (another local user owns the layout) -----------------------------


def test_image_tag_mutability_that_differs_from_an_existing_repository_warns(ecr_endpoint, built):
    """Issue 12: the option did nothing, silently, for a repository that already existed."""
    source, dummy = built
    created = run(ecr_endpoint, source, image_tag_mutability="MUTABLE")
    assert created["repository_created"] and "warnings" not in created
    ecr_endpoint.reset_stats()
    result = run(ecr_endpoint, source, image_tag_mutability="IMMUTABLE")
    assert not result["changed"]  # idempotent: nothing moved, nothing was changed
    assert result["warnings"] == [
        f"The repository 'team/app' already exists with image tag mutability MUTABLE; image_tag_mutability IMMUTABLE "
        f"applies only to a repository this task creates, so nothing was changed. To change it: aws ecr "
        f"put-image-tag-mutability --registry-id {ecr_endpoint.account_id} --region {ecr_endpoint.region} "
        "--repository-name team/app --image-tag-mutability IMMUTABLE"]
    assert result["api_calls"] == 2 and ecr_endpoint.api_calls("DescribeRepositories") == 1
    assert ecr_endpoint.client().describe_repositories()["repositories"][0]["imageTagMutability"] == "MUTABLE"
    same = run(ecr_endpoint, source, image_tag_mutability="MUTABLE")
    assert not same["changed"] and "warnings" not in same
    assert "warnings" not in run(ecr_endpoint, source)  # not given: not compared, no extra call


def test_immutable_tag_error_names_every_tag_that_cannot_move(ecr_endpoint, tmp_path):
    source = str(tmp_path / "src")
    first = sample_images.build_random_image(source, "a", count=1, size=MIB, seed="a")
    second = sample_images.build_random_image(source, "b", count=1, size=MIB, seed="b")
    run(ecr_endpoint, source, src_tag="a", tags=["latest", "stable"], image_tag_mutability="IMMUTABLE")
    ecr_endpoint.reset_stats()
    with pytest.raises(push.ImmutableTagError) as caught:
        run(ecr_endpoint, source, src_tag="b", tags=["latest", "new", "stable"])
    message = str(caught.value)
    assert message == (f"The tags '1.0' (at {first.digest}), 'latest' (at {first.digest}), 'stable' (at {first.digest}) in "
                       f"the immutable repository 'team/app' point at other images; none of them can be moved to "
                       f"{second.digest}. Push under new tags.")
    assert ecr_endpoint.api_calls("InitiateLayerUpload") == 0 and ecr_endpoint.api_calls("PutImage") == 0


def test_containerd_options_with_another_src_format_warn(ecr_endpoint, built):
    source, dummy = built
    plain = push.PushOptions.from_params(ref=ref_for(ecr_endpoint), src=source)
    assert plain.warnings == () and plain.containerd_namespace == containerd.DEFAULT_NAMESPACE
    assert plain.containerd_address == containerd.DEFAULT_ADDRESS
    result = run(ecr_endpoint, source, containerd_namespace="k8s.io", containerd_ctr_path="/usr/bin/ctr")
    assert result["changed"]
    assert result["warnings"] == ["containerd_namespace, containerd_ctr_path apply only to src_format containerd and were "
                                  "ignored (src_format is oci)."]
    given = push.PushOptions.from_params(ref=ref_for(ecr_endpoint), src="x/y:1", src_format="containerd",
                                         containerd_namespace="k8s.io", containerd_address="/run/c.sock")
    assert given.warnings == () and given.containerd_namespace == "k8s.io" and given.containerd_address == "/run/c.sock"


def test_results_name_the_repository_and_the_image_as_the_pull_does(ecr_endpoint, built):
    source, image = built
    first = run(ecr_endpoint, source)
    assert first["repository"] == "team/app" and first["previous_digest"] is None
    assert first["image"] == f"{ecr_endpoint.account_id}.dkr.ecr.{ecr_endpoint.region}.amazonaws.com/team/app@{image.digest}"
    again = run(ecr_endpoint, source)
    assert not again["changed"] and again["previous_digest"] == image.digest
