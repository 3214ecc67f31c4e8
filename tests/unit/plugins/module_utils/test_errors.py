# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import errno
import os
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.ecrkit.images.plugins.module_utils import errors
from ansible_collections.ecrkit.images.plugins.module_utils.errors import (
    REDACTED,
    EcrkitError,
    InvalidReferenceError,
    redact,
)

SIGNATURE = "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEJr%2F%2F%2F%2F%2F%2F%2F%2F%2F%2FwEaCXVzLXdlc3QtMiJHMEUCIQDkWq9"
CREDENTIAL = "ASIAQEXAMPLE7JX5D4PQ%2F20240611%2Fus-west-2%2Fs3%2Faws4_request"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

# What ECR's GetDownloadUrlForLayer hands out: a SigV4 presigned S3 URL with a session token.
PRESIGNED = (
    "https://prod-us-west-2-starport-layer-bucket.s3.us-west-2.amazonaws.com/a1b2-123456789012-c3d4/"
    "0f3c6e2a-1a7b-4c1d-9e0f-5b7c3d2a1e4f"
    "?X-Amz-Security-Token=" + SESSION_TOKEN
    + "&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20240611T101500Z&X-Amz-SignedHeaders=host"
    + "&X-Amz-Expires=3600&X-Amz-Credential=" + CREDENTIAL
    + "&X-Amz-Signature=" + SIGNATURE
)
PRESIGNED_BASE = PRESIGNED.split("?", 1)[0]
# A SigV2 presigned URL.
PRESIGNED_V2 = (
    "https://examplebucket.s3.amazonaws.com/blobs/sha256/ab"
    "?AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Expires=1718100000&Signature=vjbyPxybdZaNmGa%2ByT272YEAiv4%3D"
)

SECRETS = (SIGNATURE, SESSION_TOKEN, CREDENTIAL, SECRET_KEY, "vjbyPxybdZaNmGa", "AKIAIOSFODNN7EXAMPLE")


REDACT_CASES = [
    pytest.param(
        "Could not download layer sha256:ab: 403 Client Error: Forbidden for url: " + PRESIGNED,
        "Could not download layer sha256:ab: 403 Client Error: Forbidden for url: " + PRESIGNED_BASE + "?<redacted>",
        id="requests-error",
    ),
    pytest.param(
        "HTTPSConnectionPool(host='prod-us-west-2-starport-layer-bucket.s3.us-west-2.amazonaws.com', port=443): "
        "Max retries exceeded with url: /a1b2/0f3c?" + PRESIGNED.split("?", 1)[1] + " (Caused by SSLError('EOF'))",
        "HTTPSConnectionPool(host='prod-us-west-2-starport-layer-bucket.s3.us-west-2.amazonaws.com', port=443): "
        "Max retries exceeded with url: /a1b2/0f3c?<redacted> (Caused by SSLError('EOF'))",
        id="urllib3-path-only",
    ),
    pytest.param(
        "first " + PRESIGNED + " then " + PRESIGNED_V2 + " and docs at https://docs.aws.amazon.com/AmazonECR/latest/userguide/?id=docs",
        "first " + PRESIGNED_BASE + "?<redacted> then https://examplebucket.s3.amazonaws.com/blobs/sha256/ab?<redacted>"
        " and docs at https://docs.aws.amazon.com/AmazonECR/latest/userguide/?id=docs",
        id="several-urls-one-clean",
    ),
    pytest.param("(see " + PRESIGNED + ").", "(see " + PRESIGNED_BASE + "?<redacted>).", id="trailing-punctuation-kept"),
    pytest.param("url='" + PRESIGNED + "'", "url='" + PRESIGNED_BASE + "?<redacted>'", id="quoted-url"),
    pytest.param(
        "https://b.s3.amazonaws.com/k?x-amz-signature=abc&x-amz-date=1",
        "https://b.s3.amazonaws.com/k?<redacted>",
        id="lowercase-parameter",
    ),
    pytest.param(
        "https://b.s3.amazonaws.com/k?response-content-type=x&X-Amz-Signature=abc#frag",
        "https://b.s3.amazonaws.com/k?<redacted>",
        id="signature-not-first",
    ),
    pytest.param(
        "redirect to https://login.example.com/?next=https%3A%2F%2Fb.s3.amazonaws.com%2Fk%3FX-Amz-Signature%3Dabc",
        "redirect to https://login.example.com/?<redacted>",
        id="percent-encoded-inner-url",
    ),
    pytest.param("https://user:hunter2@registry.example.com/v2/", "https://user:<redacted>@registry.example.com/v2/", id="userinfo-password"),
    pytest.param("aws_secret_access_key = " + SECRET_KEY + "\nregion = us-west-2", "aws_secret_access_key = <redacted>\nregion = us-west-2", id="ini"),
    pytest.param(
        "AWS_SECRET_ACCESS_KEY=" + SECRET_KEY + " AWS_SESSION_TOKEN=FwoGZXIvYXdzEBY",
        "AWS_SECRET_ACCESS_KEY=<redacted> AWS_SESSION_TOKEN=<redacted>",
        id="env",
    ),
    pytest.param(
        '{"Credentials": {"AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "' + SECRET_KEY + '", "SessionToken": "FQoG+/=="}}',
        '{"Credentials": {"AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "<redacted>", "SessionToken": "<redacted>"}}',
        id="sts-json",
    ),
    pytest.param(
        '{"authorizationData": [{"authorizationToken": "QVdTOmV5SndZWGxz", "proxyEndpoint": "https://123456789012.dkr.ecr.us-west-2.amazonaws.com"}]}',
        '{"authorizationData": [{"authorizationToken": "<redacted>", "proxyEndpoint": "https://123456789012.dkr.ecr.us-west-2.amazonaws.com"}]}',
        id="ecr-authorization-token",
    ),
    pytest.param(
        "{'X-Amz-Target': b'AmazonEC2ContainerRegistry_V20150921.BatchGetImage', "
        "'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240611/us-west-2/ecr/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=" + SIGNATURE + "', 'X-Amz-Security-Token': b'" + SESSION_TOKEN + "'}",
        "{'X-Amz-Target': b'AmazonEC2ContainerRegistry_V20150921.BatchGetImage', 'Authorization': b'<redacted>', 'X-Amz-Security-Token': b'<redacted>'}",
        id="botocore-headers-repr",
    ),
    pytest.param(
        "Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240611/us-west-2/ecr/aws4_request, Signature=" + SIGNATURE + "\nHost: x",
        "Authorization: <redacted>\nHost: x",
        id="raw-header",
    ),
    pytest.param("X-Amz-Security-Token: " + SESSION_TOKEN, "X-Amz-Security-Token: <redacted>", id="token-header"),
]

