# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The push use case: read an image from a source, upload what ECR lacks, put its manifest(s) under the tags.

Order of work, so that a broken source or a refused tag costs no upload:

1. open the source and validate it before any API call: every manifest parses and hashes to its
   digest, every blob exists with its size;
2. one BatchGetImage for all tags (what each points at now); when every tag already points at the
   source's digest the push is unchanged and that single call is all it costs;
3. a tag that would move in an IMMUTABLE repository fails here, naming the tag and both digests;
4. BatchCheckLayerAvailability (batches of 100) for every config and layer; the missing ones are hashed
   (a blob that does not match its digest fails the push before any upload), then only they are
   uploaded, several at once on the :class:`~pool.TransferPool`, each in order, in parts of the
   ``partSize`` InitiateLayerUpload answers, streamed from the source one part at a time;
5. PutImage: child manifests of an index untagged (by digest) first, then the top manifest under each
   tag that moves, with the exact bytes of the source.

Threads rather than processes for the uploads. Building an UploadLayerPart request (base64, JSON body,
SigV4 payload hash) is CPU-bound and only the hashing releases the GIL: ``bench/push_parts.py`` on 2
cores builds 20 MiB parts at about 115 MiB/s serially, 150 MiB/s with 2 threads and 210-240 MiB/s with 2
processes. Processes win that CPU-only measure by about 1.5x, but not clearly enough: 150 MiB/s of
request building is above what one host's uplink to ECR usually carries, whereas processes would each
need their own boto3 client and credentials, and would split the call counting, retry policy and error
translation of :class:`EcrRepository` across process boundaries inside an Ansible module. So layers
upload on the one :class:`~pool.TransferPool`, several at once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ansible_collections.ecrkit.images.plugins.module_utils import argspec, containerd, manifest
from ansible_collections.ecrkit.images.plugins.module_utils.ecr import (
    AccessDeniedError, EcrApiError, EcrRepository, RepositoryNotFoundError)
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError, InvalidOptionError
from ansible_collections.ecrkit.images.plugins.module_utils.manifest import Descriptor
from ansible_collections.ecrkit.images.plugins.module_utils.reference import ImageRef, check_region, parse_reference
from ansible_collections.ecrkit.images.plugins.module_utils.retry import RetryPolicy, check_max_attempts
from ansible_collections.ecrkit.images.plugins.module_utils.sources import Source, SourceError, check_blobs, open_source
from ansible_collections.ecrkit.images.plugins.module_utils.upload import upload_layers

MOST_CONCURRENT_UPLOADS = 16  # the highest max_concurrent_uploads accepted


class ImmutableTagError(EcrkitError):
    code = "immutable_tag"


class EmptyBlobError(EcrkitError):
    code = "empty_blob"


