"""Typed fields (toolkit/task/fields.py) and metrics by type, checked against figures worked out by hand."""

import datetime
import json
import re

import pytest

from conftest import write_recipe
from toolkit.cli import main
from toolkit.model.endpoint import Answer
from toolkit.task.fields import NO_VALUE, TYPES, FieldType, normalise, register
from toolkit.io.errors import DataError
from toolkit.data.label import check_answer, majority
from toolkit.data.prepare import canonical_answer, read_record
from toolkit.task.recipe import load_recipe
from toolkit.io.errors import RecipeError
from toolkit.task.scoring import compute_metrics, headline, score_record, slot_counts

FIELDS = """\
fields:
  - {name: persons, type: "list[str]", description: people, grounded: true, max_items: 3, max_chars: 8}
  - {name: sentiment, type: enum, description: tone, choices: [正面, 负面, 中性]}
  - {name: count, type: int, description: items}
  - {name: price, type: float, description: price}
  - {name: urgent, type: bool, description: urgent}
  - {name: note, description: free text}
"""


@pytest.fixture
def recipe(tmp_path):
    return load_recipe(write_recipe(tmp_path, FIELDS))


GOLD = {"persons": ["张三", "李四"], "sentiment": "正面", "count": 2, "price": 9.5, "urgent": False, "note": "送到门口"}


def test_each_type_compares_by_its_own_rules(recipe):
    right = {"persons": ["李四", " 张三"], "sentiment": "正面", "count": "2", "price": 9.50, "urgent": "false",
             "note": "送到门口 "}
    assert score_record(recipe, right, GOLD) == {f: True for f in recipe.field_names}  # order, text, spaces
    wrong = score_record(recipe, {**right, "persons": ["张三", "张三", "李四"], "count": 2.5, "urgent": 0,
                                  "price": "约9.5元"}, GOLD)  # "about 9.5": no number
    assert [f for f, ok in wrong.items() if not ok] == ["persons", "count", "price", "urgent"]
    assert score_record(recipe, {**right, "persons": "张三, 李四"}, GOLD)["persons"] is False  # not a list


def test_list_entities_count_as_multisets(recipe):
    persons = recipe.field("persons")
    # gold {A, B, B}, predicted {B, C}: one B matches; C is a false positive; A and one B are missed
    assert slot_counts(persons, {"persons": ["B", "C"]}, {"persons": ["A", "B", "B"]}) == (1, 1, 2)
    assert slot_counts(persons, None, {"persons": ["A"]}) == (0, 0, 1)
    assert slot_counts(persons, {"persons": "A"}, {"persons": ["A"]}) == (0, 0, 1)  # a string is no list


ROWS = [
    ({"persons": ["李四", "张三"], "sentiment": "正面", "count": 2, "price": 9.5, "urgent": False, "note": "送到门口"},
     GOLD),
    ({"persons": ["王五", "赵六"], "sentiment": "中性", "count": 1, "price": 3, "urgent": True, "note": "放快递"},
     {"persons": ["王五"], "sentiment": "负面", "count": 1, "price": 3.0, "urgent": True, "note": "放快递柜"}),
    (None, {"persons": [], "sentiment": "中性", "count": 0, "price": 1.25, "urgent": False, "note": ""}),
    ({"persons": [], "sentiment": "很差", "count": 5, "price": 2, "urgent": False, "note": "周末送"},
     {"persons": ["张三"], "sentiment": "负面", "count": 5, "price": 2.0, "urgent": False, "note": "周末送"}),
]


@pytest.mark.parametrize("predicted,gold,prf", [
    ([], ["A"], (0, 0, 0)),  # predicting nothing is no precision where there was something to find
    (["A"], [], (0, 0, 0)),
    ([], [], (1, 1, 1)),  # nothing to find, nothing found
])
def test_entity_scores_of_empty_lists(recipe, predicted, gold, prf):
    rows = [{"parsed": {**GOLD, "persons": predicted}, "gold": {**GOLD, "persons": gold}}]
    e = compute_metrics(recipe, rows, bootstrap=10)["entities"]["persons"]
    assert (e["precision"]["value"], e["recall"]["value"], e["f1"]["value"]) == prf


