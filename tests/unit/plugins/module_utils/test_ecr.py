# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""EcrRepository against the local ECR endpoint, through real boto3 calls."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sys
import threading

import boto3
import pytest
from botocore.config import Config

from ansible_collections.ecrkit.images.plugins.module_utils import ecr
from ansible_collections.ecrkit.images.plugins.module_utils.retry import RetryPolicy
from ansible_collections.ecrkit.images.plugins.module_utils.reference import parse_reference

EMULATOR_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "emulator")
if EMULATOR_DIR not in sys.path:
    sys.path.insert(0, EMULATOR_DIR)

# pylint: disable=wrong-import-position,unused-import
from fixture import ecr_endpoint, push_image  # noqa: E402,F401

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPTED = [OCI_MANIFEST, "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json"]


def make_repository(endpoint, name="team/app", tag="1.0", **kwargs):
    ref = parse_reference(f"{endpoint.account_id}.dkr.ecr.{endpoint.region}.amazonaws.com/{name}:{tag}")
    sleeps = []
    repository = ecr.EcrRepository(endpoint.client(), ref, kwargs.pop("retry", RetryPolicy(attempts=4)),
                                   sleep=sleeps.append)
    return repository, sleeps


@pytest.fixture
def pushed(ecr_endpoint):  # pylint: disable=redefined-outer-name
    client = ecr_endpoint.client()
    client.create_repository(repositoryName="team/app")
    digest, manifest = push_image(client, "team/app", [b"layer one", b"layer two"], tag="1.0")
    return ecr_endpoint, digest, manifest


def test_get_manifest_by_tag_and_digest_returns_exact_bytes(pushed):
    endpoint, digest, manifest = pushed
    repository, dummy = make_repository(endpoint)
    endpoint.reset_stats()
    raw, media_type, reported = repository.get_manifest({"imageTag": "1.0"}, ACCEPTED)
    assert raw == manifest.encode("utf-8")
    assert media_type == OCI_MANIFEST
    assert reported == digest
    assert repository.get_manifest({"imageDigest": digest}, ACCEPTED)[0] == raw
    assert repository.api_calls == 2
    assert endpoint.api_calls("BatchGetImage") == 2


def test_unknown_tag_names_the_tag_and_repository(pushed):
    endpoint = pushed[0]
    repository, dummy = make_repository(endpoint)
    with pytest.raises(ecr.ImageNotFoundError) as info:
        repository.get_manifest({"imageTag": "2.0"}, ACCEPTED)
    message = str(info.value)
    assert "'2.0'" in message and "team/app" in message and endpoint.account_id in message


def test_unknown_repository(ecr_endpoint):  # pylint: disable=redefined-outer-name
    repository, dummy = make_repository(ecr_endpoint, name="no/such")
    with pytest.raises(ecr.RepositoryNotFoundError) as info:
        repository.get_manifest({"imageTag": "1.0"}, ACCEPTED)
    assert "'no/such'" in str(info.value)
    assert info.value.aws_code == "RepositoryNotFoundException"
    assert repository.retries == 0
    assert not repository.repository_exists()


def test_wrong_secret_is_a_credentials_error(ecr_endpoint):  # pylint: disable=redefined-outer-name
    ref = parse_reference(f"{ecr_endpoint.account_id}.dkr.ecr.us-east-1.amazonaws.com/team/app:1.0")
    client = ecr_endpoint.client(aws_secret_access_key="not-the-secret")
    repository = ecr.EcrRepository(client, ref, RetryPolicy(attempts=3), sleep=lambda seconds: None)
    with pytest.raises(ecr.CredentialsError) as info:
        repository.get_manifest({"imageTag": "1.0"}, ACCEPTED)
    assert "not-the-secret" not in str(info.value)
    assert repository.api_calls == 1


def test_throttling_is_retried_and_counted(pushed):
    endpoint = pushed[0]
    repository, sleeps = make_repository(endpoint)
    endpoint.set_faults("throttle:every=1,count=2")
    raw = repository.get_manifest({"imageTag": "1.0"}, ACCEPTED)[0]
    assert raw == pushed[2].encode("utf-8")
    assert repository.retries == 2
    assert repository.api_calls == 3
    assert len(sleeps) == 2


def test_server_errors_past_the_limit_fail_clearly(pushed):
    endpoint = pushed[0]
    repository, sleeps = make_repository(endpoint, retry=RetryPolicy(attempts=3))
    endpoint.set_faults("server-error:every=1")
    with pytest.raises(ecr.EcrApiError) as info:
        repository.get_manifest({"imageTag": "1.0"}, ACCEPTED)
    assert "ServerException" in str(info.value) and "2 retries" in str(info.value)
    assert repository.api_calls == 3 and len(sleeps) == 2


