# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Layer uploads, layer availability and download URLs."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest
from fixture import image_manifest, push_image, upload_blob

REPO = 'team/app'
MIB = 1024 * 1024


def sha(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


@pytest.fixture(name='ecr')
def ecr_client(ecr_endpoint):
    client = ecr_endpoint.client()
    client.create_repository(repositoryName=REPO)
    return client


def _part(ecr, upload_id, first, data):
    return ecr.upload_layer_part(repositoryName=REPO, uploadId=upload_id, partFirstByte=first,
                                 partLastByte=first + len(data) - 1, layerPartBlob=data)


def test_parts_must_be_contiguous_and_in_order(ecr):
    upload_id = ecr.initiate_layer_upload(repositoryName=REPO)['uploadId']
    with pytest.raises(ecr.exceptions.InvalidLayerPartException) as excinfo:
        _part(ecr, upload_id, 5, b'abc')
    error = excinfo.value.response
    assert error['lastValidByteReceived'] == -1
    assert (error['registryId'], error['repositoryName'], error['uploadId']) == ('123456789012', REPO, upload_id)
    assert _part(ecr, upload_id, 0, b'abcd')['lastByteReceived'] == 3
    with pytest.raises(ecr.exceptions.InvalidLayerPartException) as excinfo:
        _part(ecr, upload_id, 6, b'xyz')  # a gap
    assert excinfo.value.response['lastValidByteReceived'] == 3
    with pytest.raises(ecr.exceptions.InvalidLayerPartException):
        _part(ecr, upload_id, 0, b'abcd')  # a repeat
    with pytest.raises(ecr.exceptions.InvalidLayerPartException):
        ecr.upload_layer_part(repositoryName=REPO, uploadId=upload_id, partFirstByte=4, partLastByte=9, layerPartBlob=b'xy')
    assert _part(ecr, upload_id, 4, b'ef')['lastByteReceived'] == 5
    # Parts were accepted, but the first is under 5 MiB: completion says so.
    with pytest.raises(ecr.exceptions.LayerPartTooSmallException):
        ecr.complete_layer_upload(repositoryName=REPO, uploadId=upload_id, layerDigests=[sha(b'abcdef')])


def test_upload_errors(ecr_endpoint, ecr):
    ecr.create_repository(repositoryName='elsewhere')
    with pytest.raises(ecr.exceptions.UploadNotFoundException):
        _part(ecr, '01234567-89ab-cdef-0123-456789abcdef', 0, b'x')
    other = ecr.initiate_layer_upload(repositoryName='elsewhere')['uploadId']
    with pytest.raises(ecr.exceptions.UploadNotFoundException):
        _part(ecr, other, 0, b'x')  # an upload of another repository
    upload_id = ecr.initiate_layer_upload(repositoryName=REPO)['uploadId']
    with pytest.raises(ecr.exceptions.EmptyUploadException):
        ecr.complete_layer_upload(repositoryName=REPO, uploadId=upload_id, layerDigests=[sha(b'')])
    _part(ecr, upload_id, 0, b'some bytes')
    with pytest.raises(ecr.exceptions.InvalidLayerException):
        ecr.complete_layer_upload(repositoryName=REPO, uploadId=upload_id, layerDigests=[sha(b'other bytes')])
    with pytest.raises(ecr.exceptions.UploadNotFoundException):
        ecr.complete_layer_upload(repositoryName=REPO, uploadId=upload_id, layerDigests=[sha(b'some bytes')])
    upload_id = ecr.initiate_layer_upload(repositoryName=REPO)['uploadId']
    _part(ecr, upload_id, 0, b'some bytes')
    with pytest.raises(ecr.exceptions.InvalidLayerException) as excinfo:
        ecr.complete_layer_upload(repositoryName=REPO, uploadId=upload_id, layerDigests=['sha512:' + 'ab' * 64])
    assert 'sha256' in excinfo.value.response['Error']['Message']
    with pytest.raises(ecr.exceptions.InvalidParameterException) as excinfo:
        ecr.complete_layer_upload(repositoryName=REPO, uploadId=upload_id, layerDigests=['not-a-digest'])
    assert "'layerDigests'" in excinfo.value.response['Error']['Message']
    upload_blob(ecr, REPO, b'twice')
    upload_id = ecr.initiate_layer_upload(repositoryName=REPO)['uploadId']
    _part(ecr, upload_id, 0, b'twice')
    with pytest.raises(ecr.exceptions.LayerAlreadyExistsException):
        ecr.complete_layer_upload(repositoryName=REPO, uploadId=upload_id, layerDigests=[sha(b'twice')])
    # Nothing of the failed uploads stays behind on disk.
    assert os.listdir(os.path.join(ecr_endpoint.data_dir, 'uploads')) == [f'{other}.part']


def test_small_parts_fail_at_completion(ecr):
    upload_id = ecr.initiate_layer_upload(repositoryName=REPO)['uploadId']
    _part(ecr, upload_id, 0, b'a' * 100)
    _part(ecr, upload_id, 100, b'b' * 100)
    with pytest.raises(ecr.exceptions.LayerPartTooSmallException):
        ecr.complete_layer_upload(repositoryName=REPO, uploadId=upload_id, layerDigests=[sha(b'a' * 100 + b'b' * 100)])


def test_part_size_limit(ecr):
    upload_id = ecr.initiate_layer_upload(repositoryName=REPO)['uploadId']
    with pytest.raises(ecr.exceptions.InvalidParameterException) as excinfo:
        _part(ecr, upload_id, 0, b'\0' * (20 * MIB + 1))
    assert "'layerPartBlob'" in excinfo.value.response['Error']['Message']


def test_five_mib_parts_then_a_short_last_part(ecr_endpoint, ecr):
    data = os.urandom(5 * MIB) + b'tail' * 256
    digest = upload_blob(ecr, REPO, data, part_size=5 * MIB)
    assert digest == sha(data)
    with open(os.path.join(ecr_endpoint.data_dir, 'blobs', 'sha256', digest[7:]), 'rb') as handle:
        assert handle.read() == data


def test_layer_availability(ecr_endpoint, ecr):
    present = upload_blob(ecr, REPO, b'present')
    absent = sha(b'absent')
    response = ecr.batch_check_layer_availability(repositoryName=REPO, layerDigests=[present, absent, '', 'nonsense'])
    assert response['layers'] == [{'layerDigest': present, 'layerAvailability': 'AVAILABLE', 'layerSize': 7},
                                  {'layerDigest': absent, 'layerAvailability': 'UNAVAILABLE'}]
    assert [(f['layerDigest'], f['failureCode']) for f in response['failures']] == [
        ('', 'MissingLayerDigest'), ('nonsense', 'InvalidLayerDigest')]
    # Layers belong to a repository: the same bytes elsewhere are not there.
    ecr.create_repository(repositoryName='other')
    response = ecr.batch_check_layer_availability(repositoryName='other', layerDigests=[present])
    assert response['layers'][0]['layerAvailability'] == 'UNAVAILABLE'
    assert upload_blob(ecr, 'other', b'present') == present
    # ... and the blob store keeps one copy.
    assert os.listdir(os.path.join(ecr_endpoint.data_dir, 'blobs', 'sha256')) == [present[7:]]


def test_download_url_rules(ecr_endpoint, ecr):
    config, layer = b'{"config":true}', b'a layer'
    with pytest.raises(ecr.exceptions.LayersNotFoundException):
        ecr.get_download_url_for_layer(repositoryName=REPO, layerDigest=sha(layer))
    for blob in (config, layer):
        upload_blob(ecr, REPO, blob)
    with pytest.raises(ecr.exceptions.LayerInaccessibleException):
        ecr.get_download_url_for_layer(repositoryName=REPO, layerDigest=sha(layer))
    ecr.put_image(repositoryName=REPO, imageManifest=image_manifest(config, [layer]), imageTag='v1')
    for blob in (config, layer):  # config blobs are downloadable too
        url = ecr.get_download_url_for_layer(repositoryName=REPO, layerDigest=sha(blob))['downloadUrl']
        assert ecr_endpoint.fetch(url)[2] == blob
    with pytest.raises(ecr.exceptions.InvalidParameterException):
        ecr.get_download_url_for_layer(repositoryName=REPO, layerDigest='sha256')


def test_concurrent_pushes_to_different_repositories(ecr_endpoint):
    results, errors = {}, []

    def push(n):
        try:
            client = ecr_endpoint.client()
            name = f'concurrent/repo-{n}'
            client.create_repository(repositoryName=name)
            layers = [os.urandom(64 * 1024) for dummy in range(3)] + [b'shared layer']
            results[name] = (push_image(client, name, layers, tag='v1')[0], layers)
        except Exception as err:  # pylint: disable=broad-exception-caught
            errors.append(err)

    threads = [threading.Thread(target=push, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    client = ecr_endpoint.client()
    for name, (digest, layers) in results.items():
        got = client.batch_get_image(repositoryName=name, imageIds=[{'imageTag': 'v1'}])['images'][0]
        assert got['imageId']['imageDigest'] == digest
        url = client.get_download_url_for_layer(repositoryName=name, layerDigest=sha(layers[0]))['downloadUrl']
        assert ecr_endpoint.fetch(url)[2] == layers[0]
    assert len(results) == 4
