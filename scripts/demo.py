# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""`make demo`: the main job of the collection on the local ECR endpoint.

Run through scripts/with-emulator.sh, which starts the endpoint and exports AWS_ENDPOINT_URL_ECR and the
test credentials. The demo builds a small multi-layer sample image, pushes it, pushes again to show
that nothing is uploaded the second time, then pulls it twice to show the second pull changes nothing.

The pull is ecrkit.images.ecr_image_pull, run twice by ansible-playbook (scripts/demo.yml). The
ecr_image_push module does not exist yet: until it lands, the push is the test bed's reference uploader
(tests/emulator/sample_images.py).
"""

from __future__ import annotations

import json
import os
import subprocess
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


def pull_with_ansible(image: sample_images.BuiltImage, dest: str) -> None:
    """Run scripts/demo.yml against this collection (the layout's ansible_collections root)."""
    here = os.path.dirname(os.path.abspath(__file__))
    collections = os.path.abspath(os.path.join(here, "..", "..", "..", ".."))
    registry = f"{os.environ['ECRKIT_ACCOUNT_ID']}.dkr.ecr.{os.environ.get('AWS_REGION', 'us-east-1')}.amazonaws.com"
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_DISPLAY_SKIPPED_HOSTS="false")
    playbook = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), os.path.join(here, "demo.yml"),
                "-e", f"demo_ref={registry}/{REPOSITORY}:{TAG}", "-e", f"demo_dest={dest}"]
    print(f"pull     {REPOSITORY}:{TAG} with ecrkit.images.ecr_image_pull ({image.digest}), twice:")
    subprocess.run(playbook, env=env, check=True)


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

        reset_stats(endpoint)
        second = sample_images.push_image(client, image, REPOSITORY)
        unchanged = not second["uploaded"] and not second["manifestsPut"]
        calls = api_calls(endpoint)
        print(f"again    {REPOSITORY}:{TAG}: uploaded {len(second['uploaded'])} blobs, changed={not unchanged}, "
              f"{sum(calls.values())} API calls ({', '.join(f'{name} {count}' for name, count in sorted(calls.items()))})")
        if not unchanged:
            raise SystemExit("demo: the second push changed something; it should not have")
        pull_with_ansible(image, os.path.join(work, "pulled"))
    print("demo: OK (the push moves to ecrkit.images.ecr_image_push when that module lands)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
