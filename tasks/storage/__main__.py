"""``python -m tasks.storage cat URI``: stream an object to stdout (webdataset ``pipe:`` URLs)."""

from __future__ import annotations

import os
import sys

from tasks.storage.backends import open_storage
from tasks.storage.config import READ_CHUNK
from tasks.storage.errors import StorageError


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "cat":
        print("usage: python -m tasks.storage cat URI", file=sys.stderr)
        return 2
    try:
        with open_storage(argv[1]).open_read(argv[1]) as fh:
            out = sys.stdout.buffer
            while chunk := fh.read(READ_CHUNK):
                out.write(chunk)
            out.flush()
    except BrokenPipeError:  # the reader stopped early (e.g. webdataset's slice): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
