"""Test helper: cache_latents.py, stopped inside its N-th cache file write by the kernel (the file-size limit
at byte 1000, tests/helpers/kill_harness.py): a crash in the middle of a chosen file, never at a moment that
depends on the machine's speed. Usage: python tests/helpers/kill_in_cache_write.py N ARGS... (ARGS as for
cache_latents.py)."""

from __future__ import annotations

import sys
from pathlib import Path

HELPERS = Path(__file__).resolve().parent
sys.path[:0] = [str(HELPERS.parents[1]), str(HELPERS)]  # the repository root, this folder

from kill_harness import die_at_byte  # noqa: E402

import cache_latents  # noqa: E402
import dataset.cache_files as cache_files  # noqa: E402


def main() -> int:
    kill_at, argv = int(sys.argv[1]), sys.argv[2:]
    real, calls = cache_files.save_file, [0]

    def save_file(*args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            die_at_byte(1000)
        return real(*args, **kwargs)

    cache_files.save_file = save_file  # write_cache looks it up in its module at each write
    return cache_latents.main(argv)


if __name__ == "__main__":
    sys.exit(main())
