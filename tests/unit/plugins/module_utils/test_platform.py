# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Platforms: parsing, normal form, matching, the managed host's."""

from __future__ import annotations

import os
import platform
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.ecrkit.images.plugins.module_utils import platform as platform_module
from ansible_collections.ecrkit.images.plugins.module_utils.platform import InvalidPlatformError, Platform, host_platform, normalize_platform, parse_platform

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the builders beside this file
# pylint: disable=wrong-import-position
from manifest_documents import assert_operator_message  # noqa: E402


@pytest.mark.parametrize("text, expected", [
    ("linux/amd64", "linux/amd64"),
    ("linux/x86_64", "linux/amd64"),
    ("linux/x86-64", "linux/amd64"),
    ("linux/amd64/v1", "linux/amd64"),
    ("linux/amd64/v3", "linux/amd64/v3"),
    ("Linux/AMD64", "linux/amd64"),
    ("linux/arm64", "linux/arm64/v8"),
    ("linux/aarch64", "linux/arm64/v8"),
    ("linux/arm64/v8", "linux/arm64/v8"),
    ("linux/arm64/8", "linux/arm64/v8"),
    ("linux/arm64/v8.0", "linux/arm64/v8"),
    ("linux/arm64/v9", "linux/arm64/v9"),
    ("linux/arm64/v8.2", "linux/arm64/v8.2"),
    ("linux/arm", "linux/arm/v7"),
    ("linux/arm/7", "linux/arm/v7"),
    ("linux/arm/v6", "linux/arm/v6"),
    ("linux/arm/v5", "linux/arm/v5"),
    ("linux/armhf", "linux/arm/v7"),
    ("linux/armel", "linux/arm/v6"),
    ("linux/armv7l", "linux/arm/v7"),
    ("linux/i386", "linux/386"),
    ("linux/i686", "linux/386"),
    ("linux/386", "linux/386"),
    ("linux/ppc64le", "linux/ppc64le"),
    ("linux/ppc64el", "linux/ppc64le"),
    ("linux/s390x", "linux/s390x"),
    ("linux/riscv64", "linux/riscv64"),
    ("linux/mips64el", "linux/mips64le"),
    ("linux/loongarch64", "linux/loong64"),
    ("windows/amd64", "windows/amd64"),
    ("macos/arm64", "darwin/arm64/v8"),
    ("  linux/amd64 ", "linux/amd64"),
])
def test_parse_platform(text, expected):
    parsed = parse_platform(text)
    assert str(parsed) == expected
    assert parse_platform(str(parsed)) == parsed


@pytest.mark.parametrize("text, fragment", [
    ("linux", "write it as OS/ARCH or OS/ARCH/VARIANT"),
    ("amd64", "write it as OS/ARCH"),
    ("linux/amd64/v3/x", "write it as OS/ARCH"),
    ("", "write it as OS/ARCH"),
    ("linux/", "its architecture is empty"),
    ("/amd64", "its operating system is empty"),
    ("linux/arm64/", "its variant is empty"),
    ("linux/amd 64", 'its architecture "amd 64" is not valid'),
    ("linux/amd64;rm", 'its architecture "amd64;rm" is not valid'),
    ("li\u00f1ux/amd64", "its operating system"),
    ("linux/" + "a" * 65, "up to 64 characters"),
    (None, "must be a string such as linux/amd64, not null"),
    (["linux", "amd64"], "not a list"),
])
def test_parse_platform_refuses(text, fragment):
    with pytest.raises(InvalidPlatformError) as caught:
        parse_platform(text)
    assert fragment in str(caught.value)
    assert caught.value.code == "invalid_platform"
    assert_operator_message(caught.value)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from(["linux", "Linux", "windows", "macos", "darwin", "freebsd"]),
       st.sampled_from(sorted(platform_module._ARCH_ALIASES) + ["arm", "ARM64", "riscv64", "s390x", "x"]),  # pylint: disable=protected-access
       st.sampled_from([None, "", "v1", "v2", "8", "v8", "v8.0", "7", "v7", "V6", "v9.0", "x"]))
def test_normalisation_is_idempotent(os_name, architecture, variant):
    once = normalize_platform(Platform(os_name, architecture, variant))
    assert normalize_platform(once) == once
    assert once.matches(Platform(os_name, architecture, variant))


@pytest.mark.parametrize("one, two, same", [
    (Platform("linux", "arm64"), Platform("linux", "arm64", "v8"), True),
    (Platform("linux", "aarch64"), Platform("linux", "arm64", "8"), True),
    (Platform("linux", "arm64"), Platform("linux", "arm64", "v9"), False),
    (Platform("linux", "arm"), Platform("linux", "arm", "v7"), True),
    (Platform("linux", "arm"), Platform("linux", "arm", "v6"), False),
    (Platform("linux", "amd64"), Platform("linux", "amd64", "v1"), True),
    (Platform("linux", "amd64"), Platform("linux", "amd64", "v2"), False),
    (Platform("linux", "x86_64"), Platform("linux", "amd64"), True),
    (Platform("linux", "amd64"), Platform("windows", "amd64"), False),
    (Platform("windows", "amd64", os_version="1"), Platform("windows", "amd64", os_version="2"), True),
])
def test_platform_matches(one, two, same):
    assert one.matches(two) is same and two.matches(one) is same


def test_platform_to_json():
    assert Platform("linux", "arm64", "v8").to_json() == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert Platform("windows", "amd64", None, "10.0", ("win32k",)).to_json() == {
        "architecture": "amd64", "os": "windows", "os.version": "10.0", "os.features": ["win32k"]}


@pytest.mark.parametrize("system, machine, expected", [
    ("Linux", "x86_64", "linux/amd64"),
    ("Linux", "aarch64", "linux/arm64/v8"),
    ("Linux", "armv7l", "linux/arm/v7"),
    ("Linux", "armv6l", "linux/arm/v6"),
    ("Linux", "armv5tel", "linux/arm/v5"),
    ("Linux", "armv8l", "linux/arm/v7"),
    ("Linux", "i686", "linux/386"),
    ("Linux", "i386", "linux/386"),
    ("Linux", "ppc64le", "linux/ppc64le"),
    ("Linux", "s390x", "linux/s390x"),
    ("Linux", "riscv64", "linux/riscv64"),
    ("Linux", "loongarch64", "linux/loong64"),
    ("Darwin", "arm64", "darwin/arm64/v8"),
    ("Darwin", "x86_64", "darwin/amd64"),
    ("Windows", "AMD64", "windows/amd64"),
    ("Windows", "ARM64", "windows/arm64/v8"),
    ("FreeBSD", "amd64", "freebsd/amd64"),
])
def test_host_platform(monkeypatch, system, machine, expected):
    monkeypatch.setattr(platform, "system", lambda: system)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert str(host_platform()) == expected


@pytest.mark.parametrize("system, machine, fragment", [
    ("Linux", "", "architecture"),
    ("", "x86_64", "operating system"),
    ("Linux", "Power Macintosh", "architecture"),
])
def test_host_platform_unknown(monkeypatch, system, machine, fragment):
    monkeypatch.setattr(platform, "system", lambda: system)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    with pytest.raises(InvalidPlatformError) as caught:
        host_platform()
    assert fragment in str(caught.value) and "set the platform option" in str(caught.value)
    assert_operator_message(caught.value)


def test_host_platform_of_this_machine():
    assert isinstance(host_platform(), Platform)
