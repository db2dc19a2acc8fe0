"""The integrations stay optional: `import gradscope` never loads them or their frameworks,
and a missing framework says how to install it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT
    )


def test_import_gradscope_loads_no_framework() -> None:
    done = _run(
        "import sys, gradscope\n"
        "w = gradscope.watch(gradscope.LeNet())\n"
        "loaded = [m for m in ('gradscope.integrations', 'lightning', 'pytorch_lightning',"
        " 'transformers', 'tensorboard', 'torch.utils.tensorboard') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    assert done.returncode == 0, done.stderr


def test_missing_frameworks_say_how_to_install_them() -> None:
    done = _run(
        "import sys\n"
        "for name in ('lightning', 'lightning.pytorch', 'pytorch_lightning', 'transformers',"
        " 'torch.utils.tensorboard'):\n"
        "    sys.modules[name] = None  # as if not installed\n"
        "from gradscope import GradscopeError\n"
        "for module in ('lightning', 'transformers'):\n"
        "    try:\n"
        "        __import__('gradscope.integrations.' + module)\n"
        "    except ImportError as error:\n"
        "        assert isinstance(error, GradscopeError), type(error)\n"
        "        print(error)\n"
        "    else:\n"
        "        raise AssertionError(module + ' imported without its framework')\n"
        "from gradscope.integrations.tensorboard import summary_writer\n"
        "try:\n"
        "    summary_writer('/tmp/x')\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == [
        "gradscope.integrations.lightning needs lightning (or pytorch_lightning), which is not "
        "installed: pip install gradscope[integrations]",
        "gradscope.integrations.transformers needs transformers, which is not installed: "
        "pip install gradscope[integrations]",
        "TensorBoard logging needs torch.utils.tensorboard, which is not installed: "
        "pip install gradscope[integrations]",
    ]


def test_the_environment_has_the_pinned_torch_and_no_torchvision() -> None:
    makefile = (ROOT / "Makefile").read_text()
    pinned = next(
        line.split(":=")[1].strip() for line in makefile.splitlines() if line.startswith("TORCH")
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "check_env.py"), pinned],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    wrong = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "check_env.py"), "1.0.0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert wrong.returncode == 1
    assert "not the pinned 1.0.0: an extra moved it" in wrong.stderr
