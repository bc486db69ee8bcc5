"""Seconds each test file took, summed from pytest's --durations=0 lines, as tests/conftest.py's FILE_SECONDS is written:

    PYTEST_ADDOPTS=--durations=0 make test | tee test.log; python scripts/test_file_seconds.py test.log

The order `make test` hands files to its processes is drawn from these (conftest.py): refresh them when a file's time
has moved by tens of seconds."""

from __future__ import annotations

import re
import sys
from collections import Counter

DURATION = re.compile(r"\s*([\d.]+)s (?:call|setup|teardown)\s+tests/(test_\w+)\.py::")


def file_seconds(lines) -> Counter:
    seconds = Counter()
    for line in lines:
        if match := DURATION.match(line):
            seconds[match.group(2)] += float(match.group(1))
    return seconds


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8", errors="replace") as log:
        seconds = file_seconds(log)
    if not seconds:
        print(f"error: {argv[0]} holds no --durations lines: run pytest with --durations=0", file=sys.stderr)
        return 2
    print("FILE_SECONDS = {" + ", ".join(f'"{name}": {round(s)}' for name, s in seconds.most_common() if round(s) >= 1) + "}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
