"""Atomic writes: build beside the destination, then rename into place, so a reader never sees half a file.

    with atomic_file(path) as tmp:      # a temp path in the same folder; renamed to `path` on success
        save_file(tensors, tmp)
    write_text_atomic(path, text)
    with atomic_dir(out) as tmp:        # a temp folder beside `out`; renamed to `out` on success
        pipe.save_pretrained(tmp)
    zip_dir(folder, archive)            # a zip of a folder's regular files (never a link), atomically

On an exception the temp file or folder is removed and the destination is left as it was.
``os.replace`` within one folder is atomic on POSIX and Windows filesystems.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temp path beside ``path`` (same suffix); ``os.replace`` d onto ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextmanager
def atomic_dir(out: str | Path, replace: bool = False) -> Iterator[Path]:
    """A temp folder beside ``out``, renamed to ``out`` when the block succeeds.

    ``out`` may be missing or an empty folder; an existing non-empty one is refused (InputError)
    unless ``replace``, in which case the old folder is swapped out and deleted after the rename.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"'{out}' is a file; give a folder.")
    if not replace and out.is_dir() and any(out.iterdir()):
        raise InputError(f"'{out}' already exists and is not an empty folder; choose a new folder.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield tmp
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        if out.exists():  # replace: swap the old folder out, the new one in, then delete the old one
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def zip_dir(folder: str | Path, archive: str | Path) -> Path:
    """A zip of ``folder``'s regular files, written atomically. Members are paths relative to ``folder``; a
    symbolic link (file or folder) is never followed or stored, so a zip cannot carry a file from outside the
    folder, and no member name is absolute or climbs out with '..'."""
    folder, archive = Path(folder), Path(archive)
    with atomic_file(archive) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for root, dirs, files in os.walk(folder):  # os.walk does not descend into linked folders
            here = Path(root)
            dirs[:] = sorted(d for d in dirs if not (here / d).is_symlink())
            for name in sorted(files):
                path = here / name
                if path.is_symlink() or not path.is_file() or path.resolve() == archive.resolve():
                    continue
                zf.write(path, path.relative_to(folder).as_posix())
    return archive
