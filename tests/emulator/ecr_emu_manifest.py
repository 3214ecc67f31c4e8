# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Manifest handling as ECR does it on PutImage and BatchGetImage: media type
resolution, digests over the exact bytes, the blobs and child manifests a
manifest references, and the Docker schema 2 <-> OCI conversion ECR applies
when an image is requested by tag in a format the caller does not accept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any, Dict, List, NamedTuple, Optional

from ecr_emu_model import (
    DOCKER_CONFIG, DOCKER_FOREIGN_LAYER, DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR, DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED,
    DOCKER_SCHEMA2, FOREIGN_LAYER_TYPES, INDEX_TYPES, OCI_CONFIG, OCI_FOREIGN_LAYER_GZIP, OCI_LAYER_GZIP, OCI_LAYER_TAR,
    OCI_MANIFEST, SCHEMA1_TYPES, SUPPORTED_MANIFEST_TYPES, invalid_parameter,
)

# ECR's answer for a manifest it cannot read, including one whose media type
# is neither in the request nor in the document (aws-cli#8620, aws-sdk#193).
INVALID_JSON = 'Invalid JSON syntax'

DOCKER_TO_OCI = {
    DOCKER_CONFIG: OCI_CONFIG,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    DOCKER_LAYER_TAR: OCI_LAYER_TAR,
    DOCKER_FOREIGN_LAYER: OCI_FOREIGN_LAYER_GZIP,
}
OCI_TO_DOCKER = {value: key for key, value in DOCKER_TO_OCI.items()}


class Descriptor(NamedTuple):
    digest: str
    size: int
    media_type: Optional[str]


class ParsedManifest(NamedTuple):
    media_type: str
    digest: str
    document: Dict[str, Any]
    # Blobs that must already be layers of the repository (config + layers,
    # foreign layers excluded).
    required_blobs: List[Descriptor]
    # Every blob the manifest references, foreign ones included.
    all_blobs: List[Descriptor]
    # Child manifests (indexes and manifest lists only).
    children: List[Descriptor]
    artifact_media_type: Optional[str]
    subject: Optional[str]


def sha256_digest(data: bytes) -> str:
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + '=' * (-len(text) % 4))


def schema1_payload(raw: bytes, document: Dict[str, Any]) -> bytes:
    """The bytes a signed schema 1 manifest's digest covers: the JWS payload,
    i.e. the document with its "signatures" block cut out (formatLength and
    formatTail in the protected header say where)."""
    signatures = document.get('signatures')
    if not signatures:
        return raw
    try:
        protected = json.loads(_b64url(signatures[0]['protected']))
        length = int(protected['formatLength'])
        tail = _b64url(protected['formatTail'])
    except (KeyError, IndexError, TypeError, ValueError, binascii.Error):
        raise invalid_parameter('ImageManifest', 'Invalid signed manifest: unreadable protected header') from None
    if length > len(raw):
        raise invalid_parameter('ImageManifest', 'Invalid signed manifest: formatLength out of range')
    return raw[:length] + tail


def _descriptor(obj: Any) -> Descriptor:
    if not isinstance(obj, dict) or not isinstance(obj.get('digest'), str):
        raise invalid_parameter('ImageManifest', INVALID_JSON)
    size = obj.get('size', 0)
    if isinstance(size, bool) or not isinstance(size, int):
        raise invalid_parameter('ImageManifest', INVALID_JSON)
    media_type = obj.get('mediaType')
    return Descriptor(obj['digest'], size, media_type if isinstance(media_type, str) else None)


def _is_foreign(obj: Dict[str, Any]) -> bool:
    return obj.get('mediaType') in FOREIGN_LAYER_TYPES or bool(obj.get('urls'))


