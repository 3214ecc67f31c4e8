# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the tests of push.py and sources.py share: references into the local ECR endpoint, a push run
against it, what a tag holds there, and a built source image."""

from __future__ import annotations

import os
import sys

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils import ecr, manifest, push, retry

EMULATOR_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "emulator")
if EMULATOR_DIR not in sys.path:
    sys.path.insert(0, EMULATOR_DIR)

# pylint: disable=wrong-import-position
import sample_images  # noqa: E402

MIB = 1024 * 1024


def ref_for(endpoint, tag="1.0", repository="team/app"):
    suffix = f":{tag}" if not tag.startswith("@") else tag
    return f"{endpoint.account_id}.dkr.ecr.{endpoint.region}.amazonaws.com/{repository}{suffix}"


def run(endpoint, src, tag="1.0", **kwargs):
    kwargs.setdefault("create_repository", True)
    kwargs.setdefault("max_concurrent_uploads", 3)
    options = push.PushOptions.from_params(ref=ref_for(endpoint, tag, kwargs.pop("repository", "team/app")), src=str(src), **kwargs)
    return push.push(options, lambda ref: ecr.EcrRepository(endpoint.client(), ref, retry.RetryPolicy(attempts=2)))


def ecr_tag(endpoint, tag, repository="team/app"):
    answer = endpoint.client().batch_get_image(repositoryName=repository, imageIds=[{"imageTag": tag}],
                                               acceptedMediaTypes=list(manifest.ACCEPTED_MANIFEST_TYPES))
    images = answer["images"]
    return (images[0]["imageId"]["imageDigest"], images[0]["imageManifest"].encode("utf-8")) if images else (None, None)


@pytest.fixture
def built(tmp_path):
    source = str(tmp_path / "src")
    return source, sample_images.build_random_image(source, "1.0", count=3, size=6 * MIB + 123, seed="p")
