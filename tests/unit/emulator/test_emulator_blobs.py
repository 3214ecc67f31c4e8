# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Blob downloads: presigned-looking URLs, expiry, tampering, ranges, pacing."""

from __future__ import annotations

import hashlib
import http.client
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from fixture import push_image, run_emulator

import ecr_emu_http

BLOB = bytes(range(256)) * 16  # 4096 bytes


def _blob_url(endpoint, repository='team/app', blob=BLOB):
    client = endpoint.client()
    client.create_repository(repositoryName=repository)
    push_image(client, repository, [blob], tag='v1')
    return client.get_download_url_for_layer(repositoryName=repository, layerDigest='sha256:' + hashlib.sha256(blob).hexdigest())['downloadUrl']


def test_url_looks_like_an_s3_presigned_url(ecr_endpoint):
    url = _blob_url(ecr_endpoint)
    parts = urlsplit(url)
    assert parts.scheme == 'http' and parts.netloc == urlsplit(ecr_endpoint.url).netloc
    query = parse_qs(parts.query)
    assert set(query) == {'X-Amz-Algorithm', 'X-Amz-Credential', 'X-Amz-Date', 'X-Amz-Expires', 'X-Amz-SignedHeaders',
                          'X-Amz-Signature', 'X-Amz-Security-Token'}
    assert query['X-Amz-Algorithm'] == ['AWS4-HMAC-SHA256']
    assert query['X-Amz-Expires'] == ['3600']
    assert query['X-Amz-Credential'][0].endswith('/us-east-1/s3/aws4_request')


@pytest.mark.parametrize('header, status, body, content_range', [
    (None, 200, BLOB, None),
    ('bytes=0-0', 206, BLOB[:1], 'bytes 0-0/4096'),
    ('bytes=100-199', 206, BLOB[100:200], 'bytes 100-199/4096'),
    ('bytes=4000-9999', 206, BLOB[4000:], 'bytes 4000-4095/4096'),
    ('bytes=1024-', 206, BLOB[1024:], 'bytes 1024-4095/4096'),
    ('bytes=-10', 206, BLOB[-10:], 'bytes 4086-4095/4096'),
    ('bytes=-99999', 206, BLOB, 'bytes 0-4095/4096'),
    ('bytes=0-1,5-6', 200, BLOB, None),  # several ranges: S3 sends it all
    ('bytes=4096-', 416, None, 'bytes */4096'),
    ('bytes=5000-6000', 416, None, 'bytes */4096'),
    ('bytes=-0', 416, None, 'bytes */4096'),
])
def test_ranges(ecr_endpoint, header, status, body, content_range):
    url = _blob_url(ecr_endpoint)
    got_status, headers, got_body = ecr_endpoint.fetch(url, {'Range': header} if header else {})
    assert got_status == status
    assert headers.get('Content-Range') == content_range
    assert int(headers['Content-Length']) == len(got_body)
    if body is not None:
        assert got_body == body
    else:
        assert b'<Code>InvalidRange</Code>' in got_body


def test_head_and_keep_alive(ecr_endpoint):
    url = _blob_url(ecr_endpoint)
    status, headers, body = ecr_endpoint.fetch(url, method='HEAD')
    assert (status, body, headers['Content-Length'], headers['Accept-Ranges']) == (200, b'', '4096', 'bytes')
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        for start in range(0, 4096, 1024):
            conn.request('GET', f'{parts.path}?{parts.query}', headers={'Range': f'bytes={start}-{start + 1023}'})
            response = conn.getresponse()
            assert (response.status, response.read()) == (206, BLOB[start:start + 1024])
        first_socket = conn.sock
        conn.request('GET', f'{parts.path}?{parts.query}')
        response = conn.getresponse()
        assert response.read() == BLOB
        assert conn.sock is first_socket  # one connection served all of them
    finally:
        conn.close()


def test_expired_urls(tmp_path):
    with run_emulator(tmp_path, url_ttl=1) as endpoint:
        url = _blob_url(endpoint)
        assert endpoint.fetch(url)[0] == 200
        time.sleep(2.1)
        status, dummy, body = endpoint.fetch(url)
        assert status == 403
        assert b'<Code>AccessDenied</Code><Message>Request has expired</Message>' in body
        assert b'<X-Amz-Expires>1</X-Amz-Expires>' in body


def test_expiry_follows_the_server_clock(ecr_endpoint):
    url = _blob_url(ecr_endpoint)
    ecr_endpoint.set_clock_offset(3601)
    assert ecr_endpoint.fetch(url)[0] == 403
    ecr_endpoint.set_clock_offset(0)
    assert ecr_endpoint.fetch(url)[0] == 200


@pytest.mark.parametrize('mangle', [
    lambda url: url.replace('X-Amz-Expires=3600', 'X-Amz-Expires=99999'),
    lambda url: url[:-4] + ('0000' if not url.endswith('0000') else '1111'),
    lambda url: url.replace('/team/app/', '/team/other/'),
    lambda url: url.replace('X-Amz-Date=', 'X-Amz-Date=1'),
])
def test_tampered_urls(ecr_endpoint, mangle):
    url = _blob_url(ecr_endpoint)
    status, headers, body = ecr_endpoint.fetch(mangle(url))
    assert status == 403
    assert headers['Content-Type'] == 'application/xml'
    assert b'<Code>SignatureDoesNotMatch</Code>' in body


def test_unsigned_blob_request(ecr_endpoint):
    url = _blob_url(ecr_endpoint)
    status, dummy, body = ecr_endpoint.fetch(url.split('?')[0])
    assert status == 403 and b'<Code>AccessDenied</Code>' in body
    stats = ecr_endpoint.stats()
    assert stats['blob_status'] == {'403': 1}


def test_bandwidth_per_connection(tmp_path):
    blob = b'z' * (256 * 1024)
    with run_emulator(tmp_path, bandwidth_per_connection='1M') as endpoint:
        url = _blob_url(endpoint, blob=blob)
        started = time.monotonic()
        assert endpoint.fetch(url)[2] == blob
        elapsed = time.monotonic() - started
    assert 0.2 < elapsed < 2.0  # 256 KiB at 1 MiB/s


def test_range_parser_edge_cases():
    assert ecr_emu_http.parse_range('bytes=5-2', 10) is None
    assert ecr_emu_http.parse_range('items=0-1', 10) is None
    assert ecr_emu_http.parse_range('bytes=abc', 10) is None
    assert ecr_emu_http.parse_range('bytes=0-', 0) == 'unsatisfiable'
    assert ecr_emu_http.parse_range('bytes=-5', 0) == 'unsatisfiable'
    assert ecr_emu_http.parse_range(' bytes = 2-3', 10) is None or ecr_emu_http.parse_range(' bytes = 2-3', 10) == (2, 3)
