# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError, InvalidReferenceError
from ansible_collections.ecrkit.images.plugins.module_utils.reference import (
    PARTITIONS,
    ImageRef,
    check_region,
    parse_reference,
    partition_for_region,
)

ACCOUNT = "123456789012"
HEX = "0123456789abcdef" * 4
DIGEST = "sha256:" + HEX
US_WEST_2 = ACCOUNT + ".dkr.ecr.us-west-2.amazonaws.com"

# text -> (partition, region, repository, tag, digest, host, fips, dual_stack)
VALID = {
    # registry URI form, commercial partition
    US_WEST_2 + "/team/app:1.2": ("aws", "us-west-2", "team/app", "1.2", None, US_WEST_2, False, False),
    US_WEST_2 + "/app": ("aws", "us-west-2", "app", "latest", None, US_WEST_2, False, False),
    US_WEST_2 + "/team/app@" + DIGEST: ("aws", "us-west-2", "team/app", None, DIGEST, US_WEST_2, False, False),
    US_WEST_2 + "/team/app:1.2@" + DIGEST: ("aws", "us-west-2", "team/app", "1.2", DIGEST, US_WEST_2, False, False),
    US_WEST_2 + "/a/b/c/d:v1": ("aws", "us-west-2", "a/b/c/d", "v1", None, US_WEST_2, False, False),
    ACCOUNT + ".dkr.ecr.eu-central-2.amazonaws.com/app:1": (
        "aws", "eu-central-2", "app", "1", None, ACCOUNT + ".dkr.ecr.eu-central-2.amazonaws.com", False, False),
    ACCOUNT + ".dkr.ecr.ap-southeast-5.amazonaws.com/app:1": (
        "aws", "ap-southeast-5", "app", "1", None, ACCOUNT + ".dkr.ecr.ap-southeast-5.amazonaws.com", False, False),
    ACCOUNT + ".dkr.ecr.il-central-1.amazonaws.com/app:1": (
        "aws", "il-central-1", "app", "1", None, ACCOUNT + ".dkr.ecr.il-central-1.amazonaws.com", False, False),
    ACCOUNT + ".dkr.ecr.mx-central-1.amazonaws.com/app:1": (
        "aws", "mx-central-1", "app", "1", None, ACCOUNT + ".dkr.ecr.mx-central-1.amazonaws.com", False, False),
    # FIPS hosts
    ACCOUNT + ".dkr.ecr-fips.us-east-1.amazonaws.com/app:1": (
        "aws", "us-east-1", "app", "1", None, ACCOUNT + ".dkr.ecr-fips.us-east-1.amazonaws.com", True, False),
    ACCOUNT + ".dkr.ecr-fips.us-gov-west-1.amazonaws.com/app:1": (
        "aws-us-gov", "us-gov-west-1", "app", "1", None, ACCOUNT + ".dkr.ecr-fips.us-gov-west-1.amazonaws.com", True, False),
    ACCOUNT + ".dkr.ecr.us-gov-east-1.amazonaws.com/app:1": (
        "aws-us-gov", "us-gov-east-1", "app", "1", None, ACCOUNT + ".dkr.ecr.us-gov-east-1.amazonaws.com", False, False),
    # dual-stack hosts
    ACCOUNT + ".dkr-ecr.us-west-2.on.aws/app:1": (
        "aws", "us-west-2", "app", "1", None, ACCOUNT + ".dkr-ecr.us-west-2.on.aws", False, True),
    ACCOUNT + ".dkr-ecr-fips.us-east-2.on.aws/app:1": (
        "aws", "us-east-2", "app", "1", None, ACCOUNT + ".dkr-ecr-fips.us-east-2.on.aws", True, True),
    ACCOUNT + ".dkr-ecr-fips.us-gov-west-1.on.aws/app:1": (
        "aws-us-gov", "us-gov-west-1", "app", "1", None, ACCOUNT + ".dkr-ecr-fips.us-gov-west-1.on.aws", True, True),
    ACCOUNT + ".dkr-ecr.cn-north-1.on.amazonwebservices.com.cn/app:1": (
        "aws-cn", "cn-north-1", "app", "1", None, ACCOUNT + ".dkr-ecr.cn-north-1.on.amazonwebservices.com.cn", False, True),
    ACCOUNT + ".dkr-ecr.us-iso-west-1.on.aws.ic.gov/app:1": (
        "aws-iso", "us-iso-west-1", "app", "1", None, ACCOUNT + ".dkr-ecr.us-iso-west-1.on.aws.ic.gov", False, True),
    ACCOUNT + ".dkr-ecr.us-isob-east-1.on.aws.scloud/app:1": (
        "aws-iso-b", "us-isob-east-1", "app", "1", None, ACCOUNT + ".dkr-ecr.us-isob-east-1.on.aws.scloud", False, True),
    ACCOUNT + ".dkr-ecr.us-isof-south-1.on.aws.hci.ic.gov/app:1": (
        "aws-iso-f", "us-isof-south-1", "app", "1", None, ACCOUNT + ".dkr-ecr.us-isof-south-1.on.aws.hci.ic.gov", False, True),
    ACCOUNT + ".dkr-ecr.eu-isoe-west-1.on.cloud-aws.adc-e.uk/app:1": (
        "aws-iso-e", "eu-isoe-west-1", "app", "1", None, ACCOUNT + ".dkr-ecr.eu-isoe-west-1.on.cloud-aws.adc-e.uk", False, True),
    # other partitions
    ACCOUNT + ".dkr.ecr.cn-north-1.amazonaws.com.cn/app:1": (
        "aws-cn", "cn-north-1", "app", "1", None, ACCOUNT + ".dkr.ecr.cn-north-1.amazonaws.com.cn", False, False),
    ACCOUNT + ".dkr.ecr.cn-northwest-1.amazonaws.com.cn/app:1": (
        "aws-cn", "cn-northwest-1", "app", "1", None, ACCOUNT + ".dkr.ecr.cn-northwest-1.amazonaws.com.cn", False, False),
    ACCOUNT + ".dkr.ecr.us-iso-east-1.c2s.ic.gov/app:1": (
        "aws-iso", "us-iso-east-1", "app", "1", None, ACCOUNT + ".dkr.ecr.us-iso-east-1.c2s.ic.gov", False, False),
    ACCOUNT + ".dkr.ecr-fips.us-iso-east-1.c2s.ic.gov/app:1": (
        "aws-iso", "us-iso-east-1", "app", "1", None, ACCOUNT + ".dkr.ecr-fips.us-iso-east-1.c2s.ic.gov", True, False),
    ACCOUNT + ".dkr.ecr.us-isob-east-1.sc2s.sgov.gov/app:1": (
        "aws-iso-b", "us-isob-east-1", "app", "1", None, ACCOUNT + ".dkr.ecr.us-isob-east-1.sc2s.sgov.gov", False, False),
    ACCOUNT + ".dkr.ecr.eu-isoe-west-1.cloud.adc-e.uk/app:1": (
        "aws-iso-e", "eu-isoe-west-1", "app", "1", None, ACCOUNT + ".dkr.ecr.eu-isoe-west-1.cloud.adc-e.uk", False, False),
    ACCOUNT + ".dkr.ecr.us-isof-south-1.csp.hci.ic.gov/app:1": (
        "aws-iso-f", "us-isof-south-1", "app", "1", None, ACCOUNT + ".dkr.ecr.us-isof-south-1.csp.hci.ic.gov", False, False),
    ACCOUNT + ".dkr.ecr.eusc-de-east-1.amazonaws.eu/app:1": (
        "aws-eusc", "eusc-de-east-1", "app", "1", None, ACCOUNT + ".dkr.ecr.eusc-de-east-1.amazonaws.eu", False, False),
    # host letter case is normalised
    ACCOUNT + ".DKR.ECR.US-WEST-2.AMAZONAWS.COM/app:V1": ("aws", "us-west-2", "app", "V1", None, US_WEST_2, False, False),
    # ARN form
    "ecr.aws/arn:aws:ecr:us-west-2:" + ACCOUNT + ":repository/team/app:1.2": (
        "aws", "us-west-2", "team/app", "1.2", None, US_WEST_2, False, False),
    "ecr.aws/arn:aws:ecr:us-west-2:" + ACCOUNT + ":repository/team/app@" + DIGEST: (
        "aws", "us-west-2", "team/app", None, DIGEST, US_WEST_2, False, False),
    "ecr.aws/arn:aws:ecr:us-west-2:" + ACCOUNT + ":repository/team/app:1.2@" + DIGEST: (
        "aws", "us-west-2", "team/app", "1.2", DIGEST, US_WEST_2, False, False),
    "ecr.aws/arn:aws:ecr:us-west-2:" + ACCOUNT + ":repository/app": ("aws", "us-west-2", "app", "latest", None, US_WEST_2, False, False),
    "arn:aws:ecr:us-west-2:" + ACCOUNT + ":repository/app:1": ("aws", "us-west-2", "app", "1", None, US_WEST_2, False, False),
    "ecr.aws/arn:aws-cn:ecr:cn-north-1:" + ACCOUNT + ":repository/app:1": (
        "aws-cn", "cn-north-1", "app", "1", None, ACCOUNT + ".dkr.ecr.cn-north-1.amazonaws.com.cn", False, False),
    "ecr.aws/arn:aws-us-gov:ecr:us-gov-west-1:" + ACCOUNT + ":repository/app:1": (
        "aws-us-gov", "us-gov-west-1", "app", "1", None, ACCOUNT + ".dkr.ecr.us-gov-west-1.amazonaws.com", False, False),
    "ecr.aws/arn:aws-iso:ecr:us-iso-east-1:" + ACCOUNT + ":repository/app:1": (
        "aws-iso", "us-iso-east-1", "app", "1", None, ACCOUNT + ".dkr.ecr.us-iso-east-1.c2s.ic.gov", False, False),
    "ecr.aws/arn:aws-iso-b:ecr:us-isob-east-1:" + ACCOUNT + ":repository/app:1": (
        "aws-iso-b", "us-isob-east-1", "app", "1", None, ACCOUNT + ".dkr.ecr.us-isob-east-1.sc2s.sgov.gov", False, False),
    "ecr.aws/arn:aws-iso-e:ecr:eu-isoe-west-1:" + ACCOUNT + ":repository/app:1": (
        "aws-iso-e", "eu-isoe-west-1", "app", "1", None, ACCOUNT + ".dkr.ecr.eu-isoe-west-1.cloud.adc-e.uk", False, False),
    "ecr.aws/arn:aws-iso-f:ecr:us-isof-east-1:" + ACCOUNT + ":repository/app:1": (
        "aws-iso-f", "us-isof-east-1", "app", "1", None, ACCOUNT + ".dkr.ecr.us-isof-east-1.csp.hci.ic.gov", False, False),
    "ecr.aws/arn:aws-eusc:ecr:eusc-de-east-1:" + ACCOUNT + ":repository/app:1": (
        "aws-eusc", "eusc-de-east-1", "app", "1", None, ACCOUNT + ".dkr.ecr.eusc-de-east-1.amazonaws.eu", False, False),
    # repository name grammar (the ECR API model's RepositoryName)
    US_WEST_2 + "/ab:1": ("aws", "us-west-2", "ab", "1", None, US_WEST_2, False, False),
    US_WEST_2 + "/a__b:1": ("aws", "us-west-2", "a__b", "1", None, US_WEST_2, False, False),
    US_WEST_2 + "/a--b:1": ("aws", "us-west-2", "a--b", "1", None, US_WEST_2, False, False),
    US_WEST_2 + "/my.team_x/app-1.v2:1": ("aws", "us-west-2", "my.team_x/app-1.v2", "1", None, US_WEST_2, False, False),
    US_WEST_2 + "/1app:1": ("aws", "us-west-2", "1app", "1", None, US_WEST_2, False, False),
    US_WEST_2 + "/" + "a" * 256 + ":1": ("aws", "us-west-2", "a" * 256, "1", None, US_WEST_2, False, False),
    # tag grammar (ECR: 1-300 of [A-Za-z0-9._-])
    US_WEST_2 + "/app:" + "t" * 300: ("aws", "us-west-2", "app", "t" * 300, None, US_WEST_2, False, False),
    US_WEST_2 + "/app:.hidden": ("aws", "us-west-2", "app", ".hidden", None, US_WEST_2, False, False),
    US_WEST_2 + "/app:-x": ("aws", "us-west-2", "app", "-x", None, US_WEST_2, False, False),
    US_WEST_2 + "/app:_x": ("aws", "us-west-2", "app", "_x", None, US_WEST_2, False, False),
    US_WEST_2 + "/app:V1.2.3-RC_1": ("aws", "us-west-2", "app", "V1.2.3-RC_1", None, US_WEST_2, False, False),
}

