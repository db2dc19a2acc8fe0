"""Writing output files so that a failure never leaves a half-written file or folder behind."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ._errors import GradscopeError

__all__ = ["atomic_write", "staged_dir"]


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    A failure at any point leaves ``path`` as it was and no temporary file behind.
    """
    folder = path.parent
    if not folder.is_dir():
        raise GradscopeError(
            f"cannot write {str(path)!r}: the folder {str(folder)!r} does not exist"
            " (create it first, or pick another path)"
        )
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise GradscopeError(
            f"cannot write {str(path)!r}: {error.strerror or error}"
            " (is the folder writable and is the path not a directory?)"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A fresh hidden folder next to ``target`` to write into; its files move to ``target`` at
    the end, only if the block succeeded (each file by an atomic rename).

    Fails early, before any work, when ``target`` cannot be created or written.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise GradscopeError(f"--out {str(target)!r} is a file, not a folder; pick another path")
    parent = target.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = parent / f".{target.name}.{secrets.token_hex(4)}.partial"
        stage.mkdir()  # unlike mkdtemp's 0700, this honours the umask like any new folder
    except OSError as error:
        raise GradscopeError(
            f"cannot write into {str(target)!r}: {error.strerror or error} at "
            f"{str(error.filename or parent)!r}; pick a writable folder with --out"
        ) from None
    try:
        yield stage
        if not target.exists():
            os.rename(stage, target)
            return
        items = sorted(stage.iterdir())
        blocked = [str(target / i.name) for i in items if (target / i.name).is_dir()]
        if blocked:  # checked before moving anything, so nothing is half-published
            raise GradscopeError(f"cannot write {', '.join(blocked)}: folders are in the way")
        for item in items:
            os.replace(item, target / item.name)
    except OSError as error:
        raise GradscopeError(
            f"cannot write into {str(target)!r}: {error.strerror or error}"
        ) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
