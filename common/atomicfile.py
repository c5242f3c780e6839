"""Replace a file atomically, never following a link (netmond's metrics
textfile, netmonctl's fleet files).

A reader sees the old file or the new one, never half of one: the data go to
a new, unpredictable name in the same directory (mkstemp: O_CREAT|O_EXCL|
O_NOFOLLOW, so another user cannot plant a symlink under it) and rename()
then replaces PATH itself. A symlink at PATH is replaced, not followed.
"""

from __future__ import annotations

import os
import tempfile


def write_atomically(path: str, data: bytes, mode: int = 0o600, *, durable: bool = False) -> None:
    """Write `data` to `path` with `mode`; OSError on failure (PATH is then unchanged).

    `durable` also fsyncs the data before the rename, so that a crash or
    power cut right after leaves the new content, not an empty file: for
    files a person edits rarely and must not lose (fleet.json). A file
    rewritten every tick (the metrics textfile) skips it.
    """
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            os.fchmod(fh.fileno(), mode)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