# text -> substrings the message must contain (besides the quoted reference)
INVALID = {
    "": ["empty", "ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME", "ecr.aws/arn:aws:ecr:"],
    " " + US_WEST_2 + "/app": ["whitespace"],
    US_WEST_2 + "/app:1\n": ["whitespace", "line break"],
    US_WEST_2 + "/my app": ["whitespace"],
    US_WEST_2 + "/app\x00": ["control characters"],
    US_WEST_2 + "/app\u00e9": ["non-ASCII"],
    "https://" + US_WEST_2 + "/app": ["remove the https:// prefix"],
    "docker.io/library/nginx": [
        "not an Amazon ECR private registry reference", '"docker.io" is not an ECR registry host',
        "ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME", "ecr.aws/arn:",
    ],
    "nginx:latest": ["not an Amazon ECR private registry", "ecr.aws/arn:"],
    "ghcr.io/org/app:1": ["not an Amazon ECR private registry"],
    "localhost:5000/app": ["not an Amazon ECR private registry"],
    "public.ecr.aws/nginx/nginx:1.25": ["Amazon ECR Public", "does not support", "ecr.aws/arn:"],
    US_WEST_2: ["no repository name"],
    US_WEST_2 + "/": ["no repository name"],
    "12345.dkr.ecr.us-west-2.amazonaws.com/app": ['account (registry ID) "12345"', "12 digits"],
    "1234567890123.dkr.ecr.us-west-2.amazonaws.com/app": ["12 digits"],
    "12345678901a.dkr.ecr.us-west-2.amazonaws.com/app": ["12 digits"],
    ACCOUNT + ".dkr.ecr.us-west2.amazonaws.com/app": ['region "us-west2" is not valid', "us-west-2"],
    ACCOUNT + ".dkr.ecr.uswest-2.amazonaws.com/app": ["region"],
    ACCOUNT + ".dkr.ecr.cn-north-1.amazonaws.com/app": ["cn-north-1 is in the aws-cn partition", "amazonaws.com.cn"],
    ACCOUNT + ".dkr.ecr.us-west-2.amazonaws.com.cn/app": ["us-west-2 is in the aws partition", "amazonaws.com"],
    ACCOUNT + ".dkr.ecr.us-iso-east-1.amazonaws.com/app": ["aws-iso partition", "c2s.ic.gov"],
    ACCOUNT + ".dkr-ecr.us-west-2.amazonaws.com/app": ["no AWS partition's dual-stack registry domain", "on.aws"],
    ACCOUNT + ".dkr-ecr.cn-north-1.on.aws/app": ["aws-cn partition", "on.amazonwebservices.com.cn"],
    ACCOUNT + ".dkr.ecr.us-west-2.example.com/app": ['"example.com"', "no AWS partition"],
    ACCOUNT + ".dkr.ecr.us-west-2.amazonaws.com:443/app": ["no AWS partition"],
    ACCOUNT + ".ecr.us-west-2.amazonaws.com/app": ["not an Amazon ECR private registry"],
    US_WEST_2 + "/App:1": ['repository name "App" has uppercase letters', '"app"'],
    US_WEST_2 + "/Team/App": ["uppercase"],
    US_WEST_2 + "/a:1": ['repository name "a" is 1 characters long', "2 to 256"],
    US_WEST_2 + "/" + "a" * 257: ["257 characters long"],
    US_WEST_2 + "/-app": ["repository name", "not valid"],
    US_WEST_2 + "/app-": ["not valid"],
    US_WEST_2 + "/team//app": ["not valid"],
    US_WEST_2 + "/team/app/": ["not valid"],
    US_WEST_2 + "/a___b": ["not valid"],
    US_WEST_2 + "/a.-b": ["not valid"],
    US_WEST_2 + "/app:": ["tag is empty"],
    US_WEST_2 + "/app:a:b": ['tag "a:b" is not valid', "1 to 300"],
    US_WEST_2 + "/app:v+1": ['tag "v+1" is not valid'],
    US_WEST_2 + "/app:" + "t" * 301: ["301 characters long"],
    US_WEST_2 + "/app@": ["digest is empty"],
    US_WEST_2 + "/app@" + HEX: ["digest", "not valid", "sha256:"],
    US_WEST_2 + "/app@sha256:" + HEX[:-1]: ["not valid", "64 lowercase"],
    US_WEST_2 + "/app@sha256:" + HEX.upper(): ["uppercase hexadecimal", DIGEST],
    US_WEST_2 + "/app@sha512:" + "ab" * 64: ["sha512", "only sha256"],
    US_WEST_2 + "/app@sha384:" + "ab" * 48: ["only sha256"],
    US_WEST_2 + "/app@" + DIGEST + "@" + DIGEST: ["more than one '@'"],
    "ecr.aws/foo/bar": ["ecr.aws/ must be followed by a repository ARN"],
    "ecr.aws/arn:aws:ecr:us-west-2:" + ACCOUNT: ["ARN is incomplete"],
    "ecr.aws/arn:aws:s3:us-west-2:" + ACCOUNT + ":repository/app": ['service "s3"'],
    "ecr.aws/arn:aws-mars:ecr:us-west-2:" + ACCOUNT + ":repository/app": ['partition "aws-mars" is not known', "aws-us-gov"],
    "ecr.aws/arn:aws:ecr:us-gov-west-1:" + ACCOUNT + ":repository/app": ["belongs to the aws-us-gov partition, not aws"],
    "ecr.aws/arn:aws-cn:ecr:us-west-2:" + ACCOUNT + ":repository/app": ["belongs to the aws partition, not aws-cn"],
    "ecr.aws/arn:aws:ecr:US-WEST-2:" + ACCOUNT + ":repository/app": ["region"],
    "ecr.aws/arn:aws:ecr:us-west-2:12345:repository/app": ["12 digits"],
    "ecr.aws/arn:aws:ecr:us-west-2:" + ACCOUNT + ":image/app": ["should be repository/NAME"],
    "ecr.aws/arn:aws:ecr:us-west-2:" + ACCOUNT + ":repository/": ["repository name is missing"],
    "ecr.aws/arn:aws:ecr:us-west-2:" + ACCOUNT + ":repository/App": ["uppercase"],
    "ecr.aws/arn:aws:ecr:us-west-2:" + ACCOUNT + ":repository/app:": ["tag is empty"],
    "ecr.aws/arn:aws:ecr:us-west-2:" + ACCOUNT + ":repository/app@sha1:" + "a" * 40: ["only sha256"],
}


