# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The retry policy and the bounds of the max_attempts option."""

from __future__ import annotations

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils.errors import InvalidOptionError
from ansible_collections.ecrkit.images.plugins.module_utils.retry import RetryPolicy, check_max_attempts


def test_retry_policy_delays_are_bounded():
    policy = RetryPolicy(attempts=5, base_delay=1.0, max_delay=3.0)
    assert [policy.delay(number, rng=lambda low, high: high) for number in range(4)] == [1.0, 2.0, 3.0, 3.0]
    assert all(0.0 <= policy.delay(number) <= 3.0 for number in range(10))


@pytest.mark.parametrize("attempts", [0, 51, -1])
def test_max_attempts_is_bounded(attempts):
    with pytest.raises(InvalidOptionError, match=f"max_attempts must be between 1 and 50, not {attempts}"):
        check_max_attempts(attempts)
    check_max_attempts(1)
    check_max_attempts(50)
