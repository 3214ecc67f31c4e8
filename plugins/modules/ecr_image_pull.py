#!/usr/bin/python
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ecr_image_pull
short_description: Pull a container image from Amazon ECR into containerd, an OCI layout or an image archive
version_added: 0.1.0
description:
  - Resolves an image reference in an Amazon ECR private registry with one C(BatchGetImage) call, then
    downloads the manifest(s), config and layers the selected platform needs, straight from the presigned
    blob URLs that C(GetDownloadUrlForLayer) returns, in parallel ranged requests.
  - Every blob is checked against its size and sha256 digest before it becomes visible in O(dest); writes
    are atomic, and a download interrupted by a failure or a killed process resumes on the next run.
  - No Docker daemon, no registry login and no container tooling are needed on the managed host, only
    the AWS credentials it already has.
  - With O(format=containerd) the image goes straight into containerd's content and image stores, through
    the C(ctr) client that ships with containerd; layers containerd already has are not downloaded again.
  - Idempotent. When O(dest) already holds what the tag resolves to, nothing is downloaded, the task
    reports RV(ignore:changed=false), and the whole run costs one ECR API call.
  - Docker image manifest schema 1 images are refused with a message that says so; ECR keeps them only
    for old clients, and Docker and containerd no longer support them. Re-push such an image with a
    current client to pull it.
author:
  - ecrkit.images contributors (!UNKNOWN)
