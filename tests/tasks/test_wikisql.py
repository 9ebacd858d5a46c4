"""WikiSQL: human-readable SQL round trip, official logical-form/execution metrics, loader errors."""

import json
import logging

import pytest

from peft_hybrid.tasks import DataError, get_task
from peft_hybrid.tasks.wikisql_sql import (
    exact_match,
    execution_accuracy,
    logical_form_accuracy,
    logical_form_key,
    parse_sql,
    to_human_readable,
)

HEADER = ["Name", "Goals = scored", "Home AND away", "Rank", "Max speed", "Score > par"]


@pytest.mark.parametrize(
    "query",
    [
        {"sel": 0, "agg": 0, "conds": []},
        {"sel": 3, "agg": 3, "conds": [[0, 0, "Smith AND Jones"]]},
        {"sel": 0, "agg": 1, "conds": [[2, 0, "2 = 2 AND more > 1"], [3, 1, "5"]]},
        {"sel": 4, "agg": 0, "conds": [[1, 2, "10"], [5, 0, "< 3 shots"]]},
        {"sel": 1, "agg": 5, "conds": [[4, 0, "MAX speed"], [0, 0, "New York (NY)"]]},
        {"sel": 2, "agg": 0, "conds": [[3, 0, "AND"], [0, 0, "x AND"]]},
    ],
)
def test_round_trip_of_awkward_values_and_columns(query):
    text = to_human_readable(query, HEADER)
    parsed = parse_sql(text, HEADER)
    assert parsed is not None, text
    assert logical_form_key(parsed) == logical_form_key(query)


def test_human_readable_form_is_the_hugging_face_one():
    query = {"sel": 3, "agg": 0, "conds": [[0, 0, "Butler CC"], [1, 1, 7]]}
    assert to_human_readable(query, HEADER) == ("SELECT Rank FROM table WHERE Name = Butler CC AND Goals = scored > 7")
    assert to_human_readable({"sel": 0, "agg": 3, "conds": []}, HEADER) == ("SELECT COUNT Name FROM table")
    with pytest.raises(ValueError, match="column index 9"):
        to_human_readable({"sel": 9, "agg": 0, "conds": []}, HEADER)


def test_what_the_text_form_cannot_express():
    # Whitespace runs are collapsed by the human-readable form itself.
    text = to_human_readable({"sel": 0, "agg": 0, "conds": [[3, 0, "New   York"]]}, HEADER)
    assert parse_sql(text, HEADER)["conds"] == [[3, 0, "New York"]]
    # A value that itself reads "... AND <column> <op> ..." is split at the first such AND.
    query = {"sel": 0, "agg": 0, "conds": [[2, 0, "2 AND Rank > 1"]]}
    assert parse_sql(to_human_readable(query, HEADER), HEADER)["conds"] == [[2, 0, "2"], [3, 1, "1"]]


def test_parse_details():
    # Values keep their case and come back as text; whitespace is collapsed.
    assert parse_sql("SELECT  Name FROM table WHERE Rank =  1.5 ", HEADER) == {
        "sel": 0,
        "agg": 0,
        "conds": [[3, 0, "1.5"]],
    }
    # A column spelled in another case still resolves.
    assert parse_sql("SELECT name FROM table", HEADER) == {"sel": 0, "agg": 0, "conds": []}
    # "Max speed" is a column, not the MAX aggregation.
    assert parse_sql("SELECT Max speed FROM table", HEADER)["agg"] == 0
    assert parse_sql("SELECT MAX Max speed FROM table", HEADER) == {"sel": 4, "agg": 1, "conds": []}
    for bad in [
        "",
        "Rank",
        "SELECT Unknown FROM table",
        "SELECT Rank FROM table WHERE",
        "SELECT Rank FROM table WHERE Rank ~ 3",
        "SELECT Rank FROM table WHERE Rank =",
        "select Rank from table",
    ]:
        assert parse_sql(bad, HEADER) is None, bad


def test_logical_form_accuracy_official_semantics():
    gold = [
        {"sel": 0, "agg": 0, "conds": [[3, 0, 5], [2, 0, "Yes"]]},
        {"sel": 0, "agg": 0, "conds": [[3, 0, "5"]]},
        {"sel": 0, "agg": 0, "conds": [[3, 0, "5"]]},
        {"sel": 0, "agg": 0, "conds": []},
        {"sel": 0, "agg": 0, "conds": []},
    ]
    preds = [
        "SELECT Name FROM table WHERE Home AND away = yes AND Rank = 5",  # order, case: right
        "SELECT Name FROM table WHERE Rank = 5.0",  # "5.0" != "5": wrong
        "SELECT COUNT Name FROM table WHERE Rank = 5",  # agg differs: wrong
        "SELECT Name FROM",  # unparseable: wrong
        "SELECT Name FROM table",  # right
    ]
    headers = [HEADER] * 5
    assert logical_form_accuracy(preds, gold, headers) == pytest.approx(40.0)
    golds_text = [to_human_readable(g, HEADER) for g in gold]
    # Exact match is stricter: only the last one is the identical string.
    assert exact_match(preds, golds_text) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="2 predictions for 5 / 5 references"):
        logical_form_accuracy(preds[:2], gold, headers)


