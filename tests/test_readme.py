"""The README stays true: its configuration table lists every DQNConfig field with its default."""

import dataclasses
import pathlib
import re

from bridge.config import DQNConfig

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _wire(value):
    """A default as the README writes it: the Elixir-side spelling."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return str(list(value))
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def test_readme_configuration_table_matches_the_config_schema():
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", README.read_text(), re.M))
    fields = {f.name: f.default for f in dataclasses.fields(DQNConfig)}
    assert sorted(rows) == sorted(fields)
    for name, default in fields.items():
        written = rows[name]
        if isinstance(default, float) and not isinstance(default, bool):
            assert float(written) == default, name
        else:
            assert written == _wire(default), name
