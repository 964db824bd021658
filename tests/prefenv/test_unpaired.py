"""Unpaired feedback: the Hugging Face prompt/completion/label JSONL convention, both ways."""

from __future__ import annotations

import json

import pytest

from prefenv.records import Comparison
from prefenv.text_records import text_segment
from prefenv.unpaired import (
    UnpairedExample,
    examples_from_comparisons,
    export_unpaired_jsonl,
    import_unpaired_jsonl,
)


def test_round_trip_keeps_every_example(tmp_path):
    examples = [
        UnpairedExample("The soup", " was lovely.", True),
        UnpairedExample("", " Terrible — «never» again.\n", False),
        UnpairedExample("The plot", "", True),
    ]
    path = tmp_path / "sub" / "kto.jsonl"
    assert export_unpaired_jsonl(examples, path) == 3
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows[0] == {"prompt": "The soup", "completion": " was lovely.", "label": True}
    assert import_unpaired_jsonl(path) == examples


def test_a_plain_hugging_face_file_imports(tmp_path):
    path = tmp_path / "hf.jsonl"
    path.write_text(
        '{"prompt": "Q", "completion": " A", "label": false, "source": "web"}\n'
        "\n"  # blank lines are skipped
        '{"completion": " no prompt", "label": true}\n'
    )
    assert import_unpaired_jsonl(path) == [
        UnpairedExample("Q", " A", False),
        UnpairedExample("", " no prompt", True),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"prompt": "p", "label": true}', "missing field 'completion'"),
        ('{"prompt": "p", "completion": "c"}', "missing field 'label'"),
        ('{"prompt": "p", "completion": "c", "label": 1}', "expected true or false, got 1"),
        ('{"prompt": "p", "completion": "c", "label": "yes"}', 'got "yes"'),
        ('{"prompt": 3, "completion": "c", "label": true}', "'prompt': expected a string, got int"),
        ('{"completion": [{"role": "user"}], "label": true}', "apply the chat template"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b"}', "import_jsonl"),
    ],
)
def test_a_bad_line_is_named_with_its_number(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "completion": "c", "label": true}\n\n' + line + "\n")
    with pytest.raises(ValueError, match="bad.jsonl, line 3: ") as error:
        import_unpaired_jsonl(path)
    assert message in str(error.value)


def test_export_refuses_a_label_that_is_not_a_bool(tmp_path):
    with pytest.raises(ValueError, match="example 1: label must be True"):
        export_unpaired_jsonl([("p", "a", True), ("p", "b", 0)], tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()


def test_comparisons_give_a_desirable_and_an_undesirable_example_each():
    a, b = text_segment("P", " good", 1.0), text_segment("P", " bad", 0.0)
    comparisons = [
        Comparison(a, b, 0.0),  # the first segment won
        Comparison(b, a, 1.0),  # the second segment won
        Comparison(a, b, 0.5),  # a tie: no example
        Comparison(a, b, None),  # skipped: no example
    ]
    winner, loser = UnpairedExample("P", " good", True), UnpairedExample("P", " bad", False)
    assert examples_from_comparisons(comparisons) == [winner, loser, winner, loser]
