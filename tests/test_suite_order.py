"""The order `make test` hands test files to its two processes (conftest.file_order): longest first, test_ray beside short
files, from FILE_SECONDS, which must name files that exist (a renamed file's figure would count for nothing)."""

from __future__ import annotations

from pathlib import Path

from conftest import BESIDE_SHORT_FILES, FILE_SECONDS, SHORT_FILE_SECONDS, file_order

TESTS = Path(__file__).resolve().parent


def test_file_seconds_name_test_files_that_exist():
    missing = [stem for stem in FILE_SECONDS if not (TESTS / f"{stem}.py").is_file()]
    assert not missing, f"FILE_SECONDS names test files that are gone (renamed?): {missing}; refresh it with scripts/test_file_seconds.py"


def test_longest_first_and_the_cluster_file_beside_about_its_own_length_of_short_ones():
    stems = sorted(p.stem for p in TESTS.glob("test_*.py"))
    order = file_order(stems)
    assert sorted(order) == stems
    seconds = [FILE_SECONDS.get(stem, SHORT_FILE_SECONDS) for stem in order if stem != BESIDE_SHORT_FILES]
    assert seconds == sorted(seconds, reverse=True)
    after = order[order.index(BESIDE_SHORT_FILES) + 1:]
    left = sum(FILE_SECONDS.get(stem, SHORT_FILE_SECONDS) for stem in after)
    assert left <= 1.5 * FILE_SECONDS[BESIDE_SHORT_FILES] < left + FILE_SECONDS.get(order[order.index(BESIDE_SHORT_FILES) - 1], SHORT_FILE_SECONDS)
    assert order[0] == max(FILE_SECONDS, key=FILE_SECONDS.get)
