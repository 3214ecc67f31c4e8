# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The blob HTTP client through real downloads: redirects (and what they may carry), proxies, keep-alive
connections, TLS, and errors that never show a URL."""

from __future__ import annotations

import http.server
import os
import select
import socket
import ssl
import sys
import threading

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils.blobhttp import HttpClient, TransferError
from ansible_collections.ecrkit.images.plugins.module_utils.download import BlobJob, download_blobs
from ansible_collections.ecrkit.images.plugins.module_utils.pool import TransferPool

HERE = os.path.dirname(os.path.abspath(__file__))
EMULATOR_DIR = os.path.join(HERE, "..", "..", "..", "emulator")
for directory in (HERE, EMULATOR_DIR):  # the helpers beside this file, the local ECR endpoint
    if directory not in sys.path:
        sys.path.insert(0, directory)

# pylint: disable=wrong-import-position,unused-import,wrong-import-order
from fixture import make_self_signed_cert, run_emulator  # noqa: E402
from transfer_support import CHUNK, SECRET, assert_clean_error, blob_bytes, ecr_jobs, job_for, pool, pushed_image, read  # noqa: E402

# pylint: disable=redefined-outer-name


# -- redirects and URLs ----------------------------------------------------------------------------


def test_a_refused_connection_names_the_host_and_not_the_url(tmp_path):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens there once this socket closes
    url = f"http://127.0.0.1:{port}/blob?X-Amz-Signature={SECRET}"
    with pool() as workers, pytest.raises(TransferError) as exc_info:
        download_blobs(workers, [BlobJob("sha256:" + "1" * 64, 10, str(tmp_path / "p"), lambda refresh: url)])
    assert "from 127.0.0.1 failed 4 times in a row (Connection refused)" in str(exc_info.value)
    assert_clean_error(exc_info)


@pytest.mark.parametrize("url", ["ftp://example.test/blob?X-Amz-Signature={secret}",
                                 "http://127.0.0.1:{port}/blob?X-Amz-Signature={secret} with space",
                                 "http://example.test:99999/blob?X-Amz-Signature={secret}"])
def test_an_unusable_url_fails_without_showing_it(blob_server, tmp_path, url):
    url = url.format(secret=SECRET, port=blob_server.port)
    with pool() as workers, pytest.raises(TransferError, match="download URL given for blob") as exc_info:
        download_blobs(workers, [BlobJob("sha256:" + "1" * 64, 10, str(tmp_path / "p"), lambda refresh: url)])
    assert_clean_error(exc_info)


def test_redirects_are_followed(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(2 * CHUNK), redirects=3)
    with pool() as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK)
    assert read(result.path) == blob.data
    assert any(entry["path"].startswith("/moved/") for entry in blob_server.requests(blob))


class Hop:
    """A one-purpose HTTP(S) server on ``host``: every GET is answered by ``answer(path)`` -> (status,
    headers, body); ``seen`` holds each request's path and headers (names in lower case)."""

    def __init__(self, answer, host="127.0.0.1", tls=None):
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # pylint: disable=arguments-differ
                pass

            def do_GET(self):  # pylint: disable=invalid-name
                seen.append((self.path, {name.lower(): value for name, value in self.headers.items()}))
                status, headers, body = answer(self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # clients that refuse the certificate hang up

        self.server = Server((host, 0), Handler)
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.host = host
        self.port = self.server.server_address[1]
        self.scheme = "https" if tls else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path, host=None):
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""
    return make_self_signed_cert(str(tmp_path_factory.mktemp("tls")))


def redirect_to(location):
    return lambda path: (302, {"Location": location}, b"")


def test_a_redirect_from_https_to_http_is_refused_before_any_plain_request(blob_server, tmp_path, tls_files):
    blob = blob_server.add(blob_bytes(CHUNK))
    hop = Hop(redirect_to(blob.url()), tls=tls_files)
    job = BlobJob(blob.digest, blob.size, str(tmp_path / "p"), lambda refresh: hop.url(f"/start?X-Amz-Signature={SECRET}"))
    try:
        with pool(verify=tls_files[0]) as workers, pytest.raises(TransferError) as exc_info:
            download_blobs(workers, [job], chunk_size=CHUNK)
    finally:
        hop.close()
    assert exc_info.value.code == "redirect_refused"
    assert str(exc_info.value).startswith("The blob storage redirected an https download to plain http")
    assert hop.seen and not blob_server.requests()  # refused before connecting: nothing went out in the clear
    assert str(blob_server.port) not in str(exc_info.value)
    assert_clean_error(exc_info)


