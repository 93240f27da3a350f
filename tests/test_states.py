"""State names have one source, qlite/states.py; the SQL, the CLI and the docs agree with it."""

import re

from conftest import ROOT
from qlite import states

SQL = "\n".join(p.read_text() for p in sorted((ROOT / "qlite" / "index" / "sql").glob("*.sql")))


def test_the_sql_writes_only_indexed_states_and_all_of_them():
    # A literal compared with or assigned to `state` (=, IN (...), CASE ... THEN).
    written = set()
    for clause in re.findall(r"state\s*(?:=|IN|<>|!=)\s*(\([^)]*\)|'[a-z]+'|CASE.*?END)", SQL,
                             flags=re.S):
        written |= set(re.findall(r"'([a-z]+)'", clause))
    assert written <= set(states.INDEXED), written - set(states.INDEXED)
    assert set(states.INDEXED) <= written, set(states.INDEXED) - written


def test_the_state_machine_page_names_every_state():
    page = (ROOT / "docs" / "states.md").read_text()
    for state in states.ALL:
        assert f"`{state}`" in page or f" {state} " in page, state


def test_qlite_ls_refuses_an_unknown_state_naming_the_known_ones():
    from typer.testing import CliRunner

    from qlite.cli.main import app

    result = CliRunner().invoke(app, ["ls", "--state", "done", "--db", "/nonexistent.db"])
    assert result.exit_code == 1
    assert "--state: expected one of " + ", ".join(states.INDEXED) in result.output