def fields(ref: ImageRef) -> tuple:
    return (ref.partition, ref.region, ref.repository, ref.tag, ref.digest, ref.host, ref.fips, ref.dual_stack)


@pytest.mark.parametrize("text, expected", VALID.items(), ids=[text[:90] for text in VALID])
def test_valid(text, expected):
    ref = parse_reference(text)
    assert fields(ref) == expected
    assert ref.registry_id == ACCOUNT


@pytest.mark.parametrize("text", VALID, ids=[text[:90] for text in VALID])
def test_round_trip(text):
    ref = parse_reference(text)
    assert parse_reference(str(ref)) == ref
    assert parse_reference(str(ref), default_tag=None) == ref
    assert ImageRef(**dataclasses.asdict(ref)) == ref


@pytest.mark.parametrize("text, needles", INVALID.items(), ids=[repr(text)[:90] for text in INVALID])
def test_invalid(text, needles):
    with pytest.raises(InvalidReferenceError) as caught:
        parse_reference(text)
    message = str(caught.value)
    if text:
        assert message.startswith("Invalid image reference \"")
        assert text[:50].encode("unicode_escape").decode("ascii") in message
        assert caught.value.reference == text
    for needle in needles:
        assert needle in message
    assert message.endswith(".")
    assert "\n" not in message