UNTOUCHED = [
    "Repository team/app was not found in registry 123456789012 (RepositoryNotFoundException).",
    "https://api.ecr.us-west-2.amazonaws.com/",
    "https://b.s3.amazonaws.com/k?versionId=3HL4kqtJlcpXroDTDmJ%2Bdummy&partNumber=1",
    "Why did it fail? Check the region.",
    "123456789012.dkr.ecr.us-west-2.amazonaws.com/team/signature:1.2",
    "The request signature we calculated does not match the signature you provided.",
    'Invalid image reference "123456789012.dkr.ecr.us-west-2.amazonaws.com/password": it names neither a tag nor a digest.',
    "Layer sha256:" + "a" * 64 + " is 1024 bytes, expected 2048.",
    "",
]


@pytest.mark.parametrize("text, expected", REDACT_CASES)
def test_redact(text, expected):
    result = redact(text)
    assert result == expected
    for secret in SECRETS:
        assert secret not in result
    assert redact(result) == result


@pytest.mark.parametrize("text", UNTOUCHED)
def test_redact_leaves_text_without_secrets(text):
    assert redact(text) == text


def test_redact_keeps_scheme_host_and_path():
    result = redact(PRESIGNED)
    assert result == PRESIGNED_BASE + "?" + REDACTED
    assert result.startswith("https://prod-us-west-2-starport-layer-bucket.s3.us-west-2.amazonaws.com/")