def parse_manifest(text: str, media_type_param: Optional[str]) -> ParsedManifest:
    """Parse and check a PutImage manifest; raise ApiError like ECR does."""
    raw = text.encode('utf-8')
    try:
        document = json.loads(text)
    except ValueError:
        raise invalid_parameter('ImageManifest', INVALID_JSON) from None
    if not isinstance(document, dict):
        raise invalid_parameter('ImageManifest', INVALID_JSON)
    declared = document.get('mediaType')
    if declared is not None and not isinstance(declared, str):
        raise invalid_parameter('ImageManifest', INVALID_JSON)
    schema_version = document.get('schemaVersion')
    media_type = media_type_param or declared
    if media_type is None and schema_version == 1:
        # Schema 1 documents carry no mediaType; the signature block tells
        # the signed variant apart.
        media_type = DOCKER_SCHEMA1_SIGNED if document.get('signatures') else DOCKER_SCHEMA1
    if media_type is None:
        raise invalid_parameter('ImageManifest', INVALID_JSON)
    if media_type_param and declared and media_type_param != declared:
        raise invalid_parameter('imageManifestMediaType', f"must match the mediaType '{declared}' in the manifest")
    if media_type not in SUPPORTED_MANIFEST_TYPES:
        raise invalid_parameter('imageManifestMediaType', f"must be one of the supported manifest media types, not '{media_type}'")

    required: List[Descriptor] = []
    every: List[Descriptor] = []
    children: List[Descriptor] = []
    artifact_type = None
    subject = None
    if media_type in SCHEMA1_TYPES:
        if schema_version != 1 or not isinstance(document.get('fsLayers'), list):
            raise invalid_parameter('ImageManifest', INVALID_JSON)
        for layer in document['fsLayers']:
            if not isinstance(layer, dict) or not isinstance(layer.get('blobSum'), str):
                raise invalid_parameter('ImageManifest', INVALID_JSON)
            descriptor = Descriptor(layer['blobSum'], 0, None)
            every.append(descriptor)
            required.append(descriptor)
        digest = sha256_digest(schema1_payload(raw, document) if media_type == DOCKER_SCHEMA1_SIGNED else raw)
    elif media_type in INDEX_TYPES:
        if schema_version != 2 or not isinstance(document.get('manifests'), list):
            raise invalid_parameter('ImageManifest', INVALID_JSON)
        children = [_descriptor(item) for item in document['manifests']]
        digest = sha256_digest(raw)
    else:
        if schema_version != 2 or not isinstance(document.get('layers'), list):
            raise invalid_parameter('ImageManifest', INVALID_JSON)
        config = _descriptor(document.get('config'))
        every.append(config)
        required.append(config)
        for layer in document['layers']:
            descriptor = _descriptor(layer)
            every.append(descriptor)
            if not _is_foreign(layer):
                required.append(descriptor)
        artifact_type = document.get('artifactType') or config.media_type
        digest = sha256_digest(raw)
    if isinstance(document.get('subject'), dict):
        subject = _descriptor(document['subject']).digest
    return ParsedManifest(media_type, digest, document, required, every, children, artifact_type, subject)


def _convert_descriptor(obj: Dict[str, Any], mapping: Dict[str, str]) -> Optional[Dict[str, Any]]:
    media_type = obj.get('mediaType')
    if media_type not in mapping:
        return None
    out = dict(obj)
    out['mediaType'] = mapping[media_type]
    return out


def convert_manifest(document: Dict[str, Any], source_type: str, target_type: str) -> Optional[str]:
    """Convert between a Docker schema 2 manifest and an OCI image manifest.

    Returns the new manifest text, or None when the conversion is not
    possible (other types, or a config or layer type with no counterpart).
    The emulator writes Docker manifests with 3-space indentation (the
    Docker distribution style) and OCI manifests compactly; ECR's exact
    serialisation of converted manifests is not documented.
    """
    if (source_type, target_type) == (DOCKER_SCHEMA2, OCI_MANIFEST):
        mapping, indent = DOCKER_TO_OCI, None
    elif (source_type, target_type) == (OCI_MANIFEST, DOCKER_SCHEMA2):
        if 'subject' in document or 'artifactType' in document:
            return None
        mapping, indent = OCI_TO_DOCKER, 3
    else:
        return None
    config = _convert_descriptor(document.get('config') or {}, mapping)
    if config is None:
        return None
    layers = []
    for layer in document.get('layers') or []:
        converted = _convert_descriptor(layer, mapping)
        if converted is None:
            return None
        layers.append(converted)
    out: Dict[str, Any] = {'schemaVersion': 2, 'mediaType': target_type, 'config': config, 'layers': layers}
    if target_type == OCI_MANIFEST and isinstance(document.get('annotations'), dict):
        out['annotations'] = document['annotations']
    if indent is None:
        return json.dumps(out, separators=(',', ':'))
    return json.dumps(out, indent=indent)


def image_size(parsed_blobs: List[Descriptor], layer_sizes: Dict[str, int]) -> int:
    """imageSizeInBytes of an image manifest: the sum of its layer sizes
    (config excluded), using stored sizes where the descriptor has none."""
    total = 0
    for descriptor in parsed_blobs:
        total += descriptor.size or layer_sizes.get(descriptor.digest, 0)
    return total