@pytest.mark.parametrize("value", [None, 42, 1.5, b"123456789012.dkr.ecr.us-west-2.amazonaws.com/app", ["a"], {"a": 1}, object()])
def test_non_string_input(value):
    with pytest.raises(InvalidReferenceError, match="must be a string"):
        parse_reference(value)  # type: ignore[arg-type]


def test_str_is_the_registry_uri():
    text = "ecr.aws/arn:aws:ecr:us-west-2:" + ACCOUNT + ":repository/team/app:1.2@" + DIGEST
    assert str(parse_reference(text)) == US_WEST_2 + "/team/app:1.2@" + DIGEST
    assert str(parse_reference(US_WEST_2 + "/team/app")) == US_WEST_2 + "/team/app:latest"
    assert str(parse_reference(US_WEST_2 + "/team/app@" + DIGEST)) == US_WEST_2 + "/team/app@" + DIGEST


def test_arn_and_uri_forms_agree():
    uri = parse_reference(ACCOUNT + ".dkr.ecr.cn-north-1.amazonaws.com.cn/team/app:1.2@" + DIGEST)
    arn = parse_reference("ecr.aws/arn:aws-cn:ecr:cn-north-1:" + ACCOUNT + ":repository/team/app:1.2@" + DIGEST)
    assert uri == arn


