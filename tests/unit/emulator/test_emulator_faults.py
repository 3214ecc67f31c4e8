# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fault injection and the call counters tests rely on."""

from __future__ import annotations

import hashlib
import http.client
import time
import urllib.error
from urllib.parse import urlsplit

import pytest
from fixture import push_image, run_emulator

import ecr_emu_faults
import ecr_emulator

BLOB = bytes(range(256)) * 32  # 8 KiB


def _blob_url(endpoint):
    client = endpoint.client()
    client.create_repository(repositoryName='faulty')
    push_image(client, 'faulty', [BLOB], tag='v1')
    return client.get_download_url_for_layer(repositoryName='faulty', layerDigest='sha256:' + hashlib.sha256(BLOB).hexdigest())['downloadUrl']


def _get(url, headers=None):
    """GET with http.client so a cut connection shows as IncompleteRead."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    try:
        conn.request('GET', f'{parts.path}?{parts.query}', headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_stats_count_api_calls(ecr_endpoint):
    client = ecr_endpoint.client()
    client.create_repository(repositoryName='counted')
    ecr_endpoint.reset_stats()
    client.describe_repositories()
    client.describe_repositories(repositoryNames=['counted'])
    with pytest.raises(client.exceptions.ImageNotFoundException):
        client.describe_images(repositoryName='counted', imageIds=[{'imageTag': 'x'}])
    stats = ecr_endpoint.stats()
    assert stats['api_calls'] == {'DescribeRepositories': 2, 'DescribeImages': 1}
    assert stats['api_calls_total'] == 3
    assert stats['api_errors'] == {'DescribeImages': {'ImageNotFoundException': 1}}
    assert ecr_endpoint.api_calls('DescribeImages') == 1
    ecr_endpoint.reset_stats()
    assert ecr_endpoint.api_calls() == 0
    assert ecr_endpoint.health()['status'] == 'ok'


def test_throttle_every_nth_call(ecr_endpoint):
    client = ecr_endpoint.client()
    ecr_endpoint.set_faults('throttle:every=2')
    client.describe_repositories()
    with pytest.raises(client.exceptions.ClientError) as excinfo:
        client.describe_repositories()
    assert excinfo.value.response['Error']['Code'] == 'ThrottlingException'
    assert excinfo.value.response['ResponseMetadata']['HTTPStatusCode'] == 400
    client.describe_repositories()
    stats = ecr_endpoint.stats()
    assert stats['api_calls']['DescribeRepositories'] == 3
    assert stats['faults_fired'] == {'throttle': 1}
    # boto3 retries throttling when allowed to: one logical call, two requests.
    ecr_endpoint.reset_stats()
    ecr_endpoint.set_faults('throttle:every=1,count=1')
    ecr_endpoint.client(retries=2).describe_repositories()
    assert ecr_endpoint.api_calls('DescribeRepositories') == 2


def test_server_error_for_one_operation(ecr_endpoint):
    client = ecr_endpoint.client()
    client.create_repository(repositoryName='r1')
    ecr_endpoint.set_faults({'kind': 'server-error', 'every': 1, 'count': 1, 'ops': ['ListImages']})
    client.describe_repositories()
    with pytest.raises(client.exceptions.ServerException) as excinfo:
        client.list_images(repositoryName='r1')
    assert excinfo.value.response['ResponseMetadata']['HTTPStatusCode'] == 500
    client.list_images(repositoryName='r1')
    assert ecr_endpoint.faults()[0]['fired'] == 1


def test_lost_response_acts_then_answers_500(ecr_endpoint):
    client = ecr_endpoint.client()
    ecr_endpoint.set_faults({'kind': 'lost-response', 'every': 1, 'count': 1, 'ops': ['CreateRepository']})
    with pytest.raises(client.exceptions.ServerException):
        client.create_repository(repositoryName='made')
    assert [repo['repositoryName'] for repo in client.describe_repositories()['repositories']] == ['made']
    with pytest.raises(client.exceptions.RepositoryAlreadyExistsException):
        client.create_repository(repositoryName='made')  # what a client's retry meets


def test_drop_blob(ecr_endpoint):
    url = _blob_url(ecr_endpoint)
    ecr_endpoint.set_faults('drop-blob:after=1000')
    with pytest.raises(http.client.IncompleteRead) as excinfo:
        _get(url)
    assert excinfo.value.partial == BLOB[:1000]
    assert _get(url) == (200, BLOB)  # count=1 by default
    assert ecr_endpoint.stats()['faults_fired'] == {'drop-blob': 1}


def test_corrupt_blob(ecr_endpoint):
    url = _blob_url(ecr_endpoint)
    ecr_endpoint.set_faults('corrupt-blob:offset=4100')
    assert _get(url, {'Range': 'bytes=0-99'}) == (206, BLOB[:100])  # not in this range
    status, body = _get(url)
    assert status == 200 and len(body) == len(BLOB) and body != BLOB
    assert [i for i in range(len(BLOB)) if body[i] != BLOB[i]] == [4100]
    assert _get(url)[1] == BLOB
    ecr_endpoint.set_faults('corrupt-blob:seed=7,count=2')
    assert _get(url, {'Range': 'bytes=10-19'})[1] != BLOB[10:20]


def test_stall_blob(ecr_endpoint):
    url = _blob_url(ecr_endpoint)
    ecr_endpoint.set_faults('stall-blob:after=2K,seconds=0.6')
    started = time.monotonic()
    assert _get(url) == (200, BLOB)
    assert time.monotonic() - started >= 0.6
    started = time.monotonic()
    assert _get(url) == (200, BLOB)
    assert time.monotonic() - started < 0.5


def test_expire_urls_early(ecr_endpoint):
    url = _blob_url(ecr_endpoint)
    ecr_endpoint.set_faults('expire-urls:after=0,count=1')
    status, body = _get(url)
    assert status == 403 and b'Request has expired' in body
    assert _get(url) == (200, BLOB)


def test_fault_specs():
    fault = ecr_emu_faults.Fault.parse('throttle:every=3,count=2,ops=PutImage+BatchGetImage')
    assert fault.params == {'every': 3, 'count': 2, 'ops': ['PutImage', 'BatchGetImage']}
    assert fault.spec() == 'throttle:every=3,count=2,ops=PutImage+BatchGetImage'
    assert ecr_emu_faults.Fault.parse('drop-blob:after=1M').params['after'] == 1024 * 1024
    assert ecr_emu_faults.Fault.parse('server-error').params == {'every': 1}
    for bad in ('explode:now=1', 'throttle:every=0', 'throttle:sometimes', 'drop-blob:after=x', 'corrupt-blob', 'stall-blob:speed=1'):
        with pytest.raises(ValueError):
            ecr_emu_faults.Fault.parse(bad)
    with pytest.raises(ValueError):
        ecr_emulator.Emulator('/nonexistent', faults=['nope'])
    faults = ecr_emu_faults.FaultSet(['throttle:rate=0.5,seed=1'])
    fired = [faults.api_fault('PutImage') for dummy in range(200)]
    assert 60 < fired.count('throttle') < 140


def test_bad_fault_spec_on_the_control_endpoint(ecr_endpoint):
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        ecr_endpoint.set_faults('throttle:every=zero')
    assert excinfo.value.code == 400
    excinfo.value.close()
    assert ecr_endpoint.faults() == []


def test_faults_from_the_command_line(tmp_path):
    with run_emulator(tmp_path, mode='subprocess', faults=['throttle:every=1,count=1', 'drop-blob:after=10']) as endpoint:
        client = endpoint.client()
        with pytest.raises(client.exceptions.ClientError) as excinfo:
            client.describe_repositories()
        assert excinfo.value.response['Error']['Code'] == 'ThrottlingException'
        client.describe_repositories()
        assert [fault['spec'] for fault in endpoint.faults()] == ['throttle:every=1,count=1', 'drop-blob:after=10']


def test_access_denied_for_one_operation(ecr_endpoint):
    client = ecr_endpoint.client()
    ecr_endpoint.set_faults('access-denied:every=1,ops=DescribeImages')
    client.describe_repositories()
    with pytest.raises(client.exceptions.ClientError) as excinfo:
        client.describe_images(repositoryName='nothing')
    error = excinfo.value.response['Error']
    assert error['Code'] == 'AccessDeniedException'
    assert 'not authorized to perform: ecr:DescribeImages' in error['Message']
    assert ecr_endpoint.stats()['faults_fired'] == {'access-denied': 1}
