# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Start the ECR emulator from tests, in-process (a thread) or as a subprocess.

    from fixture import run_emulator

    with run_emulator(tmp_path) as ecr:
        client = ecr.client()
        client.create_repository(repositoryName='team/app')
        assert ecr.stats()['api_calls']['CreateRepository'] == 1

Any conftest can offer the ``ecr_endpoint`` pytest fixture defined here:

    sys.path.insert(0, os.path.join(<path of tests/>, 'emulator'))
    from fixture import ecr_endpoint  # noqa: F401  (pytest finds it by name)

Each test gets its own server (function scope): ansible-test runs every test
in a forked child, where longer-lived fixtures would never be torn down.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import boto3
from botocore.config import Config

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

# pylint: disable=wrong-import-position
import ecr_emulator  # noqa: E402
from ecr_emu_model import MIB, OCI_MANIFEST  # noqa: E402

EMULATOR_SCRIPT = os.path.join(HERE, 'ecr_emulator.py')
DEFAULT_REGION = 'us-east-1'
READY_TIMEOUT = 30.0


def make_self_signed_cert(directory: str, host: str = '127.0.0.1') -> Tuple[str, str]:
    """Create a throwaway certificate for ``host`` (and localhost) with the
    openssl CLI; returns (cert_path, key_path)."""
    os.makedirs(directory, exist_ok=True)
    cert, key = os.path.join(directory, 'emulator-cert.pem'), os.path.join(directory, 'emulator-key.pem')
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-sha256', '-days', '2',
                    '-keyout', key, '-out', cert, '-subj', f'/CN={host}',
                    '-addext', f'subjectAltName=IP:{host},DNS:localhost'],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


