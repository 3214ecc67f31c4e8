# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Signature Version 4 checking for API requests, and the S3-presign-style
signed URLs the emulator hands out for blobs.

Written from the SigV4 specification (canonical request, string to sign,
derived signing key); nothing here calls botocore.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple
from urllib.parse import quote, unquote

from ecr_emu_model import ApiError

ALGORITHM = 'AWS4-HMAC-SHA256'
MAX_SKEW_SECONDS = 15 * 60
AMZ_DATE_FORMAT = '%Y%m%dT%H%M%SZ'
REGION_RE = re.compile(r'[a-z]{2}(-[a-z]+)+-\d+')

SIGNATURE_MISMATCH = ('The request signature we calculated does not match the signature you provided. '
                      'Check your AWS Secret Access Key and signing method. Consult the service documentation for details.')
INVALID_TOKEN = 'The security token included in the request is invalid.'


class Credential(NamedTuple):
    access_key: str
    date: str
    region: str
    service: str


def format_amz_date(epoch: float) -> str:
    return time.strftime(AMZ_DATE_FORMAT, time.gmtime(epoch))


def parse_amz_date(text: str) -> Optional[float]:
    try:
        return float(calendar.timegm(time.strptime(text, AMZ_DATE_FORMAT)))
    except (ValueError, TypeError):
        return None


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode('utf-8'), hashlib.sha256).digest()


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    k_date = _hmac(('AWS4' + secret_key).encode('utf-8'), date)
    k_region = _hmac(k_date, region)
    k_service = _hmac(k_region, service)
    return _hmac(k_service, 'aws4_request')


def canonical_query(raw_query: str) -> str:
    pairs = []
    for part in raw_query.split('&') if raw_query else []:
        if not part:
            continue
        key, dummy, value = part.partition('=')
        pairs.append((quote(unquote(key), safe='-_.~'), quote(unquote(value), safe='-_.~')))
    return '&'.join(f'{key}={value}' for key, value in sorted(pairs))


def canonical_uri(raw_path: str) -> str:
    # Non-S3 services sign the path as sent, percent-encoded once more.
    return quote(raw_path or '/', safe='/~')


def _header_values(headers: Mapping[str, str], name: str) -> List[str]:
    getter = getattr(headers, 'get_all', None)
    if getter is not None:
        return list(getter(name) or [])
    value = headers.get(name)
    return [] if value is None else [value]


