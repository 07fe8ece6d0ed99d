"""Knowledge tables (toolkit/task/tables.py): strict loading, one JSON schema an answer cannot leave the table by,
repair of labels, and scoring's two kinds of wrong value; on logistics_zh's MCA table and on a product catalogue
(tests/tables/catalogue.csv), a second recipe's table that shows nothing in it is about addresses."""

import json

import pytest

from conftest import ROOT
from toolkit.io.errors import DataError
from toolkit.task.tables import (NOT_IN_TABLE, WRONG_IN_TABLE, TableSpec, answer_schema, load_table,
                                 table_csv)

ADMIN = ROOT / "datasets" / "logistics_zh" / "admin.csv"
ADMIN_SPEC = TableSpec(file="admin.csv", fields=["province", "city", "district"], may_be_empty=["district"])
CATALOGUE = ROOT / "tests" / "tables" / "catalogue.csv"
CATALOGUE_SPEC = TableSpec(file="catalogue.csv", fields=["category", "product", "unit"])

# logistics_zh's answer, in the recipe's field order (district first), the free fields' own schemas
ADMIN_PROPERTIES = {
    "district": {"type": "string", "maxLength": 16}, "city": {"type": "string", "maxLength": 16},
    "province": {"type": "string", "maxLength": 10},
    "specific_location": {"type": "string", "maxLength": 48}, "name": {"type": "string", "maxLength": 16},
    "phone": {"type": "string", "maxLength": 11}}
CATALOGUE_PROPERTIES = {"category": {"type": "string"}, "product": {"type": "string"},
                        "unit": {"type": "string"}, "quantity": {"type": "integer"}}


@pytest.fixture(scope="module")
def admin():
    return load_table(ADMIN, ADMIN_SPEC)


@pytest.fixture(scope="module")
def catalogue():
    return load_table(CATALOGUE, CATALOGUE_SPEC)


def write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


HEADER = "category,product,unit\n"


@pytest.mark.parametrize("name, text, line, words", [
    ("empty.csv", "", 1, "the file is empty"),
    ("blank.csv", "\n\n", 1, "the file is empty"),
    ("header_only.csv", HEADER, 1, "no rows"),
    ("bom.csv", "\ufeff" + HEADER + "dairy,milk,litre\n", 1, "byte order mark"),
    ("unknown.csv", "category,product,unit,colour\ndairy,milk,litre,white\n", 1, "column 'colour' is not a field"),
    ("missing.csv", "category,product\ndairy,milk\n", 1, "no column for field 'unit'"),
    ("duplicate.csv", HEADER + "dairy,milk,litre\ndairy,cheese,kg\ndairy,milk,litre\n", 4,
     "duplicated row: the same as line 2"),
    # an inner level's value under two parents; the leaf (litre) may repeat
    ("contradiction.csv", HEADER + "dairy,milk,litre\ndrinks,water,litre\ndrinks,milk,bottle\n", 4,
     "contradictory row: product 'milk' lies under drinks here but under dairy on line 2"),
    ("empty_value.csv", HEADER + "dairy,milk,litre\ndairy,cheese,\n", 3, "unit is empty; no level may be empty"),
    ("short_row.csv", HEADER + "dairy,milk\n", 2, "2 values, expected 3"),
    ("spaced.csv", HEADER + "dairy, milk,litre\n", 2, "has whitespace around it"),
    ("empty.jsonl", "", 1, "the file is empty"),
    ("bom.jsonl", '\ufeff{"category": "dairy", "product": "milk", "unit": "litre"}\n', 1, "byte order mark"),
    ("unknown.jsonl", '{"category": "dairy", "product": "milk", "unit": "litre"}\n'
     '{"category": "dairy", "product": "milk", "unit": "cup", "size": "s"}\n', 2, "key 'size' is not a field"),
    ("duplicate.jsonl", '{"category": "dairy", "product": "milk", "unit": "litre"}\n'
     '{"unit": "litre", "product": "milk", "category": "dairy"}\n', 2, "duplicated row: the same as line 1"),
    ("not_text.jsonl", '{"category": "dairy", "product": "milk", "unit": 1}\n', 1, "unit: expected a string"),
])
def test_a_bad_table_file_names_its_line(tmp_path, name, text, line, words):
    path = write(tmp_path, name, text)
    with pytest.raises(DataError) as err:
        load_table(path, CATALOGUE_SPEC)
    assert str(err.value).startswith(f"{path}:{line}: ") and words in str(err.value), str(err.value)


