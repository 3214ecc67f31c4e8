# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ECR operations: repository, image and layer rules, errors included.

Every method takes the request context (region from the SigV4 scope,
account id, base URL for blob links) and the validated parameters, and
returns the response document or raises ApiError.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from ecr_emu_manifest import convert_manifest, image_size, parse_manifest, sha256_digest
from ecr_emu_model import (
    DIGEST_RE, ECR_PART_SIZE, IMAGE_TAG_RE, INDEX_TYPES, MIN_PART_SIZE, SCHEMA1_TYPES, ApiError, describe_image_id,
    dns_suffix_for, image_id, invalid_parameter, partition_for, unique,
)
from ecr_emu_sigv4 import BlobUrlSigner
from ecr_emu_store import Store

DEFAULT_PAGE_SIZE = 100
AUTH_TOKEN_LIFETIME = 12 * 3600


class RequestContext(NamedTuple):
    region: str
    account_id: str
    base_url: str


def repository_not_found(name: str, registry_id: str) -> ApiError:
    return ApiError('RepositoryNotFoundException',
                    f"The repository with name '{name}' does not exist in the registry with id '{registry_id}'")


def _wildcard_match(pattern: str, tag: str) -> bool:
    return re.fullmatch('.*'.join(re.escape(part) for part in pattern.split('*')), tag) is not None


def tag_is_immutable(repo: Dict[str, Any], tag: str) -> bool:
    mode = repo.get('imageTagMutability', 'MUTABLE')
    matched = any(_wildcard_match(item['filter'], tag) for item in repo.get('imageTagMutabilityExclusionFilters') or [])
    if mode == 'IMMUTABLE':
        return True
    if mode == 'IMMUTABLE_WITH_EXCLUSION':
        return not matched
    if mode == 'MUTABLE_WITH_EXCLUSION':
        return matched
    return False


