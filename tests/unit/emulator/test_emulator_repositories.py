# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Repositories, registries, parameter validation and GetAuthorizationToken."""

from __future__ import annotations

import base64
import datetime
import gzip
import json
import os

import botocore
import pytest
from fixture import push_image

import ecr_emu_model


def test_create_repository_describes_itself(ecr_endpoint):
    ecr = ecr_endpoint.client(region='eu-west-3')
    repo = ecr.create_repository(repositoryName='team/app', tags=[{'Key': 'owner', 'Value': 'me'}],
                                 imageScanningConfiguration={'scanOnPush': True})['repository']
    assert repo['repositoryArn'] == 'arn:aws:ecr:eu-west-3:123456789012:repository/team/app'
    assert repo['repositoryUri'] == '123456789012.dkr.ecr.eu-west-3.amazonaws.com/team/app'
    assert repo['registryId'] == '123456789012'
    assert repo['imageTagMutability'] == 'MUTABLE'
    assert repo['imageScanningConfiguration'] == {'scanOnPush': True}
    assert repo['encryptionConfiguration'] == {'encryptionType': 'AES256'}
    assert isinstance(repo['createdAt'], datetime.datetime)
    china = ecr_endpoint.client(region='cn-north-1').create_repository(repositoryName='team/app')['repository']
    assert china['repositoryArn'] == 'arn:aws-cn:ecr:cn-north-1:123456789012:repository/team/app'
    assert china['repositoryUri'] == '123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/team/app'
    with pytest.raises(ecr.exceptions.RepositoryAlreadyExistsException) as excinfo:
        ecr.create_repository(repositoryName='team/app')
    assert excinfo.value.response['Error']['Message'] == \
        "The repository with name 'team/app' already exists in the registry with id '123456789012'"


def test_repositories_are_scoped_by_region_and_registry(ecr_endpoint):
    east, west = ecr_endpoint.client(region='us-east-1'), ecr_endpoint.client(region='us-west-2')
    east.create_repository(repositoryName='shared')
    with pytest.raises(west.exceptions.RepositoryNotFoundException) as excinfo:
        west.describe_repositories(repositoryNames=['shared'])
    assert excinfo.value.response['Error']['Message'] == \
        "The repository with name 'shared' does not exist in the registry with id '123456789012'"
    west.create_repository(repositoryName='shared')
    other = east.create_repository(repositoryName='shared', registryId='210987654321')['repository']
    assert other['repositoryArn'] == 'arn:aws:ecr:us-east-1:210987654321:repository/shared'
    digest, dummy = push_image(east, 'shared', [b'in the other registry'], tag='v1', registry_id='210987654321')
    with pytest.raises(east.exceptions.ImageNotFoundException):
        east.describe_images(repositoryName='shared', imageIds=[{'imageTag': 'v1'}])
    found = east.describe_images(repositoryName='shared', registryId='210987654321', imageIds=[{'imageTag': 'v1'}])
    assert found['imageDetails'][0]['imageDigest'] == digest
    assert found['imageDetails'][0]['registryId'] == '210987654321'


@pytest.mark.parametrize('kwargs, parameter', [
    ({'repositoryName': 'Team/App'}, 'repositoryName'),
    ({'repositoryName': 'a' * 257}, 'repositoryName'),
    ({'repositoryName': 'ok', 'imageTagMutability': 'SOMETIMES'}, 'imageTagMutability'),
    ({'repositoryName': 'ok', 'registryId': '12345'}, 'registryId'),
    ({'repositoryName': 'ok', 'imageTagMutability': 'IMMUTABLE_WITH_EXCLUSION'}, 'imageTagMutabilityExclusionFilters'),
])
def test_parameter_validation_names_the_parameter(ecr_endpoint, kwargs, parameter):
    ecr = ecr_endpoint.client()
    with pytest.raises(ecr.exceptions.InvalidParameterException) as excinfo:
        ecr.create_repository(**kwargs)
    assert excinfo.value.response['Error']['Message'].startswith(f"Invalid parameter at '{parameter}' failed to satisfy constraint: '")


def test_repository_tags_limits(ecr_endpoint):
    ecr = ecr_endpoint.client()
    with pytest.raises(ecr.exceptions.TooManyTagsException):
        ecr.create_repository(repositoryName='tags', tags=[{'Key': f'k{n}', 'Value': 'v'} for n in range(51)])
    with pytest.raises(ecr.exceptions.InvalidTagParameterException):
        ecr.create_repository(repositoryName='tags', tags=[{'Key': 'k' * 129, 'Value': 'v'}])


