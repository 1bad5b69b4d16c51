"""The SQL splitter that lets init-file errors name their line."""

from __future__ import annotations

import pytest

from pytest_aikernel._sql import MetaCommand, split_sql


def test_statements_and_lines() -> None:
    script = "-- header\nCREATE TABLE a (x int);\n\nINSERT INTO a\nVALUES (1);\nSELECT 1"
    stmts = split_sql(script)
    assert [(s.text, s.line) for s in stmts] == [
        ("CREATE TABLE a (x int)", 2),
        ("INSERT INTO a\nVALUES (1)", 4),
        ("SELECT 1", 6),
    ]
    assert stmts[1].line_of(15) == 5


def test_semicolons_inside_quotes_comments_and_dollar_bodies() -> None:
    script = (
        "SELECT 'a;b', \"we;ird\";\n"
        "/* c; /* nested; */ still; */ SELECT 2;\n"
        "CREATE FUNCTION f() RETURNS int AS $$ BEGIN RETURN 1; END; $$ LANGUAGE plpgsql;\n"
        "DO $body$ BEGIN PERFORM 1; END $body$;\n"
        "SELECT E'it\\'s;';\n"
        "SELECT 'it''s;'\n"
    )
    stmts = split_sql(script)
    assert len(stmts) == 6
    assert stmts[0].text == "SELECT 'a;b', \"we;ird\""
    assert stmts[1].text.endswith("SELECT 2")
    assert stmts[2].text.startswith("CREATE FUNCTION") and stmts[2].line == 3
    assert stmts[3].line == 4
    assert stmts[4].text == "SELECT E'it\\'s;'"
    assert stmts[5].line == 6


def test_multiline_string_counts_lines() -> None:
    stmts = split_sql("SELECT 'a\nb\nc';\nSELECT 2;")
    assert [s.line for s in stmts] == [1, 4]


def test_empty_statements_dropped() -> None:
    assert split_sql(";;\n  -- only a comment\n;") == []


def test_psql_meta_command_is_reported_with_its_line() -> None:
    with pytest.raises(MetaCommand, match=r"line 2: psql meta-command '\\\\c other'"):
        split_sql("SELECT 1;\n\\c other\nSELECT 2;")


def test_cypher_split() -> None:
    from pytest_aikernel._sql import split_cypher

    script = (
        "// c; comment\nCREATE (:A {s: 'x;y'});\n/* b; */ MATCH (n:`we;ird`)\nRETURN n;\n"
        'RETURN "q\\";"'
    )
    stmts = split_cypher(script)
    assert [(s.text, s.line) for s in stmts] == [
        ("CREATE (:A {s: 'x;y'})", 2),
        ("MATCH (n:`we;ird`)\nRETURN n", 3),
        ('RETURN "q\\";"', 5),
    ]
