# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Images through the emulator with a real boto3 client: push, pull, tags,
manifest rules, conversion, listing and deletion."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from fixture import image_manifest, push_image, upload_blob

OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
OCI_INDEX = 'application/vnd.oci.image.index.v1+json'
DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json'
DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json'
ALL_TYPES = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST]
REPO = 'team/app'


def sha(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def error_code(excinfo):
    return excinfo.value.response['Error']['Code']


@pytest.fixture(name='ecr')
def ecr_client(ecr_endpoint):
    client = ecr_endpoint.client()
    client.create_repository(repositoryName=REPO)
    return client


def test_push_pull_two_layer_image_and_index(ecr_endpoint, ecr):
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layers = [b'first layer ' * 300, b'second layer ' * 500]
    digests = {}
    for blob in [config] + layers:
        upload = ecr.initiate_layer_upload(repositoryName=REPO)
        assert upload['partSize'] == 20971520
        part = ecr.upload_layer_part(repositoryName=REPO, uploadId=upload['uploadId'], partFirstByte=0,
                                     partLastByte=len(blob) - 1, layerPartBlob=blob)
        assert part['lastByteReceived'] == len(blob) - 1
        done = ecr.complete_layer_upload(repositoryName=REPO, uploadId=upload['uploadId'], layerDigests=[sha(blob)])
        assert done['layerDigest'] == sha(blob)
        digests[done['layerDigest']] = blob
    manifest = image_manifest(config, layers)
    pushed = ecr.put_image(repositoryName=REPO, imageManifest=manifest, imageManifestMediaType=OCI_MANIFEST)
    child = pushed['image']['imageId']['imageDigest']
    assert child == sha(manifest.encode())
    assert 'imageTag' not in pushed['image']['imageId']
    index = json.dumps({'schemaVersion': 2, 'mediaType': OCI_INDEX, 'manifests': [
        {'mediaType': OCI_MANIFEST, 'digest': child, 'size': len(manifest), 'platform': {'architecture': 'amd64', 'os': 'linux'}}]})
    top = ecr.put_image(repositoryName=REPO, imageManifest=index, imageTag='v1')['image']['imageId']
    assert top == {'imageDigest': sha(index.encode()), 'imageTag': 'v1'}

    by_tag = ecr.batch_get_image(repositoryName=REPO, imageIds=[{'imageTag': 'v1'}], acceptedMediaTypes=ALL_TYPES)
    assert by_tag['failures'] == []
    image = by_tag['images'][0]
    assert image['imageManifest'] == index
    assert image['imageManifestMediaType'] == OCI_INDEX
    assert image['imageId'] == {'imageDigest': sha(index.encode()), 'imageTag': 'v1'}
    by_digest = ecr.batch_get_image(repositoryName=REPO, imageIds=[{'imageDigest': child}], acceptedMediaTypes=ALL_TYPES)
    assert by_digest['images'][0]['imageManifest'] == manifest
    assert by_digest['images'][0]['imageId'] == {'imageDigest': child}

    for digest, blob in digests.items():
        url = ecr.get_download_url_for_layer(repositoryName=REPO, layerDigest=digest)
        assert url['layerDigest'] == digest
        status, headers, body = ecr_endpoint.fetch(url['downloadUrl'])
        assert (status, body) == (200, blob)
        assert int(headers['Content-Length']) == len(blob)
        status, headers, body = ecr_endpoint.fetch(url['downloadUrl'], {'Range': 'bytes=3-9'})
        assert (status, body, headers['Content-Range']) == (206, blob[3:10], f'bytes 3-9/{len(blob)}')


def test_manifest_bytes_are_kept_exactly(ecr):
    config, layer = b'{}', b'data'
    for blob in (config, layer):
        upload_blob(ecr, REPO, blob)
    # Odd spacing, key order and non-ASCII text must survive byte for byte.
    manifest = ('{"layers" :[{"size":4,"digest":"%s","mediaType":"application/vnd.oci.image.layer.v1.tar+gzip"}],\n'
                '  "schemaVersion":2, "annotations":{"note":"caf\u00e9 \u2603"},"mediaType":"%s",'
                '"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":2}}  ') % (sha(layer), OCI_MANIFEST, sha(config))
    digest = ecr.put_image(repositoryName=REPO, imageManifest=manifest, imageTag='odd')['image']['imageId']['imageDigest']
    assert digest == sha(manifest.encode('utf-8'))
    got = ecr.batch_get_image(repositoryName=REPO, imageIds=[{'imageDigest': digest}], acceptedMediaTypes=ALL_TYPES)['images'][0]
    assert got['imageManifest'] == manifest
    assert ecr.describe_images(repositoryName=REPO)['imageDetails'][0]['imageSizeInBytes'] == 4


def test_put_image_media_type_rules(ecr):
    config, layer = b'{"a":1}', b'layer'
    for blob in (config, layer):
        upload_blob(ecr, REPO, blob)
    doc = json.loads(image_manifest(config, [layer]))
    del doc['mediaType']
    bare = json.dumps(doc)
    # Neither the request nor the document names the type: ECR's odd message.
    with pytest.raises(ecr.exceptions.InvalidParameterException) as excinfo:
        ecr.put_image(repositoryName=REPO, imageManifest=bare, imageTag='bare')
    assert excinfo.value.response['Error']['Message'] == \
        "Invalid parameter at 'ImageManifest' failed to satisfy constraint: 'Invalid JSON syntax'"
    with pytest.raises(ecr.exceptions.InvalidParameterException):
        ecr.put_image(repositoryName=REPO, imageManifest='{not json', imageManifestMediaType=OCI_MANIFEST)
    with pytest.raises(ecr.exceptions.InvalidParameterException) as excinfo:
        ecr.put_image(repositoryName=REPO, imageManifest=image_manifest(config, [layer]), imageManifestMediaType=DOCKER_MANIFEST)
    assert 'imageManifestMediaType' in excinfo.value.response['Error']['Message']
    with pytest.raises(ecr.exceptions.InvalidParameterException):
        ecr.put_image(repositoryName=REPO, imageManifest=bare, imageManifestMediaType='application/json')
    # The request parameter is enough; the stored manifest keeps having no mediaType.
    pushed = ecr.put_image(repositoryName=REPO, imageManifest=bare, imageManifestMediaType=OCI_MANIFEST, imageTag='bare')
    assert pushed['image']['imageManifestMediaType'] == OCI_MANIFEST
    got = ecr.batch_get_image(repositoryName=REPO, imageIds=[{'imageTag': 'bare'}], acceptedMediaTypes=ALL_TYPES)['images'][0]
    assert (got['imageManifest'], got['imageManifestMediaType']) == (bare, OCI_MANIFEST)


def test_manifest_size_limit(ecr):
    upload_blob(ecr, REPO, b'{}')
    doc = json.loads(image_manifest(b'{}', []))
    doc['annotations'] = {'pad': 'x' * (4 * 1024 * 1024)}
    with pytest.raises(ecr.exceptions.InvalidParameterException) as excinfo:
        ecr.put_image(repositoryName=REPO, imageManifest=json.dumps(doc))
    assert "'imageManifest'" in excinfo.value.response['Error']['Message']


def test_put_image_reference_checks(ecr):
    config, layer = b'{"c":1}', b'present'
    upload_blob(ecr, REPO, config)
    manifest = image_manifest(config, [layer])
    with pytest.raises(ecr.exceptions.LayersNotFoundException) as excinfo:
        ecr.put_image(repositoryName=REPO, imageManifest=manifest, imageTag='x')
    assert sha(layer) in excinfo.value.response['Error']['Message']
    assert sha(config) not in excinfo.value.response['Error']['Message']
    # Foreign (non-distributable) layers and layers with urls are not checked.
    doc = json.loads(image_manifest(config, []))
    doc['layers'] = [
        {'mediaType': 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip', 'digest': sha(b'foreign'), 'size': 7},
        {'mediaType': 'application/vnd.oci.image.layer.v1.tar+gzip', 'digest': sha(b'remote'), 'size': 6, 'urls': ['https://example.com/x']},
    ]
    ecr.put_image(repositoryName=REPO, imageManifest=json.dumps(doc), imageTag='foreign')
    missing_child = sha(b'no such manifest')
    index = json.dumps({'schemaVersion': 2, 'mediaType': OCI_INDEX, 'manifests': [
        {'mediaType': OCI_MANIFEST, 'digest': missing_child, 'size': 10}]})
    with pytest.raises(ecr.exceptions.ReferencedImagesNotFoundException) as excinfo:
        ecr.put_image(repositoryName=REPO, imageManifest=index, imageTag='idx')
    assert missing_child in excinfo.value.response['Error']['Message']
    with pytest.raises(ecr.exceptions.ImageDigestDoesNotMatchException):
        ecr.put_image(repositoryName=REPO, imageManifest=json.dumps(doc), imageDigest=sha(b'other'))
    same = ecr.put_image(repositoryName=REPO, imageManifest=json.dumps(doc), imageDigest=sha(json.dumps(doc).encode()), imageTag='pinned')
    assert same['image']['imageId']['imageDigest'] == sha(json.dumps(doc).encode())


def test_tags_move_in_mutable_repositories(ecr):
    first, dummy = push_image(ecr, REPO, [b'one'], tag='latest')
    second, dummy = push_image(ecr, REPO, [b'two'], tag='latest')
    details = {d['imageDigest']: d for d in ecr.describe_images(repositoryName=REPO)['imageDetails']}
    assert 'imageTags' not in details[first]
    assert details[second]['imageTags'] == ['latest']
    untagged = ecr.list_images(repositoryName=REPO, filter={'tagStatus': 'UNTAGGED'})['imageIds']
    assert untagged == [{'imageDigest': first}]


def test_image_already_exists(ecr):
    digest, manifest = push_image(ecr, REPO, [b'layer'], tag='v1')
    with pytest.raises(ecr.exceptions.ImageAlreadyExistsException) as excinfo:
        ecr.put_image(repositoryName=REPO, imageManifest=manifest, imageTag='v1')
    assert excinfo.value.response['Error']['Message'] == (
        f"Image with digest '{digest}' and tag 'v1' already exists in the repository with name '{REPO}' in registry with id '123456789012'")
    # An untagged put of a manifest the repository has changes nothing either.
    with pytest.raises(ecr.exceptions.ImageAlreadyExistsException):
        ecr.put_image(repositoryName=REPO, imageManifest=manifest)
    # A new tag on the same manifest is a change.
    ecr.put_image(repositoryName=REPO, imageManifest=manifest, imageTag='v1.0')
    detail = ecr.describe_images(repositoryName=REPO, imageIds=[{'imageDigest': digest}])['imageDetails'][0]
    assert sorted(detail['imageTags']) == ['v1', 'v1.0']


@pytest.mark.parametrize('mutability', ['IMMUTABLE', 'IMMUTABLE_WITH_EXCLUSION', 'MUTABLE_WITH_EXCLUSION'])
def test_immutable_tags(ecr_endpoint, mutability):
    ecr = ecr_endpoint.client()
    extra = {}
    if mutability.endswith('_WITH_EXCLUSION'):
        extra['imageTagMutabilityExclusionFilters'] = [{'filterType': 'WILDCARD', 'filter': 'dev-*'}]
    ecr.create_repository(repositoryName='locked', imageTagMutability=mutability, **extra)
    fixed, other = ('v1', 'dev-1') if mutability != 'MUTABLE_WITH_EXCLUSION' else ('dev-1', 'v1')
    digest, manifest = push_image(ecr, 'locked', [b'a'], tag=fixed)
    dummy, manifest_b = push_image(ecr, 'locked', [b'b'], tag=other)
    with pytest.raises(ecr.exceptions.ImageTagAlreadyExistsException) as excinfo:
        ecr.put_image(repositoryName='locked', imageManifest=manifest_b, imageTag=fixed)
    assert f"The image tag '{fixed}' already exists" in excinfo.value.response['Error']['Message']
    # Same manifest, same immutable tag: still refused (what ECR does).
    with pytest.raises(ecr.exceptions.ImageTagAlreadyExistsException):
        ecr.put_image(repositoryName='locked', imageManifest=manifest, imageTag=fixed)
    if mutability == 'IMMUTABLE':
        with pytest.raises(ecr.exceptions.ImageTagAlreadyExistsException):
            ecr.put_image(repositoryName='locked', imageManifest=manifest, imageTag=other)
        other = 'fresh'  # a new tag is fine
    # The mutable tag moves freely.
    ecr.put_image(repositoryName='locked', imageManifest=manifest, imageTag=other)
    tagged = ecr.batch_get_image(repositoryName='locked', imageIds=[{'imageTag': other}])['images'][0]
    assert tagged['imageId']['imageDigest'] == digest


def _signed_schema1(doc):
    payload = json.dumps(doc, indent=3)
    length = len(payload) - 2  # the signature block goes before the final "\n}"

    def b64url(data):
        return base64.urlsafe_b64encode(data).decode().rstrip('=')
    protected = b64url(json.dumps({'formatLength': length, 'formatTail': b64url(payload[length:].encode()),
                                   'time': '2020-01-01T00:00:00Z'}).encode())
    signatures = [{'header': {'alg': 'ES256', 'jwk': {'kty': 'EC'}}, 'signature': 'c2lnbmF0dXJl', 'protected': protected}]
    signed = payload[:length] + ',\n   "signatures": ' + json.dumps(signatures, indent=3).replace('\n', '\n   ') + payload[length:]
    return payload, signed


def test_docker_schema1_manifests(ecr):
    blob = b'schema1 layer'
    upload_blob(ecr, REPO, blob)
    doc = {'schemaVersion': 1, 'name': REPO, 'tag': 'old', 'architecture': 'amd64',
           'fsLayers': [{'blobSum': sha(blob)}, {'blobSum': sha(blob)}], 'history': [{'v1Compatibility': '{}'}] * 2}
    payload, signed = _signed_schema1(doc)
    pushed = ecr.put_image(repositoryName=REPO, imageManifest=signed, imageTag='signed')['image']
    # A signed schema 1 manifest's digest covers the payload without signatures.
    assert pushed['imageId']['imageDigest'] == sha(payload.encode())
    assert pushed['imageManifestMediaType'] == 'application/vnd.docker.distribution.manifest.v1+prettyjws'
    got = ecr.batch_get_image(repositoryName=REPO, imageIds=[{'imageTag': 'signed'}])['images'][0]
    assert got['imageManifest'] == signed
    doc['tag'] = 'plain'
    unsigned = json.dumps(doc)
    pushed = ecr.put_image(repositoryName=REPO, imageManifest=unsigned, imageTag='plain')['image']
    assert pushed['imageId']['imageDigest'] == sha(unsigned.encode())
    assert pushed['imageManifestMediaType'] == 'application/vnd.docker.distribution.manifest.v1+json'
    doc['fsLayers'] = [{'blobSum': sha(b'missing')}]
    with pytest.raises(ecr.exceptions.LayersNotFoundException):
        ecr.put_image(repositoryName=REPO, imageManifest=json.dumps(doc), imageTag='broken')


def test_batch_get_image_failures(ecr):
    digest, dummy = push_image(ecr, REPO, [b'layer'], tag='v1')
    other = sha(b'absent')
    response = ecr.batch_get_image(repositoryName=REPO, acceptedMediaTypes=ALL_TYPES, imageIds=[
        {'imageTag': 'v1'}, {}, {'imageDigest': 'sha256:xyz'}, {'imageTag': 'bad tag'}, {'imageTag': 'missing'},
        {'imageDigest': other}, {'imageTag': 'v1', 'imageDigest': other}, {'imageTag': 'v1', 'imageDigest': digest}])
    codes = [(f['imageId'], f['failureCode']) for f in response['failures']]
    assert codes == [
        ({}, 'MissingDigestAndTag'),
        ({'imageDigest': 'sha256:xyz'}, 'InvalidImageDigest'),
        ({'imageTag': 'bad tag'}, 'InvalidImageTag'),
        ({'imageTag': 'missing'}, 'ImageNotFound'),
        ({'imageDigest': other}, 'ImageNotFound'),
        ({'imageDigest': other, 'imageTag': 'v1'}, 'ImageTagDoesNotMatchDigest'),
    ]
    assert all(f['failureReason'] for f in response['failures'])
    assert [i['imageId'] for i in response['images']] == [{'imageDigest': digest, 'imageTag': 'v1'},
                                                          {'imageDigest': digest, 'imageTag': 'v1'}]


def test_conversion_by_tag_only(ecr):
    docker_digest, docker_manifest = push_image(ecr, REPO, [b'docker layer'], tag='docker', media_type=DOCKER_MANIFEST)
    oci_digest, oci_manifest = push_image(ecr, REPO, [b'oci layer'], tag='oci')

    got = ecr.batch_get_image(repositoryName=REPO, imageIds=[{'imageTag': 'docker'}], acceptedMediaTypes=[OCI_MANIFEST])['images'][0]
    assert got['imageManifestMediaType'] == OCI_MANIFEST
    converted = json.loads(got['imageManifest'])
    assert converted['config']['mediaType'] == 'application/vnd.oci.image.config.v1+json'
    assert converted['layers'][0]['mediaType'] == 'application/vnd.oci.image.layer.v1.tar+gzip'
    assert converted['layers'][0]['digest'] == json.loads(docker_manifest)['layers'][0]['digest']
    assert got['imageId'] == {'imageDigest': sha(got['imageManifest'].encode()), 'imageTag': 'docker'}
    assert got['imageId']['imageDigest'] != docker_digest

    got = ecr.batch_get_image(repositoryName=REPO, imageIds=[{'imageTag': 'oci'}], acceptedMediaTypes=[DOCKER_MANIFEST])['images'][0]
    assert got['imageManifestMediaType'] == DOCKER_MANIFEST
    assert json.loads(got['imageManifest'])['config']['mediaType'] == 'application/vnd.docker.container.image.v1+json'

    # By digest there is no conversion: the stored manifest comes back as is.
    for digest, manifest, media_type in ((docker_digest, docker_manifest, DOCKER_MANIFEST), (oci_digest, oci_manifest, OCI_MANIFEST)):
        other = OCI_MANIFEST if media_type == DOCKER_MANIFEST else DOCKER_MANIFEST
        got = ecr.batch_get_image(repositoryName=REPO, imageIds=[{'imageDigest': digest}], acceptedMediaTypes=[other])['images'][0]
        assert (got['imageManifest'], got['imageManifestMediaType'], got['imageId']) == (manifest, media_type, {'imageDigest': digest})


def test_describe_and_list_images_paginate_and_filter(ecr):
    digests = [push_image(ecr, REPO, [b'layer %d' % n], tag=f't{n}')[0] for n in range(3)]
    for n in range(2):
        digests.append(push_image(ecr, REPO, [b'untagged %d' % n])[0])
    seen, token = [], None
    while True:
        page = ecr.describe_images(repositoryName=REPO, maxResults=2, **({'nextToken': token} if token else {}))
        assert len(page['imageDetails']) <= 2
        seen += [d['imageDigest'] for d in page['imageDetails']]
        token = page.get('nextToken')
        if not token:
            break
    assert sorted(seen) == sorted(digests)
    tagged = ecr.describe_images(repositoryName=REPO, filter={'tagStatus': 'TAGGED'})['imageDetails']
    assert sorted(d['imageDigest'] for d in tagged) == sorted(digests[:3])
    paginator = ecr.get_paginator('list_images')
    listed = [i for page in paginator.paginate(repositoryName=REPO, PaginationConfig={'PageSize': 2}) for i in page['imageIds']]
    assert len(listed) == 5
    assert {'imageDigest': digests[0], 'imageTag': 't0'} in listed
    assert {'imageDigest': digests[4]} in listed
    with pytest.raises(ecr.exceptions.ImageNotFoundException) as excinfo:
        ecr.describe_images(repositoryName=REPO, imageIds=[{'imageTag': 'nope'}])
    assert excinfo.value.response['Error']['Message'] == (
        "The image with imageId {imageDigest:'null', imageTag:'nope'} does not exist within the repository with name "
        "'team/app' in the registry with id '123456789012'")
    with pytest.raises(ecr.exceptions.InvalidParameterException):
        ecr.describe_images(repositoryName=REPO, imageIds=[{'imageTag': 't0'}], maxResults=1)
    with pytest.raises(ecr.exceptions.InvalidParameterException):
        ecr.list_images(repositoryName=REPO, nextToken='garbage')


def test_batch_delete_image(ecr):
    child, child_manifest = push_image(ecr, REPO, [b'child'], tag='child')
    ecr.put_image(repositoryName=REPO, imageManifest=child_manifest, imageTag='child2')
    index = json.dumps({'schemaVersion': 2, 'mediaType': OCI_INDEX, 'manifests': [
        {'mediaType': OCI_MANIFEST, 'digest': child, 'size': len(child_manifest)}]})
    top = ecr.put_image(repositoryName=REPO, imageManifest=index, imageTag='top')['image']['imageId']['imageDigest']
    lone, dummy = push_image(ecr, REPO, [b'lone'], tag='lone')

    # Removing one of two tags only untags.
    response = ecr.batch_delete_image(repositoryName=REPO, imageIds=[{'imageTag': 'child2'}])
    assert (response['imageIds'], response['failures']) == ([{'imageDigest': child, 'imageTag': 'child2'}], [])
    # A child of an index cannot go by digest while the index exists.
    response = ecr.batch_delete_image(repositoryName=REPO, imageIds=[{'imageDigest': child}, {'imageTag': 'gone'}, {}])
    assert [f['failureCode'] for f in response['failures']] == ['ImageReferencedByManifestList', 'ImageNotFound', 'MissingDigestAndTag']
    # The last tag takes the image with it.
    response = ecr.batch_delete_image(repositoryName=REPO, imageIds=[{'imageTag': 'lone'}, {'imageDigest': top}])
    assert response['imageIds'] == [{'imageDigest': lone, 'imageTag': 'lone'}, {'imageDigest': top, 'imageTag': 'top'}]
    remaining = ecr.list_images(repositoryName=REPO)['imageIds']
    assert remaining == [{'imageDigest': child, 'imageTag': 'child'}]
    ecr.batch_delete_image(repositoryName=REPO, imageIds=[{'imageDigest': child}])
    assert ecr.list_images(repositoryName=REPO)['imageIds'] == []


def test_image_sizes(ecr):
    small, small_manifest = push_image(ecr, REPO, [b'x' * 10, b'y' * 20])
    big, big_manifest = push_image(ecr, REPO, [b'z' * 100])
    index = json.dumps({'schemaVersion': 2, 'mediaType': DOCKER_LIST, 'manifests': [
        {'mediaType': OCI_MANIFEST, 'digest': small, 'size': len(small_manifest)},
        {'mediaType': OCI_MANIFEST, 'digest': big, 'size': len(big_manifest)}]})
    top = ecr.put_image(repositoryName=REPO, imageManifest=index, imageTag='multi')['image']['imageId']['imageDigest']
    sizes = {d['imageDigest']: d['imageSizeInBytes'] for d in ecr.describe_images(repositoryName=REPO)['imageDetails']}
    assert sizes == {small: 30, big: 100, top: 100}