def test_a_redirect_to_another_host_carries_no_credentials():
    target = Hop(lambda path: (200, {}, b"data"))
    start = Hop(redirect_to(target.url(f"/there?X-Amz-Signature={SECRET}", host="localhost")))
    sent = {"Range": "bytes=0-3", "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAFAKE", "Cookie": "session=1",
            "Proxy-Authorization": "Basic dXNlcjpwYXNz", "X-Amz-Security-Token": "token"}
    client = HttpClient()
    try:
        response = client.get(start.url("/start"), sent)
        body = bytearray(16)
        assert response.status == 200 and body[:response.readinto(memoryview(body))] == b"data"
        response.close()
    finally:
        client.close()
        start.close()
        target.close()
    assert start.seen[0][1]["authorization"] == sent["Authorization"]  # the origin asked for gets what it was given
    (path, headers), = target.seen
    assert path == f"/there?X-Amz-Signature={SECRET}" and headers["host"] == f"localhost:{target.port}"
    assert headers["range"] == "bytes=0-3"
    assert not {"authorization", "cookie", "proxy-authorization", "x-amz-security-token"} & set(headers)


def test_a_redirect_to_another_host_is_followed_for_a_download(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(3 * CHUNK))
    hop = Hop(lambda path: (307, {"Location": blob.url().replace("127.0.0.1", "localhost")}, b""))
    job = BlobJob(blob.digest, blob.size, str(tmp_path / "p"), lambda refresh: hop.url(f"/start?X-Amz-Signature={SECRET}"))
    try:
        with pool() as workers:
            result, = download_blobs(workers, [job], chunk_size=CHUNK)
    finally:
        hop.close()
    assert read(result.path) == blob.data
    assert len(hop.seen) == len(blob_server.requests(blob)) == 3  # one redirect per range, every range served
    assert all(entry["range"] for entry in blob_server.requests(blob))


@pytest.mark.parametrize("chain", ["loop", "tls_mismatch", "refused", "not_http", "unparsable", "not_ascii"])
def test_a_failing_redirect_chain_names_no_url(tmp_path, tls_files, chain):
    """Wherever a redirect leads, the error names the blob and the host asked first, nothing of the target."""
    other = "127.0.0.2"  # loopback too, but another host: it must not show
    with socket.socket() as unused:
        unused.bind((other, 0))
        closed_port = unused.getsockname()[1]
    query = f"?X-Amz-Signature={SECRET}&X-Amz-Credential=AKIAFAKE"
    target = None
    if chain == "tls_mismatch":  # the certificate is for 127.0.0.1 and localhost, not 127.0.0.2
        target = Hop(lambda path: (200, {}, b"x" * 10), host=other, tls=tls_files)
        location = target.url("/target-path" + query)
    else:
        location = {"loop": "/hop-back" + query,  # more than 5 redirects
                    "refused": f"https://{other}:{closed_port}/target-path" + query,
                    "not_http": "file:///etc/passwd" + query,
                    "unparsable": f"https://[{other}/target-path" + query,
                    "not_ascii": f"/target-path-\u00e9-{other}" + query}[chain]
    start = Hop(redirect_to(location), tls=tls_files)
    job = BlobJob("sha256:" + "1" * 64, 10, str(tmp_path / "p"), lambda refresh: start.url("/start" + query))
    try:
        with pool(verify=tls_files[0]) as workers, pytest.raises(TransferError) as exc_info:
            download_blobs(workers, [job])
    finally:
        start.close()
        if target is not None:
            target.close()
    text = str(exc_info.value)
    assert "sha256:" + "1" * 64 in text or exc_info.value.code == "redirect_refused"
    for shown in (other, "://", "target-path", "hop-back", "passwd", str(closed_port), "AKIAFAKE"):
        assert shown not in text
    assert_clean_error(exc_info)


# -- proxies, connections, TLS ---------------------------------------------------------------------


