# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The retry option both modules take (module_utils/retry.py RetryPolicy and check_max_attempts).
    DOCUMENTATION = r"""
options:
  max_attempts:
    description:
      - How many times one ECR API call (or one blob request that made no progress) is tried before the task
        fails, counting the first try. Throttling, C(ServerException), HTTP 5xx and connection errors are
        retried after a random wait of up to 0.5 s x 2^(attempt - 1) (full-jitter exponential backoff, capped at
        20 s for API calls and 10 s for blob requests). The result reports RV(retries).
    type: int
    default: 10
"""
