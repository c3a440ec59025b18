"""Cheap change detection for files that are re-read when they change (certificates, keys)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

FileStamps = tuple[tuple[str, int, int, int], ...]


def stamp(files: Iterable[tuple[str, Path]]) -> FileStamps:
    """Inode, size and mtime of each (name, path); raises OSError for a missing file.

    `stat` follows symlinks, so a Kubernetes secret volume swapping its `..data` link, or a
    tool that writes a new file and renames it over the old one, shows as a new inode even
    when size and mtime happen to match. Blocking: call it in a thread from the event loop.
    """
    out = []
    for name, path in files:
        st = path.stat()
        out.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)
