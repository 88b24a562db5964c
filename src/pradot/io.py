"""Files and folders written atomically: under a temporary name next to the target, then renamed into place.

A reader (another process, a crashed run restarted) sees either the old target or the complete new one,
never half of it: ``os.replace`` is atomic on one filesystem (POSIX ``rename(2)``), and the temporary name
sits in the target's folder so the rename never crosses filesystems.

```python
from pradot.io import atomic_write
with atomic_write("model.pt") as tmp:      # tmp: a unique path in the same folder
    torch.save(state, tmp)                 # on success tmp replaces model.pt; on an error it is removed
```
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "temporary_sibling"]


def temporary_sibling(path: str | Path) -> Path:
    """A fresh hidden name in ``path``'s folder, unique per process and call:
    ``.<name>.tmp-<pid>-<random>`` (keeps ``path``'s suffixes, so tools that dispatch on them still work)."""
    path = Path(path)
    return path.parent / f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{''.join(path.suffixes)}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_write(path: str | Path, *, replace_folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without error it replaces ``path``
    (``os.replace``), otherwise it is removed and the error propagates. The parent folder is created.

    The block may write a file or a folder at the temporary path. A folder can replace only a missing
    target or, with ``replace_folder``, an existing folder (removed just before the rename: the target is
    then briefly absent, never partial).

    Raises:
        FileNotFoundError: the block wrote nothing at the temporary path.
        OSError: the rename failed (e.g. ``path`` is an existing folder and ``replace_folder`` is off).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written at {tmp} (the temporary name of {path})")
        if replace_folder and tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)
