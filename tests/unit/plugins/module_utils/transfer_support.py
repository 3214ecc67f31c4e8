# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the tests of pool, blobhttp, partial and download share: test data, a quick pool, checks that
no URL or secret leaks, and an image pushed to the local ECR endpoint with its download jobs."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import traceback

from ansible_collections.ecrkit.images.plugins.module_utils.download import MIN_CHUNK_SIZE, BlobJob
from ansible_collections.ecrkit.images.plugins.module_utils.pool import TransferPool
from ansible_collections.ecrkit.images.plugins.module_utils.retry import RetryPolicy

EMULATOR_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "emulator")
if EMULATOR_DIR not in sys.path:
    sys.path.insert(0, EMULATOR_DIR)

# pylint: disable=wrong-import-position
import sample_images  # noqa: E402

SECRET = "S3CR3TSIGNATURE"  # the signature in the blob server's URLs (conftest.py)
KIB = 1024
MIB = 1024 * 1024
CHUNK = MIN_CHUNK_SIZE  # 64 KiB: several ranges per blob without big test data
FAST = RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.01)


def blob_bytes(size, seed=0):
    """Deterministic incompressible test data."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}/{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


def job_for(blob, directory, name=None):
    return BlobJob(blob.digest, blob.size, os.path.join(str(directory), name or blob.name + ".partial"), blob.get_url)


def pool(connections=3, **kwargs):
    kwargs.setdefault("retry", FAST)
    return TransferPool(connections, **kwargs)


def transfer_threads():
    return [thread for thread in threading.enumerate() if thread.name.startswith("ecrkit-transfer-")]


def read(path):
    with open(path, "rb") as handle:
        return handle.read()


def assert_no_secret(value):
    text = value if isinstance(value, str) else repr(value)
    assert SECRET not in text
    assert "X-Amz-Credential" not in text and "X-Amz-Signature" not in text


def assert_clean_error(exc_info):
    """No URL, no signature in the message, the repr or the formatted traceback."""
    exc = exc_info.value
    assert_no_secret(str(exc))
    assert_no_secret(repr(exc))
    assert_no_secret("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    assert "http://" not in str(exc)


def pushed_image(endpoint, tmp_path, count=2, size=300 * KIB):
    image = sample_images.build_random_image(str(tmp_path / "layout"), "v1", count=count, size=size, seed="transfer")
    client = endpoint.client()
    sample_images.push_image(client, image, "team/app", create_repository=True)
    blobs = list(image.layers) + [image.manifests[0].config]
    return client, image, blobs


def ecr_jobs(client, blobs, directory, calls=None):
    os.makedirs(directory, exist_ok=True)

    def provider(digest):
        def get_url(refresh):
            if calls is not None:
                calls.append((digest, refresh))
            return client.get_download_url_for_layer(repositoryName="team/app", layerDigest=digest)["downloadUrl"]
        return get_url

    return [BlobJob(desc.digest, desc.size, os.path.join(str(directory), desc.hex + ".partial"), provider(desc.digest))
            for desc in blobs]
