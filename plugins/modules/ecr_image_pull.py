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
        one layout, blobs stored once. Each is recorded in its C(index.json) under its full name
        C(REGISTRY/REPOSITORY:TAG) (annotation C(org.opencontainers.image.ref.name), so
        C(skopeo inspect oci:DIR:REGISTRY/REPOSITORY:TAG) reads it), and also under the tag alone
        unless another repository holds that tag there already; two repositories with one tag never
        share an entry.
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
      - Not together with O(all_platforms=true) (O(all_platforms=false), the default, is fine).
    type: str
  all_platforms:
    description:
      - Keep the whole multi-platform image (the index and every platform's manifest and layers) instead of
        one platform. Not available with O(format=docker-archive), and not together with O(platform).
    type: bool
    default: false
  pull:
    description:
      - V(always) asks ECR what the tag points to now and updates O(dest) when it moved.
      - V(missing) does nothing, and makes no API call, when O(dest) already holds an image of this repository
        under the tag (another repository's image with the same tag does not count).
    type: str
    choices: [always, missing]
    default: always
  max_concurrent_downloads:
    description:
      - How many HTTPS connections the whole pull uses at once, across all layers. Large layers are split
        into ranges fetched in parallel, which is what makes them fast when each connection is capped.
      - Between 1 and 64.
    type: int
    default: 8
  chunk_size:
    description:
      - The size of one ranged request, in bytes or with a binary unit, for example V(8MiB), V(16MiB) or
        V(1GiB). V(KiB), V(MiB), V(GiB) and V(TiB) may also be written V(KB), V(MB), V(GB), V(TB) or V(K),
        V(M), V(G), V(T); they mean 1024-based units all the same.
      - At least 1 MiB.
      - Memory use does not grow with it; smaller chunks spread one layer over more connections.
    type: str
    default: 16MiB
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
      - The default is V(true). Given with another O(format), it does nothing and the task warns.
    type: bool
  download_timeout:
    description:
      - Seconds a blob download waits for the next bytes before it drops the connection and retries that
        range from its last byte (a stalled connection).
    type: int
    default: 60
  prune:
    description:
      - With O(format=oci), once this pull has stored its entry, remove every blob of the layout that no entry
        of its C(index.json) references any more (directly, or through the manifests and indexes stored
        there), such as the layers of the image a tag pointed at before it moved. Blobs that other images of
        the layout share are kept; downloads in progress are never touched. RV(bytes_freed) and
        RV(blobs_removed) report it; check mode reports what would be removed, diff mode lists it.
      - Safe against other pulls of this collection into the same layout at the same time. The prune waits up
        to 60 seconds for them to finish (a pull announces itself before it looks at the layout and until its
        entry is stored); if they have not, it removes nothing and the task warns, and the next run with
        O(prune=true) prunes. Other tools (C(skopeo copy), C(umoci)) do not take part, so do not run them
        into the layout while a prune runs.
      - When the layout holds an image whose references cannot be read whole (a manifest it lists is missing
        or damaged), nothing is removed and the task warns, naming it.
      - Given with another O(format), it does nothing and the task warns.
    type: bool
    default: false
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
  - "C(module_defaults): use C(group/ecrkit.images.ecr) to set options (O(endpoint_url), O(region),
    O(profile), O(access_key), ...) for both modules of this collection. C(group/aws) and
    C(group/amazon.aws.aws) do not apply to them: ansible-core builds a group only from the collection
    that owns it, and another collection cannot join it. Repeat the shared settings under
    C(group/ecrkit.images.ecr), for example with a YAML anchor."
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

- name: Follow the stable tag, and free the disk the release it moved away from used
  ecrkit.images.ecr_image_pull:
    ref: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app:stable
    dest: /var/lib/images/app
    prune: true
  register: pulled  # pulled.bytes_freed
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
previous_digest:
  description:
    - What the reference had resolved to when O(dest) last recorded this image (the same kind of digest as
      RV(digest)), or null when O(dest) did not hold it.
    - Equal to RV(digest) when nothing changed.
  returned: always
  type: str
  sample: sha256:0d3b4bb4b0ecb2d45e3e3d8b0a6e2c3b1c1c2f1f8f4e1f0c6a7f3b6e0b3a9d8c
repository:
  description: The repository's name in ECR.
  returned: always
  type: str
  sample: team/app
image:
  description: The image pinned by digest, ready for templates (C(REGISTRY/REPOSITORY@DIGEST) with RV(digest)).
  returned: always
  type: str
  sample: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app@sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270
would_unpack:
  description: In check mode with O(format=containerd), whether the run would unpack the image (its content being
    present, this alone can make the task changed).
  returned: in check mode, with O(format=containerd)
  type: bool
  sample: true
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
bytes_freed:
  description: Bytes of the unreferenced blobs O(prune) removed from the layout (in check mode, would remove).
  returned: when O(prune=true) and O(format=oci)
  type: int
  sample: 31457280
blobs_removed:
  description: How many blobs O(prune) removed (in check mode, would remove); the diff lists them.
  returned: when O(prune=true) and O(format=oci)
  type: int
  sample: 4
error_code:
  description:
    - Why the pull failed, as a short stable name for C(failed_when), C(until) or a rescue to match on (C(msg)
      says it in a sentence; the collection's README says what each code means). One of V(invalid_option),
      V(invalid_reference), V(invalid_platform), V(platform_not_found), V(credentials), V(access_denied),
      V(endpoint_unreachable), V(repository_not_found), V(image_not_found), V(layer_not_found),
      V(ecr_api_error), V(invalid_manifest), V(digest_mismatch), V(unsupported_manifest), V(schema1_manifest),
      V(foreign_layer), V(invalid_digest), V(invalid_descriptor), V(transfer_failed), V(blob_http_error),
      V(blob_access_denied), V(redirect_refused), V(blob_verification_failed), V(transfer_cancelled),
      V(storage_error), V(disk_full), V(not_writable), V(untrusted_path), V(path_missing), V(layout_error),
      V(not_an_oci_layout), V(layout_symlink), V(lock_timeout), V(corrupt_index), V(blob_not_found),
      V(blob_mismatch), V(archive_error), V(invalid_archive), V(unsafe_archive), V(archive_too_large),
      V(containerd_error), V(containerd_not_installed), V(containerd_socket_missing),
      V(containerd_permission_denied), V(containerd_unknown_namespace), V(containerd_invalid_value),
      V(containerd_ctr_untrusted), V(ecrkit_error).
  returned: on failure
  type: str
  sample: image_not_found
"""

from ansible.module_utils.common.warnings import warn

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.ecrkit.images.plugins.module_utils.argspec import pull_argument_spec
from ansible_collections.ecrkit.images.plugins.module_utils.ecr import blob_tls_verify, connect, explicit_region
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.pull import PullOptions, apply_file_attributes, pull


def main() -> None:
    module = AnsibleAWSModule(argument_spec=pull_argument_spec(), supports_check_mode=True, add_file_common_args=True)
    params = module.params
    try:
        options = PullOptions.from_params(**{name: params[name] for name in pull_argument_spec()}, mode=params["mode"],
                                          region=explicit_region(params["region"]), tls_verify=blob_tls_verify(params),
                                          check_mode=module.check_mode)
        result = pull(options, lambda ref: connect(module, ref, options.api_retry))
        if apply_file_attributes(options, lambda path: module.set_fs_attributes_if_different(
                module.load_file_common_arguments(params, path=path), False, result.get("diff"))):
            result["changed"] = True
    except EcrkitError as exc:
        module.fail_json(msg=str(exc), error_code=exc.code)
    for warning in result.pop("warnings", []):
        warn(warning)  # not module.warn: amazon.aws 10 would pass them to exit_json, deprecated in ansible-core 2.19
    if not module._diff:  # pylint: disable=protected-access
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