class SigV4Verifier:
    """Checks the Authorization header of a JSON API request."""

    def __init__(self, access_key: str, secret_key: str, session_token: Optional[str] = None,
                 service: str = 'ecr', clock: Callable[[], float] = time.time) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.session_token = session_token
        self.service = service
        self.clock = clock

    def verify(self, method: str, raw_path: str, raw_query: str, headers: Mapping[str, str], body: bytes) -> Credential:
        auth = (headers.get('Authorization') or '').strip()
        if not auth:
            raise ApiError('MissingAuthenticationTokenException', 'Missing Authentication Token', 403)
        algorithm, dummy, rest = auth.partition(' ')
        if algorithm != ALGORITHM:
            raise ApiError('IncompleteSignatureException',
                           f"Unsupported authorization type '{algorithm}'; only {ALGORITHM} is accepted.")
        fields = {}
        for item in rest.split(','):
            key, sep, value = item.strip().partition('=')
            if sep:
                fields[key] = value
        missing = [name for name in ('Credential', 'SignedHeaders', 'Signature') if name not in fields]
        if missing:
            raise ApiError('IncompleteSignatureException',
                           ' '.join(f"Authorization header requires '{name}' parameter." for name in missing))
        scope = fields['Credential'].split('/')
        if len(scope) != 5 or scope[4] != 'aws4_request':
            raise ApiError('IncompleteSignatureException',
                           f"Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '{fields['Credential']}'")
        cred = Credential(scope[0], scope[1], scope[2], scope[3])
        if cred.access_key != self.access_key:
            raise ApiError('UnrecognizedClientException', INVALID_TOKEN)
        token = headers.get('X-Amz-Security-Token')
        if self.session_token is not None and token != self.session_token:
            raise ApiError('UnrecognizedClientException', INVALID_TOKEN)
        if cred.service != self.service:
            raise ApiError('InvalidSignatureException', f"Credential should be scoped to correct service: '{self.service}'.")
        if not REGION_RE.fullmatch(cred.region):
            raise ApiError('InvalidSignatureException', f"Credential should be scoped to a valid region, not '{cred.region}'.")
        amz_date = headers.get('X-Amz-Date')
        if not amz_date:
            raise ApiError('IncompleteSignatureException', "Authorization header requires existence of a 'X-Amz-Date' header.")
        request_time = parse_amz_date(amz_date)
        if request_time is None:
            raise ApiError('IncompleteSignatureException', f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'.")
        if cred.date != amz_date[:8]:
            raise ApiError('InvalidSignatureException',
                           "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
                           f"'{cred.date}' != '{amz_date[:8]}', from '{amz_date}'.")
        self._check_skew(amz_date, request_time)
        signed = fields['SignedHeaders'].lower().split(';')
        if 'host' not in signed:
            raise ApiError('InvalidSignatureException', "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
        canonical_headers = ''
        for name in signed:
            values = _header_values(headers, name)
            canonical_headers += f"{name}:{','.join((' '.join(v.split()) for v in values))}\n"
        canonical_request = '\n'.join([
            method, canonical_uri(raw_path), canonical_query(raw_query), canonical_headers,
            ';'.join(signed), hashlib.sha256(body).hexdigest()])
        string_to_sign = '\n'.join([
            ALGORITHM, amz_date, '/'.join(scope[1:]), hashlib.sha256(canonical_request.encode('utf-8')).hexdigest()])
        key = signing_key(self.secret_key, cred.date, cred.region, cred.service)
        expected = hmac.new(key, string_to_sign.encode('utf-8'), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, fields['Signature']):
            raise ApiError('InvalidSignatureException', SIGNATURE_MISMATCH)
        return cred

    def _check_skew(self, amz_date: str, request_time: float) -> None:
        now = self.clock()
        if request_time < now - MAX_SKEW_SECONDS:
            raise ApiError('InvalidSignatureException', f'Signature expired: {amz_date} is now earlier than '
                           f'{format_amz_date(now - MAX_SKEW_SECONDS)} ({format_amz_date(now)} - 15 min.)')
        if request_time > now + MAX_SKEW_SECONDS:
            raise ApiError('InvalidSignatureException', f'Signature not yet current: {amz_date} is still later than '
                           f'{format_amz_date(now + MAX_SKEW_SECONDS)} ({format_amz_date(now)} + 15 min.)')


class BlobAccessError(Exception):
    """A refused blob request, answered as an S3 XML error document."""

    def __init__(self, status: int, code: str, message: str, extra: Optional[Dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}


REQUIRED_URL_PARAMS = ('X-Amz-Algorithm', 'X-Amz-Credential', 'X-Amz-Signature', 'X-Amz-Date', 'X-Amz-SignedHeaders', 'X-Amz-Expires')


class BlobUrlSigner:
    """Issues and checks expiring blob URLs shaped like S3 presigned URLs.

    The signature is an HMAC with a server secret over the path and every
    query parameter that matters, so changing the path, the date, the expiry
    or the credential makes it fail.
    """

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        self.secret = secret
        self.clock = clock
        digest = hmac.new(secret, b'url-identity', hashlib.sha256).hexdigest().upper()
        # A fake temporary credential, as the S3 URLs ECR returns carry one.
        self.url_access_key = 'ASIA' + re.sub('[^A-Z0-9]', '', digest)[:16]
        self.url_token = hmac.new(secret, b'url-token', hashlib.sha256).hexdigest()

    def _signature(self, path: str, params: Mapping[str, str]) -> str:
        material = '\n'.join([path] + [f"{name}={params.get(name, '')}" for name in
                                       ('X-Amz-Algorithm', 'X-Amz-Credential', 'X-Amz-Date', 'X-Amz-Expires',
                                        'X-Amz-SignedHeaders', 'X-Amz-Security-Token')])
        return hmac.new(self.secret, material.encode('utf-8'), hashlib.sha256).hexdigest()

    def sign(self, path: str, region: str, ttl: int) -> str:
        """Return the query string for ``path``."""
        now = self.clock()
        params = {
            'X-Amz-Algorithm': ALGORITHM,
            'X-Amz-Credential': f'{self.url_access_key}/{format_amz_date(now)[:8]}/{region}/s3/aws4_request',
            'X-Amz-Date': format_amz_date(now),
            'X-Amz-Expires': str(int(ttl)),
            'X-Amz-SignedHeaders': 'host',
            'X-Amz-Security-Token': self.url_token,
        }
        params['X-Amz-Signature'] = self._signature(path, params)
        order = ('X-Amz-Security-Token', 'X-Amz-Algorithm', 'X-Amz-Date', 'X-Amz-SignedHeaders', 'X-Amz-Expires',
                 'X-Amz-Credential', 'X-Amz-Signature')
        return '&'.join(f"{name}={quote(params[name], safe='-_.~')}" for name in order)

    def check(self, path: str, params: Mapping[str, str], early_expiry: Optional[Callable[[float], bool]] = None) -> Tuple[float, int]:
        """Raise BlobAccessError unless the URL is intact and unexpired.

        ``early_expiry`` (fault injection) is asked whether a URL issued at
        the given time should be treated as expired already.
        Returns (issued_at, expires_seconds).
        """
        if any(name not in params for name in REQUIRED_URL_PARAMS):
            raise BlobAccessError(403, 'AccessDenied', 'Query-string authentication version 4 requires the X-Amz-Algorithm, '
                                  'X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.')
        if not hmac.compare_digest(self._signature(path, params), params['X-Amz-Signature']):
            raise BlobAccessError(403, 'SignatureDoesNotMatch',
                                  'The request signature we calculated does not match the signature you provided. '
                                  'Check your key and signing method.')
        issued = parse_amz_date(params['X-Amz-Date'])
        try:
            expires = int(params['X-Amz-Expires'])
        except ValueError:
            expires = -1
        if issued is None or expires < 0:
            raise BlobAccessError(400, 'AuthorizationQueryParametersError', 'X-Amz-Date or X-Amz-Expires is malformed.')
        now = self.clock()
        if now > issued + expires or (early_expiry is not None and early_expiry(issued)):
            raise BlobAccessError(403, 'AccessDenied', 'Request has expired', {
                'X-Amz-Expires': str(expires),
                'Expires': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(issued + expires)),
                'ServerTime': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now)),
            })
        return issued, expires
