# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The collection's exception types, and ``redact()`` for secrets in text.

Every error meant for the operator is an :class:`EcrkitError` (or a subclass). Its ``str()`` is one
sentence in the operator's terms: what was wrong and what to do about it. The message is passed
through :func:`redact` when the exception is built, so a presigned URL or a credential that slipped
into it never reaches a module result, a log line or a traceback.

To add an error type, subclass :class:`EcrkitError` (or a more specific subclass) and give it its own
``code``; the constructor already does the redaction and keeps the message::

    class RepositoryNotFoundError(EcrkitError):
        code = "repository_not_found"
"""

from __future__ import annotations

import errno
import re

REDACTED = "<redacted>"
"""The marker that replaces a secret value."""

# Query parameters that make a URL a bearer credential: SigV4 presigned URLs (S3, as ECR hands out for
# GetDownloadUrlForLayer), SigV2 presigned URLs, and the session token that either may carry.
_PRESIGN_PARAMS = (
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "signature",
    "awsaccesskeyid",
)

# A query string: from "?" to the first character that cannot be part of a URL in running text.
_QUERY_RE = re.compile(r"\?([^\s\"'<>`]*)")
_SENSITIVE_PARAM_RE = re.compile(
    r"(?:^|[&;?]|%26|%3F)(?:" + "|".join(re.escape(name) for name in _PRESIGN_PARAMS) + r")(?:=|%3D)",
    re.IGNORECASE,
)
# Punctuation that usually closes the sentence around a URL rather than belonging to it.
_TRAILING_PUNCTUATION = ".,;:!)]}"

# user:password@ in a URL's authority.
_USERINFO_RE = re.compile(r"(?P<prefix>\b[a-z][a-z0-9+.-]*://[^/\s:@\"'<>]+:)[^/\s@\"'<>]+@", re.IGNORECASE)

# Names whose value is a secret, in any of the spellings they take in config files, environment
# variables, HTTP headers, query strings, JSON (STS and ECR responses) and Python reprs.
_SECRET_KEYS = (
    "aws_secret_access_key",
    "aws_session_token",
    "aws_security_token",
    "secret_access_key",
    "secretaccesskey",
    "secret_key",
    "sessiontoken",
    "session_token",
    "x-amz-security-token",
    "x-amz-signature",
    "x-amz-credential",
    "awsaccesskeyid",
    "signature",
    "authorizationtoken",
    "authorization",
    "password",
)
# KEY, then a separator: "=" (ini, env, query), ": " with a space (headers, YAML), or ":" after a
# quoted key (JSON, Python reprs); then an optional opening quote (of a b'' bytes repr too). A bare
# "key:value" is not taken as a secret, so that a repository named "signature" in "team/signature:1.2"
# stays readable. The value's extent is decided in _mask_values.
_KEY_VALUE_RE = re.compile(
    r"(?P<key>(?<![A-Za-z0-9/])(?:" + "|".join(re.escape(key) for key in _SECRET_KEYS) + r"))"
    r"(?P<sep>(?:[\"']?[ \t]*=|[\"']?[ \t]*:[ \t]|[\"'][ \t]*:)[ \t]*(?:b?(?P<quote>[\"']))?)",
    re.IGNORECASE,
)
# A header line of a SigV4 canonical request ("x-amz-security-token:VALUE", no space), as AWS quotes the
# canonical string in an InvalidSignatureException: these header names never stand for anything else.
_CANONICAL_HEADER_RE = re.compile(r"(?P<key>(?<![A-Za-z0-9/_.-])(?:x-amz-security-token|authorization):)(?P<value>[^\s\"'<>]+)",
                                  re.IGNORECASE)
# An unquoted value ends at whitespace or a character that separates fields.
_UNQUOTED_VALUE_RE = re.compile(r"[^\s&\"',;)}\]>]+")
# An unquoted Authorization header value has spaces in it: it runs to the end of the line.
_HEADER_VALUE_RE = re.compile(r"[^\r\n\"']+")


def _redact_query(match: re.Match[str]) -> str:
    query = match.group(1)
    if not _SENSITIVE_PARAM_RE.search(query):
        return match.group(0)
    stripped = query.rstrip(_TRAILING_PUNCTUATION)
    return "?" + REDACTED + query[len(stripped):]


def _mask_values(text: str) -> str:
    out = []
    pos = 0
    for match in _KEY_VALUE_RE.finditer(text):
        if match.start() < pos:
            continue
        start = match.end()
        if text.startswith(REDACTED, start):
            continue
        quote = match.group("quote")
        if quote:
            end = text.find(quote, start)
            if end < 0:
                end = len(text)
            line_end = text.find("\n", start)
            if 0 <= line_end < end:
                end = line_end
        else:
            value_re = _HEADER_VALUE_RE if match.group("key").lower() == "authorization" else _UNQUOTED_VALUE_RE
            value = value_re.match(text, start)
            end = value.end() if value else start
            if match.group("key").lower() == "authorization":
                # keep trailing spaces of the line out of the marker
                while end > start and text[end - 1] in " \t":
                    end -= 1
        if end == start:
            continue
        out.append(text[pos:start])
        out.append(REDACTED)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def redact(text: str) -> str:
    """Return ``text`` with secrets replaced by ``<redacted>``.

    Covered:

    - the query string of any URL (absolute, or the path-only form urllib3 prints in its errors) that
      carries a presigned-URL parameter: ``X-Amz-Signature``, ``X-Amz-Credential``,
      ``X-Amz-Security-Token`` (SigV4), ``Signature``, ``AWSAccessKeyId`` (SigV2), in any letter case,
      also percent-encoded (``%3D``/``%26``). The query (and fragment) becomes ``?<redacted>``; the
      scheme, host and path stay, so the message still says which blob failed. URLs without such a
      parameter are left as they are;
    - the password in a URL's ``user:password@``;
    - the value after a secret's name followed by ``=`` or ``:`` (with optional spaces and quotes, as
      in ini/env files, HTTP headers, JSON and Python reprs): ``aws_secret_access_key``,
      ``aws_session_token``, ``aws_security_token``, ``SecretAccessKey``, ``SessionToken``,
      ``X-Amz-Security-Token``, ``X-Amz-Signature``, ``X-Amz-Credential``, ``Signature``,
      ``AWSAccessKeyId``, ``authorizationToken`` (ECR's registry password), ``password``, and
      ``Authorization`` (whose unquoted value runs to the end of the line, as a SigV4 header does);
    - the value of an ``x-amz-security-token:`` or ``authorization:`` line of a SigV4 canonical request
      (no space after the colon), which AWS quotes in signature-mismatch errors.

    Not covered: a secret that appears with no name beside it (a bare token in free text), and
    access key IDs on their own (AWS does not treat them as secret).

    The result is stable: ``redact(redact(text)) == redact(text)``. A non-``str`` argument is converted
    with ``str()`` first, so an exception can be passed directly.
    """
    if not isinstance(text, str):
        text = str(text)
    text = _QUERY_RE.sub(_redact_query, text)
    text = _USERINFO_RE.sub(lambda match: match.group("prefix") + REDACTED + "@", text)
    text = _CANONICAL_HEADER_RE.sub(lambda match: match.group("key") + REDACTED, text)
    return _mask_values(text)


class EcrkitError(Exception):
    """Base class of every error meant for the operator.

    ``str(error)`` is the message, already passed through :func:`redact`. ``code`` is a short stable
    name of the kind of error, for a module result or a test to match on.
    """

    code = "ecrkit_error"

    def __init__(self, message: str) -> None:
        self.message = redact(message)
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class InvalidOptionError(EcrkitError):
    """A module option (or a combination of them) the module cannot act on."""

    code = "invalid_option"


class InvalidReferenceError(EcrkitError):
    """An image reference (or a part of one: tag, digest, region) that cannot name an ECR image.

    Raised before any network call. ``reference`` is the text that was given (redacted), or None when
    the error is about a single part built outside a reference.
    """

    code = "invalid_reference"

    def __init__(self, message: str, reference: str | None = None) -> None:
        super().__init__(message)
        self.reference = None if reference is None else redact(reference)


class StorageError(EcrkitError):
    """A local file or directory could not be written or read; ``path`` names it."""

    code = "storage_error"

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class DiskFullError(StorageError):
    """No space (or quota) left on the device being written."""

    code = "disk_full"


class NotWritableError(StorageError):
    """Permission denied or a read-only filesystem where something must be written."""

    code = "not_writable"


_SPACE_ERRNOS = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)
_DENIED_ERRNOS = frozenset((errno.EACCES, errno.EPERM, errno.EROFS))


def storage_error(exc: OSError, doing: str, path: str) -> StorageError:
    """An OSError met while ``doing`` something to ``path``, as one sentence for the operator: what
    failed where, and what to do. The one translation of file-system errors in the collection."""
    reason = exc.strerror or str(exc)
    if exc.errno in _SPACE_ERRNOS:
        return DiskFullError(
            f"No space left on the device (or quota exhausted) for {path} while {doing}; free space there or "
            "choose another destination, then run again (completed downloads are kept and resume).", path)
    if exc.errno in _DENIED_ERRNOS:
        # what the errno means leads the sentence, once (not again as "(Permission denied)" after it)
        denied = {errno.EACCES: "Permission denied", errno.EPERM: "Operation not permitted"}.get(
            exc.errno, "A read-only file system")
        return NotWritableError(
            f"{denied} for {path} while {doing}; make it writable by the user the task runs "
            "as (become, owner, mode, a read-only mount) or choose another destination.", path)
    return StorageError(f"Failed while {doing} {path}: {reason}; check that the path exists and is usable.", path)
