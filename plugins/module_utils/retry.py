# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How failed requests are tried again: one backoff rule for ECR API calls and blob requests alike.

:class:`RetryPolicy` is the full-jitter exponential backoff amazon.aws's ``jittered_backoff`` uses;
:func:`check_max_attempts` bounds the ``max_attempts`` option both modules take. It lives apart from
``ecr`` (API calls) and ``download`` (blob requests) because both use it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from ansible_collections.ecrkit.images.plugins.module_utils.errors import InvalidOptionError

MAX_ATTEMPTS_LIMIT = 50


@dataclass(frozen=True)
class RetryPolicy:
    """How transient errors are retried: full-jitter exponential backoff.

    ``attempts`` counts the first try: ``attempts=1`` means no retry. The n-th retry sleeps a random
    time between 0 and ``min(max_delay, base_delay * 2**n)`` seconds.
    """

    attempts: int = 10
    base_delay: float = 0.5
    max_delay: float = 20.0

    def delay(self, retry_number: int, rng: Callable[[float, float], float] = random.uniform) -> float:
        return rng(0.0, min(self.max_delay, self.base_delay * (2 ** retry_number)))


def check_max_attempts(max_attempts: int) -> None:
    """The max_attempts option of both modules: 1 (no retry) to 50."""
    if not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
        raise InvalidOptionError(f"max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}, not {max_attempts}.")
