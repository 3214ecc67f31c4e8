# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The server as a program: CLI, ready file, SIGTERM, HTTPS, restarts."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from fixture import EMULATOR_SCRIPT, EmulatorHandle, push_image, run_emulator

ALL_TYPES = ['application/vnd.oci.image.manifest.v1+json', 'application/vnd.oci.image.index.v1+json',
             'application/vnd.docker.distribution.manifest.v2+json', 'application/vnd.docker.distribution.manifest.list.v2+json']


def test_cli_ready_file_and_sigterm(tmp_path):
    ready = tmp_path / 'ready'
    data = tmp_path / 'data'
    log = tmp_path / 'log'
    with subprocess.Popen([sys.executable, EMULATOR_SCRIPT, '--listen', '127.0.0.1:0', '--data', str(data), '--ready-file', str(ready),
                           '--log', str(log)], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        try:
            deadline = time.monotonic() + 20
            while not ready.exists() and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.02)
            url = ready.read_text()
            assert url.endswith('\n') and url.startswith('http://127.0.0.1:')
            assert sorted(os.listdir(tmp_path)) == ['data', 'log', 'ready']  # no temp file left
            handle = EmulatorHandle(str(data))
            handle.url = url.strip()
            assert handle.health()['status'] == 'ok'
            handle.client().create_repository(repositoryName='cli')
        finally:
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert b'listening on http://127.0.0.1:' in out
    assert 'API CreateRepository 200' in log.read_text()


def test_cli_help_and_bad_arguments():
    help_text = subprocess.run([sys.executable, EMULATOR_SCRIPT, '--help'], capture_output=True, text=True, check=True).stdout
    for word in ('--ready-file', '--tls-cert', '--url-ttl', '--bandwidth-per-connection', 'throttle:every=N', 'drop-blob:after=BYTES',
                 'corrupt-blob', 'stall-blob', 'expire-urls', '/__emulator__/stats'):
        assert word in help_text
    bad = subprocess.run([sys.executable, EMULATOR_SCRIPT, '--data', '/tmp/x', '--fault', 'nonsense'], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and 'unknown fault kind' in bad.stderr


@pytest.mark.skipif(shutil.which('openssl') is None, reason='needs the openssl CLI')
def test_https(tmp_path):
    with run_emulator(tmp_path, tls=True) as endpoint:
        assert endpoint.url.startswith('https://127.0.0.1:')
        client = endpoint.client()  # verify=<generated cert>
        client.create_repository(repositoryName='secure')
        layer = os.urandom(3 * 1024 * 1024 + 17)  # more than one TLS send chunk
        push_image(client, 'secure', [layer], tag='v1')
        url = client.get_download_url_for_layer(repositoryName='secure', layerDigest='sha256:' + hashlib.sha256(layer).hexdigest())['downloadUrl']
        assert url.startswith('https://')
        assert endpoint.fetch(url)[2] == layer
        status, headers, body = endpoint.fetch(url, {'Range': 'bytes=-5'})
        assert (status, body, headers['Content-Range']) == (206, layer[-5:], f'bytes {len(layer) - 5}-{len(layer) - 1}/{len(layer)}')
        untrusting = endpoint.client(verify=True)
        with pytest.raises(Exception, match='SSL|certificate'):
            untrusting.describe_repositories()


@pytest.mark.parametrize('mode', ['thread', 'subprocess'])
def test_restart_keeps_everything(tmp_path, mode):
    with run_emulator(tmp_path, mode=mode) as endpoint:
        client = endpoint.client()
        client.create_repository(repositoryName='durable', imageTagMutability='IMMUTABLE')
        layer = b'persisted layer'
        digest, manifest = push_image(client, 'durable', [layer], tag='v1')
        old_url = client.get_download_url_for_layer(repositoryName='durable', layerDigest='sha256:' + hashlib.sha256(layer).hexdigest())['downloadUrl']
        url = endpoint.url
        endpoint.restart()
        assert endpoint.url == url
        client = endpoint.client()
        repo = client.describe_repositories(repositoryNames=['durable'])['repositories'][0]
        assert repo['imageTagMutability'] == 'IMMUTABLE'
        got = client.batch_get_image(repositoryName='durable', imageIds=[{'imageTag': 'v1'}], acceptedMediaTypes=ALL_TYPES)['images'][0]
        assert (got['imageManifest'], got['imageId']['imageDigest']) == (manifest, digest)
        assert endpoint.fetch(old_url)[2] == layer  # URLs signed before the restart still work
        with pytest.raises(client.exceptions.ImageTagAlreadyExistsException):
            client.put_image(repositoryName='durable', imageManifest=manifest, imageTag='v1')


def test_stop_closes_kept_alive_connections(tmp_path):
    with run_emulator(tmp_path) as endpoint:
        client = endpoint.client()
        client.describe_repositories()  # leaves a pooled connection open
        started = time.monotonic()
        endpoint.stop()
        assert time.monotonic() - started < 5
        with pytest.raises(Exception):
            client.describe_repositories()