def test_describe_repositories_pages_and_filters(ecr_endpoint):
    ecr = ecr_endpoint.client()
    names = [f'repo-{n}' for n in range(5)]
    for name in names:
        ecr.create_repository(repositoryName=name)
    paginator = ecr.get_paginator('describe_repositories')
    pages = list(paginator.paginate(PaginationConfig={'PageSize': 2}))
    assert [len(page['repositories']) for page in pages] == [2, 2, 1]
    assert [r['repositoryName'] for page in pages for r in page['repositories']] == names
    picked = ecr.describe_repositories(repositoryNames=['repo-3', 'repo-1'])['repositories']
    assert [r['repositoryName'] for r in picked] == ['repo-3', 'repo-1']
    with pytest.raises(ecr.exceptions.RepositoryNotFoundException):
        ecr.describe_repositories(repositoryNames=['repo-1', 'nope'])
    with pytest.raises(ecr.exceptions.InvalidParameterException):
        ecr.describe_repositories(repositoryNames=['repo-1'], maxResults=1)


def test_delete_repository(ecr_endpoint):
    ecr = ecr_endpoint.client()
    ecr.create_repository(repositoryName='doomed')
    push_image(ecr, 'doomed', [b'content'], tag='v1')
    with pytest.raises(ecr.exceptions.RepositoryNotEmptyException) as excinfo:
        ecr.delete_repository(repositoryName='doomed')
    assert excinfo.value.response['Error']['Message'] == \
        "The repository with name 'doomed' in registry with id '123456789012' cannot be deleted because it still contains images"
    assert ecr.delete_repository(repositoryName='doomed', force=True)['repository']['repositoryName'] == 'doomed'
    with pytest.raises(ecr.exceptions.RepositoryNotFoundException):
        ecr.delete_repository(repositoryName='doomed')
    ecr.create_repository(repositoryName='empty')
    ecr.delete_repository(repositoryName='empty')


@pytest.mark.parametrize('call, kwargs', [
    ('describe_images', {}),
    ('list_images', {}),
    ('batch_get_image', {'imageIds': [{'imageTag': 'x'}]}),
    ('batch_delete_image', {'imageIds': [{'imageTag': 'x'}]}),
    ('put_image', {'imageManifest': '{}'}),
    ('get_download_url_for_layer', {'layerDigest': 'sha256:' + 'a' * 64}),
    ('batch_check_layer_availability', {'layerDigests': ['sha256:' + 'a' * 64]}),
    ('initiate_layer_upload', {}),
    ('upload_layer_part', {'uploadId': '00000000-0000-0000-0000-000000000000', 'partFirstByte': 0, 'partLastByte': 0, 'layerPartBlob': b'x'}),
    ('complete_layer_upload', {'uploadId': '00000000-0000-0000-0000-000000000000', 'layerDigests': ['sha256:' + 'a' * 64]}),
])
def test_unknown_repository_everywhere(ecr_endpoint, call, kwargs):
    ecr = ecr_endpoint.client()
    with pytest.raises(ecr.exceptions.RepositoryNotFoundException) as excinfo:
        getattr(ecr, call)(repositoryName='missing', **kwargs)
    assert excinfo.value.response['ResponseMetadata']['HTTPStatusCode'] == 400


def test_get_authorization_token(ecr_endpoint):
    ecr = ecr_endpoint.client(region='ap-south-1')
    data = ecr.get_authorization_token()['authorizationData']
    assert len(data) == 1
    user, dummy, password = base64.b64decode(data[0]['authorizationToken']).decode().partition(':')
    assert user == 'AWS' and password
    assert data[0]['proxyEndpoint'] == 'https://123456789012.dkr.ecr.ap-south-1.amazonaws.com'
    remaining = data[0]['expiresAt'] - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(hours=11) < remaining <= datetime.timedelta(hours=12)


def test_validation_table_matches_the_service_model():
    """The hand-written constraints agree with botocore's ECR model."""
    path = os.path.join(os.path.dirname(botocore.__file__), 'data', 'ecr', '2015-09-21', 'service-2.json')
    if os.path.exists(path + '.gz'):
        with gzip.open(path + '.gz') as handle:
            model = json.load(handle)
    else:
        with open(path, encoding='utf-8') as handle:
            model = json.load(handle)
    shapes = model['shapes']
    for operation in ecr_emu_model.OPERATIONS:
        assert model['operations'][operation]['input']['shape'] == operation + 'Request'
    for name, mine in ecr_emu_model.SHAPES.items():
        theirs = shapes[name]
        assert mine['type'] == theirs['type'], name
        for key in ('min', 'max', 'pattern', 'enum'):
            assert mine.get(key) == theirs.get(key), (name, key)
        if mine['type'] == 'structure':
            assert sorted(mine.get('required', [])) == sorted(theirs.get('required', [])), name
            theirs_members = {member: spec['shape'] for member, spec in theirs['members'].items()}
            if name.endswith('Request'):
                assert mine['members'] == theirs_members, name
            else:
                assert set(mine['members'].items()) <= set(theirs_members.items()), name
        if mine['type'] == 'list':
            assert mine['member'] == theirs['member']['shape'], name
        for member_shape in list(mine.get('members', {}).values()) + ([mine['member']] if 'member' in mine else []):
            assert member_shape in ecr_emu_model.SHAPES, (name, member_shape)