def test_download_url_and_missing_layer(pushed):
    endpoint, digest = pushed[0], pushed[1]
    repository, dummy = make_repository(endpoint)
    manifest = repository.get_manifest({"imageDigest": digest}, ACCEPTED)[0]
    layer = json.loads(manifest)["layers"][0]["digest"]
    status, dummy, body = endpoint.fetch(repository.get_download_url(layer))
    assert status == 200 and body == b"layer one"
    absent = "sha256:" + "0" * 64
    with pytest.raises(ecr.LayerNotFoundError) as info:
        repository.get_download_url(absent)
    assert absent in str(info.value)
    assert "X-Amz" not in str(info.value)


def test_missing_blobs_batches_by_100(pushed):
    endpoint = pushed[0]
    repository, dummy = make_repository(endpoint)
    manifest = json.loads(pushed[2])
    present = [layer["digest"] for layer in manifest["layers"]]
    absent = [f"sha256:{number:064x}" for number in range(150)]
    endpoint.reset_stats()
    assert repository.missing_blobs(present + absent + present) == absent
    assert endpoint.api_calls("BatchCheckLayerAvailability") == 2


def test_unreachable_endpoint_is_an_endpoint_error(ecr_endpoint):  # pylint: disable=redefined-outer-name
    # nothing listens on the discard port
    client = boto3.client("ecr", region_name="us-east-1", endpoint_url="http://127.0.0.1:9",
                          config=Config(retries={"total_max_attempts": 1}, connect_timeout=2),
                          **ecr_endpoint.credentials())
    ref = parse_reference("123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app")
    repository = ecr.EcrRepository(client, ref, RetryPolicy(attempts=2), sleep=lambda seconds: None)
    with pytest.raises(ecr.EndpointError) as info:
        repository.get_manifest({"imageTag": "latest"}, ACCEPTED)
    assert "Could not reach the ECR API for BatchGetImage" in str(info.value)
    assert repository.api_calls == 2


@pytest.mark.parametrize("host, expected", [
    ("123456789012.dkr.ecr.us-east-1.amazonaws.com", {}),
    ("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com", {"use_fips_endpoint": True}),
    ("123456789012.dkr-ecr.us-east-1.on.aws", {"use_dualstack_endpoint": True}),
])
def test_client_config_follows_the_registry_host(host, expected):
    config = ecr.client_config(parse_reference(f"{host}/team/app:1"))
    assert config.pop("retries") == {"total_max_attempts": 1, "mode": "standard"}
    assert config == expected


@pytest.mark.parametrize("params, expected", [
    ({}, True),
    ({"validate_certs": True, "aws_ca_bundle": "/etc/ca.pem"}, "/etc/ca.pem"),
    ({"validate_certs": False, "aws_ca_bundle": "/etc/ca.pem"}, False),
])
def test_blob_tls_verify(params, expected):
    assert ecr.blob_tls_verify(params) == expected


def test_tag_and_digest_that_disagree(pushed):
    endpoint = pushed[0]
    client = endpoint.client()
    other, dummy = push_image(client, "team/app", [b"another layer"], tag="2.0")
    repository, dummy = make_repository(endpoint)
    with pytest.raises(ecr.ImageNotFoundError) as info:
        repository.get_manifest({"imageTag": "1.0", "imageDigest": other}, ACCEPTED)
    assert "tag '1.0' does not point at " + other in str(info.value)


def test_access_denied_names_the_permission(pushed):
    endpoint, digest = pushed[0], pushed[1]
    repository, dummy = make_repository(endpoint)
    endpoint.set_faults("access-denied:every=1,ops=GetDownloadUrlForLayer")
    with pytest.raises(ecr.AccessDeniedError) as info:
        repository.get_download_url(digest)
    assert "grant the caller ecr:GetDownloadUrlForLayer" in str(info.value)
    assert repository.retries == 0


def test_image_digests_one_call_for_several_ids(pushed):
    endpoint, digest, dummy = pushed
    repository, dummy = make_repository(endpoint)
    endpoint.reset_stats()
    found = repository.image_digests([{"imageTag": "1.0"}, {"imageTag": "nope"}, {"imageDigest": digest}], ACCEPTED)
    assert found == [digest, None, digest]
    assert endpoint.api_calls("BatchGetImage") == 1


