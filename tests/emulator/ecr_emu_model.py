# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the emulator knows about the ECR API: wire constants, the error type,
media types, and the request constraints of the operations it implements.

The constraint table below is written by hand from the ECR service model
(botocore ``data/ecr/2015-09-21/service-2.json``) so that the server needs
nothing outside the standard library; ``tests/unit/emulator`` checks it
against the model that ships with botocore.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Dict, List, Optional

TARGET_PREFIX = 'AmazonEC2ContainerRegistry_V20150921'
JSON_CONTENT_TYPE = 'application/x-amz-json-1.1'

MIB = 1024 * 1024
# ECR's layer part rules (service model LayerPartBlob max, ECR quotas page).
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 20 * MIB
# What InitiateLayerUpload returns as partSize on ECR.
ECR_PART_SIZE = 20 * MIB
MAX_MANIFEST_SIZE = 4 * MIB

DOCKER_SCHEMA1 = 'application/vnd.docker.distribution.manifest.v1+json'
DOCKER_SCHEMA1_SIGNED = 'application/vnd.docker.distribution.manifest.v1+prettyjws'
DOCKER_SCHEMA2 = 'application/vnd.docker.distribution.manifest.v2+json'
DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json'
OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
OCI_INDEX = 'application/vnd.oci.image.index.v1+json'