def test_metrics_by_type_match_hand_worked_figures(recipe):
    m = compute_metrics(recipe, [{"parsed": p, "gold": g} for p, g in ROWS])
    assert (m["n"], m["json_parse_rate"]["k"], m["exact_match"]["k"]) == (4, 3, 1)
    assert {f: s["k"] for f, s in m["fields"].items()} == {
        "persons": 1, "sentiment": 1, "count": 3, "price": 3, "urgent": 3, "note": 2}
    # persons: TP 2 (row 1) + 1 (row 2); FP 赵六; FN 张三 (row 4); row 3 has no gold entity
    persons = m["entities"]["persons"]
    assert (persons["precision"]["value"], persons["recall"]["value"], persons["f1"]["value"]) == (0.75, 0.75, 0.75)
    assert m["entities"]["overall"]["f1"]["value"] == 0.75  # the only list field
    # sentiment: 正面 F1 1; 负面 missed twice, F1 0; 中性 predicted once wrongly and missed once, F1 0
    sentiment = m["enums"]["sentiment"]
    assert sentiment["macro_f1"]["value"] == pytest.approx(1 / 3)
    assert sentiment["confusion"] == {"gold": ["正面", "负面", "中性"], "predicted": ["正面", "负面", "中性", "(invalid)"],
                                      "counts": [[1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]]}
    # note (free text, no bound): 1, 1 - 1/4 (放快递 vs 放快递柜), 0 (no JSON), 1
    assert m["similarity"]["note"]["value"] == pytest.approx(2.75 / 4)
    # slots: TP 7 + 4 + 0 + 4 = 15; FP 0 + 3 + 0 + 1 = 4; FN 0 + 2 + 4 (all but note) + 2 = 8
    assert m["micro_f1"]["value"] == pytest.approx(30 / 42)
    for stat in (persons["f1"], sentiment["macro_f1"], m["similarity"]["note"], m["micro_f1"]):
        lo, hi = stat["ci95"]
        assert 0 <= lo <= stat["value"] <= hi <= 1


def test_schema_follows_the_types(recipe):
    props = recipe.json_schema()["properties"]
    assert props["persons"] == {"type": "array", "description": "people", "items": {"type": "string", "maxLength": 8},
                                "maxItems": 3}
    assert props["sentiment"] == {"type": "string", "description": "tone", "enum": ["正面", "负面", "中性"]}
    assert [props[f]["type"] for f in ("count", "price", "urgent", "note")] == ["integer", "number", "boolean",
                                                                                "string"]
    assert "maxLength" not in props["note"]


def test_schema_of_every_type_compiles_for_guided_decoding(recipe):
    xgrammar = pytest.importorskip("xgrammar")  # what vLLM's structured outputs compile the schema with
    grammar = str(xgrammar.Grammar.from_json_schema(json.dumps(recipe.json_schema()), any_whitespace=False))
    # persons: one item and at most 2 more (maxItems 3), each of at most 8 characters; sentiment's choices
    assert "{0, 2}" in grammar and "{0, 8}" in grammar and "\\u6b63\\u9762" in grammar  # 正面


def answer(**changes):
    return Answer(json.dumps({**GOLD, **changes}, ensure_ascii=False))


TEXT = "张三和李四：送到门口，2 件，9.5 元"


@pytest.mark.parametrize("changes,reason,detail", [
    ({}, None, ""),
    ({"persons": []}, None, ""),  # no entity is an answer
    ({"persons": ["张三", "钱七"]}, "ungrounded", "persons='钱七' does not occur"),
    ({"sentiment": "很好"}, "not allowed", "sentiment='很好' is not one of"),
    ({"count": "2"}, "schema", "count must be an integer"),
    ({"persons": ["张三", 1]}, "schema", "persons must be a list of strings"),
    ({"persons": ["张三"] * 4}, "schema", "persons has 4 items, over max_items=3"),
    ({"urgent": "no"}, "schema", "urgent must be true or false"),
])
def test_teacher_answers_are_checked_by_type_and_grounded_item_by_item(recipe, changes, reason, detail):
    label, why, text = check_answer(recipe, TEXT, answer(**changes))
    assert why == reason and detail in text
    assert (label is None) == (reason is not None)


