# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one thin layer around the boto3 ECR client.

Everything in the collection that talks to the ECR API goes through :class:`EcrRepository`; nothing
else imports boto3 or botocore. It does three jobs:

- the API calls the pull and push use, with ECR's answers turned into plain Python values;
- error translation: an ECR error code becomes an :class:`EcrkitError` subclass whose message says, in
  the operator's terms, what was wrong and what to do (and never carries a URL or a credential);
- the retry policy: ``ThrottlingException``, ``ServerException`` and dropped connections are retried
  with full-jitter exponential backoff, bounded by :class:`~retry.RetryPolicy`, and every call and
  retry is counted so results can report them.

botocore's own retries are switched off for this client (see :func:`client_config`), so the counts are
the real number of requests.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Iterable, Sequence

try:
    from botocore.exceptions import BotoCoreError, ClientError, ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError, NoCredentialsError, PartialCredentialsError
except ImportError:  # AnsibleAWSModule reports a missing botocore to the user
    BotoCoreError = ClientError = BotoConnectionError = HTTPClientError = Exception  # type: ignore[misc,assignment]
    NoCredentialsError = PartialCredentialsError = Exception  # type: ignore[misc,assignment]

from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.reference import ImageRef
from ansible_collections.ecrkit.images.plugins.module_utils.retry import RetryPolicy


class EcrApiError(EcrkitError):
    """An ECR API call failed in a way the operator has to act on.

    ``aws_code`` is ECR's error code (empty when the call never got an answer), for callers that treat
    some codes as outcomes rather than failures; ``last_valid_byte`` is the ``lastValidByteReceived`` of
    an ``InvalidLayerPartException``.
    """

    code = "ecr_api_error"

    def __init__(self, message: str, aws_code: str = "") -> None:
        super().__init__(message)
        self.aws_code = aws_code
        self.last_valid_byte: int | None = None


class RepositoryNotFoundError(EcrApiError):
    code = "repository_not_found"


class ImageNotFoundError(EcrApiError):
    code = "image_not_found"


class LayerNotFoundError(EcrApiError):
    code = "layer_not_found"


class LayerRefusedError(EcrApiError):
    """CompleteLayerUpload found that the uploaded parts do not hash to the layer's digest."""

    code = "layer_refused"


class CredentialsError(EcrApiError):
    code = "credentials"


class AccessDeniedError(EcrApiError):
    code = "access_denied"


class EndpointError(EcrApiError):
    code = "endpoint_unreachable"


# Error codes worth another try: ECR's transient server error, throttling under its various names.
RETRYABLE_CODES = frozenset((
    "ThrottlingException", "ThrottledException", "TooManyRequestsException", "RequestLimitExceeded",
    "ServerException", "InternalFailure", "ServiceUnavailable", "RequestTimeout",
))
CREDENTIAL_CODES = frozenset((
    "UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException",
    "InvalidClientTokenId", "SignatureDoesNotMatch", "MissingAuthenticationTokenException",
    "AuthFailure", "RequestExpired",
))
ACCESS_DENIED_CODES = frozenset(("AccessDeniedException", "AccessDenied", "UnauthorizedOperation"))

MAX_LAYER_DIGESTS_PER_CHECK = 100  # BatchCheckLayerAvailability's limit


def client_config(ref: ImageRef) -> dict[str, Any]:
    """botocore client settings for ``ref``: our retry loop instead of botocore's, and the endpoint
    variant (FIPS, dual-stack) the reference's registry host names."""
    config: dict[str, Any] = {"retries": {"total_max_attempts": 1, "mode": "standard"}}
    if ref.fips:
        config["use_fips_endpoint"] = True
    if ref.dual_stack:
        config["use_dualstack_endpoint"] = True
    return config


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError) and hasattr(exc, "response"):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _unreadable_error(exc: BaseException) -> bool:
    """An error answer without a readable ECR error type: botocore then gives the HTTP status as the
    code, and the raw body (never shown: it is not ECR's text) as the message."""
    return isinstance(exc, ClientError) and error_code(exc).isdigit()