def test_redact_accepts_an_exception():
    error = ConnectionError("failed: " + PRESIGNED)
    assert redact(error) == "failed: " + PRESIGNED_BASE + "?<redacted>"  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_redact_never_raises_and_is_stable(text):
    once = redact(text)
    assert isinstance(once, str)
    assert redact(once) == once


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="?:=@", blacklist_categories=("Cs",))))
def test_redact_changes_nothing_without_separators(text):
    assert redact(text) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789%/+", min_size=1), st.sampled_from(
    ["X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "Signature", "AWSAccessKeyId"]))
def test_redact_removes_any_presigned_value(secret, param):
    text = f"GET https://bucket.s3.amazonaws.com/key?X-Amz-Date=1&{param}={secret} failed"
    assert redact(text) == "GET https://bucket.s3.amazonaws.com/key?<redacted> failed"


def test_ecrkit_error_message_is_str_and_redacted():
    error = EcrkitError("Downloading " + PRESIGNED + " failed; retry later.")
    assert str(error) == "Downloading " + PRESIGNED_BASE + "?<redacted> failed; retry later."
    assert error.message == str(error)
    assert error.args == (str(error),)
    assert SIGNATURE not in repr(error)
    assert error.code == "ecrkit_error"


def test_invalid_reference_error_is_an_ecrkit_error():
    error = InvalidReferenceError("Invalid image reference \"x\": bad.", reference="x")
    assert isinstance(error, EcrkitError)
    assert error.code == "invalid_reference"
    assert error.reference == "x"
    with pytest.raises(EcrkitError, match="bad"):
        raise error


def test_invalid_reference_error_redacts_the_reference():
    error = InvalidReferenceError("bad", reference=PRESIGNED)
    assert error.reference == PRESIGNED_BASE + "?<redacted>"
    assert InvalidReferenceError("bad").reference is None


def test_subclasses_extend_simply():
    class RepositoryNotFoundError(EcrkitError):
        code = "repository_not_found"

    error = RepositoryNotFoundError("Repository team/app does not exist in 123456789012; create it first.")
    assert isinstance(error, EcrkitError)
    assert error.code == "repository_not_found"
    assert str(error) == "Repository team/app does not exist in 123456789012; create it first."


def test_errors_pickle():
    error = pickle.loads(pickle.dumps(InvalidReferenceError("Invalid image reference \"x\": bad.")))
    assert isinstance(error, InvalidReferenceError)
    assert str(error) == "Invalid image reference \"x\": bad."


@pytest.mark.parametrize("code, kind, words", [
    (errno.ENOSPC, errors.DiskFullError, "No space left"),
    (errno.EDQUOT, errors.DiskFullError, "quota"),
    (errno.EACCES, errors.NotWritableError, "Permission denied"),
    (errno.EROFS, errors.NotWritableError, "read-only"),
    (errno.EIO, errors.StorageError, "Failed while writing"),
])
def test_storage_errors_say_where_and_what_to_do(code, kind, words):
    error = errors.storage_error(OSError(code, os.strerror(code)), "writing", "/data/blobs/x.partial")
    assert type(error) is kind  # pylint: disable=unidiomatic-typecheck
    assert "/data/blobs/x.partial" in str(error) and words in str(error)
    assert error.path == "/data/blobs/x.partial"


def test_redact_canonical_request_quoted_in_a_signature_error():
    """AWS quotes the canonical request in InvalidSignatureException; its token header has no space."""
    message = ("The request signature we calculated does not match the signature you provided.\n\n"
               "The Canonical String for this request should have been\n'POST\n/\n\n"
               "content-type:application/x-amz-json-1.1\nhost:api.ecr.us-east-1.amazonaws.com\n"
               "x-amz-date:20261129T000000Z\nx-amz-security-token:IQoJb3JpZ2luX2VjEXAMPLE/TOKEN+abc=\n"
               "x-amz-target:AmazonEC2ContainerRegistry_V20150921.BatchGetImage\n\n"
               "content-type;host;x-amz-date;x-amz-security-token;x-amz-target\n'")
    out = redact(message)
    assert "IQoJb3JpZ2luX2VjEXAMPLE" not in out
    assert "x-amz-security-token:<redacted>\n" in out
    assert "content-type;host;x-amz-date;x-amz-security-token;x-amz-target" in out  # the signed-header list stays
    assert redact("Authorization:AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=abc").count("abc") == 0
    assert redact("team/authorization:1.2") == "team/authorization:1.2"  # a repository path stays readable


@pytest.mark.parametrize("code, words", [
    (errno.EACCES, "Permission denied for /data/x while writing the blob;"),
    (errno.EPERM, "Operation not permitted for /data/x while writing the blob;"),
    (errno.EROFS, "A read-only file system for /data/x while writing the blob;"),
])
def test_a_denied_write_says_why_once(code, words):
    """Issue 12: "Permission denied for ... (Permission denied)" said it twice."""
    message = str(errors.storage_error(OSError(code, os.strerror(code)), "writing the blob", "/data/x"))
    assert message.startswith(words)
    assert message.count(os.strerror(code)) <= 1 and message.lower().count("permission denied") <= 1
