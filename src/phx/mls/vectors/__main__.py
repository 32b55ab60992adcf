"""``python -m phx.mls.vectors DIR``: run every vector file and print ``N passed, M failed, K skipped``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from phx.mls.vectors import run_dir


def main(argv: list[str]) -> int:
    directory = Path(
        argv[0] if argv else os.environ.get("MLS_TEST_VECTORS_DIR", "../shared/mls-test-vectors")
    )
    if not directory.is_dir():
        print(f"vectors: no such directory {directory}", file=sys.stderr)
        return 2
    results = run_dir(directory)
    for r in results:
        print(f"{r.name:40} {r.passed:5} passed {r.failed:5} failed {r.skipped:5} skipped")
        for f in r.failures[:5]:
            print(f"    {f}")
    passed = sum(r.passed for r in results)
    failed = sum(r.failed for r in results)
    skipped = sum(r.skipped for r in results)
    print(f"vectors: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