def test_host_variant_is_kept():
    for host in (ACCOUNT + ".dkr.ecr-fips.us-gov-west-1.amazonaws.com", ACCOUNT + ".dkr-ecr.us-west-2.on.aws",
                 ACCOUNT + ".dkr.ecr.cn-north-1.amazonaws.com.cn"):
        assert str(parse_reference(host + "/app:1")).startswith(host + "/")


@pytest.mark.parametrize("text, arn", [
    (US_WEST_2 + "/team/app:1", "arn:aws:ecr:us-west-2:" + ACCOUNT + ":repository/team/app"),
    (ACCOUNT + ".dkr-ecr-fips.us-gov-west-1.on.aws/app", "arn:aws-us-gov:ecr:us-gov-west-1:" + ACCOUNT + ":repository/app"),
    (ACCOUNT + ".dkr.ecr.cn-northwest-1.amazonaws.com.cn/x/y", "arn:aws-cn:ecr:cn-northwest-1:" + ACCOUNT + ":repository/x/y"),
    (ACCOUNT + ".dkr.ecr.us-isob-east-1.sc2s.sgov.gov/app", "arn:aws-iso-b:ecr:us-isob-east-1:" + ACCOUNT + ":repository/app"),
])
def test_arn(text, arn):
    ref = parse_reference(text)
    assert ref.arn == arn
    assert parse_reference("ecr.aws/" + arn + ":1").arn == arn


