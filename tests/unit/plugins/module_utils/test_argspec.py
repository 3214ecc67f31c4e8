# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The argument specs: every option reaches the use case under its own name, a default given to Ansible is
the default the use case applies when called directly, and a spec handed out is a copy."""

from __future__ import annotations

import inspect

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils import argspec
from ansible_collections.ecrkit.images.plugins.module_utils.errors import InvalidOptionError
from ansible_collections.ecrkit.images.plugins.module_utils.pull import PullOptions
from ansible_collections.ecrkit.images.plugins.module_utils.push import PushOptions

CASES = [(argspec.pull_argument_spec, PullOptions.from_params), (argspec.push_argument_spec, PushOptions.from_params)]


@pytest.mark.parametrize("spec, from_params", CASES)
def test_every_option_is_a_keyword_of_the_use_case_under_its_own_name(spec, from_params):
    keywords = inspect.signature(from_params).parameters
    assert sorted(name for name in spec() if name not in keywords) == []


@pytest.mark.parametrize("spec, from_params", CASES)
def test_defaults_agree_between_ansible_and_the_use_case(spec, from_params):
    keywords = inspect.signature(from_params).parameters
    for name, option in spec().items():
        default = keywords[name].default
        if option.get("required"):
            assert default is inspect.Parameter.empty, name
        elif option.get("type") == "list":
            assert default is None and option["default"] == [], name  # None stands for the empty list
        else:
            assert default == option.get("default"), name


REF = "123456789012.dkr.ecr.us-west-2.amazonaws.com/team/app:1"


@pytest.mark.parametrize("from_params, given, name", [
    (PullOptions.from_params, {"ref": REF, "dest": "/srv/img"}, "format"),
    (PullOptions.from_params, {"ref": REF, "dest": "/srv/img"}, "pull"),
    (PushOptions.from_params, {"ref": REF, "src": "/srv/img"}, "src_format"),
    (PushOptions.from_params, {"ref": REF, "src": "/srv/img"}, "image_tag_mutability"),
])
def test_a_value_outside_the_choices_is_refused_by_the_use_case_as_well(from_params, given, name):
    """Called without Ansible's checks (bench, tests, a future module), the use case refuses what the
    argument spec would have refused, naming the option and its choices."""
    with pytest.raises(InvalidOptionError, match=f"^{name} 'bogus' is not one of "):
        from_params(**given, **{name: "bogus"})


def test_both_modules_share_the_same_shared_options():
    pull, push = argspec.pull_argument_spec(), argspec.push_argument_spec()
    for name, option in argspec.SHARED_OPTIONS.items():
        assert pull[name] == push[name] == option


def test_a_spec_handed_out_is_a_copy():
    spec = argspec.pull_argument_spec()
    spec["format"]["choices"].append("tarball")
    spec["max_attempts"]["default"] = 1
    again = argspec.pull_argument_spec()
    assert "tarball" not in again["format"]["choices"] and again["max_attempts"]["default"] == argspec.MAX_ATTEMPTS
    assert argspec.push_argument_spec()["max_attempts"]["default"] == argspec.MAX_ATTEMPTS