def test_votes_compare_lists_order_free_and_keep_the_first_answers_order(recipe):
    a, b = {**GOLD, "persons": ["张三", "李四"]}, {**GOLD, "persons": [" 李四", "张三"]}
    label, _ = majority(recipe, [b, {**GOLD, "persons": ["王五"]}, a])
    assert label["persons"] == ["李四", "张三"]
    label, field = majority(recipe, [a, {**GOLD, "persons": ["王五"]}, {**GOLD, "persons": []}])
    assert label is None and field == "persons"
    label, _ = majority(recipe, [{**GOLD, "count": 2}, {**GOLD, "count": 3}, {**GOLD, "count": 2.0}])
    assert label["count"] == 2  # 2 and 2.0 are one vote


def test_labels_of_the_wrong_type_are_refused_with_file_and_line(recipe, tmp_path):
    path = tmp_path / "l.jsonl"
    with pytest.raises(DataError, match=r"l.jsonl:4: field 'count' must be an integer, got 2.5"):
        read_record(recipe, {"id": "x", "text": TEXT, "label": {**GOLD, "count": 2.5}}, path, 4)
    with pytest.raises(DataError, match=r"l.jsonl:5: sentiment '很好' is not one of the allowed values"):
        read_record(recipe, {"id": "x", "text": TEXT, "label": {**GOLD, "sentiment": "很好"}}, path, 5)


@pytest.mark.parametrize("field,problem", [
    ("{name: s, type: enum, description: d}", "an enum field needs its choices"),
    ("{name: n, type: int, description: d, grounded: true}", "grounded applies to str and list"),
    ("{name: n, type: bool, description: d, choices: [a]}", "choices apply to text fields"),
    ("{name: n, description: d, max_items: 2}", "max_items applies to list"),
    ("{name: n, type: datetime, description: d}", "expected 'str', 'enum'"),
    ("{name: n, type: 'list[str]?', description: d}", "a list.str. field cannot be optional"),
    ("{name: s, type: enum, description: d, choices: [CNY, USD, CNY]}", "each choice once: 'CNY' is 'CNY' again"),
    ("{name: s, type: enum, description: d, choices: [USD, 'usd '], normalise: [strip, lower]}",
     "each choice once: 'usd ' is 'USD' again after the normalisers"),
])
def test_recipe_refuses_keys_a_type_does_not_take(tmp_path, field, problem):
    with pytest.raises(RecipeError, match=rf"typed.yaml:2: key 'fields.0.*{problem}"):
        load_recipe(write_recipe(tmp_path, f"fields:\n  - {field}\n"))


def test_report_lays_out_the_recipes_types(recipe, tmp_path):
    from toolkit.io.jsonl import write_json
    from toolkit.evaluate.report import run_report

    run = tmp_path / "run"
    metrics = compute_metrics(recipe, [{"parsed": p, "gold": g} for p, g in ROWS])
    for who in ("student", "rules"):
        write_json(run / "eval" / f"{who}-test" / "metrics.json",
                   {**metrics, "model": who, "role": who, "test_file": "test.jsonl", "records_per_s": 1.0})
    outputs = run_report(recipe, run)
    report = (run / "report.md").read_text(encoding="utf-8")
    # report.md: the one table (the model a fine-tuned role evaluated is named as the student), the charts
    assert ("| student-test (fine-tuned student, prompt s.md) | smollm2-135m-instruct, fine-tuned | test.jsonl | 4 "
            "| 25.0 [5–70] |") in report
    assert "![confusion](confusion-sentiment.png)" in report
    # the types' sections: in report.html
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "<th>persons P</th><th>persons R</th><th>persons F1</th>" in page
    assert "<tr><td>student-test</td><td>75.0 [" in page  # entity precision, then the same row's recall and F1
    assert "<th>sentiment macro-F1</th>" in page and "<tr><td>rules-test</td><td>33.3 [" in page
    assert "<th>evaluation</th><th>note</th>" in page
    assert "The confusion-FIELD.png charts number classes" in page  # 正面 and its kind: glyphs the chart's font may lack
    assert ("<th>gold \\ predicted</th><th>正面</th><th>负面</th><th>中性</th><th>(invalid)</th>" in page
            and "<tr><td>负面</td><td>0</td><td>0</td><td>1</td><td>1</td></tr>" in page)
    assert run / "confusion-sentiment.png" in outputs and (run / "confusion-sentiment.png").stat().st_size > 0