def test_image_id_and_repository_uri():
    assert parse_reference(US_WEST_2 + "/app:1").image_id == {"imageTag": "1"}
    assert parse_reference(US_WEST_2 + "/app@" + DIGEST).image_id == {"imageDigest": DIGEST}
    assert parse_reference(US_WEST_2 + "/app:1@" + DIGEST).image_id == {"imageTag": "1", "imageDigest": DIGEST}
    assert parse_reference(US_WEST_2 + "/team/app:1").repository_uri == US_WEST_2 + "/team/app"


def test_default_tag():
    assert parse_reference(US_WEST_2 + "/app").tag == "latest"
    assert parse_reference(US_WEST_2 + "/app", default_tag="stable").tag == "stable"
    assert parse_reference(US_WEST_2 + "/app@" + DIGEST).tag is None
    assert parse_reference(US_WEST_2 + "/app:1", default_tag=None).tag == "1"
    assert parse_reference(US_WEST_2 + "/app@" + DIGEST, default_tag=None).digest == DIGEST
    with pytest.raises(InvalidReferenceError, match="neither a tag nor a digest"):
        parse_reference(US_WEST_2 + "/app", default_tag=None)
    with pytest.raises(InvalidReferenceError, match="tag"):
        parse_reference(US_WEST_2 + "/app", default_tag="bad tag")


def test_frozen():
    ref = parse_reference(US_WEST_2 + "/app:1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.tag = "2"  # type: ignore[misc]
    assert hash(ref) == hash(parse_reference(US_WEST_2 + "/app:1"))


def test_build_from_parts():
    ref = ImageRef(partition="aws-cn", region="cn-north-1", registry_id=ACCOUNT, repository="app", tag="1")
    assert ref.host == ACCOUNT + ".dkr.ecr.cn-north-1.amazonaws.com.cn"
    assert ref == parse_reference(str(ref))


@pytest.mark.parametrize("kwargs, needle", [
    ({"partition": "aws-mars"}, "partition"),
    ({"partition": ["aws"]}, "partition"),
    ({"region": "eu-west-1", "partition": "aws-cn"}, "belongs to the aws partition"),
    ({"registry_id": "1"}, "12 digits"),
    ({"registry_id": 123456789012}, "12 digits"),
    ({"repository": "App"}, "uppercase"),
    ({"repository": None}, "missing"),
    ({"tag": None}, "needs a tag"),
    ({"tag": "a b"}, "not valid"),
    ({"digest": "md5:abc"}, "only sha256"),
    ({"host": ACCOUNT + ".dkr.ecr.eu-west-1.amazonaws.com"}, "does not match"),
    ({"host": "999999999999.dkr.ecr.us-west-2.amazonaws.com"}, "does not match"),
    ({"host": "docker.io"}, "not an Amazon ECR private registry reference"),
])
def test_build_from_bad_parts(kwargs, needle):
    parts = {"partition": "aws", "region": "us-west-2", "registry_id": ACCOUNT, "repository": "app", "tag": "1"}
    parts.update(kwargs)
    with pytest.raises(InvalidReferenceError) as caught:
        ImageRef(**parts)
    assert needle in str(caught.value)
    assert str(caught.value)[0].isupper()
    assert str(caught.value).endswith(".")


def test_check_region():
    ref = parse_reference(US_WEST_2 + "/app:1")
    assert check_region(ref, None) == "us-west-2"
    assert check_region(ref, "") == "us-west-2"
    assert check_region(ref, "us-west-2") == "us-west-2"
    with pytest.raises(InvalidReferenceError) as caught:
        check_region(ref, "eu-west-1")
    message = str(caught.value)
    assert '"eu-west-1"' in message and "us-west-2" in message and str(ref) in message


@pytest.mark.parametrize("region, partition", [
    ("us-west-2", "aws"), ("eu-central-2", "aws"), ("ap-southeast-5", "aws"), ("il-central-1", "aws"),
    ("xx-newplace-1", "aws"),
    ("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov"), ("us-iso-east-1", "aws-iso"),
    ("us-isob-east-1", "aws-iso-b"), ("eu-isoe-west-1", "aws-iso-e"), ("us-isof-south-1", "aws-iso-f"),
    ("eusc-de-east-1", "aws-eusc"),
    ("us-west2", None), ("US-WEST-2", None), ("us-west-2a", None), ("aws-global", None), ("", None),
    ("us-west-\u0662", None), ("abc-west-1", None), (None, None),
])
def test_partition_for_region(region, partition):
    assert partition_for_region(region) == partition


def test_partitions_table():
    assert set(PARTITIONS) == {"aws", "aws-cn", "aws-us-gov", "aws-iso", "aws-iso-b", "aws-iso-e", "aws-iso-f", "aws-eusc"}


def test_invalid_reference_is_an_ecrkit_error():
    with pytest.raises(EcrkitError):
        parse_reference("docker.io/library/nginx")


def test_long_reference_is_shortened_in_the_message():
    text = US_WEST_2 + "/" + "a" * 5000
    with pytest.raises(InvalidReferenceError) as caught:
        parse_reference(text)
    assert len(str(caught.value)) < 1000
    assert f"...({len(text)} characters)" in str(caught.value)


# property tests: whatever comes in, either an ImageRef that round-trips or an InvalidReferenceError whose
# message is one sentence for the operator

def assert_operator_message(error: BaseException, given: object) -> None:
    """An InvalidReferenceError (an EcrkitError with its code) on one line of ASCII, ending in a period,
    with no Python showing through (a traceback, a None, a type's repr) unless the input said it."""
    text = str(error)
    assert isinstance(error, InvalidReferenceError) and isinstance(error, EcrkitError) and error.code == "invalid_reference"
    assert text and text[0].isupper() and text.endswith(".") and "\n" not in text and text.isascii()
    assert len(text) < 1500
    for leak in ("Traceback", "None", "<class", "<object", "Error:"):
        assert leak not in text or leak in repr(given), leak


def _check_outcome(text: object, **kwargs: object) -> None:
    """parse_reference gives an ImageRef that round-trips, or an InvalidReferenceError for the operator."""
    try:
        ref = parse_reference(text, **kwargs)  # type: ignore[arg-type]
    except InvalidReferenceError as error:
        assert_operator_message(error, (text, kwargs))
    else:
        assert parse_reference(str(ref)) == ref


_ECRISH = st.sampled_from([
    US_WEST_2, ACCOUNT + ".dkr-ecr.us-west-2.on.aws", "ecr.aws/arn:aws:ecr:us-west-2:" + ACCOUNT + ":repository",
    "arn:aws-cn:ecr:cn-north-1:" + ACCOUNT + ":repository", "/", ":", "@", "sha256:", HEX, "app", "Team", ".", "-", "_", "__",
    "ecr.aws/", "arn:", "dkr.ecr.", ".amazonaws.com", "us-west-2", " ", "\n", "\x00", "\u00e9", "\ud800",
])


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.text())
def test_arbitrary_text_raises_only_invalid_reference(text):
    _check_outcome(text)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.lists(_ECRISH, max_size=12).map("".join), st.one_of(st.none(), st.just("latest"), st.text(max_size=5)))
