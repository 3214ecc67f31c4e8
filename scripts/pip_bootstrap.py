# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Offline stand-in for the get-pip.py script that ansible-test downloads to bootstrap pip.

ansible-test runs most sanity tests in virtual environments of its own, created without pip, and
bootstraps pip there with a get-pip.py fetched from a host this machine cannot reach (PyPI is
reachable). scripts/layout.sh puts this file where ansible-test caches that script. It installs the pip
wheel bundled with CPython (ensurepip) and lets that pip install what ansible-test asked for (its
pinned pip version) from the package index. ansible-test runs it with pip's install options as argv.
"""

from __future__ import annotations

import ensurepip
import os
import subprocess
import sys

# get-pip.py options that `pip install` does not know
GET_PIP_ONLY_OPTIONS = ("--no-setuptools", "--no-wheel")


def main() -> None:
    # ensurepip points PIP_CONFIG_FILE at /dev/null in this process; the install from the index needs
    # the machine's pip configuration (index mirrors, CA bundle) back.
    environment = dict(os.environ)
    ensurepip.bootstrap(upgrade=True)
    options = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY_OPTIONS]
    subprocess.check_call([sys.executable, "-m", "pip", "install"] + options, env=environment)


if __name__ == "__main__":
    main()