SCHEMA1_TYPES = (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED)
IMAGE_MANIFEST_TYPES = (DOCKER_SCHEMA2, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
SUPPORTED_MANIFEST_TYPES = SCHEMA1_TYPES + IMAGE_MANIFEST_TYPES + INDEX_TYPES

DOCKER_CONFIG = 'application/vnd.docker.container.image.v1+json'
OCI_CONFIG = 'application/vnd.oci.image.config.v1+json'
DOCKER_LAYER_GZIP = 'application/vnd.docker.image.rootfs.diff.tar.gzip'
DOCKER_LAYER_TAR = 'application/vnd.docker.image.rootfs.diff.tar'
DOCKER_FOREIGN_LAYER = 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip'
OCI_LAYER_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip'
OCI_LAYER_TAR = 'application/vnd.oci.image.layer.v1.tar'
OCI_FOREIGN_LAYER_GZIP = 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip'
OCI_FOREIGN_LAYER_TAR = 'application/vnd.oci.image.layer.nondistributable.v1.tar'
OCI_FOREIGN_LAYER_ZSTD = 'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd'
FOREIGN_LAYER_TYPES = (DOCKER_FOREIGN_LAYER, OCI_FOREIGN_LAYER_GZIP, OCI_FOREIGN_LAYER_TAR, OCI_FOREIGN_LAYER_ZSTD)

DIGEST_RE = re.compile(r'[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+')
SHA256_DIGEST_RE = re.compile(r'sha256:[a-f0-9]{64}')
# ECR does not document a tag grammar beyond the model's 1..300 characters;
# the emulator applies the OCI tag grammar stretched to that length, so a tag
# ECR would refuse in a registry reference is also refused here.
IMAGE_TAG_RE = re.compile(r'[A-Za-z0-9_][A-Za-z0-9._-]{0,299}')


class ApiError(Exception):
    """An error answered in the JSON 1.1 error format: {"__type", "message"}."""

    def __init__(self, code: str, message: str, status: int = 400, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.extra = extra

    def body(self) -> Dict[str, Any]:
        doc = {'__type': self.code, 'message': self.message}
        doc.update(self.extra)
        return doc


def invalid_parameter(name: str, constraint: str) -> ApiError:
    """ECR's wording for a parameter that breaks a constraint."""
    return ApiError('InvalidParameterException',
                    f"Invalid parameter at '{name}' failed to satisfy constraint: '{constraint}'")


def serialization_error(message: str) -> ApiError:
    return ApiError('SerializationException', message)


# --- request constraints ----------------------------------------------------
#
# Each shape: type plus the constraints the model declares.  Structures list
# their members (member name -> shape name) and required members.  Operation
# inputs are the ``<Operation>Request`` structures.

REPOSITORY_NAME_PATTERN = r'[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*'
UPLOAD_ID_PATTERN = r'[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}'

SHAPES: Dict[str, Dict[str, Any]] = {
    'RegistryId': {'type': 'string', 'pattern': '[0-9]{12}'},
    'RepositoryName': {'type': 'string', 'min': 2, 'max': 256, 'pattern': REPOSITORY_NAME_PATTERN},
    'ImageTag': {'type': 'string', 'min': 1, 'max': 300},
    'ImageDigest': {'type': 'string'},
    'ImageManifest': {'type': 'string', 'min': 1, 'max': MAX_MANIFEST_SIZE},
    'MediaType': {'type': 'string'},
    'LayerDigest': {'type': 'string', 'pattern': r'[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+'},
    'BatchedOperationLayerDigest': {'type': 'string', 'min': 0, 'max': 1000},
    'UploadId': {'type': 'string', 'pattern': UPLOAD_ID_PATTERN},
    'PartSize': {'type': 'long', 'min': 0},
    'LayerPartBlob': {'type': 'blob', 'min': 0, 'max': MAX_PART_SIZE},
    'MaxResults': {'type': 'integer', 'min': 1, 'max': 1000},
    'NextToken': {'type': 'string'},
    'ForceFlag': {'type': 'boolean'},
    'ScanOnPushFlag': {'type': 'boolean'},
    'TagKey': {'type': 'string'},
    'TagValue': {'type': 'string'},
    'ImageTagMutability': {'type': 'string', 'enum': ['MUTABLE', 'IMMUTABLE', 'IMMUTABLE_WITH_EXCLUSION', 'MUTABLE_WITH_EXCLUSION']},
    'ImageTagMutabilityExclusionFilterType': {'type': 'string', 'enum': ['WILDCARD']},
    'ImageTagMutabilityExclusionFilterValue': {'type': 'string', 'min': 1, 'max': 128, 'pattern': '^[0-9a-zA-Z._*-]{1,128}$'},
    'EncryptionType': {'type': 'string', 'enum': ['AES256', 'KMS', 'KMS_DSSE']},
    'KmsKey': {'type': 'string', 'min': 1, 'max': 2048},
    'TagStatus': {'type': 'string', 'enum': ['TAGGED', 'UNTAGGED', 'ANY']},
    'ImageStatusFilter': {'type': 'string', 'enum': ['ACTIVE', 'ARCHIVED', 'ACTIVATING', 'ANY']},
    'ImageIdentifier': {'type': 'structure', 'members': {'imageDigest': 'ImageDigest', 'imageTag': 'ImageTag'}},
    'ImageIdentifierList': {'type': 'list', 'member': 'ImageIdentifier', 'min': 1, 'max': 100},
    'MediaTypeList': {'type': 'list', 'member': 'MediaType', 'min': 1, 'max': 100},
    'BatchedOperationLayerDigestList': {'type': 'list', 'member': 'BatchedOperationLayerDigest', 'min': 1, 'max': 100},
    'LayerDigestList': {'type': 'list', 'member': 'LayerDigest', 'min': 1, 'max': 100},
    'RepositoryNameList': {'type': 'list', 'member': 'RepositoryName', 'min': 1, 'max': 100},
    'GetAuthorizationTokenRegistryIdList': {'type': 'list', 'member': 'RegistryId', 'min': 1, 'max': 10},
    'Tag': {'type': 'structure', 'required': ['Key', 'Value'], 'members': {'Key': 'TagKey', 'Value': 'TagValue'}},
    'TagList': {'type': 'list', 'member': 'Tag'},
    'ImageTagMutabilityExclusionFilter': {'type': 'structure', 'required': ['filterType', 'filter'],
                                          'members': {'filterType': 'ImageTagMutabilityExclusionFilterType',
                                                      'filter': 'ImageTagMutabilityExclusionFilterValue'}},
    'ImageTagMutabilityExclusionFilters': {'type': 'list', 'member': 'ImageTagMutabilityExclusionFilter', 'min': 1, 'max': 5},
    'ImageScanningConfiguration': {'type': 'structure', 'members': {'scanOnPush': 'ScanOnPushFlag'}},
    'EncryptionConfiguration': {'type': 'structure', 'required': ['encryptionType'],
                                'members': {'encryptionType': 'EncryptionType', 'kmsKey': 'KmsKey'}},
    'DescribeImagesFilter': {'type': 'structure', 'members': {'tagStatus': 'TagStatus', 'imageStatus': 'ImageStatusFilter'}},
    'ListImagesFilter': {'type': 'structure', 'members': {'tagStatus': 'TagStatus', 'imageStatus': 'ImageStatusFilter'}},
    # operation inputs
    'CreateRepositoryRequest': {'type': 'structure', 'required': ['repositoryName'], 'members': {
        'registryId': 'RegistryId', 'repositoryName': 'RepositoryName', 'tags': 'TagList',
        'imageTagMutability': 'ImageTagMutability', 'imageTagMutabilityExclusionFilters': 'ImageTagMutabilityExclusionFilters',
        'imageScanningConfiguration': 'ImageScanningConfiguration', 'encryptionConfiguration': 'EncryptionConfiguration'}},
    'DescribeRepositoriesRequest': {'type': 'structure', 'members': {
        'registryId': 'RegistryId', 'repositoryNames': 'RepositoryNameList', 'nextToken': 'NextToken', 'maxResults': 'MaxResults'}},
    'DeleteRepositoryRequest': {'type': 'structure', 'required': ['repositoryName'], 'members': {
        'registryId': 'RegistryId', 'repositoryName': 'RepositoryName', 'force': 'ForceFlag'}},
    'PutImageRequest': {'type': 'structure', 'required': ['repositoryName', 'imageManifest'], 'members': {
        'registryId': 'RegistryId', 'repositoryName': 'RepositoryName', 'imageManifest': 'ImageManifest',
        'imageManifestMediaType': 'MediaType', 'imageTag': 'ImageTag', 'imageDigest': 'ImageDigest'}},
    'BatchGetImageRequest': {'type': 'structure', 'required': ['repositoryName', 'imageIds'], 'members': {
        'registryId': 'RegistryId', 'repositoryName': 'RepositoryName', 'imageIds': 'ImageIdentifierList',
        'acceptedMediaTypes': 'MediaTypeList'}},
    'DescribeImagesRequest': {'type': 'structure', 'required': ['repositoryName'], 'members': {
        'registryId': 'RegistryId', 'repositoryName': 'RepositoryName', 'imageIds': 'ImageIdentifierList',
        'nextToken': 'NextToken', 'maxResults': 'MaxResults', 'filter': 'DescribeImagesFilter'}},
    'BatchDeleteImageRequest': {'type': 'structure', 'required': ['repositoryName', 'imageIds'], 'members': {
        'registryId': 'RegistryId', 'repositoryName': 'RepositoryName', 'imageIds': 'ImageIdentifierList'}},
    'ListImagesRequest': {'type': 'structure', 'required': ['repositoryName'], 'members': {
        'registryId': 'RegistryId', 'repositoryName': 'RepositoryName', 'nextToken': 'NextToken',
        'maxResults': 'MaxResults', 'filter': 'ListImagesFilter'}},
    'GetDownloadUrlForLayerRequest': {'type': 'structure', 'required': ['repositoryName', 'layerDigest'], 'members': {
        'registryId': 'RegistryId', 'repositoryName': 'RepositoryName', 'layerDigest': 'LayerDigest'}},
    'BatchCheckLayerAvailabilityRequest': {'type': 'structure', 'required': ['repositoryName', 'layerDigests'], 'members': {
        'registryId': 'RegistryId', 'repositoryName': 'RepositoryName', 'layerDigests': 'BatchedOperationLayerDigestList'}},
    'InitiateLayerUploadRequest': {'type': 'structure', 'required': ['repositoryName'], 'members': {
        'registryId': 'RegistryId', 'repositoryName': 'RepositoryName'}},
    'UploadLayerPartRequest': {'type': 'structure',
                               'required': ['repositoryName', 'uploadId', 'partFirstByte', 'partLastByte', 'layerPartBlob'],
                               'members': {'registryId': 'RegistryId', 'repositoryName': 'RepositoryName', 'uploadId': 'UploadId',
                                           'partFirstByte': 'PartSize', 'partLastByte': 'PartSize', 'layerPartBlob': 'LayerPartBlob'}},
    'CompleteLayerUploadRequest': {'type': 'structure', 'required': ['repositoryName', 'uploadId', 'layerDigests'], 'members': {
        'registryId': 'RegistryId', 'repositoryName': 'RepositoryName', 'uploadId': 'UploadId', 'layerDigests': 'LayerDigestList'}},
    'GetAuthorizationTokenRequest': {'type': 'structure', 'members': {'registryIds': 'GetAuthorizationTokenRegistryIdList'}},
}

OPERATIONS = (
    'CreateRepository', 'DescribeRepositories', 'DeleteRepository', 'PutImage', 'BatchGetImage', 'DescribeImages',
    'BatchDeleteImage', 'ListImages', 'GetDownloadUrlForLayer', 'BatchCheckLayerAvailability', 'InitiateLayerUpload',
    'UploadLayerPart', 'CompleteLayerUpload', 'GetAuthorizationToken',
)

_PATTERNS: Dict[str, 're.Pattern[str]'] = {}


def _pattern(text: str) -> 're.Pattern[str]':
    compiled = _PATTERNS.get(text)
    if compiled is None:
        compiled = _PATTERNS[text] = re.compile(text)
    return compiled


def validate_request(operation: str, params: Any) -> Dict[str, Any]:
    """Check a decoded request body against the operation's input shape.

    Returns the parameters with blobs decoded to bytes.  Type mismatches are
    SerializationException (the JSON did not fit the shape), constraint
    violations InvalidParameterException naming the parameter.
    """
    if not isinstance(params, dict):
        raise serialization_error('Start of structure or map found where not expected.')
    return _validate(f'{operation}Request', params, operation)


def _validate(shape_name: str, value: Any, name: str) -> Any:
    shape = SHAPES[shape_name]
    kind = shape['type']
    if kind == 'structure':
        if not isinstance(value, dict):
            raise serialization_error(f"Expected a structure for '{name}'")
        out = {}
        for required in shape.get('required', ()):
            if value.get(required) is None:
                raise invalid_parameter(required, 'must not be null')
        for member, member_shape in shape['members'].items():
            if value.get(member) is not None:
                out[member] = _validate(member_shape, value[member], member)
        return out
    if kind == 'list':
        if not isinstance(value, list):
            raise serialization_error(f"Expected a list for '{name}'")
        _check_length(name, len(value), shape)
        return [_validate(shape['member'], item, name) for item in value]
    if kind == 'string':
        if not isinstance(value, str):
            raise serialization_error(f"Expected a string for '{name}'")
        _check_length(name, len(value), shape)
        if 'enum' in shape and value not in shape['enum']:
            raise invalid_parameter(name, f"must satisfy enum value set: [{', '.join(shape['enum'])}]")
        if 'pattern' in shape and not _pattern(shape['pattern']).fullmatch(value):
            raise invalid_parameter(name, f"must satisfy regular expression '{shape['pattern']}'")
        return value
    if kind in ('integer', 'long'):
        if isinstance(value, bool) or not isinstance(value, int):
            raise serialization_error(f"Expected a number for '{name}'")
        if 'min' in shape and value < shape['min']:
            raise invalid_parameter(name, f"must be greater than or equal to {shape['min']}")
        if 'max' in shape and value > shape['max']:
            raise invalid_parameter(name, f"must be less than or equal to {shape['max']}")
        return value
    if kind == 'boolean':
        if not isinstance(value, bool):
            raise serialization_error(f"Expected a boolean for '{name}'")
        return value
    if kind == 'blob':
        if not isinstance(value, str):
            raise serialization_error(f"Expected base64 data for '{name}'")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise serialization_error(f"Invalid base64 data for '{name}'") from None
        _check_length(name, len(data), shape)
        return data
    raise AssertionError(f'unknown shape type {kind}')  # pragma: no cover - table error


def _check_length(name: str, length: int, shape: Dict[str, Any]) -> None:
    if 'min' in shape and length < shape['min']:
        raise invalid_parameter(name, f"must have length greater than or equal to {shape['min']}")
    if 'max' in shape and length > shape['max']:
        raise invalid_parameter(name, f"must have length less than or equal to {shape['max']}")


def partition_for(region: str) -> str:
    if region.startswith('cn-'):
        return 'aws-cn'
    if region.startswith('us-gov-'):
        return 'aws-us-gov'
    if region.startswith('us-iso-'):
        return 'aws-iso'
    if region.startswith('us-isob-'):
        return 'aws-iso-b'
    return 'aws'


def dns_suffix_for(region: str) -> str:
    return 'amazonaws.com.cn' if region.startswith('cn-') else 'amazonaws.com'


def image_id(digest: Optional[str], tag: Optional[str]) -> Dict[str, str]:
    out = {}
    if digest is not None:
        out['imageDigest'] = digest
    if tag is not None:
        out['imageTag'] = tag
    return out


def describe_image_id(identifier: Dict[str, Any]) -> str:
    """ECR prints image ids in messages as {imageDigest:'x', imageTag:'y'}."""
    return "{imageDigest:'%s', imageTag:'%s'}" % (identifier.get('imageDigest', 'null'), identifier.get('imageTag', 'null'))


def unique(items: List[Any]) -> List[Any]:
    seen = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen
