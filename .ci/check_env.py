"""After `make install`: the environment has the torch the Makefile pinned and no torchvision.

Reads `pip list` (not imports): an extra that pulled another torch build, or torchvision (whose
wheel breaks next to CPU torch and, through torchmetrics, makes `import lightning` fail), is
named here instead of as a confusing failure deep in the test suite.

    python .ci/check_env.py 2.13.0
"""

from __future__ import annotations

import json
import subprocess
import sys


def main() -> int:
    pinned = sys.argv[1]
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installed = {row["name"].lower(): row["version"] for row in json.loads(listing)}
    problems = []
    torch = installed.get("torch")
    if torch is None or torch.split("+")[0] != pinned:
        problems.append(f"torch is {torch!r}, not the pinned {pinned}: an extra moved it")
    if "torchvision" in installed:
        problems.append(
            f"torchvision {installed['torchvision']} is installed; it breaks next to CPU torch "
            "(and `import lightning` through torchmetrics): pip uninstall torchvision"
        )
    for problem in problems:
        print(f"check_env: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
