"""Nested fields (object, list of objects; toolkit/task/nested.py) and the money type (toolkit/task/money.py):
the recipe, the schema both grammar engines compile, label checks naming a leaf's path, scoring leaf by leaf
with list items aligned by similarity, and money read from what documents write."""

import json

import pytest

from conftest import write_recipe
from toolkit.data.label import check_answer
from toolkit.data.prepare import canonical_answer, read_record
from toolkit.io.errors import DataError, RecipeError
from toolkit.model.endpoint import Answer
from toolkit.task.fields import NO_VALUE
from toolkit.task.money import read_money
from toolkit.task.recipe import load_recipe
from toolkit.task.scoring import compute_metrics, score_record, slot_counts

FIELDS = """\
fields:
  - name: seller
    type: object
    description: the seller
    fields:
      - {name: name, description: company name, grounded: true}
      - {name: tax_id, description: tax id, normalise: [digits]}
  - name: items
    type: list
    description: line items
    max_items: 4
    items:
      - {name: name, description: the item}
      - {name: quantity, type: int, description: how many}
      - {name: unit_price, type: money, currency: CNY, description: the price of one}
      - {name: unit, type: enum, choices: [个, 箱], description: the unit}
      - {name: date, type: "date?", description: delivered}
  - {name: date, type: date, description: issued}
"""

TEXT = "卖方：甲公司 税号 123-456\n苹果 2个 ¥3.50；梨 1箱 ¥20；桃 3个 1元；2024年3月5日"
ITEMS = [{"name": "苹果", "quantity": 2, "unit_price": "3.50 CNY", "unit": "个", "date": None},
         {"name": "梨", "quantity": 1, "unit_price": "20.00 CNY", "unit": "箱", "date": "2024-03-06"},
         {"name": "桃", "quantity": 3, "unit_price": "1.00 CNY", "unit": "个", "date": None}]
GOLD = {"seller": {"name": "甲公司", "tax_id": "123456"}, "items": ITEMS, "date": "2024-03-05"}


@pytest.fixture
def recipe(tmp_path):
    return load_recipe(write_recipe(tmp_path, FIELDS), overrides=["prompts.teacher=null"])


def copy(value):
    return json.loads(json.dumps(value, ensure_ascii=False))


def test_the_schema_nests_objects_and_arrays_with_each_leafs_constraints(recipe):
    props = recipe.json_schema()["properties"]
    seller, items = props["seller"], props["items"]
    assert seller["type"] == "object" and seller["required"] == ["name", "tax_id"]
    assert seller["additionalProperties"] is False
    assert items["type"] == "array" and items["maxItems"] == 4
    item = items["items"]
    assert item["required"] == ["name", "quantity", "unit_price", "unit", "date"]
    assert item["additionalProperties"] is False
    assert item["properties"]["unit"]["enum"] == ["个", "箱"]
    assert item["properties"]["unit_price"]["pattern"] == "^-?[0-9]+[.][0-9]{2} [A-Z]{3}$"
    assert item["properties"]["date"]["anyOf"][1] == {"type": "null"}  # optional leaf inside an item


def test_the_nested_schema_compiles_for_vllm_and_llama_cpp(recipe):
    """xgrammar (vLLM's structured outputs) holds an answer to the nested schema; llama.cpp parses the grammar
    converted from it, each object's keys in the recipe's order."""
    schema = recipe.json_schema()
    good = json.dumps(GOLD, ensure_ascii=False)
    bad_item = copy(GOLD)
    bad_item["items"][2]["unit_price"] = "¥1"  # not the canonical form
    extra_key, missing_key, too_many, outside = copy(GOLD), copy(GOLD), copy(GOLD), copy(GOLD)
    extra_key["items"][0]["colour"] = "red"
    del missing_key["seller"]["tax_id"]
    too_many["items"] = ITEMS + ITEMS
    outside["items"][1]["unit"] = "袋"
    xgrammar = pytest.importorskip("xgrammar")
    from xgrammar.testing import _is_grammar_accept_string

    grammar = xgrammar.Grammar.from_json_schema(json.dumps(schema, ensure_ascii=False), any_whitespace=False)
    assert _is_grammar_accept_string(grammar, good)
    assert _is_grammar_accept_string(grammar, json.dumps({**GOLD, "items": []}, ensure_ascii=False))
    for bad in (bad_item, extra_key, missing_key, too_many, outside):
        assert not _is_grammar_accept_string(grammar, json.dumps(bad, ensure_ascii=False)), bad

    llama_cpp = pytest.importorskip("llama_cpp")
    from toolkit.infer.llamacpp import json_grammar

    gbnf = json_grammar(schema)
    llama_cpp.LlamaGrammar.from_string(gbnf, verbose=False)  # llama.cpp parses it
    rules = dict(line.split(" ::= ", 1) for line in gbnf.splitlines())
    item = next(rule for rule in rules.values() if "unit-price-kv" in rule)
    keys = [part.removeprefix("items-item-").removesuffix("-kv") for part in item.split() if part.endswith("-kv")]
    assert keys == ["name", "quantity", "unit-price", "unit", "date"]  # "date" is a top-level key too