class EmulatorHandle:
    """A running emulator and what a test needs to talk to it."""

    def __init__(self, data_dir: str, mode: str = 'thread', region: str = DEFAULT_REGION, host: str = '127.0.0.1', port: int = 0,
                 access_key: str = ecr_emulator.DEFAULT_ACCESS_KEY, secret_key: str = ecr_emulator.DEFAULT_SECRET_KEY,
                 session_token: Optional[str] = None, account_id: str = ecr_emulator.DEFAULT_ACCOUNT_ID,
                 url_ttl: int = ecr_emulator.DEFAULT_URL_TTL, bandwidth_per_connection: Union[int, str] = 0,
                 faults: Sequence[Union[str, Dict[str, Any]]] = (), tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
                 log_file: Optional[str] = None) -> None:
        if mode not in ('thread', 'subprocess'):
            raise ValueError(f"mode must be 'thread' or 'subprocess', not {mode!r}")
        self.data_dir = os.path.abspath(data_dir)
        self.mode = mode
        self.region = region
        self.host = host
        self.port = port
        self.access_key = access_key
        self.secret_key = secret_key
        self.session_token = session_token
        self.account_id = account_id
        self.url_ttl = url_ttl
        self.bandwidth_per_connection = bandwidth_per_connection
        self.initial_faults = list(faults)
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.log_file = log_file
        self.url = ''
        self._emulator: Optional[ecr_emulator.Emulator] = None
        self._process: Optional[subprocess.Popen] = None
        self._output: Any = None

    @property
    def ca_bundle(self) -> Optional[str]:
        """The certificate to trust (HTTPS mode), for boto3 ``verify=``."""
        return self.tls_cert

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> str:
        if self.mode == 'thread':
            self._emulator = ecr_emulator.Emulator(
                self.data_dir, self.host, self.port, self.tls_cert, self.tls_key, self.access_key, self.secret_key,
                self.session_token, self.account_id, self.url_ttl, self.bandwidth_per_connection, self.initial_faults, self.log_file)
            self.url = self._emulator.start()
        else:
            self.url = self._start_process()
        # Remember the port, so restart() comes back at the same URL.
        self.port = int(self.url.rsplit(':', 1)[1])
        return self.url

    def _start_process(self) -> str:
        os.makedirs(self.data_dir, exist_ok=True)
        ready = os.path.join(os.path.dirname(self.data_dir), f'{os.path.basename(self.data_dir)}.ready')
        if os.path.exists(ready):
            os.unlink(ready)
        cmd = [sys.executable, EMULATOR_SCRIPT, '--listen', f'{self.host}:{self.port}', '--data', self.data_dir,
               '--ready-file', ready, '--parent-pid', str(os.getpid()), '--access-key', self.access_key,
               '--secret-key', self.secret_key, '--account-id', self.account_id, '--url-ttl', str(self.url_ttl),
               '--bandwidth-per-connection', str(self.bandwidth_per_connection)]
        if self.session_token:
            cmd += ['--session-token', self.session_token]
        if self.tls_cert:
            cmd += ['--tls-cert', self.tls_cert, '--tls-key', str(self.tls_key)]
        if self.log_file:
            cmd += ['--log', self.log_file]
        for spec in self.initial_faults:
            cmd += ['--fault', spec if isinstance(spec, str) else _spec_string(spec)]
        self._output = open(self.data_dir + '.out', 'ab')  # pylint: disable=consider-using-with
        self._process = subprocess.Popen(cmd, stdout=self._output, stderr=subprocess.STDOUT)  # pylint: disable=consider-using-with
        deadline = time.monotonic() + READY_TIMEOUT
        while not os.path.exists(ready):
            if self._process.poll() is not None:
                raise RuntimeError(f'ECR emulator exited with {self._process.returncode}; output in {self.data_dir}.out')
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f'ECR emulator did not become ready in {READY_TIMEOUT:.0f}s')
            time.sleep(0.02)
        with open(ready, encoding='utf-8') as handle:
            return handle.read().strip()

    def stop(self) -> Optional[int]:
        """Stop the server; returns the exit code in subprocess mode."""
        code = None
        if self._emulator is not None:
            self._emulator.stop()
            self._emulator = None
        if self._process is not None:
            process, self._process = self._process, None
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait(5)
        if self._output is not None:
            self._output.close()
            self._output = None
        return code

    def restart(self) -> str:
        """Stop and start again on the same data directory (and port)."""
        self.stop()
        return self.start()

    def __enter__(self) -> 'EmulatorHandle':
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- clients -----------------------------------------------------------------

    def credentials(self) -> Dict[str, Optional[str]]:
        return {'aws_access_key_id': self.access_key, 'aws_secret_access_key': self.secret_key, 'aws_session_token': self.session_token}

    def client(self, region: Optional[str] = None, retries: int = 0, **kwargs: Any) -> Any:
        """A boto3 ECR client for this endpoint.  Retries are off unless
        asked for, so a test sees every error and counts every call."""
        kwargs.setdefault('config', Config(retries={'total_max_attempts': 1 + retries, 'mode': 'standard'},
                                           connect_timeout=10, read_timeout=60))
        if self.tls_cert:
            kwargs.setdefault('verify', self.tls_cert)
        for name, value in self.credentials().items():
            kwargs.setdefault(name, value)
        return boto3.client('ecr', region_name=region or self.region, endpoint_url=self.url, **kwargs)

    def env(self, region: Optional[str] = None) -> Dict[str, str]:
        """Environment variables that point an AWS SDK (or a module run by
        ansible) at this endpoint."""
        env = {
            'AWS_ACCESS_KEY_ID': self.access_key,
            'AWS_SECRET_ACCESS_KEY': self.secret_key,
            'AWS_DEFAULT_REGION': region or self.region,
            'AWS_REGION': region or self.region,
            'AWS_ENDPOINT_URL_ECR': self.url,
        }
        if self.session_token:
            env['AWS_SESSION_TOKEN'] = self.session_token
        if self.tls_cert:
            env['AWS_CA_BUNDLE'] = self.tls_cert
        return env

    def ssl_context(self) -> Optional[ssl.SSLContext]:
        return ssl.create_default_context(cafile=self.tls_cert) if self.tls_cert else None

    def fetch(self, url: str, headers: Optional[Dict[str, str]] = None, method: str = 'GET') -> Tuple[int, Dict[str, str], bytes]:
        """GET (or HEAD) a blob URL; returns (status, headers, body), also for
        HTTP errors."""
        request = urllib.request.Request(url, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60, context=self.ssl_context()) as response:
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, dict(err.headers.items()), err.read()

    # -- control endpoints -----------------------------------------------------------

    def control(self, method: str, route: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode('utf-8')
        request = urllib.request.Request(f'{self.url}/__emulator__/{route}', data=data, method=method,
                                         headers={'Content-Type': 'application/json'})
        with urllib.request.urlopen(request, timeout=30, context=self.ssl_context()) as response:
            return json.loads(response.read().decode('utf-8'))

    def health(self) -> Dict[str, Any]:
        return self.control('GET', 'health')

    def set_faults(self, *specs: Union[str, Dict[str, Any], List[Any]]) -> List[Dict[str, Any]]:
        """Replace the active faults: set_faults('throttle:every=2', ...) or
        set_faults([...]); set_faults() clears them."""
        flat: List[Any] = []
        for spec in specs:
            flat.extend(spec if isinstance(spec, list) else [spec])
        return self.control('POST', 'faults', {'faults': flat})['faults']

    def clear_faults(self) -> None:
        self.control('DELETE', 'faults')

    def faults(self) -> List[Dict[str, Any]]:
        return self.control('GET', 'faults')['faults']

    def stats(self) -> Dict[str, Any]:
        return self.control('GET', 'stats')

    def reset_stats(self) -> Dict[str, Any]:
        return self.control('POST', 'stats/reset')

    def api_calls(self, operation: Optional[str] = None) -> int:
        """Number of ECR API requests received (of one operation, or all)."""
        stats = self.stats()
        return stats['api_calls'].get(operation, 0) if operation else stats['api_calls_total']

    def set_clock_offset(self, seconds: float) -> None:
        """Move the server's clock (SigV4 skew, URL expiry, timestamps)."""
        self.control('POST', 'clock', {'offset': seconds})


def _spec_string(spec: Dict[str, Any]) -> str:
    params = dict(spec)
    kind = params.pop('kind')
    values = [f"{name}={'+'.join(value) if isinstance(value, list) else value}" for name, value in params.items()]
    return kind + (':' + ','.join(values) if values else '')


@contextlib.contextmanager
def run_emulator(tmp_path: Union[str, 'os.PathLike[str]'], mode: str = 'thread', tls: bool = False,
                 **options: Any) -> Iterator[EmulatorHandle]:
    """Run an emulator for the duration of a ``with`` block.

    ``tmp_path`` holds the data directory (``<tmp_path>/ecr-data`` unless
    ``data_dir=`` is given) and, with ``tls=True``, a generated certificate.
    Other options are EmulatorHandle's (region, url_ttl, faults, ...).
    """
    base = os.fspath(tmp_path)
    data_dir = options.pop('data_dir', None) or os.path.join(base, 'ecr-data')
    if tls and not options.get('tls_cert'):
        options['tls_cert'], options['tls_key'] = make_self_signed_cert(os.path.join(base, 'tls'), options.get('host', '127.0.0.1'))
    handle = EmulatorHandle(data_dir, mode=mode, **options)
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


# -- seeding helpers ------------------------------------------------------------------


def upload_blob(client: Any, repository: str, data: bytes, part_size: int = 20 * MIB, registry_id: Optional[str] = None) -> str:
    """Upload ``data`` as a layer with the ECR layer upload calls; returns its
    digest.  An existing layer (LayerAlreadyExistsException) counts as done."""
    extra = {'registryId': registry_id} if registry_id else {}
    digest = 'sha256:' + hashlib.sha256(data).hexdigest()
    upload_id = client.initiate_layer_upload(repositoryName=repository, **extra)['uploadId']
    for first in range(0, len(data), part_size):
        part = data[first:first + part_size]
        client.upload_layer_part(repositoryName=repository, uploadId=upload_id, partFirstByte=first,
                                 partLastByte=first + len(part) - 1, layerPartBlob=part, **extra)
    try:
        client.complete_layer_upload(repositoryName=repository, uploadId=upload_id, layerDigests=[digest], **extra)
    except client.exceptions.LayerAlreadyExistsException:
        pass
    return digest


def image_manifest(config: bytes, layers: Sequence[bytes], media_type: str = OCI_MANIFEST) -> str:
    """The manifest text for a config blob and layer blobs (OCI or Docker
    schema 2, by ``media_type``)."""
    oci = media_type == OCI_MANIFEST
    doc = {
        'schemaVersion': 2,
        'mediaType': media_type,
        'config': {'mediaType': 'application/vnd.oci.image.config.v1+json' if oci else 'application/vnd.docker.container.image.v1+json',
                   'digest': 'sha256:' + hashlib.sha256(config).hexdigest(), 'size': len(config)},
        'layers': [{'mediaType': 'application/vnd.oci.image.layer.v1.tar+gzip' if oci else 'application/vnd.docker.image.rootfs.diff.tar.gzip',
                    'digest': 'sha256:' + hashlib.sha256(layer).hexdigest(), 'size': len(layer)} for layer in layers],
    }
    return json.dumps(doc, indent=2)


def push_image(client: Any, repository: str, layers: Sequence[bytes], config: Optional[bytes] = None, tag: Optional[str] = None,
               media_type: str = OCI_MANIFEST, registry_id: Optional[str] = None) -> Tuple[str, str]:
    """Upload the blobs and put the manifest; returns (digest, manifest text)."""
    config = config if config is not None else json.dumps({'architecture': 'amd64', 'os': 'linux', 'rootfs': {
        'type': 'layers', 'diff_ids': ['sha256:' + hashlib.sha256(layer).hexdigest() for layer in layers]}}).encode('utf-8')
    for blob in [config] + list(layers):
        upload_blob(client, repository, blob, registry_id=registry_id)
    manifest = image_manifest(config, layers, media_type)
    extra: Dict[str, str] = {'imageManifestMediaType': media_type}
    if tag:
        extra['imageTag'] = tag
    if registry_id:
        extra['registryId'] = registry_id
    response = client.put_image(repositoryName=repository, imageManifest=manifest, **extra)
    return response['image']['imageId']['imageDigest'], manifest


try:
    import pytest
except ImportError:  # pragma: no cover - fixture helpers are usable without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture
    def ecr_endpoint(tmp_path: Any) -> Iterator[EmulatorHandle]:
        """A fresh in-process emulator on 127.0.0.1 for one test."""
        with run_emulator(tmp_path) as handle:
            yield handle
