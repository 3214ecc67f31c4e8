# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Makes tests/emulator importable and offers the ``ecr_endpoint`` fixture."""

from __future__ import annotations

import os
import sys

EMULATOR_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'emulator')
if EMULATOR_DIR not in sys.path:
    sys.path.insert(0, EMULATOR_DIR)

# pylint: disable=wrong-import-position,unused-import
from fixture import ecr_endpoint  # noqa: E402,F401
