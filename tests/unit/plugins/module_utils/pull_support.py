# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the tests of pull.py and destinations.py share: images seeded in the local ECR endpoint, the
options of a pull of one of them, and a pull run against the endpoint."""

from __future__ import annotations

import os
import sys

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils import ecr, pull, retry

EMULATOR_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "emulator")
if EMULATOR_DIR not in sys.path:
    sys.path.insert(0, EMULATOR_DIR)

# pylint: disable=wrong-import-position
import sample_images  # noqa: E402

MIB = 1024 * 1024


@pytest.fixture
def seeded(ecr_endpoint, tmp_path):
    """Two single-platform images sharing two layers, and a two-platform index."""
    source = str(tmp_path / "source")
    client = ecr_endpoint.client()
    images = {
        "one": sample_images.build_random_image(source, "one", count=2, size=3 * MIB, seed="s"),
        "two": sample_images.build_random_image(source, "two", count=3, size=3 * MIB, seed="s"),
        "multi": sample_images.build_demo_image(source, "multi", platforms=["linux/amd64", "linux/arm64/v8"]),
    }
    for tag, image in images.items():
        sample_images.push_image(client, image, "team/app", create_repository=True)
    return ecr_endpoint, images


def options(endpoint, tag, dest, **kwargs):
    ref = f"{endpoint.account_id}.dkr.ecr.{endpoint.region}.amazonaws.com/team/app:{tag}"
    kwargs.setdefault("chunk_size", MIB)
    kwargs.setdefault("max_concurrent_downloads", 4)
    return pull.PullOptions.from_params(ref=ref, dest=str(dest), **kwargs)


def run(endpoint, opts):
    return pull.pull(opts, lambda ref: ecr.EcrRepository(endpoint.client(), ref, retry.RetryPolicy(attempts=2)))
