# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The modules' options as Ansible argument specs: each option's type, choices and default written once.

The module files build their ``argument_spec`` from :func:`pull_argument_spec` and
:func:`push_argument_spec`; ``PullOptions.from_params`` and ``PushOptions.from_params`` take the same
option names and their defaults from the constants below. The options both modules have (the AWS
retries, containerd) are :data:`SHARED_OPTIONS`, as their doc fragments (``retries``, ``containerd``)
are shared. The AWS connection options (``region``, ``profile``, ...) come from ``AnsibleAWSModule``.
"""

from __future__ import annotations

import copy
from typing import Any, Dict

FORMATS = ("oci", "oci-archive", "docker-archive", "containerd")
MAX_ATTEMPTS = 10

# ecr_image_pull
PULL_POLICIES = ("always", "missing")
FORMAT = "oci"
PULL = "always"
MAX_CONCURRENT_DOWNLOADS = 8
CHUNK_SIZE = "16MiB"
DOWNLOAD_TIMEOUT = 60

# ecr_image_push
SRC_FORMAT = "oci"
MUTABILITIES = ("MUTABLE", "IMMUTABLE")
MAX_CONCURRENT_UPLOADS = 4

Spec = Dict[str, Dict[str, Any]]

SHARED_OPTIONS: Spec = {
    "max_attempts": {"type": "int", "default": MAX_ATTEMPTS},
    # No default: None tells "not given" (containerd.DEFAULT_NAMESPACE and DEFAULT_ADDRESS then apply) from
    # given with another format, which the task warns about (containerd.ignored_options_warnings).
    "containerd_namespace": {"type": "str"},
    "containerd_address": {"type": "path"},
    "containerd_ctr_path": {"type": "str"},
}

_PULL_OPTIONS: Spec = {
    "ref": {"type": "str", "required": True},
    "dest": {"type": "path"},
    "format": {"type": "str", "default": FORMAT, "choices": list(FORMATS)},
    "platform": {"type": "str"},
    "all_platforms": {"type": "bool", "default": False},
    "pull": {"type": "str", "default": PULL, "choices": list(PULL_POLICIES)},
    "max_concurrent_downloads": {"type": "int", "default": MAX_CONCURRENT_DOWNLOADS},
    "chunk_size": {"type": "str", "default": CHUNK_SIZE},
    "ranged_downloads": {"type": "bool", "default": True},
    "unpack": {"type": "bool"},  # None: true; given with another format: a warning
    "download_timeout": {"type": "int", "default": DOWNLOAD_TIMEOUT},
    "prune": {"type": "bool", "default": False},
}

_PUSH_OPTIONS: Spec = {
    "ref": {"type": "str", "required": True},
    "tags": {"type": "list", "elements": "str", "default": []},
    "src": {"type": "str", "required": True},
    "src_format": {"type": "str", "default": SRC_FORMAT, "choices": list(FORMATS)},
    "src_tag": {"type": "str"},
    "create_repository": {"type": "bool", "default": False},
    "image_tag_mutability": {"type": "str", "choices": list(MUTABILITIES)},
    "max_concurrent_uploads": {"type": "int", "default": MAX_CONCURRENT_UPLOADS},
}


def pull_argument_spec() -> Spec:
    """The ``argument_spec`` of ecr_image_pull (a copy: Ansible may change what it is given)."""
    return copy.deepcopy({**_PULL_OPTIONS, **SHARED_OPTIONS})


def push_argument_spec() -> Spec:
    """The ``argument_spec`` of ecr_image_push (a copy)."""
    return copy.deepcopy({**_PUSH_OPTIONS, **SHARED_OPTIONS})