def test_empty_levels_follow_the_declaration(tmp_path):
    """A declared level may be "" in a row, and in every branch; a value under an empty level may not."""
    spec = TableSpec(file="t.csv", fields=["category", "product", "unit"], may_be_empty=["unit"])
    table = load_table(write(tmp_path, "t.csv", HEADER + "dairy,milk,litre\nbakery,cake,\n"), spec)
    assert table.combinations == (("dairy", "milk", "litre"), ("bakery", "cake", ""), ("dairy", "milk", ""))
    with pytest.raises(DataError, match=r"t2.csv:2: product is empty; only unit may be empty"):
        load_table(write(tmp_path, "t2.csv", HEADER + "dairy,,litre\n"), spec)
    both = TableSpec(file="t.csv", fields=["category", "product", "unit"], may_be_empty=["product", "unit"])
    with pytest.raises(DataError, match=r"t3.csv:2: unit is 'litre' under an empty product"):
        load_table(write(tmp_path, "t3.csv", HEADER + "dairy,,litre\n"), both)
    with pytest.raises(ValueError, match="every more specific level"):
        TableSpec(file="t.csv", fields=["category", "product", "unit"], may_be_empty=["product"])


def test_the_shipped_mca_table_loads(admin):
    assert len(admin.rows) == 2849 and ("北京市", "北京市", "东城区") in admin.rows
    assert ("河南省", "济源市", "") in admin.rows and ("广东省", "东莞市", "") in admin.rows
    assert ("江苏省", "南京市", "鼓楼区") in admin.rows and ("福建省", "福州市", "鼓楼区") in admin.rows
    # "" is a district under every city: a text that names a town only keeps its city
    assert ("浙江省", "杭州市", "") in admin.combinations and ("云南省", "大理白族自治州", "") in admin.combinations
    assert admin.contains({"province": "浙江省", "city": "杭州市", "district": "", "name": "王五"})
    assert not admin.contains({"province": "江苏省", "city": "杭州市", "district": ""})
    assert table_csv(admin.columns, admin.rows) == ADMIN.read_text(encoding="utf-8")


def test_the_schema_is_one_anyof_over_every_place(admin):
    schema = answer_schema(ADMIN_PROPERTIES, [admin])
    branches = schema["anyOf"]
    assert len(branches) == len({row[:2] for row in admin.rows})  # one per province + city, no cut-off
    for branch in branches:
        assert list(branch["properties"]) == list(ADMIN_PROPERTIES)  # the recipe's order, district first
        assert branch["required"] == list(ADMIN_PROPERTIES) and branch["additionalProperties"] is False
        assert branch["properties"]["name"] == {"$ref": "#/$defs/name"}
    assert schema["$defs"]["phone"] == ADMIN_PROPERTIES["phone"]
    hangzhou = next(b["properties"] for b in branches if b["properties"]["city"] == {"const": "杭州市"})
    assert hangzhou["province"] == {"const": "浙江省"}
    assert "西湖区" in hangzhou["district"]["enum"] and hangzhou["district"]["enum"][-1] == ""
    assert {b["properties"]["district"].get("const") for b in branches} >= {""}  # 济源市: "" only
    assert answer_schema(ADMIN_PROPERTIES, [admin]) == schema


def test_without_a_table_the_schema_is_the_plain_object():
    assert answer_schema(CATALOGUE_PROPERTIES, []) == {
        "type": "object", "properties": CATALOGUE_PROPERTIES, "required": list(CATALOGUE_PROPERTIES),
        "additionalProperties": False}