# --- a field type registered from this file alone (docs/field-types.md walks through the same type) ------------

class IsoDate(FieldType):
    """A calendar date, YYYY-MM-DD; compared as a date, so 2025-1-5 and ２０２５-01-05 agree."""

    name = "isodate"  # not "date": a built-in of that name must not be replaced by this test
    json_type = "string"
    DATE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})")

    def read(self, value):
        m = isinstance(value, str) and self.DATE.fullmatch(normalise(value, ["strip", "width"]))
        try:
            return datetime.date(*map(int, m.groups())) if m else NO_VALUE
        except ValueError:  # 2025-02-30
            return NO_VALUE

    def problem(self, spec, value):
        return None if self.read(value) is not NO_VALUE else f"must be a date YYYY-MM-DD, got {value!r}"

    def compared(self, spec, value):
        day = self.read(value)
        return day if day is NO_VALUE else day.isoformat()

    def schema(self, spec, choices, max_enum):
        return {**super().schema(spec, choices, max_enum), "format": "date"}


@pytest.fixture
def isodate():
    register(IsoDate())
    yield
    del TYPES["isodate"]


DATED = "fields:\n  - {name: due, type: isodate, description: 到期日}\n  - {name: note, description: free text}\n"


def test_a_type_registered_from_a_test_file_loads_scores_votes_and_has_a_schema(isodate, tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, DATED))
    assert recipe.json_schema()["properties"]["due"] == {"type": "string", "description": "到期日", "format": "date"}
    gold = {"due": "2025-01-05", "note": "x"}
    assert score_record(recipe, {"due": "２０２５-1-5", "note": "x"}, gold) == {"due": True, "note": True}
    assert score_record(recipe, {"due": "2025-01-06", "note": "x"}, gold)["due"] is False
    rows = [{"parsed": {"due": "2025-1-5", "note": "x"}, "gold": gold},
            {"parsed": {"due": "2025-02-30", "note": "x"}, "gold": {"due": "2025-03-01", "note": "x"}},
            {"parsed": None, "gold": gold}]
    m = compute_metrics(recipe, rows, bootstrap=10)
    # due: 1 right of 3; slots: due TP 1, FN 2 (no FP: 2025-02-30 is no date); note TP 2, FN 1 -> F1 6 / 9
    assert m["fields"]["due"]["k"] == 1 and m["micro_f1"]["value"] == pytest.approx(6 / 9)
    assert headline(recipe.fields, recipe.choices).name == "whole-record exact match"
    label, _ = majority(recipe, [gold, {**gold, "due": "2025-1-5"}, {**gold, "due": "2025-01-06"}])
    assert label["due"] == "2025-01-05"  # two of three name one day
    with pytest.raises(DataError, match=r"l.jsonl:3: field 'due' must be a date YYYY-MM-DD, got 'soon'"):
        read_record(recipe, {"id": "x", "text": "t", "label": {**gold, "due": "soon"}}, tmp_path / "l.jsonl", 3)


def test_a_registered_type_is_held_to_the_keys_it_takes(isodate, tmp_path):
    with pytest.raises(RecipeError, match=r"key 'fields.0': expected grounded applies to str and list\[str\] "
                                          r"fields, not to type isodate"):
        load_recipe(write_recipe(tmp_path, "fields:\n  - {name: due, type: isodate, description: d, grounded: true}\n"))
    with pytest.raises(RecipeError, match=r"key 'fields.0': expected choices apply to text fields"):
        load_recipe(write_recipe(tmp_path, "fields:\n  - {name: due, type: isodate, description: d, choices: [a]}\n"))


# --- types for real documents: optional values, dates, numbers as written ------------------------------------

INVOICE = """\
fields:
  - {name: seller, description: 卖方}
  - {name: amount, type: "float?", description: 金额}
  - {name: date, type: date, description: 开票日期}
  - {name: currency, type: enum, description: 币种, choices: [CNY, USD], optional: true}
"""


@pytest.fixture
def invoice(tmp_path):
    return load_recipe(write_recipe(tmp_path, INVOICE))