def test_the_prompt_describes_nested_fields_readably(recipe):
    prompt = recipe.prompt("teacher")
    assert ("- seller: the seller (an object with these keys)\n"
            "  - name: company name (text copied from the input as written)\n"
            "  - tax_id: tax id (text)\n"
            "- items: line items (a list of objects, at most 4, each with these keys; [] when there is none)\n"
            "  - name: the item (text)\n") in prompt
    assert "  - unit: the unit (one of \"个\", \"箱\")\n" in prompt
    example = json.loads(prompt.split("\n")[-1])
    assert list(example["items"][0]) == ["name", "quantity", "unit_price", "unit", "date"]


def ask(recipe, label: dict) -> tuple:
    return check_answer(recipe, TEXT, Answer(content=json.dumps(label, ensure_ascii=False)))


def test_a_label_with_a_bad_leaf_is_refused_naming_its_path(recipe, tmp_path):
    written = copy(GOLD)
    written["items"][0]["unit_price"] = "¥3.50"
    written["items"][1]["date"] = "2024年3月6日"
    assert ask(recipe, written) == (written, None, "")
    # trained in each leaf's own form: money and dates canonical inside the items
    assert json.loads(canonical_answer(recipe, written)) == GOLD

    bad = copy(GOLD)
    bad["items"][2]["unit_price"] = "cheap"
    label, reason, detail = ask(recipe, bad)
    assert label is None and reason == "schema"
    assert "items[2].unit_price must be an amount of money" in detail
    with pytest.raises(DataError, match=r"l.jsonl:3: field 'items\[2\].unit_price' must be an amount of money"):
        read_record(recipe, {"id": "a", "text": TEXT, "label": bad}, tmp_path / "l.jsonl", 3)

    outside, ungrounded, short = copy(GOLD), copy(GOLD), copy(GOLD)
    outside["items"][1]["unit"] = "袋"
    ungrounded["seller"]["name"] = "乙公司"
    del short["items"][1]["quantity"]
    assert ask(recipe, outside)[1:] == ("not allowed", "items[1].unit='袋' is not one of the recipe's allowed values")
    assert ask(recipe, ungrounded)[1:] == ("ungrounded", "seller.name='乙公司' does not occur in the input")
    assert "items[1] must have the keys" in ask(recipe, short)[2]


def test_reordered_items_score_as_if_in_order(recipe):
    reordered = {**GOLD, "items": [ITEMS[2], {**ITEMS[0], "unit_price": "¥3.5"}, ITEMS[1]]}
    assert score_record(recipe, reordered, GOLD) == {"seller": True, "items": True, "date": True}
    m = compute_metrics(recipe, [{"parsed": reordered, "gold": GOLD}], bootstrap=10)
    assert m["exact_match"]["value"] == 1.0
    assert all(m["leaves"][key]["value"] == 1.0 for key in m["leaves"])
    # one leaf wrong, the items reordered: only that leaf counts wrong
    wrong = {**GOLD, "items": [ITEMS[2], {**ITEMS[0], "quantity": 5}, ITEMS[1]]}
    m = compute_metrics(recipe, [{"parsed": wrong, "gold": GOLD}], bootstrap=10)
    assert m["exact_match"]["value"] == 0.0 and m["fields"]["items"]["value"] == 0.0
    assert {k: (v["k"], v["n"]) for k, v in m["leaves"].items()} == {
        "seller.name": (1, 1), "seller.tax_id": (1, 1), "items[].name": (3, 3), "items[].quantity": (2, 3),
        "items[].unit_price": (3, 3), "items[].unit": (3, 3), "items[].date": (3, 3)}
    # slots: 2 seller leaves and 12 present item leaves (two dates are null, a value of an optional leaf: 15)
    assert slot_counts(recipe.field("items"), wrong, GOLD) == (14, 1, 1)


