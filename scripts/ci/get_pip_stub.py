"""Offline stand-in for the get-pip.py script that ansible-test downloads to bootstrap pip into its venvs.

ansible-test runs this file as a module (``GET_PIP``) with get-pip's command line, for example
``--disable-pip-version-check pip==24.2 --no-setuptools --no-wheel``. It installs pip from the wheel that
``seed_get_pip.py`` placed next to it, runs from that wheel as get-pip does, and never reaches another host.
Keep it Python 3.8 compatible: ansible-test may bootstrap older interpreters with it.
"""

from __future__ import annotations

import glob
import os
import sys

# Options that only get-pip.py understands; pip's own installer would reject them.
_GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}


def main() -> int:
    """Install pip (and whatever else was asked) from the wheels beside this file; return pip's exit code."""
    here = os.path.dirname(os.path.abspath(__file__))
    wheels = sorted(glob.glob(os.path.join(here, "pip-*-py3-none-any.whl")))
    if not wheels:
        sys.stderr.write(f"get_pip stub: no pip wheel in {here}; run `make sanity` to seed it\n")
        return 1
    args = [a for a in sys.argv[1:] if a not in _GET_PIP_ONLY]
    sys.path.insert(0, wheels[-1])
    from pip._internal.cli.main import main as pip_main

    return int(pip_main(["install", "--no-index", "--find-links", here, "--upgrade", "--force-reinstall", *args]))


if __name__ == "__main__":
    sys.exit(main())
