#!/usr/bin/python
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ecr_image_push
short_description: Push a container image from containerd, an OCI layout or an image archive to Amazon ECR
version_added: 0.1.0
description:
  - Reads an image (a single-platform manifest or a multi-platform index) from an OCI image layout, an
    OCI archive, a docker-archive or containerd's image store, and puts it into an Amazon ECR private repository under one or more
    tags, through the ECR API only.
  - The source is validated before anything is sent; every manifest must parse and hash to its digest and
    every blob it references must be present with the right size. The blobs ECR lacks are hashed before the
    first upload. A broken source fails the task and nothing is uploaded; a push that changes nothing
    reads no layer.
  - One C(BatchGetImage) learns what each tag points at; when every tag already points at the image, the
    task reports RV(ignore:changed=false) and that single call is all it costs.
  - Otherwise C(BatchCheckLayerAvailability) tells which configs and layers ECR lacks, and only those are
    uploaded (several layers at once, each in the parts ECR asks for, streamed from the source). Child
    manifests of an index are put untagged first, then the image under each tag, with the exact bytes of
    the source, so the digest in ECR is the source's digest.
  - No Docker daemon, no registry login and no container tooling are needed on the managed host, only
    the AWS credentials it already has.
author:
  - ecrkit.images contributors (!UNKNOWN)
