# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small blob server for transfer tests: real HTTP/1.1 on 127.0.0.1 that can misbehave on purpose.

    def test_something(blob_server):
        blob = blob_server.add(b"...", ignore_range=True)
        url = blob.get_url(False)      # a URL carrying a fake X-Amz-Signature

Behaviours of a blob (keyword arguments of ``add``; counters count down as they fire):

- ``ignore_range``: answer every GET with 200 and the whole body;
- ``wrong_content_range``: answer ranges with 206 and a Content-Range one byte off;
- ``drop_after=N, drops=C[, drop_from=OFFSET]``: close the connection after N body bytes, C times
  (only answers longer than N, starting at or after OFFSET);
- ``corruptions=C``: flip one byte of the body, C times;
- ``forbidden=C``: answer 403 to the first C requests, whatever their URL;
- ``expired_below=V``: answer 403 to URLs older than version V (``get_url(True)`` hands out the next
  version, ``get_url(False)`` the current one, 0 at first);
- ``errors=C``: answer 500 to the first C requests; ``errors_from=OFFSET``: to every range request
  starting at or after OFFSET;
- ``status=S``: always answer S;
- ``redirects=C``: answer the first C requests with a 307 to the same blob under another path;
- ``extra=N, extra_mode="length"|"close"``: send N bytes more than the blob has, either declared in
  Content-Length or with no Content-Length and the connection closed after the body;
- ``hold_from=OFFSET``: requests whose range starts at or after OFFSET wait until ``release()``.

Bodies are sent from memoryview slices or with sendfile, so the server adds little to the test
process's own memory use.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import select
import signal
import socket
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

import pytest

SECRET = "S3CR3TSIGNATURE"
"""The signature value in every URL the server hands out: it must never show in an error or result."""
_RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)")


class ServedBlob:
    """One blob on the server, with its behaviour, counters and URL provider."""

    def __init__(self, server: 'BlobServer', name: str, data: Union[bytes, str], **behaviour: Any) -> None:
        self.server = server
        self.name = name
        self.data = data
        if isinstance(data, bytes):
            self.size = len(data)
            self.digest = 'sha256:' + hashlib.sha256(data).hexdigest()
        else:
            self.size = os.path.getsize(data)
            digest = hashlib.sha256()
            with open(data, 'rb') as handle:
                for piece in iter(lambda: handle.read(1 << 20), b''):
                    digest.update(piece)
            self.digest = 'sha256:' + digest.hexdigest()
        self.behaviour = dict(behaviour)
        self.version = 0
        self.url_calls: List[bool] = []
        self.lock = threading.Lock()

    def url(self, version: Optional[int] = None) -> str:
        version = self.version if version is None else version
        return (f'http://127.0.0.1:{self.server.port}/blobs/{self.name}'
                f'?X-Amz-Signature={SECRET}{version}&X-Amz-Credential=AKIAFAKE%2F{version}&v={version}')

    def get_url(self, refresh: bool) -> str:
        """A URL provider as the transfer engine expects it."""
        with self.lock:
            self.url_calls.append(refresh)
            if refresh:
                self.version += 1
            return self.url()

    def take(self, name: str) -> bool:
        """Consume one firing of a counted behaviour."""
        with self.lock:
            left = self.behaviour.get(name, 0)
            if left:
                self.behaviour[name] = left - 1
                return True
            return False

    def view(self, start: int, end: int) -> memoryview:
        assert isinstance(self.data, bytes)
        return memoryview(self.data)[start:end]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server: '_Server'

    def log_message(self, format: str, *args: Any) -> None:  # pylint: disable=redefined-builtin
        pass

    def do_GET(self) -> None:  # pylint: disable=invalid-name
        owner = self.server.owner
        path, dummy, query = self.path.partition('?')
        entry: Dict[str, Any] = {'path': path, 'range': self.headers.get('Range'), 'status': 0, 'sent': 0}
        with owner.lock:
            owner.log.append(entry)
            owner.handling += 1
        try:
            self._answer(entry, owner, path, query)
        finally:
            # The client can have every byte before write() returns here: counters are final only now.
            with owner.finished:
                owner.handling -= 1
                owner.finished.notify_all()

    def _answer(self, entry: Dict[str, Any], owner: 'BlobServer', path: str, query: str) -> None:
        blob = owner.blobs.get(path.rsplit('/', 1)[-1])
        if blob is None:
            self._status(entry, 404)
            return
        behaviour = blob.behaviour
        wanted = self._parse_range(blob.size)
        if wanted is not None and behaviour.get('hold_from') is not None and wanted[0] >= behaviour['hold_from']:
            owner.released.wait(60)
        if behaviour.get('status'):
            self._status(entry, behaviour['status'])
            return
        version = int(dict(item.partition('=')[::2] for item in query.split('&')).get('v') or 0)
        if blob.take('forbidden') or version < behaviour.get('expired_below', 0):
            self._status(entry, 403)
            return
        if blob.take('errors') or (wanted is not None and wanted[0] >= behaviour.get('errors_from', blob.size + 1)):
            self._status(entry, 500)
            return
        if wanted is not None and wanted[0] >= blob.size:
            self._status(entry, 416, {'Content-Range': f'bytes */{blob.size}'})
            return
        if blob.take('redirects'):
            self._status(entry, 307, {'Location': f'/moved/{blob.name}?{query}'})
            return
        if wanted is None or behaviour.get('ignore_range'):
            status, start, end = 200, 0, blob.size
        else:
            status, start, end = 206, wanted[0], wanted[1] + 1
        length = end - start
        extra = behaviour.get('extra', 0)
        self.send_response(status)
        self.send_header('Content-Type', 'application/octet-stream')
        if status == 206:
            shift = 1 if behaviour.get('wrong_content_range') else 0
            self.send_header('Content-Range', f'bytes {start + shift}-{end - 1 + shift}/{blob.size}')
        if extra and behaviour.get('extra_mode', 'length') == 'close':
            self.send_header('Connection', 'close')
            self.close_connection = True  # pylint: disable=attribute-defined-outside-init
        else:
            self.send_header('Content-Length', str(length + extra))
        self.end_headers()
        entry['status'] = status
        drop = behaviour.get('drop_after')
        if drop is not None and length > drop and start >= behaviour.get('drop_from', 0) and blob.take('drops'):
            self._send(entry, blob, start, start + drop)
            self._abort()
            return
        corrupt = blob.take('corruptions')
        self._send(entry, blob, start, end, corrupt)
        if extra:
            self.wfile.write(b'\0' * extra)
            entry['sent'] += extra

    def _parse_range(self, size: int) -> Optional[tuple]:
        match = _RANGE_RE.fullmatch(self.headers.get('Range', '').strip())
        if match is None:
            return None
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else size - 1
        return first, min(last, size - 1)

    def _status(self, entry: Dict[str, Any], status: int, headers: Optional[Dict[str, str]] = None) -> None:
        body = f'<Error><Code>{status}</Code></Error>'.encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header('Content-Type', 'application/xml')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        entry['status'] = status

    def _send(self, entry: Dict[str, Any], blob: ServedBlob, start: int, end: int, corrupt: bool = False) -> None:
        try:
            if isinstance(blob.data, str):
                with open(blob.data, 'rb') as handle:
                    while start < end:
                        sent = self.connection.sendfile(handle, start, end - start)
                        if not sent:
                            break
                        start += sent
                        entry['sent'] += sent
                return
            if corrupt and end > start:
                middle = (start + end) // 2
                self.wfile.write(blob.view(start, middle))
                self.wfile.write(bytes([blob.view(middle, middle + 1)[0] ^ 0xFF]))
                self.wfile.write(blob.view(middle + 1, end))
            else:
                self.wfile.write(blob.view(start, end))
            entry['sent'] += end - start
        except OSError:
            self.close_connection = True  # pylint: disable=attribute-defined-outside-init

    def _abort(self) -> None:
        self.close_connection = True  # pylint: disable=attribute-defined-outside-init
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: 'BlobServer'

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up early are part of the tests