def test_reference_like_text_raises_only_invalid_reference(text, default_tag):
    _check_outcome(text, default_tag=default_tag)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.one_of(st.integers(), st.binary(), st.none(), st.lists(st.text()), st.floats(), st.dictionaries(st.text(), st.text())))
def test_any_object_raises_only_invalid_reference(value):
    with pytest.raises(InvalidReferenceError) as caught:
        parse_reference(value)  # type: ignore[arg-type]
    assert_operator_message(caught.value, "")  # no "None" or "NoneType" for a missing reference either


_COMPONENT = st.from_regex(r"[a-z0-9]{1,5}(?:(?:\.|_|__|-{1,2})[a-z0-9]{1,5}){0,2}", fullmatch=True)
_REPOSITORY = st.lists(_COMPONENT, min_size=1, max_size=4).map("/".join).filter(lambda name: 2 <= len(name) <= 256)
_TAG = st.from_regex(r"[A-Za-z0-9._-]{1,300}", fullmatch=True)
_DIGEST = st.from_regex(r"[0-9a-f]{64}", fullmatch=True).map(lambda encoded: "sha256:" + encoded)
_REGION = st.sampled_from([
    ("aws", "us-east-1"), ("aws", "sa-east-1"), ("aws-cn", "cn-northwest-1"), ("aws-us-gov", "us-gov-east-1"),
    ("aws-iso", "us-iso-west-1"), ("aws-iso-b", "us-isob-east-1"), ("aws-iso-e", "eu-isoe-west-1"),
    ("aws-iso-f", "us-isof-east-1"), ("aws-eusc", "eusc-de-east-1"),
])