def test_a_missing_or_extra_item_counts_as_wrong_leaves(recipe):
    missing = {**GOLD, "items": [ITEMS[2], ITEMS[0]]}
    extra = {**GOLD, "items": [*ITEMS, {"name": "李", "quantity": 1, "unit_price": "5.00 CNY", "unit": "个",
                                         "date": None}]}
    m = compute_metrics(recipe, [{"parsed": missing, "gold": GOLD}, {"parsed": extra, "gold": GOLD},
                                 {"parsed": None, "gold": GOLD}], bootstrap=10)
    # per leaf: 3 slots right of 3 (missing: the two it has, of 3), 3 of 4 (extra), 0 of 3 (unparseable)
    assert m["leaves"]["items[].name"]["k"] == 2 + 3 + 0 and m["leaves"]["items[].name"]["n"] == 3 + 4 + 3
    assert m["leaves"]["seller.name"]["k"] == 2 and m["leaves"]["seller.name"]["n"] == 3
    assert m["fields"]["items"]["k"] == 0 and m["fields"]["seller"]["k"] == 2
    items = recipe.field("items")
    assert slot_counts(items, missing, GOLD) == (10, 0, 5)  # 梨's five leaves missed
    assert slot_counts(items, extra, GOLD) == (15, 5, 0)  # 李's five leaves, none in gold
    assert slot_counts(items, None, GOLD) == (0, 0, 15)


def test_flat_recipes_keep_their_metrics_keys(tmp_path):
    flat = load_recipe(write_recipe(tmp_path, "fields:\n  - {name: total, type: money, description: d}\n"))
    m = compute_metrics(flat, [{"parsed": {"total": "¥1,234.5"}, "gold": {"total": "1234.50 CNY"}}], bootstrap=10)
    assert "leaves" not in m and m["fields"]["total"]["value"] == 1.0


@pytest.mark.parametrize("written,currency,expected", [
    ("¥1,234.50", None, "1234.50 CNY"),
    ("￥１，２３４.５", None, "1234.50 CNY"),
    ("1.234,50 €", None, "1234.50 EUR"),
    ("1 234,50 EUR", None, "1234.50 EUR"),
    ("USD 12", None, "12.00 USD"),
    ("US$1,000", None, "1000.00 USD"),
    ("12元", None, "12.00 CNY"),
    ("壹仟元", None, "1000.00 CNY"),
    ("壹仟贰佰叁拾肆元伍角", None, "1234.50 CNY"),
    ("人民币壹万零伍元整", None, "10005.00 CNY"),
    ("叁元零伍分", None, "3.05 CNY"),
    ("12,5", "EUR", "12.50 EUR"),
    ("1,234", "USD", "1234.00 USD"),
    (99.5, "CNY", "99.50 CNY"),
    ("1234.50 CNY", "EUR", "1234.50 CNY"),  # the amount's own currency, not the field's
])
def test_money_is_read_from_what_documents_write(written, currency, expected):
    assert read_money(written, currency) == expected


@pytest.mark.parametrize("written,currency", [
    ("12", None),  # no currency, none by default
    (12, None),
    ("1,234,50 EUR", None),  # a decimal comma after grouping commas
    ("¥12 USD", None),  # two currencies
    ("cheap", "CNY"),
    (True, "CNY"),
])
def test_money_refuses_what_it_cannot_read(written, currency):
    assert read_money(written, currency) is NO_VALUE


@pytest.mark.parametrize("fields,where,words", [
    ("  - {name: a, type: object, description: d, fields: []}\n", "typed.yaml:2: key 'fields.0'",
     "at least one sub-field under `fields`"),
    ("  - name: a\n    type: object\n    description: d\n    fields:\n      - {name: b, description: d, colour: red}\n",
     "typed.yaml:6: key 'fields.0.fields.0.colour'", "unknown key"),
    ("  - {name: a, type: list, description: d, fields: [{name: b, description: d}]}\n", "typed.yaml:2: key 'fields.0'",
     "fields (sub-fields) applies to object fields only, not to type list"),
    ("  - {name: a, description: d, currency: EUR}\n", "typed.yaml:2: key 'fields.0'",
     "currency applies to money fields only"),
    ("  - name: a\n    type: object\n    description: d\n    fields:\n      - name: b\n        type: list\n"
     "        description: d\n        items:\n          - name: c\n            type: object\n"
     "            description: d\n            fields:\n              - name: e\n                type: object\n"
     "                description: d\n                fields: [{name: f, description: d}]\n",
     "typed.yaml:14: key 'fields.0.fields.0.items.0.fields.0'", "nested at most 3 deep"),
])
def test_a_bad_nested_recipe_names_its_file_and_line(tmp_path, fields, where, words):
    with pytest.raises(RecipeError) as caught:
        load_recipe(write_recipe(tmp_path, "fields:\n" + fields))
    assert where in str(caught.value) and words in str(caught.value), str(caught.value)