@pytest.mark.parametrize("written,number", [
    ("1,234.50", 1234.5), ("¥1234.5", 1234.5), ("１，２３４．５", 1234.5), ("１２３４.５元", 1234.5),
    ("USD 1,234.5", 1234.5), ("$-12", -12.0), (" 7 ", 7.0), (".5", 0.5),
    ("1,23", NO_VALUE), ("12,3456", NO_VALUE), ("约9.5", NO_VALUE), ("1.2.3", NO_VALUE), ("", NO_VALUE),
    (True, NO_VALUE), (None, NO_VALUE),
])
def test_numbers_are_read_as_documents_write_them(written, number):
    assert TYPES["float"].read(written) == number


@pytest.mark.parametrize("written,day", [
    ("2024-03-05", "2024-03-05"), ("2024-3-5", "2024-03-05"), ("2024/03/05", "2024-03-05"),
    ("2024.3.5", "2024-03-05"), ("20240305", "2024-03-05"), ("2024年3月5日", "2024-03-05"),
    ("2024 年 03 月 05 号", "2024-03-05"), ("２０２４年３月５日", "2024-03-05"), ("March 5, 2024", "2024-03-05"),
    ("Mar. 5th 2024", "2024-03-05"), ("5 March 2024", "2024-03-05"), ("5 SEPT 2024", "2024-09-05"),
    ("03/05/2024", NO_VALUE),  # day or month first: ambiguous, refused
    ("2025-02-30", NO_VALUE), ("2024-3", NO_VALUE), ("Marc 5, 2024", NO_VALUE), (20240305, NO_VALUE),
])
def test_dates_are_read_from_chinese_and_english_forms(written, day):
    assert TYPES["date"].compared(None, written) == day


def test_optional_fields_take_null_as_a_value_scored_like_any_other(invoice, tmp_path):
    gold = {"seller": "华为", "amount": None, "date": "2024-03-05", "currency": None}
    assert invoice.field("amount").optional and invoice.field("currency").optional
    # null in an optional field is a label; in a required one (date) it is refused with file and line
    assert read_record(invoice, {"id": "a", "text": "t", "label": gold}, tmp_path / "l.jsonl", 1)["label"] == gold
    with pytest.raises(DataError, match=r"l.jsonl:2: field 'date' must be a date .*, got null"):
        read_record(invoice, {"id": "a", "text": "t", "label": {**gold, "date": None}}, tmp_path / "l.jsonl", 2)
    right = {"seller": "华为 ", "amount": None, "date": "2024年3月5日", "currency": None}
    assert score_record(invoice, right, gold) == {f: True for f in invoice.field_names}
    assert score_record(invoice, {**right, "amount": 0}, gold)["amount"] is False  # 0 is not "not given"
    assert score_record(invoice, {**right, "amount": None}, {**gold, "amount": 12.5})["amount"] is False
    assert score_record(invoice, {**right, "amount": "¥12.50"}, {**gold, "amount": 12.5})["amount"] is True
    # slots: null right is a TP; null for 12.5 is an FP and an FN, as any wrong value
    amount = invoice.field("amount")
    assert slot_counts(amount, {"amount": None}, {"amount": None}) == (1, 0, 0)
    assert slot_counts(amount, {"amount": None}, {"amount": 12.5}) == (0, 1, 1)
    assert slot_counts(amount, {"amount": 3}, {"amount": None}) == (0, 1, 1)
    # a required float keeps null as no answer (FN only)
    assert slot_counts(amount.model_copy(update={"optional": False}), {"amount": None}, {"amount": 1}) == (0, 0, 1)


def test_the_student_is_trained_on_one_form_of_each_date(invoice):
    from toolkit.data.prepare import to_messages

    label = {"seller": "华为", "amount": None, "date": "2024年3月5日", "currency": "USD"}
    row = to_messages(invoice, {"id": "a", "text": "t", "label": label}, "s")
    assert row["messages"][-1]["content"] == \
        '{"seller": "华为", "amount": null, "date": "2024-03-05", "currency": "USD"}'