class BlobServer:
    """The server; ``log`` holds one dict per request (path, range, status, body bytes sent)."""

    def __init__(self) -> None:
        self.blobs: Dict[str, ServedBlob] = {}
        self.log: List[Dict[str, Any]] = []
        self.lock = threading.Lock()
        self.finished = threading.Condition(self.lock)
        self.handling = 0
        self.released = threading.Event()
        self._server = _Server(('127.0.0.1', 0), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name='blob-server', daemon=True)
        self._thread.start()

    def add(self, data: Union[bytes, str], **behaviour: Any) -> ServedBlob:
        blob = ServedBlob(self, f'blob{len(self.blobs)}', data, **behaviour)
        self.blobs[blob.name] = blob
        return blob

    def release(self) -> None:
        self.released.set()

    def requests(self, blob: Optional[ServedBlob] = None) -> List[Dict[str, Any]]:
        with self.lock:
            return [dict(entry) for entry in self.log if blob is None or entry['path'].endswith('/' + blob.name)]

    def bytes_sent(self, blob: Optional[ServedBlob] = None) -> int:
        """Body bytes sent, once the requests under way have been answered."""
        with self.finished:
            self.finished.wait_for(lambda: not self.handling, timeout=10)
        return sum(entry['sent'] for entry in self.requests(blob))

    def stop(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


@pytest.fixture
def blob_server() -> Iterator[BlobServer]:
    server = BlobServer()
    try:
        yield server
    finally:
        server.stop()


NOBODY = 65534


def run_as_nobody(action: Callable[[], Any], timeout: float = 30.0) -> str:
    """Run ``action()`` in a forked child that dropped to uid/gid 65534 (``nobody``), as another local
    user laying a trap would; return "ok" or "<exception type>: <message>". Needs root. The child never
    returns into pytest and is killed after ``timeout`` seconds ("timeout")."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        report = "ok"
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action()
        except BaseException as exc:  # pylint: disable=broad-except
            report = f"{type(exc).__name__}: {exc}"
        try:
            os.write(write_end, report.encode())
        finally:
            os._exit(0)  # pylint: disable=protected-access
    os.close(write_end)
    chunks = []
    try:
        while select.select([read_end], [], [], timeout)[0]:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
            chunks = [b"timeout"]
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    return b"".join(chunks).decode()


@pytest.fixture
def as_nobody() -> Callable[[Callable[[], Any]], str]:
    """:func:`run_as_nobody`, for tests where another local user (uid 65534) prepares the attack."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user (uid 65534)")
    return run_as_nobody


@pytest.fixture
def shared_tmp() -> Iterator[str]:
    """A directory like /tmp (owned by root, mode 1777) that uid 65534 can reach, for traps laid by
    another user; pytest's own tmp_path is closed to other users."""
    import shutil  # pylint: disable=import-outside-toplevel
    import tempfile  # pylint: disable=import-outside-toplevel
    path = tempfile.mkdtemp(prefix="ecrkit-shared-", dir="/tmp")
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
