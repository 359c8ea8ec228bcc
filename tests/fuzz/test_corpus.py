"""Replay the fuzz corpus (tests/fuzz/corpus/) through the decoders, the summary and the
tracker, as ``tests/fuzz/fuzz_decode.py`` feeds them: nothing may raise. A known bug (``KNOWN``)
has a reproducer named after it in tests/fuzz/known/; once it is fixed, this says so (then delete
the entry and move the file into the corpus as found-NAME)."""

from __future__ import annotations

import traceback

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.fuzz_decode import CORPUS, KNOWN, KNOWN_DIR, check, corpus_files, seeds

FILES = corpus_files(CORPUS)


def test_the_corpus_is_seeded_and_small() -> None:
    names = {p.name for p in FILES}
    assert set(seeds()) <= names, "run: python tests/fuzz/fuzz_decode.py --seed"
    assert sum(p.stat().st_size for p in FILES) < 2 * 1024 * 1024


def test_every_corpus_input_decodes_without_raising() -> None:
    failures = []
    for path in FILES:
        try:
            check(path.read_bytes(), strict=False)
        except Exception:
            failures.append(f"{path.name}:\n{traceback.format_exc(limit=-4)}")
    assert not failures, f"{len(failures)} of {len(FILES)} inputs raise:\n" + "\n".join(
        failures[:5]
    )


KNOWN_FILES = sorted(KNOWN_DIR.iterdir()) if KNOWN_DIR.is_dir() else []


def test_known_bugs_have_reproducers_that_still_fail() -> None:
    assert sorted(p.name for p in KNOWN_FILES) == sorted(KNOWN)
    fixed = [p.name for p in KNOWN_FILES if p.name not in check(p.read_bytes(), strict=False)]
    assert not fixed, f"fixed: {fixed}; remove them from KNOWN, move them into the corpus"


def test_what_fuzzing_found_stays_fixed() -> None:
    found = [p for p in FILES if p.name.startswith("found-")]
    assert len(found) >= 4
    for p in found:
        assert check(p.read_bytes(), strict=True) == []


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = draw(st.sampled_from(FILES)).read_bytes()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(data)))
        j = draw(st.integers(i, min(len(data), i + 32)))
        data = data[:i] + draw(st.binary(max_size=6)) + data[j:]
    return data


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_corpus_inputs_never_raise(data: bytes) -> None:
    check(data, strict=False)
