# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A local Amazon ECR-compatible endpoint for the ecrkit.images tests.

It speaks the ECR JSON 1.1 API (the calls the collection uses), checks SigV4
signatures, keeps repositories, manifests and blobs on disk, and serves blobs
from expiring signed URLs with Range support.  See README.md next to this
file.  Run it:

    python3 tests/emulator/ecr_emulator.py --listen 127.0.0.1:0 --data DIR --ready-file FILE

or start it in-process with ``Emulator(data_dir).start()``.
"""

from __future__ import annotations

import argparse
import os
import signal
import ssl
import sys
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    # The sibling modules are imported by name, whoever imports this file.
    sys.path.insert(0, HERE)

# pylint: disable=wrong-import-position
from ecr_emu_faults import FaultSet, parse_bytes  # noqa: E402
from ecr_emu_faults import __doc__ as FAULTS_HELP  # noqa: E402
from ecr_emu_http import EmulatorApp, EmulatorServer, EventLog  # noqa: E402
from ecr_emu_store import Store  # noqa: E402

# The documented test key pair: it opens nothing but this emulator.
DEFAULT_ACCESS_KEY = 'AKIAECRKITTEST000000'
DEFAULT_SECRET_KEY = 'ecrkit+emulator/test/secret/key/0000000000'
DEFAULT_ACCOUNT_ID = '123456789012'
DEFAULT_URL_TTL = 3600


class Emulator:
    """One emulator server.  ``start()`` binds and serves from a background
    thread and returns the URL; ``stop()`` shuts it down."""

    def __init__(self, data_dir: str, host: str = '127.0.0.1', port: int = 0, tls_cert: Optional[str] = None,
                 tls_key: Optional[str] = None, access_key: str = DEFAULT_ACCESS_KEY, secret_key: str = DEFAULT_SECRET_KEY,
                 session_token: Optional[str] = None, account_id: str = DEFAULT_ACCOUNT_ID, url_ttl: int = DEFAULT_URL_TTL,
                 bandwidth_per_connection: Union[int, str] = 0, faults: Sequence[Union[str, Dict[str, Any]]] = (),
                 log_file: Optional[str] = None) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.host = host
        self.port = port
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.access_key = access_key
        self.secret_key = secret_key
        self.session_token = session_token
        self.account_id = account_id
        self.url_ttl = int(url_ttl)
        self.bandwidth = parse_bytes(bandwidth_per_connection)
        self.faults = FaultSet(list(faults))  # parsed now, so a bad spec fails here
        self.log_file = log_file
        self.server: Optional[EmulatorServer] = None
        self.thread: Optional[threading.Thread] = None
        self.store: Optional[Store] = None
        self.log: Optional[EventLog] = None
        self.url = ''

    @property
    def app(self) -> EmulatorApp:
        assert self.server is not None, 'emulator not started'
        return self.server.app

    def start(self) -> str:
        os.makedirs(self.data_dir, exist_ok=True)
        self.store = Store(self.data_dir)
        self.log = EventLog(self.log_file)
        app = EmulatorApp(self.store, self.account_id, self.access_key, self.secret_key, self.session_token,
                          self.url_ttl, self.bandwidth, self.faults, self.log)
        context = None
        if self.tls_cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls_cert, self.tls_key)
        self.server = EmulatorServer((self.host, self.port), app, context)
        host, port = self.server.server_address[:2]
        self.url = f"{'https' if context else 'http'}://{host}:{port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={'poll_interval': 0.1},
                                       name='ecr-emulator', daemon=True)
        self.thread.start()
        self.log.write(f'START {self.url} data={self.data_dir}')
        return self.url

    def stop(self) -> None:
        if self.server is None:
            return
        server, self.server = self.server, None
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self.thread is not None:
            self.thread.join(10)
        if self.store is not None:
            self.store.close()
        if self.log is not None:
            self.log.write(f'STOP {self.url}')
            self.log.close()

    def __enter__(self) -> 'Emulator':
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def parse_listen(text: str) -> Tuple[str, int]:
    host, sep, port = text.rpartition(':')
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--listen wants HOST:PORT, e.g. 127.0.0.1:0, not '{text}'")
    return host.strip('[]') or '127.0.0.1', int(port)


def write_ready_file(path: str, url: str) -> None:
    """Write the URL, then rename, so a reader never sees half a file."""
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as handle:
        handle.write(url + '\n')
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='ecr_emulator.py',
        description='Local Amazon ECR-compatible endpoint (JSON 1.1 API + signed blob URLs) for tests.',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='Fault injection (--fault, repeatable; also POST /__emulator__/faults):\n' + (FAULTS_HELP or '').split('\n', 2)[-1]
        + '\nControl endpoints (no auth): GET /__emulator__/health, GET /__emulator__/stats, POST /__emulator__/stats/reset,\n'
        '    GET|POST|DELETE /__emulator__/faults, GET|POST /__emulator__/clock.\n')
    parser.add_argument('--listen', default='127.0.0.1:0', type=parse_listen, metavar='HOST:PORT',
                        help='address to bind (default 127.0.0.1:0, any free port)')
    parser.add_argument('--data', required=True, metavar='DIR', help='state directory (created if missing; reused across restarts)')
    parser.add_argument('--ready-file', metavar='FILE', help='write the endpoint URL here once requests are accepted')
    parser.add_argument('--tls-cert', metavar='PEM', help='serve HTTPS with this certificate (chain)')
    parser.add_argument('--tls-key', metavar='PEM', help='private key of --tls-cert')
    parser.add_argument('--access-key', default=DEFAULT_ACCESS_KEY, help='accepted access key id (default %(default)s)')
    parser.add_argument('--secret-key', default=DEFAULT_SECRET_KEY, help='its secret key (default %(default)s, a published test secret)')
    parser.add_argument('--session-token', help='if set, every API request must carry this X-Amz-Security-Token')
    parser.add_argument('--account-id', default=DEFAULT_ACCOUNT_ID, help='account id, the default registry id (default %(default)s)')
    parser.add_argument('--url-ttl', type=int, default=DEFAULT_URL_TTL, metavar='SECONDS',
                        help='lifetime of blob download URLs (default %(default)s)')
    parser.add_argument('--bandwidth-per-connection', default='0', metavar='BYTES_PER_S',
                        help='pace blob bodies to this rate per connection, K/M/G suffixes allowed (default 0 = unlimited)')
    parser.add_argument('--fault', action='append', default=[], metavar='SPEC', help='inject a fault (see below); repeatable')
    parser.add_argument('--log', metavar='FILE', help='append one line per request (operation/blob and status) to FILE')
    parser.add_argument('--parent-pid', type=int, metavar='PID', help='exit when this process is gone (test harness safety net)')
    return parser


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error('--tls-cert and --tls-key go together')
    host, port = args.listen
    try:
        emulator = Emulator(args.data, host, port, args.tls_cert, args.tls_key, args.access_key, args.secret_key,
                            args.session_token, args.account_id, args.url_ttl, args.bandwidth_per_connection, args.fault, args.log)
    except ValueError as err:
        parser.error(str(err))
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:  # pylint: disable=unused-argument
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    url = emulator.start()
    if args.ready_file:
        write_ready_file(args.ready_file, url)
    sys.stdout.write(f'ECR emulator listening on {url}\n')
    sys.stdout.flush()
    while not stop.wait(0.5):
        if args.parent_pid and not _process_alive(args.parent_pid):
            break
    emulator.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
