"""Pre-seed ansible-test's pip bootstrap cache so ``ansible-test --venv`` works without its download host.

ansible-test looks for ``~/.ansible/test/cache/get_pip_<version>.py`` before downloading it. This writes the
offline stub (get_pip_stub.py) there under that name and downloads the matching pip wheel from the package
index next to it. The pip version is read from the installed ansible-test, so an ansible-core upgrade that
moves it is followed automatically.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import ansible_test

CACHE = Path.home() / ".ansible" / "test" / "cache"
STUB = Path(__file__).with_name("get_pip_stub.py")


def bootstrap_pip_version() -> str:
    """The pip version ansible-test bootstraps into its venvs, e.g. "24.2"; raises SystemExit if not found."""
    source = Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
    found = re.search(r"\bpip\s*=\s*'([0-9][0-9.]*)'", source.read_text(encoding="utf-8"))
    if not found:
        raise SystemExit(f"seed_get_pip: cannot find the default pip version in {source}; update this script")
    return found.group(1)


def main() -> int:
    """Write the stub and fetch the wheel if they are not already there; print what was done."""
    version = bootstrap_pip_version()
    CACHE.mkdir(parents=True, exist_ok=True)
    script = CACHE / f"get_pip_{version.replace('.', '_')}.py"
    wheel = CACHE / f"pip-{version}-py3-none-any.whl"
    if not wheel.exists():
        download = ["download", "--disable-pip-version-check", "--quiet", "--no-deps", "--only-binary=:all:"]
        subprocess.run([sys.executable, "-m", "pip", *download, "--dest", str(CACHE), f"pip=={version}"], check=True)
    if not script.exists() or script.read_bytes() != STUB.read_bytes():
        shutil.copyfile(STUB, script)
    print(f"seed_get_pip: ansible-test pip {version} bootstrap served from {script} and {wheel.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