def test_layer_upload_and_put_image(ecr_endpoint):  # pylint: disable=redefined-outer-name
    ecr_endpoint.client().create_repository(repositoryName="team/app", imageTagMutability="IMMUTABLE")
    repository, dummy = make_repository(ecr_endpoint)
    assert repository.tag_mutability() == "IMMUTABLE"
    blobs = {}
    for data in (b"{}", b"x" * 1000):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        upload_id, part_size = repository.initiate_layer_upload()
        assert 5 * 1024 * 1024 <= part_size <= 20 * 1024 * 1024
        repository.upload_layer_part(upload_id, 0, len(data) - 1, data)
        assert repository.complete_layer_upload(upload_id, digest) is True
        blobs[digest] = len(data)
    # the same bytes again: LayerAlreadyExistsException counts as present
    upload_id, dummy = repository.initiate_layer_upload()
    repository.upload_layer_part(upload_id, 0, 999, b"x" * 1000)
    assert repository.complete_layer_upload(upload_id, list(blobs)[1]) is False
    # bytes that do not hash to the digest
    upload_id, dummy = repository.initiate_layer_upload()
    repository.upload_layer_part(upload_id, 0, 2, b"abc")
    with pytest.raises(ecr.EcrApiError, match="do not hash"):
        repository.complete_layer_upload(upload_id, list(blobs)[1])

    config, layer = list(blobs)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 1000}]})
    raw = manifest.encode("utf-8")
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    assert repository.put_image(raw, OCI_MANIFEST, digest=digest) is True
    assert repository.put_image(raw, OCI_MANIFEST, digest=digest) is False  # ImageAlreadyExistsException
    assert repository.put_image(raw, OCI_MANIFEST, tag="1.0", digest=digest) is True
    with pytest.raises(ecr.EcrApiError) as caught:  # immutable: even the same manifest is refused under a set tag
        repository.put_image(raw, OCI_MANIFEST, tag="1.0", digest=digest)
    assert caught.value.aws_code == "ImageTagAlreadyExistsException"
    assert repository.image_digests([{"imageTag": "1.0"}], ACCEPTED) == [digest]


class _Scripted:
    """A stand-in boto3 client whose methods play a script: each step an answer or an exception."""

    def __init__(self, **scripts):
        self.scripts = {name: list(steps) for name, steps in scripts.items()}
        self.calls = []

    def __getattr__(self, name):
        def method(**params):
            self.calls.append(name)
            step = self.scripts[name].pop(0)
            if isinstance(step, BaseException):
                raise step
            return step
        return method


def _repository(client, attempts=3):
    ref = parse_reference("123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app:1.0")
    return ecr.EcrRepository(client, ref, RetryPolicy(attempts=attempts), sleep=lambda seconds: None)


def test_a_connection_closed_before_the_answer_is_retried():
    from botocore.exceptions import ConnectionClosedError, ReadTimeoutError  # pylint: disable=import-outside-toplevel
    client = _Scripted(initiate_layer_upload=[ConnectionClosedError(endpoint_url="http://x"),
                                              ReadTimeoutError(endpoint_url="http://x"),
                                              {"uploadId": "u", "partSize": 5242880}])
    repository = _repository(client)
    assert repository.initiate_layer_upload() == ("u", 5242880)
    assert repository.retries == 2


def test_a_truncated_answer_is_retried_then_reported():
    client = _Scripted(get_download_url_for_layer=[{"ResponseMetadata": {}}, {"downloadUrl": "https://x/y", "layerDigest": "d"}])
    assert _repository(client).get_download_url("sha256:" + "a" * 64) == "https://x/y"
    client = _Scripted(initiate_layer_upload=[{"ResponseMetadata": {}}] * 3)
    with pytest.raises(ecr.EndpointError, match="ECR answered InitiateLayerUpload without uploadId, partSize 3 times"):
        _repository(client).initiate_layer_upload()


def test_create_repository_that_another_run_just_created():
    from botocore.exceptions import ClientError  # pylint: disable=import-outside-toplevel
    exists = ClientError({"Error": {"Code": "RepositoryAlreadyExistsException", "Message": "exists"}}, "CreateRepository")
    _repository(_Scripted(create_repository=[exists])).create_repository()
    denied = ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "CreateRepository")
    with pytest.raises(ecr.AccessDeniedError):
        _repository(_Scripted(create_repository=[denied])).create_repository()


