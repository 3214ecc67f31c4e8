# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""SigV4 checking and the JSON 1.1 wire: errors a client can provoke before
any operation runs."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from botocore import UNSIGNED
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from fixture import push_image, run_emulator

TARGET = 'AmazonEC2ContainerRegistry_V20150921.'


def _error(excinfo):
    response = excinfo.value.response
    return response['Error']['Code'], response['ResponseMetadata']['HTTPStatusCode'], response['Error']['Message']


def _raw_call(endpoint, target, body, service='ecr', region='us-east-1', secret=None):
    """A hand-signed request, for what boto3 will not send."""
    request = AWSRequest(method='POST', url=endpoint.url + '/', data=body,
                         headers={'Content-Type': 'application/x-amz-json-1.1', 'X-Amz-Target': target})
    SigV4Auth(Credentials(endpoint.access_key, secret or endpoint.secret_key), service, region).add_auth(request)
    prepared = request.prepare()
    raw = urllib.request.Request(prepared.url, data=body, headers=dict(prepared.headers.items()), method='POST')
    try:
        with urllib.request.urlopen(raw, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())


def test_wrong_secret(ecr_endpoint):
    client = ecr_endpoint.client(aws_secret_access_key='not-the-secret')
    with pytest.raises(client.exceptions.ClientError) as excinfo:
        client.describe_repositories()
    code, status, message = _error(excinfo)
    assert (code, status) == ('InvalidSignatureException', 400)
    assert message.startswith('The request signature we calculated does not match the signature you provided.')


def test_unknown_access_key(ecr_endpoint):
    client = ecr_endpoint.client(aws_access_key_id='AKIAUNKNOWN000000000')
    with pytest.raises(client.exceptions.ClientError) as excinfo:
        client.describe_repositories()
    assert _error(excinfo) == ('UnrecognizedClientException', 400, 'The security token included in the request is invalid.')


def test_missing_authentication(ecr_endpoint):
    client = ecr_endpoint.client(config=Config(signature_version=UNSIGNED, retries={'total_max_attempts': 1}))
    with pytest.raises(client.exceptions.ClientError) as excinfo:
        client.describe_repositories()
    assert _error(excinfo) == ('MissingAuthenticationTokenException', 403, 'Missing Authentication Token')


@pytest.mark.parametrize('offset, start', [(16 * 60, 'Signature expired: '), (-16 * 60, 'Signature not yet current: ')])
def test_clock_skew(ecr_endpoint, offset, start):
    client = ecr_endpoint.client()
    client.describe_repositories()  # within 15 minutes: fine
    ecr_endpoint.set_clock_offset(offset)
    with pytest.raises(client.exceptions.ClientError) as excinfo:
        client.describe_repositories()
    code, status, message = _error(excinfo)
    assert (code, status) == ('InvalidSignatureException', 400)
    assert message.startswith(start)
    ecr_endpoint.set_clock_offset(14 * 60 if offset > 0 else -14 * 60)
    client.describe_repositories()


def test_session_token(tmp_path):
    with run_emulator(tmp_path, session_token='FQoGZXIvYXdzEXAMPLETOKEN') as endpoint:
        endpoint.client().describe_repositories()
        client = endpoint.client(aws_session_token=None)
        with pytest.raises(client.exceptions.ClientError) as excinfo:
            client.describe_repositories()
        assert _error(excinfo)[:2] == ('UnrecognizedClientException', 400)
        client = endpoint.client(aws_session_token='wrong')
        with pytest.raises(client.exceptions.ClientError):
            client.describe_repositories()


def test_signature_scope_and_dispatch_errors(ecr_endpoint):
    status, body = _raw_call(ecr_endpoint, TARGET + 'DescribeRepositories', b'{}')
    assert status == 200 and body == {'repositories': []}
    status, body = _raw_call(ecr_endpoint, TARGET + 'DescribeRepositories', b'{}', service='ecs')
    assert (status, body['__type']) == (400, 'InvalidSignatureException')
    assert "'ecr'" in body['message']
    status, body = _raw_call(ecr_endpoint, TARGET + 'DescribeRepositories', b'{}', secret='bad')
    assert (status, body['__type']) == (400, 'InvalidSignatureException')
    status, body = _raw_call(ecr_endpoint, TARGET + 'LaunchRockets', b'{}')
    assert (status, body['__type']) == (400, 'UnknownOperationException')
    status, body = _raw_call(ecr_endpoint, 'SomethingElse_20200101.DescribeRepositories', b'{}')
    assert (status, body['__type']) == (400, 'UnknownOperationException')
    status, body = _raw_call(ecr_endpoint, TARGET + 'DescribeRepositories', b'{"oops"')
    assert (status, body['__type']) == (400, 'SerializationException')
    status, body = _raw_call(ecr_endpoint, TARGET + 'DescribeRepositories', b'{"maxResults": "ten"}')
    assert (status, body['__type']) == (400, 'SerializationException')
    status, body = _raw_call(ecr_endpoint, TARGET + 'CreateRepository', b'{}')
    assert (status, body['__type']) == (400, 'InvalidParameterException')
    assert body['message'] == "Invalid parameter at 'repositoryName' failed to satisfy constraint: 'must not be null'"
    stats = ecr_endpoint.stats()
    assert stats['auth_failures'] == {'InvalidSignatureException': 2}
    assert stats['api_calls']['DescribeRepositories'] == 5


def test_log_names_operations_but_no_secrets(tmp_path):
    log = tmp_path / 'emulator.log'
    with run_emulator(tmp_path, session_token='SeCrEtSeSsIoNtOkEn', log_file=str(log)) as endpoint:
        client = endpoint.client()
        client.create_repository(repositoryName='logged')
        with pytest.raises(client.exceptions.RepositoryNotFoundException):
            client.describe_images(repositoryName='absent')
        push_image(client, 'logged', [b'layer'], tag='v1')
        url = client.get_download_url_for_layer(
            repositoryName='logged', layerDigest=json.loads(client.batch_get_image(
                repositoryName='logged', imageIds=[{'imageTag': 'v1'}])['images'][0]['imageManifest'])['layers'][0]['digest'])['downloadUrl']
        endpoint.fetch(url)
    text = log.read_text()
    assert 'API CreateRepository 200' in text
    assert 'API DescribeImages 400 RepositoryNotFoundException' in text
    assert 'BLOB GET sha256:' in text
    for secret in (endpoint.secret_key, 'SeCrEtSeSsIoNtOkEn', 'X-Amz-Signature', 'Signature=', url.split('X-Amz-Signature=')[1]):
        assert secret not in text