@dataclass(frozen=True)
class PushOptions:
    """The push's options, validated, under the module's option names (defaults: :mod:`argspec`)."""

    ref: ImageRef
    src: str
    src_format: str
    src_tag: Optional[str]
    tags: Tuple[str, ...]
    create_repository: bool
    image_tag_mutability: Optional[str]
    max_concurrent_uploads: int
    check_mode: bool
    containerd_address: str
    containerd_namespace: str
    containerd_ctr_path: Optional[str]  # None: ctr from the system directories
    max_attempts: int
    warnings: Tuple[str, ...] = ()  # about the options, for the result

    @classmethod
    def from_params(cls, *, ref: str, src: str, src_format: str = argspec.SRC_FORMAT, src_tag: str | None = None,
                    tags: Sequence[str] | None = None, create_repository: bool = False,
                    image_tag_mutability: str | None = None, region: str | None = None,
                    max_concurrent_uploads: int = argspec.MAX_CONCURRENT_UPLOADS, check_mode: bool = False,
                    containerd_address: str | None = None, containerd_namespace: str | None = None,
                    containerd_ctr_path: str | None = None, max_attempts: int = argspec.MAX_ATTEMPTS) -> PushOptions:
        """Validate the module's options before any network call. The containerd
        options are None when not given (their defaults apply), so that giving them for another
        src_format can be told apart and warned about."""
        image_ref = parse_reference(ref, default_tag=None)  # a push names its tag (or a digest, for an untagged push)
        check_region(image_ref, region)
        if src_format not in argspec.FORMATS:
            raise InvalidOptionError(f"src_format '{src_format}' is not one of {', '.join(argspec.FORMATS)}.")
        if not src:
            raise InvalidOptionError("src must name an OCI layout directory, an archive file or an image in containerd.")
        check_max_attempts(max_attempts)
        if src_format == "containerd" and src_tag:
            raise InvalidOptionError("src_tag does not apply to src_format containerd; give the image's full name in src.")
        if image_tag_mutability is not None and image_tag_mutability not in argspec.MUTABILITIES:
            raise InvalidOptionError(f"image_tag_mutability '{image_tag_mutability}' is not one of {', '.join(argspec.MUTABILITIES)}.")
        if max_concurrent_uploads < 1 or max_concurrent_uploads > MOST_CONCURRENT_UPLOADS:
            raise InvalidOptionError(f"max_concurrent_uploads must be between 1 and {MOST_CONCURRENT_UPLOADS}, not {max_concurrent_uploads}.")
        extra = []
        for tag in tags or ():
            try:
                checked = parse_reference(f"{image_ref.host}/{image_ref.repository}:{tag}").tag if tag else None
            except EcrkitError:
                checked = None
            if not checked or checked != tag:
                raise InvalidOptionError(f"The tag '{tag}' in tags is not valid; a tag is 1 to 300 characters from A-Z, a-z, 0-9, '.', '_' and '-'.")
            extra.append(tag)
        warnings = containerd.ignored_options_warnings("src_format", src_format, containerd_namespace=containerd_namespace,
                                                       containerd_address=containerd_address,
                                                       containerd_ctr_path=containerd_ctr_path)
        if src_format != "containerd":  # a path: expand ~ and $VARS as Ansible's path options do
            src = os.path.expanduser(os.path.expandvars(src))
        return cls(ref=image_ref, src=src, src_format=src_format, src_tag=src_tag or None, tags=tuple(extra),
                   create_repository=create_repository, image_tag_mutability=image_tag_mutability,
                   max_concurrent_uploads=max_concurrent_uploads, check_mode=check_mode,
                   containerd_address=containerd.DEFAULT_ADDRESS if containerd_address is None else containerd_address,
                   containerd_namespace=containerd.DEFAULT_NAMESPACE if containerd_namespace is None else containerd_namespace,
                   max_attempts=max_attempts, containerd_ctr_path=containerd_ctr_path or None, warnings=tuple(warnings))

    @property
    def api_retry(self) -> RetryPolicy:
        """How ECR API calls (each part upload included) are retried: full-jitter exponential backoff."""
        return RetryPolicy(attempts=self.max_attempts)

    @property
    def all_tags(self) -> List[str]:
        """The reference's tag and the extra tags, each once, in order."""
        return list(dict.fromkeys(([self.ref.tag] if self.ref.tag else []) + list(self.tags)))


# The push ---------------------------------------------------------------------------------------------

def push(options: PushOptions, connect: Callable[[ImageRef], EcrRepository]) -> Dict[str, Any]:
    """Run the push; return the module result. The source is validated before ``connect`` is called.
    ``warnings`` in the result (when there are any) are for the module to pass to Ansible."""
    warnings = list(options.warnings)
    result = _push(options, connect, warnings)
    if warnings:
        result["warnings"] = warnings
    return result


def _push(options: PushOptions, connect: Callable[[ImageRef], EcrRepository], warnings: List[str]) -> Dict[str, Any]:
    started = time.monotonic()
    with open_source(options) as source:
        top = source.top
        if options.ref.digest and options.ref.digest != top.digest:
            raise SourceError(f"The reference {options.ref} names the digest {options.ref.digest}, but the image in "
                              f"{options.src} is {top.digest}.")
        tags = options.all_tags
        repository = connect(options.ref)
        ids = [{"imageTag": tag} for tag in tags] or [{"imageDigest": top.digest}]
        created = False
        try:
            previous = repository.image_digests(ids, manifest.ACCEPTED_MANIFEST_TYPES)
        except RepositoryNotFoundError:
            if not options.create_repository:
                raise RepositoryNotFoundError(
                    f"The repository '{options.ref.repository}' does not exist in registry {options.ref.registry_id} "
                    f"({options.ref.region}); create it first or set create_repository: true.", "RepositoryNotFoundException") from None
            created = True
            previous = [None] * len(ids)
        before = dict(zip(tags, previous))
        moving = [tag for tag in tags if before[tag] != top.digest]
        untagged_needed = not tags and previous[0] != top.digest
        mutability = None if created else _compare_mutability(options, repository, warnings)
        if not moving and not untagged_needed:
            return _result(options, source, before, [], 0, started, repository, created=False, changed=False)
        if not created:
            _refuse_immutable(options, repository, before, moving, top.digest, mutability)
        missing = set(d.digest for d in source.layers) if created else set(repository.missing_blobs(d.digest for d in source.layers))
        empty = [blob.digest for blob in source.layers if blob.digest in missing and blob.size == 0]
        if empty:
            raise EmptyBlobError(f"ECR lacks the empty (0-byte) blob {empty[0]}, and its layer upload API cannot store an empty "
                                 "blob; the image cannot be pushed through the ECR API.")
        to_upload = [blob for blob in source.layers if blob.digest in missing]
        check_blobs(source, to_upload, verify=True)  # hashed only when they are to be sent; ECR verified its own
        if options.check_mode:
            return _result(options, source, before, to_upload, 0, started, repository, created=created, changed=True, check_mode=True)
        if created:
            repository.create_repository(options.image_tag_mutability)
        transferred = upload_layers(repository, source.blobs, to_upload, options.max_concurrent_uploads)
        for document in source.documents[:-1]:
            repository.put_image(document.raw, document.media_type, digest=document.digest)
        for tag in moving:
            try:
                repository.put_image(top.raw, top.media_type, tag=tag, digest=top.digest)
            except EcrApiError as exc:
                if exc.aws_code == "ImageTagAlreadyExistsException":
                    raise _immutable_error(options, {tag: before.get(tag)}, top.digest) from None
                raise
        if untagged_needed:
            repository.put_image(top.raw, top.media_type, digest=top.digest)
        return _result(options, source, before, to_upload, transferred, started, repository, created=created, changed=True)