def accepts(schema: dict, answer: dict) -> bool:
    """Whether a JSON schema validator accepts the answer (jsonschema: the test needs no tokenizer)."""
    jsonschema = pytest.importorskip("jsonschema")
    return jsonschema.Draft202012Validator(schema).is_valid(answer)


def test_a_schema_constrained_answer_cannot_leave_the_catalogue(catalogue):
    schema = answer_schema(CATALOGUE_PROPERTIES, [catalogue])
    assert len(schema["anyOf"]) == 7  # one per category + product
    for row in catalogue.rows:
        assert accepts(schema, {**dict(zip(catalogue.columns, row)), "quantity": 2}), row
    for outside in [("dairy", "milk", "kg"), ("drinks", "milk", "litre"), ("dairy", "milk", ""),
                    ("dairy", "cream", "litre")]:
        assert not accepts(schema, {**dict(zip(catalogue.columns, outside)), "quantity": 2}), outside
    assert not accepts(schema, {"category": "dairy", "product": "milk", "unit": "litre", "quantity": "two"})


def test_a_schema_constrained_answer_cannot_leave_the_mca_table(admin):
    schema = answer_schema(ADMIN_PROPERTIES, [admin])
    free = {"specific_location": "文三路1号", "name": "王五", "phone": "13800000000"}
    for row in admin.combinations[::50] + (("河南省", "济源市", ""), ("浙江省", "杭州市", "")):
        assert accepts(schema, {**dict(zip(admin.columns, row)), **free}), row
    for outside in [("江苏省", "杭州市", "西湖区"), ("浙江省", "杭州市", "鼓楼区"), ("浙江省", "杭州市", "滨江西路区"),
                    ("河南省", "济源市", "济源区")]:
        assert not accepts(schema, {**dict(zip(admin.columns, outside)), **free}), outside


def test_xgrammar_over_a_real_tokenizer_keeps_the_answer_in_the_table(admin, smollm2):
    """What vLLM's guided decoding runs: xgrammar compiles the schema over SmolLM2's tokenizer; token by token it
    takes every 10th combination, refuses each city under another province, and random decoding under it (any
    allowed token, 30 answers) writes only combinations of the table."""
    xgr = pytest.importorskip("xgrammar")
    import numpy as np
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=AutoConfig.from_pretrained(smollm2).vocab_size)
    schema = json.dumps(answer_schema(ADMIN_PROPERTIES, [admin]), ensure_ascii=False)
    matcher = xgr.GrammarMatcher(xgr.GrammarCompiler(info, max_threads=1).compile_json_schema(schema,
                                                                                              any_whitespace=False))
    free = {"specific_location": "文三路 1号", "name": "王五", "phone": "13800000000"}

    def takes(row) -> bool:
        matcher.reset()
        values = {**dict(zip(admin.columns, row)), **free}
        answer = json.dumps({n: values[n] for n in ADMIN_PROPERTIES}, ensure_ascii=False)  # district first
        tokens = [*tokenizer.encode(answer, add_special_tokens=False), *info.stop_token_ids[:1]]
        return all(matcher.accept_token(t) for t in tokens) and matcher.is_terminated()

    assert all(takes(row) for row in admin.combinations[::10])
    provinces = sorted({row[0] for row in admin.rows})
    moved = {(provinces[(provinces.index(p) + 1) % len(provinces)], city, "") for p, city, _ in admin.rows}
    assert len(moved) > 300 and not any(takes(row) for row in moved)

    bitmask, rng = xgr.allocate_token_bitmask(1, info.vocab_size), np.random.default_rng(0)
    for _ in range(30):
        matcher.reset()
        written = []
        while not matcher.is_terminated():
            matcher.fill_next_token_bitmask(bitmask)
            allowed = np.flatnonzero(np.unpackbits(bitmask[0].numpy().view(np.uint8), bitorder="little"))
            token = int(rng.choice(allowed[allowed < info.vocab_size]))
            assert matcher.accept_token(token)
            written += [] if matcher.is_terminated() else [token]
        answer = json.loads(tokenizer.decode(written), strict=False)  # random free text: control characters too
        assert list(answer) == list(ADMIN_PROPERTIES) and admin.contains(answer), answer