def test_execution_accuracy_on_a_synthetic_table():
    table = {
        "id": "t-1",
        "header": ["Player", "No.", "Team"],
        "types": ["text", "real", "text"],
        "rows": [["Ann Lee", "3", "Red Sox"], ["Bo Chan", "7", "Blue Jays"], ["Cy Dee", "3", "Red Sox"]],
    }
    gold = {"sel": 0, "agg": 0, "conds": [[1, 0, "3"]]}
    count_gold = {"sel": 0, "agg": 3, "conds": [[2, 0, "Red Sox"]]}
    preds = [
        "SELECT Player FROM table WHERE No. = 3.0",  # other logical form, same result
        "SELECT Player FROM table WHERE No. = 7",  # wrong rows
        "nonsense",  # unparseable
        "SELECT COUNT Player FROM table WHERE Team = red sox",  # lower-cased text: same count
    ]
    golds = [gold, gold, gold, count_gold]
    assert execution_accuracy(preds, golds, [table] * 4) == pytest.approx(50.0)
    assert logical_form_accuracy(preds, golds, [table["header"]] * 4) == pytest.approx(25.0)


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_load_with_tables_reports_execution_accuracy(tmp_path):
    tables = _write_jsonl(
        tmp_path / "dev.tables.jsonl",
        [
            {"id": "t-1", "header": ["Player", "No."], "types": ["text", "real"], "rows": [["Ann", 3], ["Bo", 7]]},
        ],
    )
    data = _write_jsonl(
        tmp_path / "dev.jsonl",
        [
            {
                "phase": 1,
                "table_id": "t-1",
                "question": "Who wore 3?",
                "sql": {"sel": 0, "agg": 0, "conds": [[1, 0, 3]]},
            },
            {"phase": 1, "table_id": "t-1", "question": "How many players?", "sql": {"sel": 0, "agg": 3, "conds": []}},
        ],
    )
    task = get_task("wikisql")
    ds = task.load(data_file=data, tables_file=tables)
    assert ds[0]["source"] == "Who wore 3? | columns: Player | No."
    assert ds[0]["target"] == "SELECT Player FROM table WHERE No. = 3"
    assert ds[1]["target"] == "SELECT COUNT Player FROM table"
    metrics = task.compute_metrics(["SELECT Player FROM table WHERE No. = 3.0", "x"], ds)
    assert metrics == {
        "logical_form_accuracy": 0.0,
        "exact_match": 0.0,
        "unparseable": 1.0,
        "execution_accuracy": 50.0,
    }


@pytest.mark.parametrize(
    "lines, tables, row, field, needle",
    [
        (
            [
                '{"question": "q", "table_id": "t-1", "sql": {"sel": 0, "agg": 0, "conds": []}}',
                '{"question": "q", "table_id": ',
            ],
            None,
            2,
            None,
            "not valid JSON",
        ),
        (['{"question": "q", "table_id": "t-1"}'], None, 1, "sql", "missing"),
        (
            ['{"question": "q", "table_id": "t-1", "sql": {"sel": 0, "agg": 9, "conds": []}}'],
            None,
            1,
            "sql.agg",
            "agg must be",
        ),
        (
            ['{"question": "q", "table_id": "t-1", "sql": {"sel": 0, "agg": 0, "conds": [[5, 0, "x"]]}}'],
            [{"id": "t-1", "header": ["A", "B"], "rows": []}],
            1,
            "sql",
            "column index 5",
        ),
        (
            ['{"question": "q", "table_id": "t-9", "sql": {"sel": 0, "agg": 0, "conds": []}}'],
            [{"id": "t-1", "header": ["A", "B"], "rows": []}],
            1,
            "table_id",
            "not in",
        ),
        (
            ['{"question": " ", "table_id": "t-1", "sql": {"sel": 0, "agg": 0, "conds": []}}'],
            None,
            1,
            "question",
            "empty",
        ),
    ],
)
def test_malformed_wikisql_names_file_row_field(tmp_path, lines, tables, row, field, needle):
    data = tmp_path / "dev.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tables_file = _write_jsonl(tmp_path / "dev.tables.jsonl", tables) if tables else None
    with pytest.raises(DataError, match=needle) as info:
        get_task("wikisql").load(data_file=data, tables_file=tables_file)
    assert info.value.file == str(data)
    assert info.value.row == row
    assert info.value.field == field


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no examples") as info:
        get_task("wikisql").load(data_file=empty)
    assert info.value.file == str(empty)
    with pytest.raises(DataError, match="file not found"):
        get_task("wikisql").load(data_file=tmp_path / "absent.jsonl")


def _synthetic_header(width: int) -> list[str]:
    """Distinct invented column names, some with spaces, operators, AND and aggregation words."""
    styles = [
        "col {} name",
        "col {} = goals",
        "home AND away {}",
        "score > {}",
        "MAX col {}",
        "col {}  OP  x",
        "Col {} < par",
        "COUNT {}",
    ]
    return [styles[i % len(styles)].format(i) for i in range(width)]


@pytest.mark.realdata
def test_every_dev_query_round_trips(shared_data, caplog):
    with caplog.at_level(logging.WARNING):
        ds = get_task("wikisql").load(data_file=shared_data / "wikisql" / "dev.jsonl")
    assert len(ds) == 8421
    assert len(set(ds["table_id"])) == 2630
    assert all(ds["header_is_placeholder"])
    assert "placeholders" in caplog.text
    failures = []
    for sql, header in zip(ds["sql"], ds["header"]):
        names = _synthetic_header(len(header))
        text = to_human_readable(sql, names)
        parsed = parse_sql(text, names)
        if parsed is None or logical_form_key(parsed) != logical_form_key(sql):
            failures.append(text)
    assert failures == []
    # With the placeholder headers themselves the targets are scored perfectly.
    metrics = get_task("wikisql").compute_metrics(list(ds["target"]), ds)
    assert metrics == {"logical_form_accuracy": 100.0, "exact_match": 100.0, "unparseable": 0.0}