def _compare_mutability(options: PushOptions, repository: EcrRepository, warnings: List[str]) -> Optional[str]:
    """The existing repository's tag mutability when image_tag_mutability was given (one DescribeRepositories,
    only then), with a warning when they differ: the option applies to a repository this task creates."""
    if not options.image_tag_mutability:
        return None
    try:
        current = repository.tag_mutability()
    except AccessDeniedError:
        warnings.append(f"image_tag_mutability {options.image_tag_mutability} could not be compared with the setting of the "
                        f"existing repository '{options.ref.repository}' (no ecr:DescribeRepositories); it applies only to a "
                        "repository this task creates.")
        return None
    if current != options.image_tag_mutability:
        warnings.append(
            f"The repository '{options.ref.repository}' already exists with image tag mutability {current}; "
            f"image_tag_mutability {options.image_tag_mutability} applies only to a repository this task creates, so "
            f"nothing was changed. To change it: aws ecr put-image-tag-mutability --registry-id {options.ref.registry_id} "
            f"--region {options.ref.region} --repository-name {options.ref.repository} --image-tag-mutability "
            f"{options.image_tag_mutability}")
    return current


def _refuse_immutable(options: PushOptions, repository: EcrRepository, before: Dict[str, Optional[str]], moving: List[str],
                      digest: str, mutability: Optional[str] = None) -> None:
    """Fail before any upload when tags would move in an immutable repository, naming every one of them
    (one extra call, only then, unless ``mutability`` is already known)."""
    occupied = [tag for tag in moving if before[tag]]
    if occupied and (mutability or repository.tag_mutability()) == "IMMUTABLE":
        raise _immutable_error(options, {tag: before[tag] for tag in occupied}, digest)


def _immutable_error(options: PushOptions, occupied: Dict[str, Optional[str]], digest: str) -> ImmutableTagError:
    where = f"in the immutable repository '{options.ref.repository}'"
    if len(occupied) == 1:
        tag, current = next(iter(occupied.items()))
        return ImmutableTagError(f"The tag '{tag}' {where} points at {current or 'another image'}; it cannot be moved to "
                                 f"{digest}. Push under a new tag.")
    listed = ", ".join(f"'{tag}' (at {current or 'another image'})" for tag, current in occupied.items())
    return ImmutableTagError(f"The tags {listed} {where} point at other images; none of them can be moved to {digest}. "
                             "Push under new tags.")


def _result(options: PushOptions, source: Source, before: Dict[str, Optional[str]], uploaded: List[Descriptor],
            transferred: int, started: float, repository: EcrRepository, created: bool, changed: bool,
            check_mode: bool = False) -> Dict[str, Any]:
    sent = {blob.digest for blob in uploaded}
    action = "upload" if check_mode else "uploaded"
    top = source.top
    return {
        "changed": changed,
        "ref": str(options.ref),
        "digest": top.digest,
        "media_type": top.media_type,
        "tags": [{"tag": tag, "previous_digest": digest, "changed": digest != top.digest} for tag, digest in before.items()],
        "layers": [{"digest": blob.digest, "size": blob.size, "media_type": blob.media_type,
                    "action": action if blob.digest in sent else "present"} for blob in source.layers],
        "bytes_transferred": transferred,
        "elapsed": round(time.monotonic() - started, 3),
        "repository_created": created,
        # as the pull reports them: the repository, the image pinned by digest, what the reference's tag held
        "repository": options.ref.repository,
        "image": f"{options.ref.repository_uri}@{top.digest}",
        "previous_digest": before.get(options.ref.tag) if options.ref.tag else None,
        "api_calls": repository.api_calls,
        "retries": repository.retries,
        "diff": {"before": dict(before),
                 "after": {tag: top.digest for tag in before}},
    }