def test_repair_completes_a_unique_combination(admin, catalogue):
    label = {"province": "江苏省", "city": "杭州市", "district": "西湖区", "name": "王五"}
    fixed = admin.repair(label)
    assert fixed.status == "repaired" and fixed.changed == {"province": ("江苏省", "浙江省")}
    assert fixed.answer == {**label, "province": "浙江省"}
    # the district decides; a wrong city goes too
    assert admin.repair({"province": "", "city": "大理市", "district": "大理市"}).changed == {
        "province": ("", "云南省"), "city": ("大理市", "大理白族自治州")}
    # no district: the city decides, and "" stays
    assert admin.repair({"province": "河北省", "city": "济源市", "district": ""}).answer == {
        "province": "河南省", "city": "济源市", "district": ""}
    assert admin.repair({"province": "浙江省", "city": "杭州市", "district": ""}).status == "in the table"
    # a leaf named under several parents: the answer's city, else its province, else the text says which
    assert admin.repair({"province": "浙江省", "city": "南京市", "district": "鼓楼区"}).changed == {
        "province": ("浙江省", "江苏省")}
    assert admin.repair({"province": "福建省", "city": "", "district": "鼓楼区"}).changed == {
        "city": ("", "福州市")}
    assert admin.repair({"province": "", "city": "", "district": "鼓楼区"}, text="开封市鼓楼区西门大街1号").changed == {
        "province": ("", "河南省"), "city": ("", "开封市")}
    # the catalogue: a product with one unit gets it; a unit names no product
    assert catalogue.repair({"category": "drinks", "product": "croissant", "unit": ""}).answer == {
        "category": "bakery", "product": "croissant", "unit": "piece"}


def test_repair_rejects_what_the_table_cannot_decide(admin, catalogue):
    shared = admin.repair({"province": "", "city": "", "district": "鼓楼区"}, text="鼓楼区西门大街1号")
    assert shared.answer is None and shared.status == "rejected"
    assert "district '鼓楼区' lies under 4 parents" in shared.reason and "江苏省 / 南京市 / 鼓楼区" in shared.reason
    assert admin.repair({"province": "浙江省", "city": "杭州市", "district": "滨江西路区"}).reason == \
        "district '滨江西路区' is not in the table"
    assert admin.repair({"province": "浙江省", "city": None, "district": ""}).reason == "city: not a string"
    assert catalogue.repair({"category": "dairy", "product": "milk", "unit": ""}).reason.startswith(
        "product 'milk' lies under 2 parents")  # a litre or a bottle: not the table's to say
    assert catalogue.repair({"category": "", "product": "", "unit": ""}).reason == "category is empty and may not be"


def test_a_wrong_value_is_told_apart(admin, catalogue):
    assert admin.value_error("district", "滨江西路区") == NOT_IN_TABLE
    assert admin.value_error("district", "鼓楼区") == WRONG_IN_TABLE
    assert admin.value_error("district", "") == WRONG_IN_TABLE  # "" may be a district
    assert admin.value_error("city", None) == NOT_IN_TABLE
    assert catalogue.value_error("unit", "") == NOT_IN_TABLE
    assert catalogue.value_error("unit", "kg") == WRONG_IN_TABLE


def test_a_table_is_loaded_once_per_content(tmp_path, catalogue):
    path = write(tmp_path, "c.csv", CATALOGUE.read_text(encoding="utf-8"))
    first = load_table(path, CATALOGUE_SPEC)
    assert load_table(path, CATALOGUE_SPEC) is first and first.digest == load_table(path, CATALOGUE_SPEC).digest
    path.write_text(HEADER + "dairy,milk,litre\n", encoding="utf-8")
    assert load_table(path, CATALOGUE_SPEC).rows == (("dairy", "milk", "litre"),)
    assert json.dumps(answer_schema(CATALOGUE_PROPERTIES, [load_table(path, CATALOGUE_SPEC)])).count("const") == 3