class TinyProxy:
    """A forward proxy for the tests: CONNECT tunnels and absolute-form GETs, every host mapped to one
    local address; it records the request lines and Proxy-Authorization headers it saw."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.seen = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                client, dummy = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(client,), daemon=True).start()

    def handle(self, client):
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                data = client.recv(65536)
                if not data:
                    return
                head += data
            lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            self.seen.append((lines[0], [line for line in lines if line.lower().startswith("proxy-authorization")]))
            with socket.create_connection(self.upstream) as server:
                if lines[0].startswith("CONNECT "):
                    client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                else:
                    server.sendall(head)
                self.pipe(client, server)

    @staticmethod
    def pipe(one, other):
        peers = {one: other, other: one}
        while True:
            readable, dummy, dummy = select.select(list(peers), [], [], 30)
            if not readable:
                return
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                peers[sock].sendall(data)

    def close(self):
        self.listener.close()


def test_plain_http_goes_through_the_proxy_from_the_environment(blob_server, tmp_path, monkeypatch):
    proxy = TinyProxy(("127.0.0.1", blob_server.port))
    monkeypatch.setenv("http_proxy", f"http://user:p%40ss@127.0.0.1:{proxy.port}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    blob = blob_server.add(blob_bytes(3 * CHUNK))

    def far_away(refresh):
        return blob.get_url(refresh).replace(f"127.0.0.1:{blob_server.port}", "blobs.example.test")

    try:
        with pool() as workers:
            result, = download_blobs(workers, [BlobJob(blob.digest, blob.size, str(tmp_path / "p"), far_away)],
                                     chunk_size=CHUNK)
    finally:
        proxy.close()
    assert read(result.path) == blob.data
    assert proxy.seen and all(line.startswith("GET http://blobs.example.test/blobs/") for line, dummy in proxy.seen)
    assert all(auth == ["Proxy-Authorization: Basic dXNlcjpwQHNz"] for dummy, auth in proxy.seen)


def test_loopback_is_never_proxied(blob_server, tmp_path, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # discard port: nothing listens
    blob = blob_server.add(blob_bytes(CHUNK))
    with pool() as workers:
        result, = download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK)
    assert read(result.path) == blob.data


def test_keep_alive_connections_are_reused(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(12 * CHUNK))
    with pool(1) as workers:
        download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK)
        assert workers.http.connections_opened == 1


def test_a_bad_ca_bundle_is_reported():
    with pytest.raises(TransferError, match="CA bundle /nonexistent/ca.pem"):
        TransferPool(verify="/nonexistent/ca.pem")


def test_ecr_over_tls_with_a_ca_bundle_and_through_a_connect_proxy(tmp_path, monkeypatch):
    with run_emulator(tmp_path, tls=True) as endpoint:
        client, image, blobs = pushed_image(endpoint, tmp_path, count=1)
        with pool(2, verify=endpoint.ca_bundle) as workers:
            results = download_blobs(workers, ecr_jobs(client, blobs, tmp_path / "out"), chunk_size=CHUNK)
        assert read(results[0].path) == image.read_blob(blobs[0].digest)

        untrusted = r"TLS verification of 127\.0\.0\.1 failed .*\(self-signed certificate\)"
        with pool(2) as workers, pytest.raises(TransferError, match=untrusted) as exc_info:
            download_blobs(workers, ecr_jobs(client, blobs, tmp_path / "untrusted"), chunk_size=CHUNK)
        assert_clean_error(exc_info)

        proxy = TinyProxy(("127.0.0.1", endpoint.port))
        monkeypatch.setenv("https_proxy", f"127.0.0.1:{proxy.port}")
        far = [BlobJob(job.digest, job.size, job.path, lambda refresh, job=job: job.get_url(refresh).replace(
            f"127.0.0.1:{endpoint.port}", "ecr-layers.example.test"))
            for job in ecr_jobs(client, blobs, tmp_path / "proxied")]
        try:
            with pool(2, verify=False) as workers:
                results = download_blobs(workers, far, chunk_size=CHUNK)
        finally:
            proxy.close()
        assert read(results[0].path) == image.read_blob(blobs[0].digest)
        assert proxy.seen and all(line.startswith("CONNECT ecr-layers.example.test:443 HTTP/1.") for line, dummy in proxy.seen)
