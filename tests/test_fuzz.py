"""Random and mutated well-framed terms never kill the server; its RSS stays flat.

`make test` runs a few thousand seeded cases within a time bound;
`python -m bridge bench fuzz` runs 100,000.
"""
from __future__ import annotations

import random

import pytest

from bridge.protocol import decode, encode
from bridge.wirebench import fuzz_cases, mutate, open_fuzz_target, random_term, run_fuzz

pytestmark = pytest.mark.integration


def test_fuzz_cases_are_reproducible():
    first = [c for c, _ in zip(fuzz_cases(7), range(50))]
    assert first == [c for c, _ in zip(fuzz_cases(7), range(50))]
    rng = random.Random(1)
    for _ in range(200):  # the generator only builds terms the codec round-trips
        term = random_term(rng)
        assert encode(decode(encode(term))) == encode(term)
        mutate(rng, encode(term))


def test_random_and_mutated_terms_never_kill_the_server():
    server = open_fuzz_target()
    try:
        result = run_fuzz(server, cases=4000, seed=12345, time_limit=25.0)
    finally:
        status = server.close()
    assert status == 0
    assert result["cases"] >= 1000, result
    assert result["errors"] > 0 and result["results"] > 0
    assert result["rss_growth"] < 0.05, result