def _is_transient(exc: BaseException) -> bool:
    if not isinstance(exc, ClientError):
        return True  # connection refused, reset or closed, read timeout
    if _unreadable_error(exc):
        # A body cut short (a JSON fragment) is worth another try, as is a 5xx from a load balancer;
        # a proxy's own 4xx page is not.
        return int(error_code(exc)) >= 500 or _error_message(exc).lstrip().startswith("{")
    return error_code(exc) in RETRYABLE_CODES


def _error_message(exc: BaseException) -> str:
    if isinstance(exc, ClientError) and hasattr(exc, "response"):
        return str(exc.response.get("Error", {}).get("Message", "")).rstrip(".")
    return str(exc).rstrip(".")


class EcrRepository:
    """The ECR API calls on one repository, with retries, counting and error translation."""

    def __init__(self, client: Any, ref: ImageRef, retry: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self.ref = ref
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock  # how long a failed call kept trying, for its message
        self._lock = threading.Lock()
        self.api_calls = 0
        self.retries = 0
        self._events = getattr(getattr(client, "meta", None), "events", None)  # None: a test double

    # -- plumbing ---------------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"repository '{self.ref.repository}' in registry {self.ref.registry_id} ({self.ref.region})"

    def _params(self, **params: Any) -> dict[str, Any]:
        return dict(registryId=self.ref.registry_id, repositoryName=self.ref.repository, **params)

    def _count(self, retry: bool) -> None:
        with self._lock:
            self.api_calls += 1
            if retry:
                self.retries += 1

    def hook_before_send(self, operation: str, handler: Callable[..., None]) -> bool:
        """Have botocore call ``handler(**event)`` in the calling thread once a request of ``operation``
        (the boto3 method name) is built and signed, just before it is sent (again before each retry),
        ahead of any other handler of that event. Registering the same handler again changes nothing.
        False when the client has no botocore events (a test double): the caller does without."""
        if self._events is None:
            return False
        self._events.register_first(f"before-send.ecr.{_api_name(operation)}", handler,
                                    unique_id=f"ecrkit-{handler.__module__}.{handler.__qualname__}")
        return True

    def call(self, operation: str, required: Sequence[str] = (), **params: Any) -> dict[str, Any]:
        """Call ``operation`` (the boto3 method name) with retries; translate the final error.

        Connection failures (refused, reset, closed before an answer, read timeout: botocore's
        ConnectionError and HTTPClientError) are retried like throttling. So are answers cut short:
        a success without the ``required`` keys (botocore parses what arrived) and an error whose
        body is a JSON fragment.
        """
        method = getattr(self._client, operation)
        attempt = 0
        started = self._clock()
        while True:
            self._count(retry=attempt > 0)
            try:
                answer = method(**params)
                missing = [key for key in required if key not in answer]
                if not missing:
                    return answer
                attempt += 1
                if attempt >= self.retry.attempts:
                    raise EndpointError(f"ECR answered {_api_name(operation)} without {', '.join(missing)} {attempt} times "
                                        f"over {_seconds(self._clock() - started)} (a truncated answer?); check the network "
                                        "path to the ECR API and try again.")
                self._sleep(self.retry.delay(attempt - 1))
            except (ClientError, BotoConnectionError, HTTPClientError) as exc:
                attempt += 1
                if not _is_transient(exc) or attempt >= self.retry.attempts:
                    raise self.translate(operation, exc, retries=attempt - 1, elapsed=self._clock() - started) from None
                self._sleep(self.retry.delay(attempt - 1))
            except (NoCredentialsError, PartialCredentialsError) as exc:
                raise self.translate(operation, exc) from None
            except BotoCoreError as exc:
                raise self.translate(operation, exc) from None

    def translate(self, operation: str, exc: BaseException, retries: int = 0, elapsed: float = 0.0) -> EcrApiError:
        """One sentence for the operator about a failed call; never the exception's repr. ``retries`` and
        ``elapsed`` (seconds since the first attempt) say how hard the call was tried."""
        error = self._translate(operation, exc, retries, elapsed)
        error.aws_code = error_code(exc)
        if isinstance(exc, ClientError) and isinstance(exc.response.get("lastValidByteReceived"), int):
            error.last_valid_byte = exc.response["lastValidByteReceived"]
        return error

    def _translate(self, operation: str, exc: BaseException, retries: int, elapsed: float) -> EcrApiError:
        code = error_code(exc)
        detail = _error_message(exc)
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return CredentialsError(
                "No usable AWS credentials were found: set access_key/secret_key or profile, or give the host "
                "an instance role or the usual AWS environment variables.")
        if code in CREDENTIAL_CODES:
            return CredentialsError(
                f"AWS rejected the credentials ({code}: {detail}); check that the access key, secret key and "
                "session token are current and belong together, and that the host clock is right.")
        if code in ACCESS_DENIED_CODES:
            return AccessDeniedError(
                f"Access denied calling ECR {_api_name(operation)} on {self._where} ({detail}); grant the "
                f"caller ecr:{_api_name(operation)} on that repository.")
        if code == "RepositoryNotFoundException":
            return RepositoryNotFoundError(
                f"The {self._where} does not exist; check the reference's account, region and repository name.")
        if _unreadable_error(exc):
            times = "once" if not retries else f"{retries + 1} times in a row"
            return EndpointError(
                f"ECR answered {_api_name(operation)} with HTTP {code} and an error body that could not be read "
                f"(cut short, or not from ECR: a proxy?) {times}; check the network path to the ECR "
                "API (proxy, endpoint_url) and try again.")
        if code in RETRYABLE_CODES:
            return EcrApiError(
                f"ECR kept answering {_api_name(operation)} with {code} after {retries} retries ({_attempts(retries + 1)} "
                f"over {_seconds(elapsed)}); try again later or raise max_attempts.")
        if isinstance(exc, (BotoConnectionError, HTTPClientError)):  # tried max_attempts times: say so
            return EndpointError(
                f"Could not reach the ECR API for {_api_name(operation)}: it did not answer after {_attempts(retries + 1)} "
                f"over {_seconds(elapsed)} ({detail}); check the network, proxy, region and endpoint_url.")
        if not isinstance(exc, ClientError):
            return EndpointError(
                f"Could not reach the ECR API for {_api_name(operation)} ({detail}); check the network, proxy "
                "and endpoint_url.")
        return EcrApiError(f"ECR {_api_name(operation)} on {self._where} failed: {code}: {detail}.")

    # -- reading ----------------------------------------------------------------------------------

    def get_manifest(self, image_id: dict[str, str], accepted_media_types: Sequence[str]) -> tuple[bytes, str, str]:
        """BatchGetImage for one image: ``(exact manifest bytes, media type, digest ECR reports)``."""
        answer = self.call("batch_get_image", **self._params(
            imageIds=[image_id], acceptedMediaTypes=list(accepted_media_types)))
        failures = answer.get("failures") or []
        images = answer.get("images") or []
        if failures and not images:
            failure = failures[0]
            reason = failure.get("failureReason") or failure.get("failureCode") or "unknown reason"
            what = _describe_image_id(image_id)
            if failure.get("failureCode") == "ImageNotFound":
                return_error: EcrApiError = ImageNotFoundError(
                    f"The image {what} does not exist in {self._where}; check the tag or digest.")
            elif failure.get("failureCode") == "ImageTagDoesNotMatchDigest":
                return_error = ImageNotFoundError(
                    f"In {self._where} the tag '{image_id.get('imageTag')}' does not point at "
                    f"{image_id.get('imageDigest')}; fix the digest in the reference or drop it to follow the tag.")
            else:
                return_error = EcrApiError(f"ECR could not return the image {what} from {self._where}: "
                                           f"{failure.get('failureCode')}: {reason}.")
            raise return_error
        if not images:
            raise EcrApiError(f"ECR returned no image for {_describe_image_id(image_id)} in {self._where}.")
        image = images[0]
        manifest = image.get("imageManifest")
        if not isinstance(manifest, str):
            raise EcrApiError(f"ECR returned the image {_describe_image_id(image_id)} without its manifest.")
        return (manifest.encode("utf-8"), str(image.get("imageManifestMediaType") or ""),
                str(image.get("imageId", {}).get("imageDigest") or ""))

    def get_download_url(self, digest: str) -> str:
        """GetDownloadUrlForLayer: a presigned URL for a blob. The URL is a credential: never show it."""
        try:
            answer = self.call("get_download_url_for_layer", required=("downloadUrl",), **self._params(layerDigest=digest))
        except EcrApiError as exc:
            if exc.aws_code in ("LayersNotFoundException", "LayerInaccessibleException"):
                raise LayerNotFoundError(
                    f"ECR has no downloadable blob {digest} in {self._where} (an image references a layer the "
                    "repository no longer holds); re-push the image.") from None
            raise
        return str(answer["downloadUrl"])

    # -- writing ----------------------------------------------------------------------------------

    def repository_exists(self) -> bool:
        try:
            self.call("describe_repositories", registryId=self.ref.registry_id, repositoryNames=[self.ref.repository])
        except RepositoryNotFoundError:
            return False
        return True

    def create_repository(self, tag_mutability: str | None = None) -> None:
        params: dict[str, Any] = self._params()
        if tag_mutability:
            params["imageTagMutability"] = tag_mutability
        try:
            self.call("create_repository", **params)
        except EcrApiError as exc:
            if exc.aws_code != "RepositoryAlreadyExistsException":
                raise  # else: a concurrent push, or our own first attempt whose answer was lost, made it

    def missing_blobs(self, digests: Iterable[str]) -> list[str]:
        """BatchCheckLayerAvailability in batches of 100: the digests ECR does not have, in input order."""
        wanted = list(dict.fromkeys(digests))
        available: set[str] = set()
        for start in range(0, len(wanted), MAX_LAYER_DIGESTS_PER_CHECK):
            batch = wanted[start:start + MAX_LAYER_DIGESTS_PER_CHECK]
            answer = self.call("batch_check_layer_availability", **self._params(layerDigests=batch))
            available.update(layer["layerDigest"] for layer in answer.get("layers") or []
                             if layer.get("layerAvailability") == "AVAILABLE")
        return [digest for digest in wanted if digest not in available]

    def image_digests(self, image_ids: Sequence[dict[str, str]], accepted_media_types: Sequence[str]) -> list[str | None]:
        """One BatchGetImage for several ids: the digest each points at in ECR, None when it does not exist."""
        if not image_ids:
            return []
        answer = self.call("batch_get_image", **self._params(
            imageIds=list(image_ids), acceptedMediaTypes=list(accepted_media_types)))
        found: dict[tuple[str, str], str] = {}
        for image in answer.get("images") or []:
            image_id = image.get("imageId") or {}
            digest = str(image_id.get("imageDigest") or "")
            if image_id.get("imageTag"):
                found[("imageTag", str(image_id["imageTag"]))] = digest
            found[("imageDigest", digest)] = digest
        for failure in answer.get("failures") or []:
            if failure.get("failureCode") not in ("ImageNotFound", None):
                raise EcrApiError(f"ECR could not look up the image {_describe_image_id(failure.get('imageId') or {})} in "
                                  f"{self._where}: {failure.get('failureCode')}: {failure.get('failureReason')}.")
        out: list[str | None] = []
        for image_id in image_ids:
            key = ("imageTag", image_id["imageTag"]) if "imageTag" in image_id else ("imageDigest", image_id.get("imageDigest", ""))
            out.append(found.get(key))
        return out

    def tag_mutability(self) -> str:
        """The repository's imageTagMutability (MUTABLE, IMMUTABLE, or a WITH_EXCLUSION variant)."""
        answer = self.call("describe_repositories", registryId=self.ref.registry_id, repositoryNames=[self.ref.repository])
        repositories = answer.get("repositories") or [{}]
        return str(repositories[0].get("imageTagMutability") or "MUTABLE")

    def initiate_layer_upload(self) -> tuple[str, int]:
        """InitiateLayerUpload: ``(uploadId, partSize)``."""
        answer = self.call("initiate_layer_upload", required=("uploadId", "partSize"), **self._params())
        return str(answer["uploadId"]), int(answer["partSize"])

    def upload_layer_part(self, upload_id: str, first: int, last: int, data: bytes) -> None:
        """UploadLayerPart of the bytes ``first``..``last`` (inclusive).

        A retry of a part whose first attempt ECR did receive (the answer was lost) meets
        ``InvalidLayerPartException`` with ``lastValidByteReceived`` at the part's last byte: the part is
        in, and CompleteLayerUpload still checks every byte against the layer's digest.
        """
        try:
            self.call("upload_layer_part", **self._params(uploadId=upload_id, partFirstByte=first, partLastByte=last,
                                                          layerPartBlob=data))
        except EcrApiError as exc:
            if exc.aws_code == "InvalidLayerPartException" and exc.last_valid_byte == last:
                return
            raise

    def complete_layer_upload(self, upload_id: str, digest: str) -> bool:
        """CompleteLayerUpload; True when the layer was stored, False when ECR already had it
        (``LayerAlreadyExistsException``: ECR hashed the parts to ``digest``, so the bytes match)."""
        try:
            self.call("complete_layer_upload", **self._params(uploadId=upload_id, layerDigests=[digest]))
        except EcrApiError as exc:
            if exc.aws_code == "LayerAlreadyExistsException":
                return False
            if exc.aws_code == "UploadNotFoundException" and not self.missing_blobs([digest]):
                return False  # a retry after a lost answer: the first attempt completed the upload
            if exc.aws_code == "InvalidLayerException":
                raise LayerRefusedError(f"ECR refused the layer {digest} in {self._where}: the uploaded bytes do not hash "
                                        "to it.", exc.aws_code) from None
            raise
        return True

    def put_image(self, manifest: bytes, media_type: str, tag: str | None = None, digest: str | None = None) -> bool:
        """PutImage of the exact manifest bytes; False when ECR already had it under that tag
        (``ImageAlreadyExistsException``), True when it stored or moved something."""
        params = self._params(imageManifest=manifest.decode("utf-8"), imageManifestMediaType=media_type)
        if tag:
            params["imageTag"] = tag
        if digest:
            params["imageDigest"] = digest
        try:
            self.call("put_image", **params)
        except EcrApiError as exc:
            if exc.aws_code == "ImageAlreadyExistsException":
                return False
            raise
        return True


def _api_name(operation: str) -> str:
    """``batch_get_image`` -> ``BatchGetImage`` (as IAM actions and the API reference spell it)."""
    return "".join(word.capitalize() for word in operation.split("_"))


def _attempts(count: int) -> str:
    return "1 attempt" if count == 1 else f"{count} attempts"


def _seconds(elapsed: float) -> str:
    """A duration for a message: whole seconds from 10 s up, tenths below."""
    return f"{elapsed:.0f} s" if elapsed >= 10 else f"{max(elapsed, 0.0):.1f} s"


def _describe_image_id(image_id: dict[str, str]) -> str:
    if "imageTag" in image_id and "imageDigest" in image_id:
        return f"with tag '{image_id['imageTag']}' and digest {image_id['imageDigest']}"
    if "imageTag" in image_id:
        return f"with tag '{image_id['imageTag']}'"
    return f"with digest {image_id.get('imageDigest')}"


def connect(module: Any, ref: ImageRef, retry: RetryPolicy | None = None) -> EcrRepository:
    """The one place that builds the boto3 client: through AnsibleAWSModule, so every amazon.aws
    connection option (profile, keys, endpoint_url, validate_certs, aws_ca_bundle, aws_config) applies,
    pointed at the reference's region."""
    client = module.client("ecr", region=ref.region, config=client_config(ref))
    return EcrRepository(client, ref, retry)


def blob_tls_verify(params: dict[str, Any]) -> bool | str:
    """TLS verification for blob downloads, from the same options as the API client's
    (``validate_certs`` and ``aws_ca_bundle``), so a private CA applies to both."""
    if params.get("validate_certs", True) is False:
        return False
    return params.get("aws_ca_bundle") or True


def explicit_region(region: str | None) -> str | None:
    """The region option as the user set it. amazon.aws fills it from AWS_REGION/AWS_DEFAULT_REGION
    when absent; a host-wide default must not contradict the region a reference names."""
    if region and region in (os.environ.get("AWS_REGION"), os.environ.get("AWS_DEFAULT_REGION")):
        return None
    return region