options:
  ref:
    description:
      - The image to pull, in the registry URI form the ECR console shows,
        C(ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME[:TAG][@DIGEST]) (also C(.amazonaws.com.cn),
        C(dkr.ecr-fips.) and the dual-stack C(ACCOUNT.dkr-ecr.REGION.on.aws) hosts), or the ARN form
        C(ecr.aws/arn:aws:ecr:REGION:ACCOUNT:repository/NAME[:TAG][@DIGEST]).
      - The account (registry id) and the region come from the reference.
      - A reference with neither tag nor digest means the tag C(latest).
      - With both a tag and a digest, ECR must report that the tag points at that digest.
    type: str
    required: true
  dest:
    description:
      - Where to store the image.
      - With O(format=oci), an OCI image layout directory, created if missing. Several images can share
        one layout; each is recorded in its C(index.json) under its tag
        (annotation C(org.opencontainers.image.ref.name)) and blobs are stored once.
      - With O(format=oci-archive) or O(format=docker-archive), the path of the archive file.
      - Required, except with O(format=containerd). There it optionally names the directory where the
        layers containerd lacks are staged until containerd has ingested them (removed when the pull
        succeeds, kept for the next run when it fails); the default is C(ecrkit-UID) (mode 0700) in
        E(TMPDIR) or C(/var/tmp).
      - Other users must not be able to change what O(dest) leads to, since the module usually runs as
        root. A layout directory, a staging directory and every directory above them must belong to
        root or to the user the module runs as and be writable by nobody else; an archive may be written
        into a shared sticky directory such as C(/tmp), where its staging files are then private to this
        user. Anything else is refused before any API call, with the directory to fix.
      - O(mode), O(owner) and O(group) apply to the layout directory (its files are only reached through
        it) or to the archive file. A replaced archive keeps the mode and owner it had unless they are
        given. A layout must stay this user's and closed to writes by others (the next run refuses it
        otherwise), so give O(group) and a O(mode) such as V('0750') to share it for reading.
    type: path
  format:
    description:
      - V(oci) is an OCI image layout directory.
      - V(oci-archive) is a tar file of an OCI image layout holding this image only.
      - V(docker-archive) is a tarball that C(docker load) accepts (single platform only).
      - V(containerd) stores the image in containerd (see O(containerd_namespace)) under the names
        C(REPOSITORY:TAG) and C(REPOSITORY@DIGEST), as Kubernetes' CRI names a pulled image. The names
        point at what the reference resolves to (an index for a multi-platform image, like C(ctr images pull));
        the content of the selected platform, or of every platform with O(all_platforms), is stored.
    type: str
    choices: [oci, oci-archive, docker-archive, containerd]
    default: oci
  platform:
    description:
      - The platform to pull from a multi-platform image, as C(OS/ARCH[/VARIANT]), for example
        C(linux/arm64/v8).
      - Defaults to the managed host's own operating system and architecture.
      - An image that is not multi-platform is pulled as it is.
      - When the image has no manifest for the platform, the task fails and lists the platforms it has.
    type: str
  all_platforms:
    description:
      - Keep the whole multi-platform image (the index and every platform's manifest and layers) instead of
        one platform. Not available with O(format=docker-archive).
    type: bool
    default: false
  pull:
    description:
      - V(always) asks ECR what the tag points to now and updates O(dest) when it moved.
      - V(missing) does nothing, and makes no API call, when O(dest) already holds an image under the tag.
    type: str
    choices: [always, missing]
    default: always
  max_concurrent_downloads:
    description:
      - How many HTTPS connections the whole pull uses at once, across all layers. Large layers are split
        into ranges fetched in parallel, which is what makes them fast when each connection is capped.
    type: int
    default: 8
  chunk_size:
    description:
      - The size of one ranged request, for example V(8MB) or V(16MB) (binary units).
      - Memory use does not grow with it; smaller chunks spread one layer over more connections.
    type: str
    default: 16MB
  ranged_downloads:
    description:
      - Split large blobs into parallel ranged requests. V(false) fetches every blob in one request.
    type: bool
    default: true
  unpack:
    description:
      - With O(format=containerd), unpack the layers into a snapshot of containerd's default snapshotter, so
        that a container can start from the image at once. With all platforms, the host's platform is
        unpacked.
      - An image that is present but not unpacked is unpacked without downloading anything.
    type: bool
    default: true
  download_timeout:
    description:
      - Seconds a blob download waits for the next bytes before it drops the connection and retries that
        range from its last byte (a stalled connection).
    type: int
    default: 60
extends_documentation_fragment:
  - ansible.builtin.files
  - ecrkit.images.containerd
  - ecrkit.images.retries
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
notes:
  - The IAM permissions needed are C(ecr:BatchGetImage) and C(ecr:GetDownloadUrlForLayer) on the repository.
  - The O(region) option, when given, must match the region in the reference.
  - Supports check mode (the image is resolved and the task reports what would be downloaded) and diff
    mode (the tag's digest before and after).
"""

EXAMPLES = r"""
- name: Pull the app image onto the host
  ecrkit.images.ecr_image_pull:
    ref: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app:1.4.2
    dest: /var/lib/images/app
  register: pulled

- name: Pull the arm64 variant as an archive that docker load accepts
  ecrkit.images.ecr_image_pull:
    ref: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app:1.4.2
    dest: /var/lib/images/app-arm64.tar
    format: docker-archive
    platform: linux/arm64/v8

- name: Keep every platform of an image, pinned by digest
  ecrkit.images.ecr_image_pull:
    ref: ecr.aws/arn:aws:ecr:eu-west-1:123456789012:repository/team/app@sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270
    dest: /srv/mirror/app
    all_platforms: true

- name: Pre-pull the node images into containerd for Kubernetes
  ecrkit.images.ecr_image_pull:
    ref: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app:1.4.2
    format: containerd
    containerd_namespace: k8s.io
  become: true

- name: Only fetch the image when the host does not have it yet
  ecrkit.images.ecr_image_pull:
    ref: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app:1.4.2
    dest: /var/lib/images/app
    pull: missing
"""

RETURN = r"""
ref:
  description: The reference, normalised to the registry URI form.
  returned: always
  type: str
  sample: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app:1.4.2
digest:
  description: What the reference resolved to in ECR (an image manifest or a multi-platform index).
  returned: always
  type: str
  sample: sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270
media_type:
  description: The media type of RV(digest).
  returned: always
  type: str
  sample: application/vnd.oci.image.index.v1+json
platform:
  description: The platform pulled, or V(all) with O(all_platforms).
  returned: always
  type: str
  sample: linux/amd64
manifest_digest:
  description: The platform's image manifest that was pulled when RV(digest) is an index; otherwise RV(digest).
  returned: always
  type: str
  sample: sha256:0d3b4bb4b0ecb2d45e3e3d8b0a6e2c3b1c1c2f1f8f4e1f0c6a7f3b6e0b3a9d8c
layers:
  description: Every blob the image needs (configs and layers) and what happened to it.
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
      description: V(downloaded), or V(present) when O(dest) already had it. In check mode, V(download) or V(present).
      type: str
bytes_transferred:
  description: Bytes downloaded from ECR by this run (0 when nothing changed).
  returned: always
  type: int
  sample: 52428800
elapsed:
  description: Seconds the pull took.
  returned: always
  type: float
  sample: 3.21
containerd:
  description: Where the image is in containerd.
  returned: when O(format=containerd)
  type: dict
  contains:
    namespace:
      description: The containerd namespace.
      type: str
      sample: k8s.io
    images:
      description: The image names that point at RV(digest).
      type: list
      elements: str
      sample:
        - 123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app:1.4.2
        - 123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app@sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270
    unpacked:
      description: Whether the image is unpacked into a snapshot (always V(false) when O(unpack=false) left it so).
      type: bool
      sample: true
    commands:
      description: The number of C(ctr) commands this run ran.
      type: int
      sample: 6
dest:
  description: The destination path (null with O(format=containerd) when O(dest) was not given).
  returned: always
  type: str
format:
  description: The destination format.
  returned: always
  type: str
  sample: oci
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
"""

from ansible.module_utils.common.text.formatters import human_to_bytes

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.ecrkit.images.plugins.module_utils.ecr import blob_tls_verify, connect, explicit_region
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.pull import PullOptions, apply_file_attributes, pull


def main() -> None:
    module = AnsibleAWSModule(
        argument_spec=dict(
            ref=dict(type="str", required=True),
            dest=dict(type="path"),
            format=dict(type="str", default="oci", choices=["oci", "oci-archive", "docker-archive", "containerd"]),
            platform=dict(type="str"),
            all_platforms=dict(type="bool", default=False),
            pull=dict(type="str", default="always", choices=["always", "missing"]),
            max_concurrent_downloads=dict(type="int", default=8),
            chunk_size=dict(type="str", default="16MB"),
            ranged_downloads=dict(type="bool", default=True),
            containerd_namespace=dict(type="str", default="default"),
            containerd_address=dict(type="path", default="/run/containerd/containerd.sock"),
            containerd_ctr_path=dict(type="str"),
            unpack=dict(type="bool", default=True),
            max_attempts=dict(type="int", default=10),
            download_timeout=dict(type="int", default=60),
        ),
        mutually_exclusive=[("platform", "all_platforms")],
        supports_check_mode=True,
        add_file_common_args=True,
    )
    params = module.params
    try:
        options = PullOptions.from_params(
            ref=params["ref"], dest=params["dest"], dest_format=params["format"], platform=params["platform"],
            all_platforms=params["all_platforms"], policy=params["pull"], region=explicit_region(params["region"]),
            max_connections=params["max_concurrent_downloads"], chunk_size=_bytes(params["chunk_size"]),
            ranged=params["ranged_downloads"], tls_verify=blob_tls_verify(params), check_mode=module.check_mode,
            containerd_namespace=params["containerd_namespace"], containerd_address=params["containerd_address"],
            containerd_ctr_path=params["containerd_ctr_path"], mode=params["mode"],
            unpack=params["unpack"], max_attempts=params["max_attempts"], download_timeout=params["download_timeout"])
        result = pull(options, lambda ref: connect(module, ref, options.api_retry))
        if apply_file_attributes(options, lambda path: module.set_fs_attributes_if_different(
                module.load_file_common_arguments(params, path=path), False, result.get("diff"))):
            result["changed"] = True
    except EcrkitError as exc:
        module.fail_json(msg=str(exc), error_code=exc.code)
    if not module._diff:  # pylint: disable=protected-access
        result.pop("diff", None)
    module.exit_json(**result)


def _bytes(size: str) -> int:
    try:
        return human_to_bytes(size)
    except ValueError:
        raise EcrkitError(f"chunk_size '{size}' is not a size; write it like 8MB or 16MB.") from None


if __name__ == "__main__":
    main()
