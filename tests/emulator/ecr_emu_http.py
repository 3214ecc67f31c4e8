# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The HTTP layer: a threaded HTTP/1.1 (keep-alive) server that routes

    POST /                         the ECR JSON 1.1 API (SigV4 checked)
    GET|HEAD /layers/...?X-Amz-*   blobs, through expiring signed URLs
    /__emulator__/...              control endpoints (no auth; stats, faults, clock)
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Tuple, Union
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from ecr_emu_faults import BlobPlan, FaultSet
from ecr_emu_model import JSON_CONTENT_TYPE, OPERATIONS, TARGET_PREFIX, ApiError, serialization_error, validate_request
from ecr_emu_ops import Operations, RequestContext
from ecr_emu_sigv4 import BlobAccessError, BlobUrlSigner, SigV4Verifier
from ecr_emu_store import Store

CONTROL_PREFIX = '/__emulator__/'
BLOB_PATH_RE = re.compile(r'/layers/([^/]+)/([0-9]{12})/(.+)/(sha256)/([a-f0-9]{64})')
CHUNK = 1024 * 1024


class Stats:
    """Counters the tests read through GET /__emulator__/stats."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.api_calls: Dict[str, int] = {}
            self.api_errors: Dict[str, Dict[str, int]] = {}
            self.auth_failures: Dict[str, int] = {}
            self.faults_fired: Dict[str, int] = {}
            self.blob_requests = 0
            self.blob_status: Dict[str, int] = {}
            self.blob_bytes = 0
            self.blob_gets: Dict[str, int] = {}
            self.since = time.time()

    def api_call(self, operation: str) -> None:
        with self.lock:
            self.api_calls[operation] = self.api_calls.get(operation, 0) + 1

    def api_error(self, operation: str, code: str) -> None:
        with self.lock:
            errors = self.api_errors.setdefault(operation, {})
            errors[code] = errors.get(code, 0) + 1

    def auth_failure(self, code: str) -> None:
        with self.lock:
            self.auth_failures[code] = self.auth_failures.get(code, 0) + 1

    def fault(self, kind: str) -> None:
        with self.lock:
            self.faults_fired[kind] = self.faults_fired.get(kind, 0) + 1

    def blob_response(self, digest: Optional[str], status: int, method: str) -> None:
        with self.lock:
            self.blob_requests += 1
            self.blob_status[str(status)] = self.blob_status.get(str(status), 0) + 1
            if digest and method == 'GET' and status in (200, 206):
                self.blob_gets[digest] = self.blob_gets.get(digest, 0) + 1

    def blob_sent(self, count: int) -> None:
        with self.lock:
            self.blob_bytes += count

    def snapshot(self) -> Dict[str, Any]:
        with self.lock:
            return {
                'api_calls': dict(self.api_calls),
                'api_calls_total': sum(self.api_calls.values()),
                'api_errors': {op: dict(codes) for op, codes in self.api_errors.items()},
                'auth_failures': dict(self.auth_failures),
                'faults_fired': dict(self.faults_fired),
                'blob_requests': self.blob_requests,
                'blob_status': dict(self.blob_status),
                'blob_bytes': self.blob_bytes,
                'blob_gets': dict(self.blob_gets),
                'since': self.since,
            }


class EventLog:
    """Optional log file: one line per request naming the operation (or
    blob) and the status.  Secrets, signatures and query strings are never
    written."""

    def __init__(self, path: Optional[str]) -> None:
        self.lock = threading.Lock()
        self.handle = open(path, 'a', encoding='utf-8') if path else None  # pylint: disable=consider-using-with

    def write(self, text: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {text}\n"
        with self.lock:
            if self.handle is not None:
                self.handle.write(line)
                self.handle.flush()

    def close(self) -> None:
        with self.lock:
            if self.handle is not None:
                self.handle.close()
                self.handle = None


class EmulatorApp:
    """Everything a request handler needs, shared by all connections."""

    def __init__(self, store: Store, account_id: str, access_key: str, secret_key: str, session_token: Optional[str],
                 url_ttl: int, bandwidth: int, faults: FaultSet, log: EventLog) -> None:
        self.store = store
        self.account_id = account_id
        self.clock_offset = 0.0
        self.verifier = SigV4Verifier(access_key, secret_key, session_token, clock=self.now)
        self.signer = BlobUrlSigner(store.url_secret(), clock=self.now)
        self.ops = Operations(store, self.signer, url_ttl, clock=self.now)
        self.bandwidth = bandwidth
        self.faults = faults
        self.stats = Stats()
        self.log = log

    def now(self) -> float:
        return time.time() + self.clock_offset


def parse_range(header: Optional[str], size: int) -> Union[None, str, Tuple[int, int]]:
    """A single ``bytes=`` range -> (first, last) inclusive; 'unsatisfiable';
    or None to serve the whole blob (no header, bad syntax, several ranges,
    as S3 does)."""
    if not header:
        return None
    unit, sep, spec = header.strip().partition('=')
    if unit.strip().lower() != 'bytes' or not sep or ',' in spec:
        return None
    first_text, sep, last_text = spec.strip().partition('-')
    if not sep:
        return None
    if not first_text:
        if not last_text.isdigit():
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return 'unsatisfiable'
        return max(0, size - suffix), size - 1
    if not first_text.isdigit() or (last_text and not last_text.isdigit()):
        return None
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    if first >= size:
        return 'unsatisfiable'
    return first, min(int(last_text), size - 1) if last_text else size - 1


def s3_error_xml(code: str, message: str, extra: Optional[Dict[str, str]] = None) -> bytes:
    parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>']
    for name, value in (extra or {}).items():
        parts.append(f'<{name}>{escape(value)}</{name}>')
    parts.append(f'<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId><HostId>ecrkit-emulator</HostId></Error>')
    return ''.join(parts).encode('utf-8')


class Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server_version = 'ecrkit-ecr-emulator'
    sys_version = ''
    # Idle keep-alive connections are dropped after this long.
    timeout = 120
    server: 'EmulatorServer'

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle
        # and the client's delayed ACK add ~40 ms to every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.connection, ssl.SSLSocket):
            # The listening socket does not handshake on accept, so a slow
            # client cannot stall the accept loop; do it here, per thread.
            self.connection.do_handshake()

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:  # resets, timeouts, TLS errors: the client is gone
            self.close_connection = True  # pylint: disable=attribute-defined-outside-init

    def log_message(self, format: str, *args: Any) -> None:  # pylint: disable=redefined-builtin
        # The default writes request lines (with signed query strings) to stderr.
        pass

    @property
    def app(self) -> EmulatorApp:
        return self.server.app

    # -- plumbing ----------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get('Content-Length') or 0)
        return self.rfile.read(length) if length > 0 else b''

    def _respond(self, status: int, body: bytes, content_type: str, headers: Optional[Dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        # Headers and body leave in one write (what end_headers() does, plus the body).
        self._headers_buffer.append(b'\r\n')
        if self.command != 'HEAD':
            self._headers_buffer.append(body)
        self.flush_headers()

    def _respond_json(self, status: int, doc: Any, headers: Optional[Dict[str, str]] = None) -> None:
        self._respond(status, json.dumps(doc).encode('utf-8'), JSON_CONTENT_TYPE, headers)

    def _base_url(self) -> str:
        scheme = 'https' if isinstance(self.connection, ssl.SSLSocket) else 'http'
        host = self.headers.get('Host') or ':'.join(str(part) for part in self.server.server_address[:2])
        return f'{scheme}://{host}'

    # -- routing -------------------------------------------------------------------

    def do_POST(self) -> None:  # pylint: disable=invalid-name
        path = self.path.partition('?')[0]
        body = self._read_body()
        if path == '/':
            self._handle_api(body)
        elif path.startswith(CONTROL_PREFIX):
            self._handle_control('POST', path, body)
        else:
            self._respond(404, s3_error_xml('NoSuchKey', 'The specified key does not exist.'), 'application/xml')

    def do_GET(self) -> None:  # pylint: disable=invalid-name
        path = self.path.partition('?')[0]
        if path.startswith(CONTROL_PREFIX):
            self._handle_control('GET', path, b'')
        else:
            self._handle_blob()

    def do_HEAD(self) -> None:  # pylint: disable=invalid-name
        self._handle_blob()

    def do_DELETE(self) -> None:  # pylint: disable=invalid-name
        path = self.path.partition('?')[0]
        body = self._read_body()
        if path.startswith(CONTROL_PREFIX):
            self._handle_control('DELETE', path, body)
        else:
            self._respond(405, b'', 'text/plain')

    # -- ECR API -------------------------------------------------------------------

    def _api_error(self, operation: str, error: ApiError, started: float, request_id: str) -> None:
        self.app.stats.api_error(operation, error.code)
        self._respond_json(error.status, error.body(), {'x-amzn-RequestId': request_id, 'x-amzn-ErrorType': error.code})
        self.app.log.write(f'API {operation} {error.status} {error.code} {(time.monotonic() - started) * 1000:.1f}ms')

    def _handle_api(self, body: bytes) -> None:
        started = time.monotonic()
        request_id = str(uuid.uuid4())
        app = self.app
        target = self.headers.get('X-Amz-Target') or ''
        prefix, dummy, operation = target.partition('.')
        known = prefix == TARGET_PREFIX and operation in OPERATIONS
        name = operation if known else (target or '<no X-Amz-Target>')
        app.stats.api_call(name)
        raw_path, dummy, raw_query = self.path.partition('?')
        try:
            credential = app.verifier.verify('POST', raw_path, raw_query, self.headers, body)
        except ApiError as err:
            app.stats.auth_failure(err.code)
            self._api_error(name, err, started, request_id)
            return
        try:
            fault = app.faults.api_fault(name)
            if fault is not None:
                app.stats.fault(fault)
                if fault == 'throttle':
                    raise ApiError('ThrottlingException', 'Rate exceeded')
                if fault == 'access-denied':
                    raise ApiError('AccessDeniedException', f'User: arn:aws:iam::{app.account_id}:user/ecrkit-test is not '
                                   f'authorized to perform: ecr:{name} because no identity-based policy allows the ecr:{name} action')
                if fault != 'lost-response':
                    raise ApiError('ServerException', 'We encountered an internal error. Please try again.', 500)
            if not known:
                raise ApiError('UnknownOperationException', f"Unknown operation {target or '(no X-Amz-Target header)'}")
            try:
                doc = json.loads(body.decode('utf-8') or '{}')
            except ValueError:
                raise serialization_error('Unable to parse the request body as JSON') from None
            params = validate_request(operation, doc)
            ctx = RequestContext(credential.region, app.account_id, self._base_url())
            result = app.ops.dispatch(operation, ctx, params)
            if fault == 'lost-response':  # carried out, but the client never learns it
                raise ApiError('ServerException', 'We encountered an internal error. Please try again.', 500)
        except ApiError as err:
            self._api_error(name, err, started, request_id)
            return
        except Exception:  # pylint: disable=broad-exception-caught
            app.log.write('API %s internal error: %s' % (name, traceback.format_exc().replace('\n', ' | ')))
            self._api_error(name, ApiError('ServerException', 'An internal error occurred in the emulator.', 500), started, request_id)
            return
        self._respond_json(200, result, {'x-amzn-RequestId': request_id})
        app.log.write(f'API {name} 200 {(time.monotonic() - started) * 1000:.1f}ms')

    # -- blobs -----------------------------------------------------------------------

    def _blob_error(self, status: int, code: str, message: str, extra: Optional[Dict[str, str]] = None,
                    digest: Optional[str] = None, headers: Optional[Dict[str, str]] = None) -> None:
        self.app.stats.blob_response(digest, status, self.command)
        self._respond(status, s3_error_xml(code, message, extra), 'application/xml', headers)
        self.app.log.write(f"BLOB {self.command} {digest or '-'} {status} {code}")

    def _handle_blob(self) -> None:
        app = self.app
        path, dummy, query = self.path.partition('?')
        match = BLOB_PATH_RE.fullmatch(path)
        if match is None:
            self._blob_error(404, 'NoSuchKey', 'The specified key does not exist.')
            return
        digest = f'{match.group(4)}:{match.group(5)}'
        params = dict(parse_qsl(query, keep_blank_values=True))
        try:
            app.signer.check(path, params, early_expiry=lambda issued: app.faults.url_expired(issued, app.now()))
        except BlobAccessError as err:
            self._blob_error(err.status, err.code, err.message, err.extra, digest)
            return
        blob_path = app.store.blob_path(digest)
        try:
            handle = open(blob_path, 'rb')  # pylint: disable=consider-using-with
        except OSError:
            self._blob_error(404, 'NoSuchKey', 'The specified key does not exist.', digest=digest)
            return
        with handle:
            size = os.fstat(handle.fileno()).st_size
            wanted = parse_range(self.headers.get('Range'), size)
            if wanted == 'unsatisfiable':
                self._blob_error(416, 'InvalidRange', 'The requested range is not satisfiable',
                                 {'RangeRequested': self.headers.get('Range', ''), 'ActualObjectSize': str(size)},
                                 digest, {'Content-Range': f'bytes */{size}'})
                return
            headers = {'Accept-Ranges': 'bytes', 'ETag': f'"{digest[7:39]}"', 'x-amz-request-id': uuid.uuid4().hex[:16].upper(),
                       'Last-Modified': self.date_time_string(os.fstat(handle.fileno()).st_mtime)}
            if wanted is None:
                status, start, length = 200, 0, size
            else:
                first, last = wanted  # type: ignore[misc]
                status, start, length = 206, first, last - first + 1
                headers['Content-Range'] = f'bytes {first}-{last}/{size}'
            self.send_response(status)
            self.send_header('Content-Type', 'application/octet-stream')
            self.send_header('Content-Length', str(length))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            app.stats.blob_response(digest, status, self.command)
            if self.command == 'HEAD':
                app.log.write(f'BLOB HEAD {digest} {status}')
                return
            plan = app.faults.blob_plan(digest, start, length)
            for kind, active in (('drop-blob', plan.drop_after is not None), ('stall-blob', plan.stall is not None),
                                 ('corrupt-blob', bool(plan.corrupt_offsets))):
                if active:
                    app.stats.fault(kind)
            sent = 0
            try:
                sent = self._send_body(handle, start, length, plan)
            finally:
                app.stats.blob_sent(sent)
                app.log.write(f"BLOB GET {digest} {status} bytes={length} sent={sent}{'' if plan.empty else ' faults'}")

    def _abort(self) -> None:
        self.close_connection = True  # pylint: disable=attribute-defined-outside-init
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send_body(self, handle: Any, start: int, length: int, plan: BlobPlan) -> int:
        sock = self.connection
        rate = self.app.bandwidth
        plain = not isinstance(sock, ssl.SSLSocket)
        if plain and not rate and plan.empty:
            # The fast path: the kernel copies the file to the socket.
            return sock.sendfile(handle, start, length)
        use_sendfile = plain and not plan.corrupt_offsets
        chunk = max(16 * 1024, min(CHUNK, rate // 20)) if rate else CHUNK
        sent = 0
        began = time.monotonic()
        stalled = False
        while sent < length:
            size = min(chunk, length - sent)
            if plan.drop_after is not None:
                if sent >= plan.drop_after:
                    self._abort()
                    return sent
                size = min(size, plan.drop_after - sent)
            if plan.stall is not None and not stalled:
                if sent >= plan.stall[0]:
                    time.sleep(plan.stall[1])
                    began += plan.stall[1]
                    stalled = True
                    continue
                size = min(size, plan.stall[0] - sent)
            position = start + sent
            if use_sendfile:
                count = sock.sendfile(handle, position, size)
            else:
                data = bytearray(os.pread(handle.fileno(), size, position))
                for offset in plan.corrupt_offsets:
                    if position <= offset < position + len(data):
                        data[offset - position] ^= 0xFF
                sock.sendall(data)
                count = len(data)
            if count <= 0:
                break
            sent += count
            if rate:
                delay = began + sent / float(rate) - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        return sent

    # -- control -----------------------------------------------------------------------

    def _handle_control(self, method: str, path: str, body: bytes) -> None:
        app = self.app
        route = path[len(CONTROL_PREFIX):].strip('/')
        status, doc = 200, None
        try:
            payload = json.loads(body.decode('utf-8') or '{}') if body else {}
            if (method, route) == ('GET', 'health'):
                doc = {'status': 'ok', 'accountId': app.account_id}
            elif (method, route) == ('GET', 'stats'):
                doc = app.stats.snapshot()
            elif (method, route) == ('POST', 'stats/reset'):
                app.stats.reset()
                doc = app.stats.snapshot()
            elif (method, route) == ('GET', 'faults'):
                doc = {'faults': app.faults.describe()}
            elif (method, route) == ('POST', 'faults'):
                app.faults.replace(list(payload.get('faults', [])))
                doc = {'faults': app.faults.describe()}
            elif (method, route) == ('DELETE', 'faults'):
                app.faults.replace([])
                doc = {'faults': []}
            elif (method, route) == ('GET', 'clock'):
                doc = {'offset': app.clock_offset, 'now': app.now()}
            elif (method, route) == ('POST', 'clock'):
                app.clock_offset = float(payload.get('offset', 0))
                doc = {'offset': app.clock_offset, 'now': app.now()}
            else:
                status, doc = 404, {'error': f'unknown control endpoint {method} {path}'}
        except (ValueError, TypeError, AttributeError) as err:
            status, doc = 400, {'error': str(err)}
        self._respond(status, json.dumps(doc).encode('utf-8'), 'application/json')
        app.log.write(f'CONTROL {method} {path} {status}')


class EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: Tuple[str, int], app: EmulatorApp, ssl_context: Optional[ssl.SSLContext] = None) -> None:
        self.app = app
        self.connections: set = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, Handler)
        if ssl_context is not None:
            self.socket = ssl_context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Keep tracebacks of broken connections off stderr; log them instead.
        self.app.log.write('CONNECTION error from %s: %s' % (client_address[0], traceback.format_exc().replace('\n', ' | ')))

    def close_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
