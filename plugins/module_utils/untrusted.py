# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Untrusted values (from a registry, a manifest, a platform option) written into an operator's message.

A manifest or a host can put anything in a field: control characters, text in any script, a megabyte
of it, a number of a thousand digits. :func:`show` turns such a value into a short, one-line, ASCII
token that a message can quote without breaking the line it sits on or hiding what follows it.
"""

from __future__ import annotations

import json

MAX_SHOWN = 80
"""Most characters of a string value :func:`show` keeps; the rest becomes ``...``."""


def show(value: object) -> str:
    """``value`` for a message: ASCII only, one line, at most about 80 characters."""
    if isinstance(value, str):
        shown = json.dumps(value[:MAX_SHOWN])
        return shown + "..." if len(value) > MAX_SHOWN else shown
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        text = str(value)
        return text if len(text) <= 30 else f"a {len(text)}-digit number"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "a " + type(value).__name__