options:
  ref:
    description:
      - Where to push, in the registry URI form C(ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME:TAG) (also
        C(.amazonaws.com.cn), C(dkr.ecr-fips.) and C(ACCOUNT.dkr-ecr.REGION.on.aws) hosts) or the ARN form
        C(ecr.aws/arn:aws:ecr:REGION:ACCOUNT:repository/NAME:TAG).
      - The reference must name a tag, or a digest only for an untagged push (the digest must be the
        source image's).
    type: str
    required: true
  tags:
    description:
      - More tags to put on the same image.
    type: list
    elements: str
    default: []
  src:
    description:
      - The image to push. With O(src_format=oci), an OCI image layout directory; with O(src_format=containerd),
        the image's name in containerd as C(ctr images ls) shows it (for example C(registry.example/team/app:1.0));
        otherwise an archive file.
    type: str
    required: true
  src_format:
    description:
      - V(oci) is an OCI image layout directory.
      - V(oci-archive) is a tar of an OCI image layout.
      - V(docker-archive) is what C(docker save) writes. When the archive carries the image's manifest
        (Docker 25 and later, and the pull module), that exact manifest is pushed; otherwise a Docker
        schema 2 manifest is built from its C(manifest.json), reproducibly, with the layers as stored.
      - V(containerd) reads the image from containerd's content store through the C(ctr) client shipped with
        containerd (see O(containerd_namespace)); only the blobs ECR lacks are read, streamed and hashed on the
        way. containerd holds only the platforms it pulled, so a multi-platform image must have been pulled
        with every platform.
    type: str
    choices: [oci, oci-archive, docker-archive, containerd]
    default: oci
  src_tag:
    description:
      - Which image of the source to push, when it holds several; the C(org.opencontainers.image.ref.name)
        of an OCI layout or archive, or a C(RepoTags) entry (or its tag part) of a docker-archive.
      - Optional when the source holds exactly one image. Not used with O(src_format=containerd).
    type: str
  create_repository:
    description:
      - Create the repository when it does not exist. Without it a missing repository fails the task.
    type: bool
    default: false
  image_tag_mutability:
    description:
      - The tag mutability of a repository this task creates.
      - An existing repository is never changed. When its setting differs, the task warns, naming the
        repository's setting and the command that changes it; comparing costs one C(DescribeRepositories)
        call per run, made only when this option is given.
    type: str
    choices: [MUTABLE, IMMUTABLE]
  max_concurrent_uploads:
    description:
      - How many layers upload at once (each layer goes part after part, in order), between 1 and 16.
      - For memory, each layer in flight holds one part of up to 20 MiB, which takes about 120 MiB while its
        request is built and sent (botocore's base64 and JSON copies); a layer uploading alone holds a second
        one, built while the first is on its way.
    type: int
    default: 4
extends_documentation_fragment:
  - ecrkit.images.containerd
  - ecrkit.images.retries
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
notes:
  - The IAM permissions needed are C(ecr:BatchGetImage), C(ecr:BatchCheckLayerAvailability),
    C(ecr:InitiateLayerUpload), C(ecr:UploadLayerPart), C(ecr:CompleteLayerUpload) and C(ecr:PutImage) on
    the repository, C(ecr:DescribeRepositories) when a tag would move or O(image_tag_mutability) is given,
    and C(ecr:CreateRepository) with O(create_repository).
  - In a repository with immutable tags, tags that already point at another image fail the task before
    anything is uploaded, and the error names every one of them; a tag that already points at this image
    is left as it is.
  - "C(module_defaults): use C(group/ecrkit.images.ecr) to set options (O(endpoint_url), O(region),
    O(profile), O(access_key), ...) for both modules of this collection. C(group/aws) and
    C(group/amazon.aws.aws) do not apply to them: ansible-core builds a group only from the collection
    that owns it, and another collection cannot join it. Repeat the shared settings under
    C(group/ecrkit.images.ecr), for example with a YAML anchor."
  - The O(region) option, when given, must match the region in the reference.
  - Supports check mode (the task reports what would be uploaded and which tags would move) and diff mode
    (each tag's digest before and after).
"""

EXAMPLES = r"""
- name: Publish the build
  ecrkit.images.ecr_image_push:
    src: /build/out/app
    src_tag: 1.4.2
    ref: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app:1.4.2
    tags: [latest, stable]
  register: pushed

- name: Push what docker save wrote, creating the repository with immutable tags
  ecrkit.images.ecr_image_push:
    src: /tmp/app.tar
    src_format: docker-archive
    ref: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app:1.4.2
    create_repository: true
    image_tag_mutability: IMMUTABLE

- name: Push an image that a build left in containerd
  ecrkit.images.ecr_image_push:
    src: registry.example/team/app:1.4.2
    src_format: containerd
    containerd_namespace: buildkit
    ref: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app:1.4.2
  become: true
"""

RETURN = r"""
ref:
  description: The destination reference, normalised to the registry URI form.
  returned: always
  type: str
  sample: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app:1.4.2
digest:
  description: The pushed image manifest or index.
  returned: always
  type: str
  sample: sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270
media_type:
  description: The media type of RV(digest).
  returned: always
  type: str
  sample: application/vnd.oci.image.manifest.v1+json
tags:
  description: Each tag pushed, with the digest it pointed at before (null when it did not exist).
  returned: always
  type: list
  elements: dict
  contains:
    tag:
      description: The tag.
      type: str
    previous_digest:
      description: What the tag pointed at before the push, or null.
      type: str
    changed:
      description: Whether the tag moved (or was created).
      type: bool
layers:
  description: Every config and layer of the image and what happened to it.
  returned: always
  type: list
  elements: dict
  contains:
    digest:
      description: The blob's digest.
      type: str
    size:
      description: Its size in bytes.
      type: int
    media_type:
      description: Its media type.
      type: str
    action:
      description: V(uploaded), or V(present) when ECR already had it. In check mode, V(upload) or V(present).
      type: str
bytes_transferred:
  description: Bytes of layers and configs uploaded by this run (0 when nothing changed).
  returned: always
  type: int
  sample: 52428800
elapsed:
  description: Seconds the push took.
  returned: always
  type: float
  sample: 3.21
repository_created:
  description: Whether the repository was created (would be, in check mode).
  returned: always
  type: bool
repository:
  description: The repository's name in ECR.
  returned: always
  type: str
  sample: team/app
image:
  description: The pushed image pinned by digest, ready for templates (C(REGISTRY/REPOSITORY@DIGEST) with RV(digest)).
  returned: always
  type: str
  sample: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app@sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270
previous_digest:
  description: What the tag of O(ref) pointed at before this run (null when it did not exist, or for a push by digest).
  returned: always
  type: str
  sample: sha256:0d3b4bb4b0ecb2d45e3e3d8b0a6e2c3b1c1c2f1f8f4e1f0c6a7f3b6e0b3a9d8c
api_calls:
  description: ECR API calls this run made, retries included.
  returned: always
  type: int
  sample: 1
retries:
  description: ECR API calls that were retries after throttling or transient errors.
  returned: always
  type: int
  sample: 0
error_code:
  description:
    - Why the push failed, in a stable word or two that C(failed_when), C(until) or a rescue can match; C(msg)
      is the sentence. The collection's README explains each code. One of V(invalid_option),
      V(invalid_reference), V(credentials), V(access_denied), V(endpoint_unreachable),
      V(repository_not_found), V(ecr_api_error), V(layer_refused), V(invalid_source), V(immutable_tag),
      V(empty_blob), V(source_changed), V(invalid_manifest), V(digest_mismatch), V(unsupported_manifest),
      V(invalid_digest), V(invalid_descriptor), V(transfer_cancelled), V(storage_error), V(not_writable),
      V(untrusted_path), V(invalid_archive), V(unsafe_archive), V(archive_too_large), V(archive_error),
      V(containerd_error), V(containerd_not_installed), V(containerd_socket_missing),
      V(containerd_permission_denied), V(containerd_unknown_namespace), V(containerd_unknown_image),
      V(containerd_invalid_value), V(containerd_ctr_untrusted), V(ecrkit_error).
  returned: on failure
  type: str
  sample: immutable_tag
"""

from ansible.module_utils.common.warnings import warn

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.ecrkit.images.plugins.module_utils.argspec import push_argument_spec
from ansible_collections.ecrkit.images.plugins.module_utils.ecr import connect, explicit_region
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.push import PushOptions, push


def main() -> None:
    module = AnsibleAWSModule(argument_spec=push_argument_spec(), supports_check_mode=True)
    params = module.params
    try:
        options = PushOptions.from_params(**{name: params[name] for name in push_argument_spec()}, region=explicit_region(params["region"]),
                                          check_mode=module.check_mode)
        result = push(options, lambda ref: connect(module, ref, options.api_retry))
    except EcrkitError as exc:
        module.fail_json(msg=str(exc), error_code=exc.code)
    for warning in result.pop("warnings", []):
        warn(warning)  # not module.warn: amazon.aws 10 would pass them to exit_json, deprecated in ansible-core 2.19
    if not module._diff:  # pylint: disable=protected-access
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
