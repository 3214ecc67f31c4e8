# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""`make demo`: the main job of the collection on the local ECR endpoint.

Run through scripts/with-emulator.sh, which starts the endpoint and exports AWS_ENDPOINT_URL_ECR and the
test credentials. The demo builds a small multi-layer sample image, pushes it, reads it back through the
ECR API (manifest by tag, every blob from its download URL, each verified against its digest), then
pushes again to show that nothing is uploaded the second time.

The ecr_image_push and ecr_image_pull modules do not exist yet: until they land, the push is the test
bed's reference uploader (tests/emulator/sample_images.py) and the read-back is done here with boto3.
This script switches to ansible-playbook with the modules as they arrive.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
import urllib.request
from typing import Any, Dict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "emulator"))

import sample_images  # noqa: E402  pylint: disable=wrong-import-position

REPOSITORY = "ecrkit/demo"
TAG = "1.0.0"


def endpoint_stats(endpoint: str) -> Dict[str, Any]:
    with urllib.request.urlopen(f"{endpoint}/__emulator__/stats", timeout=10) as response:
        return json.load(response)


def reset_stats(endpoint: str) -> None:
    request = urllib.request.Request(f"{endpoint}/__emulator__/stats/reset", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


def api_calls(endpoint: str) -> Dict[str, int]:
    return dict(endpoint_stats(endpoint).get("api_calls", {}))


def layers_and_configs(image: sample_images.BuiltImage) -> list:
    """The blobs ECR serves through GetDownloadUrlForLayer (manifests come from BatchGetImage)."""
    return [descriptor for platform in image.manifests for descriptor in (*platform.layers, platform.config)]


def read_back(client: Any, image: sample_images.BuiltImage) -> int:
    """Fetch the manifest by tag and every blob from its download URL; verify all; return bytes read."""
    answer = client.batch_get_image(repositoryName=REPOSITORY, imageIds=[{"imageTag": TAG}],
                                    acceptedMediaTypes=[image.media_type])
    if answer["failures"]:
        raise SystemExit(f"demo: reading {REPOSITORY}:{TAG} back failed: {answer['failures']}")
    manifest = answer["images"][0]["imageManifest"].encode("utf-8")
    if manifest != image.manifest_bytes:
        raise SystemExit("demo: the manifest read back differs from the one pushed")
    total = 0
    for descriptor in layers_and_configs(image):
        url = client.get_download_url_for_layer(repositoryName=REPOSITORY, layerDigest=descriptor.digest)["downloadUrl"]
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=30) as response:  # the URL is never printed: it is a credential
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                total += len(chunk)
        if f"sha256:{digest.hexdigest()}" != descriptor.digest:
            raise SystemExit(f"demo: blob {descriptor.digest} read back does not match its digest")
    return total


def main() -> int:
    endpoint = os.environ["AWS_ENDPOINT_URL_ECR"]
    client = sample_images.make_client(endpoint, os.environ.get("AWS_REGION", "us-east-1"))
    with tempfile.TemporaryDirectory(prefix="ecrkit-demo-") as work:
        layout = os.path.join(work, "layout")
        image = sample_images.build_demo_image(layout, TAG)
        print(f"built    {TAG}: {image.digest} ({len(image.layers)} layers, {image.media_type})")

        reset_stats(endpoint)
        started = time.monotonic()
        first = sample_images.push_image(client, image, REPOSITORY, create_repository=True)
        print(f"pushed   {REPOSITORY}:{TAG}: uploaded {len(first['uploaded'])} blobs, {first['uploadedBytes']} bytes "
              f"in {time.monotonic() - started:.2f} s")

        started = time.monotonic()
        read = read_back(client, image)
        print(f"read     {REPOSITORY}:{TAG}: manifest byte-identical, {len(layers_and_configs(image))} blobs verified, "
              f"{read} bytes in {time.monotonic() - started:.2f} s")

        reset_stats(endpoint)
        second = sample_images.push_image(client, image, REPOSITORY)
        unchanged = not second["uploaded"] and not second["manifestsPut"]
        calls = api_calls(endpoint)
        print(f"again    {REPOSITORY}:{TAG}: uploaded {len(second['uploaded'])} blobs, changed={not unchanged}, "
              f"{sum(calls.values())} API calls ({', '.join(f'{name} {count}' for name, count in sorted(calls.items()))})")
        if not unchanged:
            raise SystemExit("demo: the second push changed something; it should not have")
    print("demo: OK (ecr_image_push / ecr_image_pull will replace the reference uploader and read-back when they land)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
