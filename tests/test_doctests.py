"""The examples in docstrings run."""

import doctest

import pytest

import bridge.api
import bridge.config


@pytest.mark.parametrize("module", [bridge.config, bridge.api])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
