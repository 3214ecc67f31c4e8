# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Platforms (``os/arch[/variant]``): the value, its normal form, reading one, and the managed host's.

:func:`parse_platform` reads ``os/arch[/variant]`` and normalises it as containerd does
(:func:`normalize_platform`); :func:`host_platform` describes the managed host. The normal form writes
the default variant out: ``linux/arm64/v8`` (``arm64`` alone means v8) and ``linux/arm/v7`` (``arm``
alone means v7); ``amd64/v1`` is plain ``amd64``. Matching (:meth:`Platform.matches`) is exact after
normalisation: there is no fallback from ``arm/v7`` to ``arm/v6`` or from ``amd64/v3`` to ``amd64``, so
what is pulled is always what was asked for. Picking the entry of an index for a platform is
:mod:`.platform_select`'s.
"""

from __future__ import annotations

import dataclasses
import platform as pyplatform
import re
from typing import Any, Dict, Optional, Tuple

from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.untrusted import show

PLATFORM_PART_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""One part of a platform name as this collection accepts it from an operator or the host."""


class InvalidPlatformError(EcrkitError):
    """A platform text that is not ``os/arch[/variant]``, or a host whose platform cannot be told."""

    code = "invalid_platform"


@dataclasses.dataclass(frozen=True)
class Platform:
    """An OCI platform. ``str()`` is ``os/arch[/variant]``, e.g. ``linux/arm64/v8``."""

    os: str
    architecture: str
    variant: Optional[str] = None
    os_version: Optional[str] = None
    os_features: Tuple[str, ...] = ()

    def __str__(self) -> str:
        parts = [self.os, self.architecture]
        if self.variant:
            parts.append(self.variant)
        return "/".join(parts)

    def normalized(self) -> Platform:
        """This platform in containerd's normal form, default variants written out (see :func:`normalize_platform`)."""
        return normalize_platform(self)

    def matches(self, other: Platform) -> bool:
        """Same OS, architecture and variant after normalisation (OS version and features are not compared)."""
        mine, theirs = self.normalized(), other.normalized()
        return (mine.os, mine.architecture, mine.variant) == (theirs.os, theirs.architecture, theirs.variant)

    def to_json(self) -> Dict[str, Any]:
        """The OCI ``platform`` object."""
        out: Dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version is not None:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant is not None:
            out["variant"] = self.variant
        return out


_ARCH_ALIASES: Dict[str, Tuple[str, Optional[str]]] = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "x64": ("amd64", None),
    "amd64": ("amd64", None),
    "i386": ("386", None),
    "i486": ("386", None),
    "i586": ("386", None),
    "i686": ("386", None),
    "x86": ("386", None),
    "386": ("386", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "armv8l": ("arm", "v7"),
    "armv7l": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv6": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "armv5tejl": ("arm", "v5"),
    "armv5l": ("arm", "v5"),
    "armv5": ("arm", "v5"),
    "ppc64el": ("ppc64le", None),
    "mips64el": ("mips64le", None),
    "loongarch64": ("loong64", None),
}
_OS_ALIASES = {"macos": "darwin", "osx": "darwin"}
_NUMBERED_VARIANT_RE = re.compile(r"v?([0-9]+)(?:\.0)?")


def _variant_number(variant: str) -> str:
    """``8``, ``v8``, ``v8.0`` -> ``v8``; anything else unchanged."""
    match = _NUMBERED_VARIANT_RE.fullmatch(variant)
    return "v" + match.group(1) if match else variant


def normalize_platform(platform: Platform) -> Platform:
    """``platform`` in containerd's normal form, with the default variant written out.

    OS and architecture are lowercased; ``macos`` is ``darwin``; ``x86_64``/``x86-64`` are ``amd64``
    (``amd64/v1`` is plain ``amd64``); ``i386``..``i686``/``x86`` are ``386``; ``aarch64`` is ``arm64``
    and its variant ``8``/``v8.0``/none is ``v8``; ``armhf`` is ``arm/v7``, ``armel`` ``arm/v6``,
    ``armv7l``/``armv6l``/``armv5tel`` (as ``uname -m`` says) ``arm/v7``/``arm/v6``/``arm/v5``;
    ``arm`` with no variant is ``arm/v7`` and ``arm/7`` is ``arm/v7``; Debian's ``ppc64el`` and
    ``mips64el`` are ``ppc64le`` and ``mips64le``; ``loongarch64`` is ``loong64``.
    """
    os_name = platform.os.lower()
    os_name = _OS_ALIASES.get(os_name, os_name)
    architecture = platform.architecture.lower()
    variant = platform.variant.lower() if platform.variant else None
    alias = _ARCH_ALIASES.get(architecture)
    if alias is not None:
        architecture = alias[0]
        if alias[1] is not None:
            variant = alias[1]
    if architecture == "amd64":
        if variant == "v1":
            variant = None
    elif architecture == "arm64":
        variant = _variant_number(variant) if variant else "v8"
    elif architecture == "arm":
        variant = _variant_number(variant) if variant else "v7"
    return dataclasses.replace(platform, os=os_name, architecture=architecture, variant=variant)


_PLATFORM_HINT = "write it as OS/ARCH or OS/ARCH/VARIANT, for example linux/amd64 or linux/arm64/v8"


def parse_platform(text: str) -> Platform:
    """Parse ``os/arch[/variant]`` (e.g. ``linux/arm64/v8``) into a normalised :class:`Platform`.

    Raises :class:`InvalidPlatformError` with a message that quotes ``text``.
    """
    if not isinstance(text, str):
        raise InvalidPlatformError(f"The platform must be a string such as linux/amd64, not {show(text)}.")
    parts = text.strip().split("/")
    if len(parts) < 2 or len(parts) > 3:
        raise InvalidPlatformError(f"The platform {show(text)} is not valid: {_PLATFORM_HINT}.")
    names = ("operating system", "architecture", "variant")
    for name, part in zip(names, parts):
        if not PLATFORM_PART_RE.fullmatch(part):
            what = "is empty" if not part else f"{show(part)} is not valid (letters, digits, '.', '_' and '-', up to 64 characters)"
            raise InvalidPlatformError(f"The platform {show(text)} is not valid: its {name} {what}; {_PLATFORM_HINT}.")
    return normalize_platform(Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None))


def host_platform() -> Platform:
    """The managed host's platform, from ``platform.system()`` and ``platform.machine()``.

    Linux x86_64 is ``linux/amd64``, aarch64 ``linux/arm64/v8``, armv7l ``linux/arm/v7``, armv6l
    ``linux/arm/v6``, i686 ``linux/386``; other machines (``ppc64le``, ``s390x``, ``riscv64``...) keep
    their name. The CPU feature level (``amd64/v3``) is not detected: an index that has only such
    entries needs an explicit ``platform``.
    """
    system = pyplatform.system() or ""
    machine = pyplatform.machine() or ""
    for name, value in (("operating system", system), ("architecture", machine)):
        if not PLATFORM_PART_RE.fullmatch(value):
            raise InvalidPlatformError(
                f"Cannot tell the managed host's {name} (Python reports {show(value)}); set the platform option, "
                "for example linux/amd64.")
    return normalize_platform(Platform(system, machine))