class Operations:
    def __init__(self, store: Store, signer: BlobUrlSigner, url_ttl: int, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.signer = signer
        self.url_ttl = url_ttl
        self.clock = clock

    def dispatch(self, operation: str, ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
        # CreateRepository -> op_create_repository
        handler = getattr(self, 'op_' + re.sub('(?<!^)(?=[A-Z])', '_', operation).lower())
        return handler(ctx, params)

    # -- helpers -------------------------------------------------------------

    @staticmethod
    def _registry(ctx: RequestContext, params: Dict[str, Any]) -> str:
        return params.get('registryId') or ctx.account_id

    def _repo(self, ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
        registry_id = self._registry(ctx, params)
        repo = self.store.get_repo(ctx.region, registry_id, params['repositoryName'])
        if repo is None:
            raise repository_not_found(params['repositoryName'], registry_id)
        return repo

    @staticmethod
    def _describe_repo(repo: Dict[str, Any]) -> Dict[str, Any]:
        region, registry_id, name = repo['region'], repo['registryId'], repo['repositoryName']
        out = {
            'repositoryArn': f'arn:{partition_for(region)}:ecr:{region}:{registry_id}:repository/{name}',
            'registryId': registry_id,
            'repositoryName': name,
            'repositoryUri': f'{registry_id}.dkr.ecr.{region}.{dns_suffix_for(region)}/{name}',
            'createdAt': repo['createdAt'],
            'imageTagMutability': repo['imageTagMutability'],
            'imageScanningConfiguration': repo['imageScanningConfiguration'],
            'encryptionConfiguration': repo['encryptionConfiguration'],
        }
        if repo.get('imageTagMutabilityExclusionFilters'):
            out['imageTagMutabilityExclusionFilters'] = repo['imageTagMutabilityExclusionFilters']
        return out

    @staticmethod
    def _tags_of(repo: Dict[str, Any]) -> Dict[str, List[str]]:
        by_digest: Dict[str, List[str]] = {}
        for tag, digest in repo['imageTags'].items():
            by_digest.setdefault(digest, []).append(tag)
        return by_digest

    @staticmethod
    def _encode_token(scope: str, index: int) -> str:
        return base64.urlsafe_b64encode(json.dumps({'s': scope, 'i': index}).encode('utf-8')).decode('ascii')

    @staticmethod
    def _decode_token(token: str, scope: str) -> int:
        try:
            doc = json.loads(base64.urlsafe_b64decode(token.encode('ascii')))
            if doc['s'] == scope and isinstance(doc['i'], int) and doc['i'] >= 0:
                return doc['i']
        except (ValueError, KeyError, TypeError, binascii.Error, UnicodeEncodeError):
            pass
        raise invalid_parameter('nextToken', 'Invalid NextToken')

    def _page(self, items: List[Any], params: Dict[str, Any], scope: str) -> Tuple[List[Any], Optional[str]]:
        start = self._decode_token(params['nextToken'], scope) if 'nextToken' in params else 0
        end = start + params.get('maxResults', DEFAULT_PAGE_SIZE)
        return items[start:end], (self._encode_token(scope, end) if end < len(items) else None)

    def _resolve(self, repo: Dict[str, Any], ident: Dict[str, Any]) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
        """Find the image an ImageIdentifier names; (digest, None) or (None, failure)."""
        digest, tag = ident.get('imageDigest'), ident.get('imageTag')

        def failure(code: str, reason: str) -> Tuple[None, Dict[str, Any]]:
            return None, {'imageId': image_id(digest, tag), 'failureCode': code, 'failureReason': reason}

        if digest is None and tag is None:
            return failure('MissingDigestAndTag', 'Invalid request parameters: both tag and digest cannot be null')
        if digest is not None and not DIGEST_RE.fullmatch(digest):
            return failure('InvalidImageDigest', f"Invalid request parameters: image digest should satisfy the regex '{DIGEST_RE.pattern}'")
        if tag is not None and not IMAGE_TAG_RE.fullmatch(tag):
            return failure('InvalidImageTag', f"Invalid request parameters: image tag should satisfy the regex '{IMAGE_TAG_RE.pattern}'")
        if tag is not None:
            found = repo['imageTags'].get(tag)
            if found is None:
                return failure('ImageNotFound', 'Requested image not found')
            if digest is not None and digest != found:
                return failure('ImageTagDoesNotMatchDigest', 'Invalid request parameters: given tag and digest do not match')
            return found, None
        if digest not in repo['images']:
            return failure('ImageNotFound', 'Requested image not found')
        return digest, None

    def _referenced_blobs(self, repo: Dict[str, Any]) -> set:
        referenced = set()
        for record in repo['images'].values():
            referenced.update(record.get('blobs', ()))
        return referenced

    def _referencing_indexes(self, repo: Dict[str, Any], digest: str) -> List[str]:
        return sorted(parent for parent, record in repo['images'].items() if digest in record.get('children', ()))

    # -- repositories --------------------------------------------------------

    def op_create_repository(self, ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
        registry_id = self._registry(ctx, params)
        name = params['repositoryName']
        tags = params.get('tags', [])
        if len(tags) > 50:
            raise ApiError('TooManyTagsException', f'The repository can have a maximum of 50 tags; {len(tags)} were given')
        for tag in tags:
            if not 1 <= len(tag['Key']) <= 128 or len(tag['Value']) > 256 or tag['Key'].lower().startswith('aws:'):
                raise ApiError('InvalidTagParameterException',
                               'Tag keys can have a maximum character length of 128 characters, and tag values can have a maximum '
                               "length of 256 characters; the prefix 'aws:' is reserved.")
        mutability = params.get('imageTagMutability', 'MUTABLE')
        filters = params.get('imageTagMutabilityExclusionFilters')
        if mutability.endswith('_WITH_EXCLUSION') and not filters:
            raise invalid_parameter('imageTagMutabilityExclusionFilters', f'must be specified when imageTagMutability is {mutability}')
        if filters and not mutability.endswith('_WITH_EXCLUSION'):
            raise invalid_parameter('imageTagMutabilityExclusionFilters', 'can only be specified with an _WITH_EXCLUSION imageTagMutability')
        repo = {
            'region': ctx.region,
            'registryId': registry_id,
            'repositoryName': name,
            'createdAt': self.clock(),
            'imageTagMutability': mutability,
            'imageScanningConfiguration': {'scanOnPush': params.get('imageScanningConfiguration', {}).get('scanOnPush', False)},
            'encryptionConfiguration': params.get('encryptionConfiguration', {'encryptionType': 'AES256'}),
            'tags': tags,
            'layers': {},
            'images': {},
            'imageTags': {},
        }
        if filters:
            repo['imageTagMutabilityExclusionFilters'] = filters
        with self.store.lock:
            if self.store.get_repo(ctx.region, registry_id, name) is not None:
                raise ApiError('RepositoryAlreadyExistsException',
                               f"The repository with name '{name}' already exists in the registry with id '{registry_id}'")
            self.store.save_repo(repo)
        return {'repository': self._describe_repo(repo)}

    def op_describe_repositories(self, ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
        registry_id = self._registry(ctx, params)
        names = params.get('repositoryNames')
        if names is not None:
            if 'maxResults' in params or 'nextToken' in params:
                raise invalid_parameter('maxResults', 'cannot be used when repositoryNames is specified')
            repos = []
            for name in unique(names):
                repo = self.store.get_repo(ctx.region, registry_id, name)
                if repo is None:
                    raise repository_not_found(name, registry_id)
                repos.append(repo)
            return {'repositories': [self._describe_repo(repo) for repo in repos]}
        repos, token = self._page(self.store.list_repos(ctx.region, registry_id), params,
                                  f'DescribeRepositories/{ctx.region}/{registry_id}')
        out: Dict[str, Any] = {'repositories': [self._describe_repo(repo) for repo in repos]}
        if token:
            out['nextToken'] = token
        return out

    def op_delete_repository(self, ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
        with self.store.lock:
            repo = self._repo(ctx, params)
            if repo['images'] and not params.get('force', False):
                raise ApiError('RepositoryNotEmptyException',
                               f"The repository with name '{repo['repositoryName']}' in registry with id '{repo['registryId']}' "
                               "cannot be deleted because it still contains images")
            self.store.delete_repo(repo)
        return {'repository': self._describe_repo(repo)}

    # -- images ----------------------------------------------------------------

    def op_put_image(self, ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
        repo = self._repo(ctx, params)
        name, registry_id = repo['repositoryName'], repo['registryId']
        text = params['imageManifest']
        parsed = parse_manifest(text, params.get('imageManifestMediaType'))
        if 'imageDigest' in params and params['imageDigest'] != parsed.digest:
            raise ApiError('ImageDigestDoesNotMatchException',
                           f"Provided digest '{params['imageDigest']}' does not match the digest '{parsed.digest}' calculated for the image manifest")
        tag = params.get('imageTag')
        if tag is not None and not IMAGE_TAG_RE.fullmatch(tag):
            raise invalid_parameter('imageTag', f"must satisfy regular expression '{IMAGE_TAG_RE.pattern}'")
        with self.store.lock:
            repo = self._repo(ctx, params)
            missing = unique([blob.digest for blob in parsed.required_blobs
                              if blob.digest not in repo['layers'] or self.store.blob_size(blob.digest) is None])
            if missing:
                raise ApiError('LayersNotFoundException',
                               f"Layers with digests '[{', '.join(missing)}]' required for pushing image into repository with name "
                               f"'{name}' in the registry with id '{registry_id}' do not exist")
            absent = unique([child.digest for child in parsed.children if child.digest not in repo['images']])
            if absent:
                raise ApiError('ReferencedImagesNotFoundException',
                               f"Some of the images referenced by the manifest list do not exist in the repository with name '{name}' "
                               f"in the registry with id '{registry_id}': [{', '.join(absent)}]")
            current = repo['imageTags'].get(tag) if tag is not None else None
            if current is not None and tag_is_immutable(repo, tag):
                # ECR refuses any push to an existing immutable tag, even of the
                # same manifest (containers-roadmap#2179, buildkit#3776).
                raise ApiError('ImageTagAlreadyExistsException',
                               f"The image tag '{tag}' already exists in the '{name}' repository and cannot be overwritten because the "
                               "repository is immutable.")
            if parsed.digest in repo['images'] and (tag is None or current == parsed.digest):
                raise ApiError('ImageAlreadyExistsException',
                               f"Image with digest '{parsed.digest}' and tag '{tag if tag is not None else 'null'}' already exists in "
                               f"the repository with name '{name}' in registry with id '{registry_id}'")
            if parsed.digest not in repo['images']:
                self.store.write_manifest(parsed.digest, text.encode('utf-8'))
                repo['images'][parsed.digest] = self._image_record(repo, parsed)
            if tag is not None:
                # Moving the tag leaves the previous image in place, untagged.
                repo['imageTags'][tag] = parsed.digest
            self.store.save_repo(repo)
        return {'image': {
            'registryId': registry_id,
            'repositoryName': name,
            'imageId': image_id(parsed.digest, tag),
            'imageManifest': text,
            'imageManifestMediaType': parsed.media_type,
        }}

    def _image_record(self, repo: Dict[str, Any], parsed: Any) -> Dict[str, Any]:
        layer_sizes = {digest: info['size'] for digest, info in repo['layers'].items()}
        if parsed.media_type in INDEX_TYPES:
            # A manifest list reports the largest of its images.
            size = max([repo['images'][child.digest]['size'] for child in parsed.children] or [0])
        elif parsed.media_type in SCHEMA1_TYPES:
            # Schema 1 lists a layer once per history entry; count each once.
            size = image_size(list({blob.digest: blob for blob in parsed.all_blobs}.values()), layer_sizes)
        else:
            size = image_size(parsed.all_blobs[1:], layer_sizes)
        record = {
            'mediaType': parsed.media_type,
            'pushedAt': self.clock(),
            'size': size,
            'blobs': unique([blob.digest for blob in parsed.all_blobs]),
            'children': unique([child.digest for child in parsed.children]),
        }
        if parsed.artifact_media_type:
            record['artifactMediaType'] = parsed.artifact_media_type
        if parsed.subject:
            record['subject'] = parsed.subject
        return record

    def op_batch_get_image(self, ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
        accepted = params.get('acceptedMediaTypes')
        images: List[Dict[str, Any]] = []
        failures: List[Dict[str, Any]] = []
        with self.store.lock:
            repo = self._repo(ctx, params)
            resolved = [(ident,) + self._resolve(repo, ident) for ident in unique(params['imageIds'])]
            records = {digest: dict(repo['images'][digest]) for dummy, digest, dummy2 in resolved if digest}
        for ident, digest, failure in resolved:
            if failure is not None:
                failures.append(failure)
                continue
            text = self.store.read_manifest(digest).decode('utf-8')
            media_type = records[digest]['mediaType']
            served_digest = digest
            if accepted and media_type not in accepted and 'imageDigest' not in ident:
                # By tag ECR converts between Docker schema 2 and OCI when the
                # stored format is not accepted; by digest it never converts.
                # When no conversion exists the stored manifest is returned.
                for target in accepted:
                    converted = convert_manifest(json.loads(text), media_type, target)
                    if converted is not None:
                        text, media_type = converted, target
                        served_digest = sha256_digest(converted.encode('utf-8'))
                        break
            images.append({
                'registryId': repo['registryId'],
                'repositoryName': repo['repositoryName'],
                'imageId': image_id(served_digest, ident.get('imageTag')),
                'imageManifest': text,
                'imageManifestMediaType': media_type,
            })
        return {'images': images, 'failures': failures}

    def _image_detail(self, repo: Dict[str, Any], digest: str, tags: List[str]) -> Dict[str, Any]:
        record = repo['images'][digest]
        detail = {
            'registryId': repo['registryId'],
            'repositoryName': repo['repositoryName'],
            'imageDigest': digest,
            'imageSizeInBytes': record['size'],
            'imagePushedAt': record['pushedAt'],
            'imageManifestMediaType': record['mediaType'],
            'imageStatus': 'ACTIVE',
        }
        if tags:
            detail['imageTags'] = tags
        if record.get('artifactMediaType'):
            detail['artifactMediaType'] = record['artifactMediaType']
        if record.get('subject'):
            detail['subjectManifestDigest'] = record['subject']
        return detail

    @staticmethod
    def _status_filter(params: Dict[str, Any]) -> Tuple[str, bool]:
        flt = params.get('filter', {})
        # Every image here is ACTIVE; asking for archived ones finds none.
        return flt.get('tagStatus', 'ANY'), flt.get('imageStatus', 'ACTIVE') in ('ACTIVE', 'ANY')

    @staticmethod
    def _ordered_digests(repo: Dict[str, Any]) -> List[str]:
        return sorted(repo['images'], key=lambda digest: (repo['images'][digest]['pushedAt'], digest))

    def op_describe_images(self, ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
        ids = params.get('imageIds')
        if ids is not None and ('maxResults' in params or 'nextToken' in params):
            raise invalid_parameter('maxResults', 'cannot be used when imageIds is specified')
        with self.store.lock:
            repo = self._repo(ctx, params)
            tags = self._tags_of(repo)
            if ids is not None:
                digests = []
                for ident in unique(ids):
                    digest, failure = self._resolve(repo, ident)
                    if failure is None:
                        digests.append(digest)
                    elif failure['failureCode'] in ('ImageNotFound', 'ImageTagDoesNotMatchDigest'):
                        raise ApiError('ImageNotFoundException',
                                       f"The image with imageId {describe_image_id(ident)} does not exist within the repository with "
                                       f"name '{repo['repositoryName']}' in the registry with id '{repo['registryId']}'")
                    else:
                        raise invalid_parameter('imageIds', failure['failureReason'])
                return {'imageDetails': [self._image_detail(repo, digest, tags.get(digest, [])) for digest in unique(digests)]}
            tag_status, active = self._status_filter(params)
            digests = [digest for digest in self._ordered_digests(repo) if active and (
                tag_status == 'ANY' or (tag_status == 'TAGGED') == bool(tags.get(digest)))]
            page, token = self._page(digests, params, f"DescribeImages/{ctx.region}/{repo['registryId']}/{repo['repositoryName']}/{tag_status}")
            out: Dict[str, Any] = {'imageDetails': [self._image_detail(repo, digest, tags.get(digest, [])) for digest in page]}
        if token:
            out['nextToken'] = token
        return out

    def op_list_images(self, ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
        with self.store.lock:
            repo = self._repo(ctx, params)
            tags = self._tags_of(repo)
            tag_status, active = self._status_filter(params)
            entries = []
            for digest in self._ordered_digests(repo) if active else []:
                image_tags = sorted(tags.get(digest, []))
                if image_tags and tag_status in ('ANY', 'TAGGED'):
                    entries.extend(image_id(digest, tag) for tag in image_tags)
                elif not image_tags and tag_status in ('ANY', 'UNTAGGED'):
                    entries.append(image_id(digest, None))
            page, token = self._page(entries, params, f"ListImages/{ctx.region}/{repo['registryId']}/{repo['repositoryName']}/{tag_status}")
        out: Dict[str, Any] = {'imageIds': page}
        if token:
            out['nextToken'] = token
        return out

    def op_batch_delete_image(self, ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
        deleted: List[Dict[str, str]] = []
        failures: List[Dict[str, Any]] = []
        with self.store.lock:
            repo = self._repo(ctx, params)
            for ident in unique(params['imageIds']):
                digest, failure = self._resolve(repo, ident)
                if failure is not None:
                    failures.append(failure)
                    continue
                tag = ident.get('imageTag')
                if tag is not None:
                    # Removing a tag; the image goes with its last tag unless a
                    # manifest list still needs it.
                    del repo['imageTags'][tag]
                    deleted.append(image_id(digest, tag))
                    if digest not in repo['imageTags'].values() and not self._referencing_indexes(repo, digest):
                        del repo['images'][digest]
                    continue
                parents = self._referencing_indexes(repo, digest)
                if parents:
                    failures.append({'imageId': image_id(digest, None), 'failureCode': 'ImageReferencedByManifestList',
                                     'failureReason': f"Requested image is referenced by manifest list: [{', '.join(parents)}]"})
                    continue
                image_tags = sorted(t for t, d in repo['imageTags'].items() if d == digest)
                for image_tag in image_tags:
                    del repo['imageTags'][image_tag]
                del repo['images'][digest]
                deleted.extend([image_id(digest, t) for t in image_tags] or [image_id(digest, None)])
            self.store.save_repo(repo)
        return {'imageIds': deleted, 'failures': failures}

    # -- layers ----------------------------------------------------------------

    def op_batch_check_layer_availability(self, ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
        layers, failures = [], []
        with self.store.lock:
            repo = self._repo(ctx, params)
            for digest in params['layerDigests']:
                if not digest:
                    failures.append({'layerDigest': digest, 'failureCode': 'MissingLayerDigest', 'failureReason': 'Missing layer digest'})
                elif not DIGEST_RE.fullmatch(digest):
                    failures.append({'layerDigest': digest, 'failureCode': 'InvalidLayerDigest', 'failureReason': 'Invalid layer digest'})
                elif digest in repo['layers'] and self.store.blob_size(digest) is not None:
                    layers.append({'layerDigest': digest, 'layerAvailability': 'AVAILABLE', 'layerSize': repo['layers'][digest]['size']})
                else:
                    layers.append({'layerDigest': digest, 'layerAvailability': 'UNAVAILABLE'})
        return {'layers': layers, 'failures': failures}

    def op_get_download_url_for_layer(self, ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
        digest = params['layerDigest']
        with self.store.lock:
            repo = self._repo(ctx, params)
            name, registry_id = repo['repositoryName'], repo['registryId']
            if digest not in repo['layers'] or self.store.blob_size(digest) is None:
                raise ApiError('LayersNotFoundException', f"The layer with digest '{digest}' does not exist in the repository with "
                               f"name '{name}' in the registry with id '{registry_id}'")
            if digest not in self._referenced_blobs(repo):
                raise ApiError('LayerInaccessibleException', f"The layer with digest '{digest}' in the repository with name '{name}' in "
                               f"the registry with id '{registry_id}' is not available because it is not associated with an image")
        algorithm, dummy, hexpart = digest.partition(':')
        path = f'/layers/{ctx.region}/{registry_id}/{name}/{algorithm}/{hexpart}'
        return {'downloadUrl': f'{ctx.base_url}{path}?{self.signer.sign(path, ctx.region, self.url_ttl)}', 'layerDigest': digest}

    def op_initiate_layer_upload(self, ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
        repo = self._repo(ctx, params)
        upload = self.store.create_upload(ctx.region, repo['registryId'], repo['repositoryName'])
        return {'uploadId': upload.upload_id, 'partSize': ECR_PART_SIZE}

    def _upload(self, ctx: RequestContext, params: Dict[str, Any]) -> Any:
        repo = self._repo(ctx, params)
        upload = self.store.get_upload(params['uploadId'])
        if upload is None or upload.finished or (upload.region, upload.registry_id, upload.repository) != (
                ctx.region, repo['registryId'], repo['repositoryName']):
            raise ApiError('UploadNotFoundException', f"Upload with id '{params['uploadId']}' does not exist in the repository with "
                           f"name '{repo['repositoryName']}' in the registry with id '{repo['registryId']}'")
        return repo, upload

    def op_upload_layer_part(self, ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
        repo, upload = self._upload(ctx, params)
        first, last, data = params['partFirstByte'], params['partLastByte'], params['layerPartBlob']
        extra = {'registryId': repo['registryId'], 'repositoryName': repo['repositoryName'], 'uploadId': upload.upload_id}
        with upload.lock:
            if upload.finished:
                return self._upload(ctx, params)  # raises UploadNotFoundException
            if first != upload.received:
                # lastValidByteReceived is -1 while nothing has been received.
                raise ApiError('InvalidLayerPartException', f'The upload part must start at byte {upload.received} (the byte after the '
                               f'last valid byte received), not {first}', lastValidByteReceived=upload.received - 1, **extra)
            if last < first or last - first + 1 != len(data):
                raise ApiError('InvalidLayerPartException', f'The layer part size is not valid: bytes {first}-{last} are '
                               f'{max(0, last - first + 1)} bytes, the part has {len(data)}', lastValidByteReceived=upload.received - 1, **extra)
            upload.append(data)
            return dict(extra, lastByteReceived=upload.received - 1)

    def op_complete_layer_upload(self, ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
        repo, upload = self._upload(ctx, params)
        name, registry_id = repo['repositoryName'], repo['registryId']
        with upload.lock:
            if upload.finished:
                return self._upload(ctx, params)  # raises UploadNotFoundException
            if not upload.part_sizes:
                raise ApiError('EmptyUploadException', f"The upload with id '{upload.upload_id}' does not contain any layer parts")
            small = [size for size in upload.part_sizes[:-1] if size < MIN_PART_SIZE]
            if small:
                self.store.drop_upload(upload)
                raise ApiError('LayerPartTooSmallException', f'Layer parts must be at least 5 MiB in size; a part of {small[0]} bytes was uploaded')
            computed = 'sha256:' + upload.hasher.hexdigest()
            for digest in params['layerDigests']:
                if not digest.startswith('sha256:'):
                    self.store.drop_upload(upload)
                    raise ApiError('InvalidLayerException', f"Unsupported digest algorithm in '{digest}'; only sha256 is supported")
                if digest != computed:
                    self.store.drop_upload(upload)
                    raise ApiError('InvalidLayerException', "The layer digest calculation performed by Amazon ECR upon receipt of the "
                                   f"image layer ('{computed}') does not match the digest specified ('{digest}')")
            upload.close()
            with self.store.lock:
                repo = self._repo(ctx, params)
                if computed in repo['layers'] and self.store.blob_size(computed) is not None:
                    self.store.drop_upload(upload)
                    raise ApiError('LayerAlreadyExistsException', f"Layer with digest '{computed}' already exists in the repository "
                                   f"with name '{name}' in registry with id '{registry_id}'")
                self.store.commit_blob(upload.path, computed)
                self.store.drop_upload(upload, keep_file=True)
                repo['layers'][computed] = {'size': upload.received, 'pushedAt': self.clock()}
                self.store.save_repo(repo)
        return {'registryId': registry_id, 'repositoryName': name, 'uploadId': upload.upload_id, 'layerDigest': computed}

    # -- auth --------------------------------------------------------------------

    def op_get_authorization_token(self, ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
        expires = self.clock() + AUTH_TOKEN_LIFETIME
        data = []
        for registry_id in unique(params.get('registryIds') or [ctx.account_id]):
            # A docker-login style token (user AWS); nothing here accepts it.
            token = base64.b64encode(f'AWS:ecrkit-emulator-{registry_id}-{int(expires)}'.encode('ascii')).decode('ascii')
            data.append({'authorizationToken': token, 'expiresAt': expires,
                         'proxyEndpoint': f'https://{registry_id}.dkr.ecr.{ctx.region}.{dns_suffix_for(ctx.region)}'})
        return {'authorizationData': data}
