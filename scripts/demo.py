# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""`make demo`: the main job of the collection on the local ECR endpoint.

Run through scripts/with-emulator.sh, which starts the endpoint and exports AWS_ENDPOINT_URL_ECR and the
test credentials. The demo builds a small multi-layer sample image (tests/emulator/sample_images.py),
then ansible-playbook runs scripts/demo.yml: ecrkit.images.ecr_image_push pushes it twice (the second
push uploads nothing and makes one API call), ecrkit.images.ecr_image_pull pulls it twice (the second
pull changes nothing).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "emulator"))

import sample_images  # noqa: E402  pylint: disable=wrong-import-position

REPOSITORY = "ecrkit/demo"
TAG = "1.0.0"


def run_playbook(image: sample_images.BuiltImage, layout: str, dest: str) -> None:
    """Run scripts/demo.yml against this collection (the layout's ansible_collections root)."""
    here = os.path.dirname(os.path.abspath(__file__))
    collections = os.path.abspath(os.path.join(here, "..", "..", "..", ".."))
    registry = f"{os.environ['ECRKIT_ACCOUNT_ID']}.dkr.ecr.{os.environ.get('AWS_REGION', 'us-east-1')}.amazonaws.com"
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_DISPLAY_SKIPPED_HOSTS="false")
    playbook = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), os.path.join(here, "demo.yml"),
                "-e", f"demo_ref={registry}/{REPOSITORY}:{TAG}", "-e", f"demo_src={layout}", "-e", f"demo_dest={dest}"]
    print(f"push and pull {REPOSITORY}:{TAG} ({image.digest}) with ecrkit.images.ecr_image_push / ecr_image_pull, twice each:")
    subprocess.run(playbook, env=env, check=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ecrkit-demo-") as work:
        layout = os.path.join(work, "layout")
        image = sample_images.build_demo_image(layout, TAG)
        print(f"built    {TAG}: {image.digest} ({len(image.layers)} layers, {image.media_type})")
        run_playbook(image, layout, os.path.join(work, "pulled"))
    print("demo: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
