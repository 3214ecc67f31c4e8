# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""No secret in anything a run prints: the modules run by ansible-playbook -vvvv, failing in the ways
that carry credentials or presigned URLs closest to the surface (a transfer cut mid-blob again and again,
connections that never deliver, expired blob URLs, access denied mid-push, a wrong secret key, a session token on every call), with
every line of output and of the Ansible log searched for the secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

TESTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
sys.path.insert(0, os.path.join(TESTS_DIR, "emulator"))

# pylint: disable=wrong-import-position
import sample_images  # noqa: E402
from fixture import run_emulator  # noqa: E402

COLLECTION = os.path.abspath(os.path.join(TESTS_DIR, ".."))
COLLECTIONS_ROOT = os.path.abspath(os.path.join(COLLECTION, "..", "..", ".."))
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLEsessionTOKENvalue0123456789"
MIB = 1024 * 1024

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  module_defaults:
    group/ecrkit.images.ecr:
      endpoint_url: "{{ url }}"
      access_key: "{{ access_key }}"
      secret_key: "{{ secret_key }}"
      session_token: "{{ session_token }}"
  tasks:
    - name: A transfer cut mid-blob again and again (it resumes each time, and completes)
      ecrkit.images.ecr_image_pull: {ref: "{{ ref }}", dest: "{{ work }}/cut", chunk_size: 1MB}
    - name: Faults for the next task
      ansible.builtin.uri: {url: "{{ url }}/__emulator__/faults", method: POST, body_format: json,
                            body: {faults: ["drop-blob:after=0,count=100000"]}}
    - name: Every blob answer cut before its first byte
      ecrkit.images.ecr_image_pull: {ref: "{{ ref }}", dest: "{{ work }}/dropped"}
      ignore_errors: true
    - name: Faults for the next task
      ansible.builtin.uri: {url: "{{ url }}/__emulator__/faults", method: POST, body_format: json, body: {faults: ["expire-urls:after=0"]}}
    - name: Every blob URL refused as expired
      ecrkit.images.ecr_image_pull: {ref: "{{ ref }}", dest: "{{ work }}/expired"}
      ignore_errors: true
    - name: Faults for the next task
      ansible.builtin.uri: {url: "{{ url }}/__emulator__/faults", method: POST, body_format: json,
                            body: {faults: ["access-denied:every=1,ops=UploadLayerPart"]}}
    - name: Access denied in the middle of a push
      ecrkit.images.ecr_image_push: {ref: "{{ push_ref }}", src: "{{ src }}", src_tag: "1.0", create_repository: true}
      ignore_errors: true
    - name: No more faults
      ansible.builtin.uri: {url: "{{ url }}/__emulator__/faults", method: DELETE}
    - name: A wrong secret key
      ecrkit.images.ecr_image_pull: {ref: "{{ ref }}", dest: "{{ work }}/wrong", secret_key: "{{ secret_key }}X"}
      ignore_errors: true
    - name: A pull that works, with its full result printed
      ecrkit.images.ecr_image_pull: {ref: "{{ ref }}", dest: "{{ work }}/good"}
      register: good
    - name: Print it
      ansible.builtin.debug: {var: good}
"""


def test_no_secret_reaches_any_output(tmp_path):
    with run_emulator(str(tmp_path / "ecr"), mode="subprocess", session_token=SESSION_TOKEN) as endpoint:
        image = sample_images.build_random_image(str(tmp_path / "src"), "1.0", count=2, size=3 * MIB, seed="secrets")
        sample_images.push_image(endpoint.client(), image, "team/app", create_repository=True)
        endpoint.set_faults("drop-blob:after=300000,count=100000")
        repository = f"{endpoint.account_id}.dkr.ecr.{endpoint.region}.amazonaws.com"
        extra = {"url": endpoint.url, "access_key": endpoint.access_key, "secret_key": endpoint.secret_key,
                 "session_token": SESSION_TOKEN, "ref": f"{repository}/team/app:1.0", "push_ref": f"{repository}/team/copy:1.0",
                 "src": str(tmp_path / "src"), "work": str(tmp_path / "work")}
        (tmp_path / "play.yml").write_text(PLAYBOOK, encoding="utf-8")
        (tmp_path / "vars.json").write_text(json.dumps(extra), encoding="utf-8")
        # ansible-test units puts a restricted ansible on PYTHONPATH; the play needs the whole ansible-core
        env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "ANSIBLE_", "PYTHONPATH"))}
        env.update(ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_ROOT, ANSIBLE_LOG_PATH=str(tmp_path / "ansible.log"),
                   ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
                   ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_NOCOLOR="1")
        done = subprocess.run([sys.executable, "-m", "ansible.cli.playbook", "-vvvv", str(tmp_path / "play.yml"), "-e", f"@{tmp_path / 'vars.json'}"],
                              capture_output=True, text=True, env=env, timeout=600, check=False)
        stats = endpoint.stats()
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    output = done.stdout + done.stderr + (tmp_path / "ansible.log").read_text(encoding="utf-8")
    # every failure happened, as planned
    for code in ("Downloading blob", "refused blob", "Access denied calling ECR UploadLayerPart", "AWS rejected the credentials"):
        assert code in output, code
    assert stats["faults_fired"].get("drop-blob", 0) > 0 and stats["faults_fired"].get("access-denied", 0) > 0
    for secret in (endpoint.secret_key, SESSION_TOKEN, "X-Amz-Signature=", "X-Amz-Credential=", "X-Amz-Security-Token=",
                   "x-amz-security-token:" + SESSION_TOKEN[:12]):
        assert secret not in output, f"{secret!r} leaked into the output"
    assert "Traceback" not in output
