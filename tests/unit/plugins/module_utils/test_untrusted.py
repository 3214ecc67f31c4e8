# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Untrusted values shown in a message: one ASCII line, short, whatever a registry or manifest put there."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from ansible_collections.ecrkit.images.plugins.module_utils.untrusted import MAX_SHOWN, show


@pytest.mark.parametrize("value, shown", [
    ("linux", '"linux"'),
    ("line\nbreak", '"line\\nbreak"'),
    ("\x1b[31mred", '"\\u001b[31mred"'),
    ("café", '"caf\\u00e9"'),
    ("", '""'),
    (None, "null"),
    (True, "true"),
    (False, "false"),
    (42, "42"),
    (10 ** 40, "a 41-digit number"),
    (1.5, "1.5"),
    ([1, 2], "a list"),
    ({"a": 1}, "an object"),
    (b"bytes", "a bytes"),
])
def test_values_are_shown_as_one_short_token(value, shown):
    assert show(value) == shown


def test_a_long_string_is_cut_and_says_so():
    shown = show("x" * (MAX_SHOWN + 1))
    assert shown == '"' + "x" * MAX_SHOWN + '"...'
    assert show("x" * MAX_SHOWN) == '"' + "x" * MAX_SHOWN + '"'


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.integers(), st.floats(), st.none(), st.booleans(), st.lists(st.integers()),
                 st.dictionaries(st.text(), st.integers())))
def test_whatever_the_value_the_token_is_one_ascii_line_of_bounded_length(value):
    shown = show(value)
    assert shown.isascii() and "\n" not in shown and "\r" not in shown
    assert all(char.isprintable() for char in shown)
    assert len(shown) <= MAX_SHOWN * 6 + 5  # \\uXXXX escapes at worst, the quotes and "..."