def test_optional_class_field_counts_null_as_a_class(invoice):
    rows = [{"parsed": {"currency": None}, "gold": {"currency": None}},
            {"parsed": {"currency": "CNY"}, "gold": {"currency": None}},
            {"parsed": {"currency": "USD"}, "gold": {"currency": "USD"}},
            {"parsed": None, "gold": {"currency": "CNY"}}]
    rows = [{"parsed": r["parsed"] and {**GOLD_INVOICE, **r["parsed"]}, "gold": {**GOLD_INVOICE, **r["gold"]}}
            for r in rows]
    confusion = compute_metrics(invoice, rows, bootstrap=10)["enums"]["currency"]["confusion"]
    assert confusion == {"gold": ["CNY", "USD", "(null)"], "predicted": ["CNY", "USD", "(null)", "(invalid)"],
                         "counts": [[0, 0, 0, 1], [0, 1, 0, 0], [1, 0, 1, 0]]}


GOLD_INVOICE = {"seller": "华为", "amount": 1.0, "date": "2024-03-05", "currency": "CNY"}


def test_optional_schema_allows_null_and_votes_count_null_as_an_answer(invoice):
    props = invoice.json_schema()["properties"]
    assert props["amount"] == {"anyOf": [{"type": "number"}, {"type": "null"}], "description": "金额"}
    assert props["currency"] == {"anyOf": [{"type": "string", "enum": ["CNY", "USD"]}, {"type": "null"}],
                                 "description": "币种"}
    assert props["date"] == {"type": "string", "description": "开票日期 (YYYY-MM-DD)", "format": "date"}
    label, _ = majority(invoice, [{**GOLD_INVOICE, "amount": None}, {**GOLD_INVOICE, "amount": 2.0},
                                  {**GOLD_INVOICE, "amount": None}])
    assert label["amount"] is None  # two of three say the invoice gives no amount
    label, _ = majority(invoice, [GOLD_INVOICE, {**GOLD_INVOICE, "date": "2024年3月5日"},
                                  {**GOLD_INVOICE, "date": "2024-03-06"}])
    assert label["date"] == "2024-03-05"
    xgrammar = pytest.importorskip("xgrammar")
    xgrammar.Grammar.from_json_schema(json.dumps(invoice.json_schema()), any_whitespace=False)


# --- grounded values: placeholders, whole numbers and patterns (issue 43, item 2) -------------------------------

CONTACT = """\
fields:
  - {name: name, description: 收件人, grounded: true, normalise: [strip, width, nospace]}
  - {name: phone, description: 电话, grounded: true, normalise: [digits]}
  - {name: mobile, description: 手机, grounded: true, normalise: [digits], pattern: "[0-9]{11}", max_chars: 11}
"""
CONTACT_TEXT = "无锡市 新吴区 张三 电话 138 1234 5678 手机 (不详) 13912345678"


def contact(**changes) -> Answer:
    return Answer(json.dumps({"name": "张三", "phone": "13812345678", "mobile": "13912345678", **changes},
                             ensure_ascii=False))


@pytest.mark.parametrize("changes,reason,detail", [
    ({}, None, ""),
    ({"phone": "138-1234-5678"}, None, ""),  # the number as written, in groups
    ({"name": "无"}, "ungrounded", "name='无' is a placeholder"),  # in the text (无锡市), still no name
    ({"name": "不详"}, "ungrounded", "name='不详' is a placeholder"),
    ({"phone": "--"}, "ungrounded", "phone='--' is a placeholder"),  # no digit: nothing to compare under digits
    ({"phone": "N/A"}, "ungrounded", "phone='N/A' is a placeholder"),
    ({"phone": "1381234567"}, "ungrounded", "phone='1381234567' is only part of the number 13812345678"),
    ({"mobile": "1391234567"}, "schema", "mobile must match the pattern '[0-9]{11}' after the normalisers"),
    ({"mobile": "未知"}, "schema", "mobile must match the pattern"),
    ({"name": ""}, None, ""),  # "" says the text gives none
])
def test_placeholders_and_short_numbers_are_not_grounded(tmp_path, changes, reason, detail):
    recipe = load_recipe(write_recipe(tmp_path, CONTACT))
    label, why, text = check_answer(recipe, CONTACT_TEXT, contact(**changes))
    assert why == reason and detail in text