class _CutShortServer:
    """An HTTP server whose first ``cut`` answers are ECR's RepositoryNotFoundException cut in half
    (the declared Content-Length, half the body, then the connection closes), then whole ones; or,
    with ``proxy_page``, an HTML 403 as a proxy would send."""

    ANSWER = b'{"__type":"RepositoryNotFoundException","message":"The repository with name \'app\' does not exist"}'

    def __init__(self, cut, proxy_page=False):
        self.cut = cut
        self.proxy_page = proxy_page
        self.answers = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, dummy = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, dummy, body = data.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                while len(body) < length:
                    body += conn.recv(65536)
                self.answers += 1
                if self.proxy_page:
                    status, kind, payload = b"403 Forbidden", b"text/html", b"<html>Blocked by policy</html>"
                else:
                    status, kind, payload = b"400 Bad Request", b"application/x-amz-json-1.1", self.ANSWER
                sent = payload[:len(payload) // 2] if self.answers <= self.cut else payload
                conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind + b"\r\nConnection: close\r\n"
                             + b"Content-Length: %d\r\n\r\n" % len(payload) + sent)

    def close(self):
        self.sock.close()


def _real_client(url):
    return boto3.client("ecr", region_name="us-east-1", endpoint_url=url, aws_access_key_id="AKIDEXAMPLE",
                        aws_secret_access_key="secret", config=Config(**ecr.client_config(parse_reference(
                            "123456789012.dkr.ecr.us-east-1.amazonaws.com/app:1"))))


def test_an_error_answer_cut_short_is_retried_and_then_understood():
    server = _CutShortServer(cut=2)
    try:
        repository = _repository(_real_client(server.url))
        assert repository.repository_exists() is False  # the third, whole answer: RepositoryNotFoundException
        assert server.answers == 3 and repository.retries == 2
    finally:
        server.close()


def test_error_answers_always_cut_short_end_in_one_sentence_without_the_fragment():
    server = _CutShortServer(cut=1000)
    try:
        with pytest.raises(ecr.EndpointError) as caught:
            _repository(_real_client(server.url)).repository_exists()
    finally:
        server.close()
    message = str(caught.value)
    assert message == ("ECR answered DescribeRepositories with HTTP 400 and an error body that could not be read (cut "
                       "short, or not from ECR: a proxy?) 3 times in a row; check the network path to the ECR API "
                       "(proxy, endpoint_url) and try again.")
    assert server.answers == 3


def test_a_proxy_page_is_not_retried():
    server = _CutShortServer(cut=0, proxy_page=True)
    try:
        with pytest.raises(ecr.EndpointError, match=r"with HTTP 403 and an error body that could not be read .* once;"):
            _repository(_real_client(server.url)).repository_exists()
    finally:
        server.close()
    assert server.answers == 1


def test_an_unreachable_endpoint_says_how_many_attempts_over_how_long():
    """Issue 12: 31 s of retries against an endpoint that never answered ended in a message without either."""
    from botocore.exceptions import EndpointConnectionError  # pylint: disable=import-outside-toplevel
    now = [1000.0]

    def sleep(dummy_seconds):
        now[0] += 3.44  # the backoff and the attempt that follows it, on a clock the test owns

    url = "https://api.ecr.us-east-1.amazonaws.com/"
    client = _Scripted(batch_get_image=[EndpointConnectionError(endpoint_url=url)] * 10)
    ref = parse_reference("123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app:1.0")
    repository = ecr.EcrRepository(client, ref, RetryPolicy(attempts=10), sleep=sleep, clock=lambda: now[0])
    with pytest.raises(ecr.EndpointError) as caught:
        repository.get_manifest({"imageTag": "1.0"}, ACCEPTED)
    message = str(caught.value)
    assert message.startswith("Could not reach the ECR API for BatchGetImage: it did not answer after 10 attempts over 31 s ")
    assert url in message and "endpoint_url" in message and "\n" not in message
    assert repository.api_calls == 10 and repository.retries == 9

    client = _Scripted(batch_get_image=[EndpointConnectionError(endpoint_url=url)])
    repository = ecr.EcrRepository(client, ref, RetryPolicy(attempts=1), sleep=sleep, clock=lambda: now[0])
    with pytest.raises(ecr.EndpointError, match="did not answer after 1 attempt over 0.0 s"):
        repository.get_manifest({"imageTag": "1.0"}, ACCEPTED)


def test_throttling_past_the_limit_says_how_long_it_was_tried():
    from botocore.exceptions import ClientError  # pylint: disable=import-outside-toplevel
    now = [0.0]
    throttled = ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "BatchGetImage")
    repository = ecr.EcrRepository(_Scripted(batch_get_image=[throttled] * 3),
                                   parse_reference("123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app:1.0"),
                                   RetryPolicy(attempts=3), sleep=lambda seconds: now.__setitem__(0, now[0] + 2.5),
                                   clock=lambda: now[0])
    with pytest.raises(ecr.EcrApiError, match=r"with ThrottlingException after 2 retries \(3 attempts over 5.0 s\); .*max_attempts"):
        repository.get_manifest({"imageTag": "1.0"}, ACCEPTED)