@st.composite
def _generated(draw):
    """(text, expected fields) of a valid registry-URI reference in any partition and host variant."""
    partition, region = draw(_REGION)
    dual_stack, fips = draw(st.booleans()), draw(st.booleans())
    expected = {
        "partition": partition,
        "region": region,
        "registry_id": draw(st.from_regex(r"[0-9]{12}", fullmatch=True)),
        "repository": draw(_REPOSITORY),
        "tag": draw(st.one_of(st.none(), _TAG)),
        "digest": draw(st.one_of(st.none(), _DIGEST)),
    }
    info = PARTITIONS[partition]
    kind = ("dkr-ecr" if dual_stack else "dkr.ecr") + ("-fips" if fips else "")
    expected["host"] = f"{expected['registry_id']}.{kind}.{region}.{info.dual_stack_suffix if dual_stack else info.dns_suffix}"
    text = f"{expected['host']}/{expected['repository']}" + _ending(expected["tag"], expected["digest"])
    if expected["tag"] is None and expected["digest"] is None:
        expected["tag"] = "latest"
    return text, expected, fips, dual_stack


def _ending(tag, digest):
    return (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_generated())
def test_generated_references_round_trip(generated):
    text, expected, fips, dual_stack = generated
    ref = parse_reference(text)
    assert dataclasses.asdict(ref) == expected
    assert (ref.fips, ref.dual_stack) == (fips, dual_stack)
    assert str(ref) == text + ("" if text.rsplit("/", 1)[-1].count(":") or "@" in text else ":latest")
    assert parse_reference(str(ref)) == ref
    arn_ref = parse_reference(f"ecr.aws/{ref.arn}" + _ending(ref.tag, ref.digest))
    assert arn_ref == dataclasses.replace(ref, host=f"{ref.registry_id}.dkr.ecr.{ref.region}.{PARTITIONS[ref.partition].dns_suffix}")


# hostile endings and parts: digests of unknown algorithms, bad or uppercase hex, wrong lengths; tags and
# names with every character class; references edited one character at a time

_DIGESTISH = st.one_of(
    st.builds("{}:{}".format, st.sampled_from(["sha256", "sha512", "sha384", "md5", "blake3", "SHA256", "sha256+b64u", "", "sha-256"]),
              st.one_of(st.text(alphabet="0123456789abcdef", min_size=60, max_size=130),
                        st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64), st.text(max_size=70))),
    st.text(max_size=80),
)
_HOSTILE_CHARACTERS = st.sampled_from(list("/:@.-_ \t\n\x00\x7f\u00e9\u202e\ud800%$\\'\"") + ["..", "//", "::", "@@", "None", "${x}"])


@settings(max_examples=400, deadline=None, derandomize=True)
@given(_DIGESTISH, st.sampled_from(["", ":1.2"]))
def test_digest_endings_are_refused_with_the_reason(digest, tag):
    text = f"{US_WEST_2}/team/app{tag}@{digest}"
    try:
        ref = parse_reference(text)
    except InvalidReferenceError as error:
        assert_operator_message(error, text)
        assert "digest" in str(error) or "whitespace" in str(error) or "characters" in str(error) or "'@'" in str(error)
    else:
        assert ref.digest == digest and digest.startswith("sha256:") and len(digest) == 71 and digest == digest.lower()


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.sampled_from(sorted(VALID)),
       st.lists(st.tuples(st.integers(min_value=0), st.sampled_from(["insert", "replace", "delete"]), _HOSTILE_CHARACTERS),
                min_size=1, max_size=3))
def test_edited_references_raise_only_invalid_reference(text, edits):
    for position, action, characters in edits:
        position %= len(text) + 1
        if action == "insert":
            text = text[:position] + characters + text[position:]
        elif action == "replace":
            text = text[:position] + characters + text[position + 1:]
        else:
            text = text[:position] + text[position + 1:]
    _check_outcome(text)


_PART = st.one_of(st.none(), st.text(max_size=30), st.sampled_from(["aws", "us-west-2", ACCOUNT, "team/app", "1.2", DIGEST, US_WEST_2]))


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.fixed_dictionaries({"partition": _PART, "region": _PART, "registry_id": _PART, "repository": _PART}),
       st.fixed_dictionaries({}, optional={"tag": _PART, "digest": _PART, "host": _PART}))
def test_image_ref_from_any_parts_raises_only_invalid_reference(parts, optional):
    parts.update({key: value for key, value in optional.items() if not (key == "host" and value is None)})
    try:
        ref = ImageRef(**parts)
    except InvalidReferenceError as error:
        assert_operator_message(error, [value for value in parts.values() if isinstance(value, str)])  # None is shown as null
    else:
        assert parse_reference(str(ref)) == ref


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.one_of(_PART, _DIGESTISH, st.integers(), st.lists(st.text(max_size=3), max_size=2)))
def test_check_region_raises_only_invalid_reference(value):
    ref = parse_reference(US_WEST_2 + "/team/app:1")
    for call in (lambda value: check_region(ref, value),):
        try:
            call(value)
        except InvalidReferenceError as error:
            assert_operator_message(error, value)
