# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Parse, validate and normalise references to images in Amazon ECR private registries.

Two spellings are accepted, and both give the same :class:`ImageRef`:

- the registry URI, as the ECR console shows it::

      123456789012.dkr.ecr.us-west-2.amazonaws.com/team/app:1.2
      123456789012.dkr.ecr.us-west-2.amazonaws.com/team/app@sha256:<64 hex>
      123456789012.dkr.ecr.us-west-2.amazonaws.com/team/app:1.2@sha256:<64 hex>

  with any partition's host: ``dkr.ecr.REGION.SUFFIX`` (``amazonaws.com``, ``amazonaws.com.cn``,
  ``amazonaws.eu``, ``c2s.ic.gov``, ``sc2s.sgov.gov``, ``cloud.adc-e.uk``, ``csp.hci.ic.gov``), the FIPS
  ``dkr.ecr-fips.REGION.SUFFIX``, and the dual-stack ``dkr-ecr[-fips].REGION.on.aws`` (and the other
  partitions' dual-stack suffixes, see ``PARTITIONS``);
- the ARN form of the Amazon ECR containerd resolver::

      ecr.aws/arn:aws:ecr:us-west-2:123456789012:repository/team/app:1.2

  (``ecr.aws/`` may be left out), with the same ``:TAG``, ``@DIGEST`` and ``:TAG@DIGEST`` endings.

A reference with neither tag nor digest means the ``default_tag`` of :func:`parse_reference`
(``latest`` unless the caller says otherwise). Everything is checked before any network call; a bad
reference raises :class:`InvalidReferenceError` whose message quotes it and names the wrong part.

Grammar decisions and their sources:

- Repository name: 2 to 256 characters matching
  ``[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*``: the ``RepositoryName``
  shape of the ECR API model (botocore ``data/ecr/2015-09-21/service-2.json``, min 2, max 256), which is
  also the OCI distribution name grammar. It is wider than the ``[._-]`` single-separator pattern that
  older ECR docs (and ECR Public's CreateRepository) print: ``a__b`` and ``a--b`` are valid names in the
  current model. CreateRepository's description ("must start with a letter") is not what the API
  pattern enforces, so a leading digit is accepted here too (ECR answers for names it will not create).
- Tag: 1 to 300 characters from ``A-Z a-z 0-9 . _ -``. The length is the ECR API model's ``ImageTag``
  (min 1, max 300; API reference ``ImageIdentifier``); the model gives no pattern, and the characters
  are what the service has been seen to enforce (an InvalidParameterException quoted in a public bug
  report: "must satisfy regular expression '[a-zA-Z0-9-_.]+'"). This is
  wider than the OCI/Docker tag grammar ``[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`` (at most 128 characters,
  no leading ``.`` or ``-``): such tags exist in ECR and must be pullable through its API, but Docker
  and containerd cannot name them (a docker-archive's ``RepoTags`` entry is checked against that
  grammar where it is written; an OCI layout's ``ref.name`` takes any tag).
- Digest: ``sha256:`` and 64 lowercase hex digits (the OCI image spec's form for sha256; ECR's
  ``imageDigest`` is "the sha256 digest of the image manifest"). Other algorithms are rejected.
- Account: 12 digits (``RegistryId`` pattern ``[0-9]{12}`` in the model).
- Regions and hosts: partitions, DNS suffixes and region shapes from botocore ``data/partitions.json``;
  registry host forms from the AWS General Reference "Amazon ECR endpoints and quotas"
  (``dkr.ecr``, ``dkr.ecr-fips``, ``dkr-ecr``, ``dkr-ecr-fips``) and the ECR user guide "Making requests
  to Amazon ECR registries" (``<registry-id>.dkr-ecr.<region>.on.aws``). The dual-stack registry
  suffix of each partition is ``on.`` followed by its dual-stack DNS suffix without the leading
  ``api.``, as AWS's own image credential provider and ECS agent list them (``on.aws``,
  ``on.amazonwebservices.com.cn``, ``on.aws.ic.gov``, ``on.aws.scloud``, ``on.aws.hci.ic.gov``,
  ``on.cloud-aws.adc-e.uk``); for ``aws-eusc`` (``on.amazonwebservices.eu``) that rule is applied
  without a published example. A region that no specific partition claims and that has the shape
  ``xx-name-N`` belongs to ``aws``, as botocore resolves unknown regions, so a newly opened region
  needs no update here.
"""

from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple

from ansible_collections.ecrkit.images.plugins.module_utils.digest import ANY_DIGEST_RE, is_digest
from ansible_collections.ecrkit.images.plugins.module_utils.errors import InvalidReferenceError


class Partition(NamedTuple):
    """One AWS partition, as far as ECR registry hosts go."""

    name: str
    dns_suffix: str
    """Suffix of ``ACCOUNT.dkr.ecr[-fips].REGION.<suffix>``."""
    dual_stack_suffix: str
    """Suffix of ``ACCOUNT.dkr-ecr[-fips].REGION.<suffix>``."""
    region_pattern: str
    """Regular expression a region of this partition matches in full."""


PARTITIONS: dict[str, Partition] = {
    partition.name: partition
    for partition in (
        Partition("aws", "amazonaws.com", "on.aws", r"[a-z]{2}-[a-z]+-[0-9]{1,2}"),
        Partition("aws-cn", "amazonaws.com.cn", "on.amazonwebservices.com.cn", r"cn-[a-z]+-[0-9]{1,2}"),
        Partition("aws-us-gov", "amazonaws.com", "on.aws", r"us-gov-[a-z]+-[0-9]{1,2}"),
        Partition("aws-iso", "c2s.ic.gov", "on.aws.ic.gov", r"us-iso-[a-z]+-[0-9]{1,2}"),
        Partition("aws-iso-b", "sc2s.sgov.gov", "on.aws.scloud", r"us-isob-[a-z]+-[0-9]{1,2}"),
        Partition("aws-iso-e", "cloud.adc-e.uk", "on.cloud-aws.adc-e.uk", r"eu-isoe-[a-z]+-[0-9]{1,2}"),
        Partition("aws-iso-f", "csp.hci.ic.gov", "on.aws.hci.ic.gov", r"us-isof-[a-z]+-[0-9]{1,2}"),
        Partition("aws-eusc", "amazonaws.eu", "on.amazonwebservices.eu", r"eusc-de-[a-z]+-[0-9]{1,2}"),
    )
}
"""Known partitions by name (``aws``, ``aws-cn``, ``aws-us-gov``, ``aws-iso``, ``aws-iso-b``,
``aws-iso-e``, ``aws-iso-f``, ``aws-eusc``)."""


DEFAULT_TAG = "latest"

FORMS_HINT = (
    "write ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME[:TAG][@sha256:DIGEST] "
    "or ecr.aws/arn:aws:ecr:REGION:ACCOUNT:repository/NAME[:TAG][@sha256:DIGEST]"
)
REPOSITORY_RULE = (
    "a repository name is 2 to 256 characters: lowercase letters and digits, "
    "with '.', '_', '__' or '-' only between them, and '/' between such components (e.g. team/app)"
)
TAG_RULE = "a tag is 1 to 300 characters from A-Z, a-z, 0-9, '.', '_' and '-' (e.g. 1.2 or latest)"
DIGEST_RULE = "a digest is sha256: followed by 64 lowercase hexadecimal digits"

_ACCOUNT_RE = re.compile(r"[0-9]{12}")
_REGION_SHAPE_RE = re.compile(r"[a-z]{2,4}(?:-[a-z]+){1,2}-[0-9]{1,2}")
_PARTITION_REGION_RES = {name: re.compile(partition.region_pattern) for name, partition in PARTITIONS.items()}
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(_COMPONENT + r"(?:/" + _COMPONENT + r")*")
_REPOSITORY_MIN, _REPOSITORY_MAX = 2, 256
_TAG_RE = re.compile(r"[A-Za-z0-9._-]+")
_TAG_MAX = 300
# ACCOUNT.KIND.REGION.SUFFIX; each part is checked on its own afterwards, for a precise message.
_HOST_RE = re.compile(r"(?P<account>[^./]+)\.(?P<kind>dkr\.ecr-fips|dkr\.ecr|dkr-ecr-fips|dkr-ecr)\.(?P<region>[^./]+)\.(?P<suffix>[^/]+)")
_ARN_PREFIX = "ecr.aws/"
_PUBLIC_HOSTS = ("public.ecr.aws", "ecr-public.aws.com")
_MAX_QUOTED = 200


def _quote(value: object) -> str:
    """``value`` for a message: a string in double quotes with control characters escaped and very
    long text cut short; None as null (the YAML and JSON word for it); anything else as its ASCII repr, cut short."""
    if value is None:
        return "null"
    if not isinstance(value, str):
        shown = ascii(value)
        return shown if len(shown) <= _MAX_QUOTED else shown[:_MAX_QUOTED] + "..."
    escaped = value[:_MAX_QUOTED].encode("unicode_escape").decode("ascii").replace('"', '\\"')
    more = f"...({len(value)} characters)" if len(value) > _MAX_QUOTED else ""
    return f'"{escaped}{more}"'


def _fail(reference: str | None, detail: str) -> InvalidReferenceError:
    """The error for ``detail`` (lowercase, no final period), about ``reference`` when there is one."""
    if reference is None:
        return InvalidReferenceError(detail[:1].upper() + detail[1:] + ".")
    return InvalidReferenceError(f"Invalid image reference {_quote(reference)}: {detail}.", reference=reference)


def partition_for_region(region: str) -> str | None:
    """The partition ``region`` belongs to, or None when it does not have the shape of a region."""
    if not isinstance(region, str) or not _REGION_SHAPE_RE.fullmatch(region):
        return None
    for name, pattern in _PARTITION_REGION_RES.items():
        if name != "aws" and pattern.fullmatch(region):
            return name
    if _PARTITION_REGION_RES["aws"].fullmatch(region):
        return "aws"
    return None


def _check_account(account: object, reference: str | None) -> str:
    if isinstance(account, str) and _ACCOUNT_RE.fullmatch(account):
        return account
    raise _fail(reference, f"the account (registry ID) {_quote(account)} is not valid; it must be exactly 12 digits, e.g. 123456789012")


def _check_region(region: object, partition: str | None, reference: str | None) -> str:
    """Validate ``region`` and return its partition; with ``partition`` given, the two must agree."""
    found = partition_for_region(region) if isinstance(region, str) else None
    if found is None:
        raise _fail(reference, f"the region {_quote(region)} is not valid; a region looks like us-west-2, eu-central-2, cn-north-1 or us-gov-west-1")
    if partition is not None and found != partition:
        raise _fail(reference, f"the region {_quote(region)} belongs to the {found} partition, not {partition}")
    return found


def _check_repository(name: object, reference: str | None) -> str:
    if not isinstance(name, str) or not name:
        raise _fail(reference, f"the repository name is missing; {REPOSITORY_RULE}")
    if not _REPOSITORY_MIN <= len(name) <= _REPOSITORY_MAX:
        raise _fail(reference, f"the repository name {_quote(name)} is {len(name)} characters long; {REPOSITORY_RULE}")
    if _REPOSITORY_RE.fullmatch(name):
        return name
    lowered = name.lower()
    if lowered != name and _REPOSITORY_RE.fullmatch(lowered):
        raise _fail(reference, f"the repository name {_quote(name)} has uppercase letters; ECR repository names are lowercase, e.g. {_quote(lowered)}")
    raise _fail(reference, f"the repository name {_quote(name)} is not valid; {REPOSITORY_RULE}")


def _check_tag(tag: object, reference: str | None) -> str:
    if not isinstance(tag, str) or not tag:
        raise _fail(reference, f"the tag is empty; {TAG_RULE}")
    if len(tag) > _TAG_MAX:
        raise _fail(reference, f"the tag {_quote(tag)} is {len(tag)} characters long; {TAG_RULE}")
    if not _TAG_RE.fullmatch(tag):
        raise _fail(reference, f"the tag {_quote(tag)} is not valid; {TAG_RULE}")
    return tag


def _check_digest(digest: object, reference: str | None) -> str:
    if is_digest(digest):
        return digest
    if not isinstance(digest, str) or not digest:
        raise _fail(reference, f"the digest is empty; {DIGEST_RULE}")
    shaped = ANY_DIGEST_RE.fullmatch(digest)
    if shaped and shaped.group("algorithm") != "sha256":
        raise _fail(reference, f"the digest {_quote(digest)} uses {shaped.group('algorithm')}; only sha256 digests are supported ({DIGEST_RULE})")
    if shaped and is_digest(digest.lower()):
        raise _fail(reference, f"the digest {_quote(digest)} has uppercase hexadecimal digits; write it in lowercase: {digest.lower()}")
    raise _fail(reference, f"the digest {_quote(digest)} is not valid; {DIGEST_RULE}")


class _Host(NamedTuple):
    account: str
    region: str
    partition: str
    fips: bool
    dual_stack: bool


def _known_suffixes(dual_stack: bool) -> str:
    suffixes: list[str] = []
    for partition in PARTITIONS.values():
        suffix = partition.dual_stack_suffix if dual_stack else partition.dns_suffix
        if suffix not in suffixes:
            suffixes.append(suffix)
    return ", ".join(suffixes)


def _parse_host(host: str, reference: str | None) -> _Host:
    """Validate an ECR private registry host (already in lowercase)."""
    match = _HOST_RE.fullmatch(host)
    if match is None:
        if host in _PUBLIC_HOSTS:
            raise _fail(
                reference,
                f"this is an Amazon ECR Public reference (host {_quote(host)}), which this collection does not support; "
                f"for an ECR private registry {FORMS_HINT}",
            )
        raise _fail(reference, f"this is not an Amazon ECR private registry reference ({_quote(host)} is not an ECR registry host); {FORMS_HINT}")
    kind, region, suffix = match.group("kind"), match.group("region"), match.group("suffix")
    account = _check_account(match.group("account"), reference)
    dual_stack = kind.startswith("dkr-ecr")
    partition = _check_region(region, None, reference)
    expected = PARTITIONS[partition].dual_stack_suffix if dual_stack else PARTITIONS[partition].dns_suffix
    if suffix != expected:
        variant = "dual-stack " if dual_stack else ""
        if suffix not in _known_suffixes(dual_stack).split(", "):
            raise _fail(
                reference,
                f"the registry host {_quote(host)} ends in {_quote(suffix)}, which is no AWS partition's {variant}registry domain "
                f"(known: {_known_suffixes(dual_stack)}); {FORMS_HINT}",
            )
        raise _fail(
            reference,
            f"the registry host {_quote(host)} ends in {_quote(suffix)}, but region {region} is in the {partition} partition, "
            f"whose {variant}registry hosts end in {expected}",
        )
    return _Host(account, region, partition, kind.endswith("-fips"), dual_stack)


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """A validated reference to one image in an ECR private repository.

    Build one with :func:`parse_reference`, or directly from its parts, which are validated the same
    way (``host`` defaults to the standard ``ACCOUNT.dkr.ecr.REGION.<partition's DNS suffix>``). ``tag``
    is None when only a digest was given; ``digest`` is None unless one was given; at least one is set.
    """

    partition: str
    region: str
    registry_id: str
    repository: str
    tag: str | None = None
    digest: str | None = None
    host: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.partition, str) or self.partition not in PARTITIONS:
            raise _fail(None, f"the partition {_quote(self.partition)} is not known; known partitions: {', '.join(PARTITIONS)}")
        _check_region(self.region, self.partition, None)
        _check_account(self.registry_id, None)
        _check_repository(self.repository, None)
        if self.tag is None and self.digest is None:
            raise _fail(None, "an image reference needs a tag, a digest or both")
        if self.tag is not None:
            _check_tag(self.tag, None)
        if self.digest is not None:
            _check_digest(self.digest, None)
        if not self.host:
            object.__setattr__(self, "host", f"{self.registry_id}.dkr.ecr.{self.region}.{PARTITIONS[self.partition].dns_suffix}")
            return
        if not isinstance(self.host, str):
            raise _fail(None, f"the registry host {_quote(self.host)} is not valid")
        parsed = _parse_host(self.host, None)
        if (parsed.account, parsed.region, parsed.partition) != (self.registry_id, self.region, self.partition):
            raise _fail(
                None,
                f"the registry host {_quote(self.host)} does not match account {self.registry_id}, region {self.region} and partition {self.partition}",
            )

    def __str__(self) -> str:
        text = self.repository_uri
        if self.tag is not None:
            text += ":" + self.tag
        if self.digest is not None:
            text += "@" + self.digest
        return text

    @property
    def repository_uri(self) -> str:
        """``HOST/NAME``, like ECR's ``repositoryUri``."""
        return f"{self.host}/{self.repository}"

    @property
    def arn(self) -> str:
        """The repository's ARN: ``arn:PARTITION:ecr:REGION:ACCOUNT:repository/NAME``."""
        return f"arn:{self.partition}:ecr:{self.region}:{self.registry_id}:repository/{self.repository}"

    @property
    def image_id(self) -> dict[str, str]:
        """The entry for ECR's ``imageIds``: ``imageTag`` and/or ``imageDigest``."""
        image_id = {}
        if self.tag is not None:
            image_id["imageTag"] = self.tag
        if self.digest is not None:
            image_id["imageDigest"] = self.digest
        return image_id

    @property
    def fips(self) -> bool:
        """Whether the host is a FIPS registry host (``dkr.ecr-fips`` or ``dkr-ecr-fips``)."""
        return _parse_host(self.host, None).fips

    @property
    def dual_stack(self) -> bool:
        """Whether the host is a dual-stack (IPv4 and IPv6) registry host (``dkr-ecr[-fips]``)."""
        return _parse_host(self.host, None).dual_stack


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        kind = "null" if text is None else type(text).__name__
        raise InvalidReferenceError(f"The image reference must be a string, not {kind}; {FORMS_HINT}.")
    if not text:
        raise InvalidReferenceError(f"The image reference is empty; {FORMS_HINT}.", reference=text)
    if any(char.isspace() for char in text):
        raise _fail(text, "it contains whitespace (check for leading or trailing spaces or a line break); remove it")
    if not text.isascii():
        raise _fail(text, "it contains non-ASCII characters; image references are plain ASCII")
    if not text.isprintable():
        raise _fail(text, "it contains control characters; remove them")
    for scheme in ("https://", "http://", "oci://", "docker://"):
        if text.lower().startswith(scheme):
            raise _fail(text, f"remove the {scheme} prefix; {FORMS_HINT}")
    return text


class _Parts(NamedTuple):
    partition: str
    region: str
    account: str
    host: str
    repository: str
    tag: str | None
    digest: str | None


def _split_digest(text: str, body: str) -> tuple[str, str | None]:
    name, at, digest = body.partition("@")
    if not at:
        return body, None
    if "@" in digest:
        raise _fail(text, "it has more than one '@'; one digest at most may follow the name")
    return name, digest


def _parse_arn_form(text: str, body: str) -> _Parts:
    """``arn:PARTITION:ecr:REGION:ACCOUNT:repository/NAME[:TAG][@DIGEST]``."""
    body, digest = _split_digest(text, body)
    fields = body.split(":", 5)
    if len(fields) < 6:
        raise _fail(text, "the ARN is incomplete; it should read arn:PARTITION:ecr:REGION:ACCOUNT:repository/NAME[:TAG]")
    dummy, partition, service, region, account, resource = fields
    if partition not in PARTITIONS:
        raise _fail(text, f"the ARN's partition {_quote(partition)} is not known; known partitions: {', '.join(PARTITIONS)}")
    if service != "ecr":
        raise _fail(text, f"the ARN names the service {_quote(service)}; it must be an ECR repository ARN (arn:{partition}:ecr:...)")
    _check_region(region, partition, text)
    _check_account(account, text)
    if not resource.startswith("repository/"):
        raise _fail(text, f"the ARN's resource {_quote(resource)} should be repository/NAME")
    name, colon, tag = resource[len("repository/"):].partition(":")
    host = f"{account}.dkr.ecr.{region}.{PARTITIONS[partition].dns_suffix}"
    return _Parts(partition, region, account, host, name, tag if colon else None, digest)


def _parse_uri_form(text: str, body: str) -> _Parts:
    """``HOST/NAME[:TAG][@DIGEST]``."""
    host, slash, path = body.partition("/")
    host = host.lower()
    parsed = _parse_host(host, text)
    if not slash or not path:
        raise _fail(text, f"it has no repository name after the registry host; it should read {host}/NAME[:TAG]")
    path, digest = _split_digest(text, path)
    directory, slash, last = path.rpartition("/")
    last, colon, tag = last.partition(":")
    return _Parts(parsed.partition, parsed.region, parsed.account, host, directory + slash + last, tag if colon else None, digest)


def parse_reference(text: str, default_tag: str | None = DEFAULT_TAG) -> ImageRef:
    """Parse and validate a reference to an image in an ECR private registry.

    ``text`` is a registry URI (``ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME[:TAG][@sha256:HEX]``, or
    a FIPS, dual-stack or other partition's host) or the ARN form
    (``[ecr.aws/]arn:PARTITION:ecr:REGION:ACCOUNT:repository/NAME[:TAG][@sha256:HEX]``). A reference
    with neither tag nor digest gets ``default_tag``; ``default_tag=None`` requires the reference to
    name a tag or a digest (a push target, for instance). The host is put in lowercase; nothing else
    is changed.

    Raises :class:`InvalidReferenceError`, and nothing else, for any input that is not a valid
    reference, a non-``str`` included.
    """
    text = _check_text(text)
    body = text
    if body.startswith(_ARN_PREFIX):
        body = body[len(_ARN_PREFIX):]
        if not body.startswith("arn:"):
            raise _fail(text, "ecr.aws/ must be followed by a repository ARN: ecr.aws/arn:PARTITION:ecr:REGION:ACCOUNT:repository/NAME[:TAG]")
    parts = _parse_arn_form(text, body) if body.startswith("arn:") else _parse_uri_form(text, body)
    _check_repository(parts.repository, text)
    tag = parts.tag
    if tag is not None:
        _check_tag(tag, text)
    if parts.digest is not None:
        _check_digest(parts.digest, text)
    if tag is None and parts.digest is None:
        if default_tag is None:
            raise _fail(text, "it names neither a tag nor a digest; add :TAG (e.g. :1.2) or @sha256:DIGEST")
        tag = _check_tag(default_tag, None)
    return ImageRef(
        partition=parts.partition,
        region=parts.region,
        registry_id=parts.account,
        repository=parts.repository,
        tag=tag,
        digest=parts.digest,
        host=parts.host,
    )


def check_region(ref: ImageRef, region_option: str | None) -> str:
    """The region to call ECR in for ``ref``: its own, once an explicitly given region agrees with it.

    A ``region_option`` (a module's ``region``, say) that is None or empty means "not given". Any other
    value that differs from the reference's region raises :class:`InvalidReferenceError` naming both.
    """
    if region_option is None or region_option == "":
        return ref.region
    if region_option != ref.region:
        raise InvalidReferenceError(
            f"The region option {_quote(region_option)} disagrees with the image reference {_quote(str(ref))}, "
            f"whose registry is in {ref.region}; drop the region option or make the two agree.",
            reference=str(ref),
        )
    return ref.region