@pytest.mark.parametrize("written", ["138—1234—5678", "138–1234–5678", "138 - 1234 - 5678"])
def test_a_number_written_with_dashes_is_one_number(tmp_path, written):
    """Em and en dashes between groups, as senders type them: the whole number is grounded, a part is not."""
    recipe = load_recipe(write_recipe(tmp_path, CONTACT))
    text = CONTACT_TEXT.replace("138 1234 5678", written)
    assert check_answer(recipe, text, contact())[1] is None
    assert "only part of the number" in check_answer(recipe, text, contact(phone="1381234567"))[2]


def test_a_pattern_is_checked_in_labels_and_compiles_into_the_schema(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, CONTACT))
    props = recipe.json_schema()["properties"]
    assert props["mobile"] == {"type": "string", "description": "手机", "pattern": "^([0-9]{11})?$"}
    assert "pattern" not in props["phone"]
    gold = {"name": "张三", "phone": "13812345678", "mobile": "13912345678"}
    with pytest.raises(DataError, match=r"l.jsonl:2: field 'mobile' must match the pattern '\[0-9\]\{11\}'"):
        read_record(recipe, {"id": "x", "text": CONTACT_TEXT, "label": {**gold, "mobile": "139"}}, tmp_path / "l.jsonl", 2)
    # trained on the form the schema lets it write
    assert json.loads(canonical_answer(recipe, {**gold, "mobile": "139 1234 5678"}))["mobile"] == "13912345678"


def test_the_pattern_compiles_for_vllm_and_llama_cpp(tmp_path):
    """xgrammar (vLLM's structured outputs) and llama.cpp's grammar (the GGUF) both hold the answer to it."""
    schema = json.dumps(load_recipe(write_recipe(tmp_path, CONTACT)).json_schema(), ensure_ascii=False)
    answers = [json.dumps({"name": "张三", "phone": "1", "mobile": m}, ensure_ascii=False)
               for m in ("13912345678", "", "1391234567", "未知")]
    xgrammar = pytest.importorskip("xgrammar")
    from xgrammar.testing import _is_grammar_accept_string

    grammar = xgrammar.Grammar.from_json_schema(schema, any_whitespace=False)
    assert [_is_grammar_accept_string(grammar, a) for a in answers] == [True, True, False, False]
    llama_cpp = pytest.importorskip("llama_cpp")
    from toolkit.infer.llamacpp import json_grammar
    from toolkit.model.models import EMBEDDED, _gguf_path

    llm = llama_cpp.Llama(model_path=str(_gguf_path(EMBEDDED["smollm2-135m-instruct"])), vocab_only=True,
                          verbose=False)
    gbnf = json_grammar(json.loads(schema))
    assert "mobile ::= \"\\\"\" (mobile-1" in gbnf  # the pattern, not a bare string
    sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, gbnf.encode("utf-8"), b"root")
    assert sampler  # llama.cpp parsed it
    llama_cpp.llama_sampler_free(sampler)


@pytest.mark.parametrize("pattern,problem", [
    ("[0-9", r"a regular expression \(unterminated character set at position 0\), got '\[0-9'"),
    ("\\\\d{11}", r"no backslash escape \(llama.cpp's grammar takes none\): a class instead, \[0-9\] for a digit"),
    ("(?:13|15)[0-9]{9}", r"no \(\?...\) group"),
    ("^[0-9]{11}$", r"no \^ or \$: the pattern matches the whole value"),
])
def test_a_bad_pattern_is_refused_with_its_key_and_line(tmp_path, capsys, pattern, problem):
    path = write_recipe(tmp_path, f"fields:\n  - name: phone\n    description: d\n    pattern: \"{pattern}\"\n")
    assert main(["recipe", "check", str(path)]) == 2
    assert re.search(rf"typed.yaml:4: key 'fields.0.pattern': expected {problem}",
                     capsys.readouterr().err.replace("\n", ""))


def test_a_pattern_applies_to_str_fields_only(tmp_path):
    with pytest.raises(RecipeError, match=r"key 'fields.0': expected pattern applies to str fields only"):
        load_recipe(write_recipe(tmp_path, "fields:\n  - {name: n, type: int, description: d, pattern: '[0-9]'}\n"))
    assert load_recipe(write_recipe(tmp_path, "fields:\n  - {name: n, description: d, pattern: '[^ ]+[$]'}\n"))
