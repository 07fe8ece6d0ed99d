"""Tables declared `written` (toolkit/task/written.py): each text's answer may take only the combinations the text
writes, by a value or an alias; "" where it writes none. On logistics_zh's MCA table with its shipped aliases
(datasets/logistics_zh/admin_aliases.csv), and on a small table of cities that shows nothing in it is Chinese."""

import pytest

from conftest import ROOT
from toolkit.io.errors import DataError
from toolkit.task.recipe import load_recipe
from toolkit.task.tables import TableSpec, answer_schema, load_table
from toolkit.task.written import written_combinations

ADMIN = ROOT / "datasets" / "logistics_zh"
ADMIN_SPEC = TableSpec(file="admin.csv", fields=["province", "city", "district"], may_be_empty=["district"],
                       aliases="admin_aliases.csv", written=True)


@pytest.fixture(scope="module")
def admin():
    return load_table(ADMIN / "admin.csv", ADMIN_SPEC, ADMIN / "admin_aliases.csv")


def districts(table, text: str) -> set[str]:
    return {c[-1] for c in written_combinations(table, text)}


@pytest.mark.parametrize("text, expected", [
    # a county in its short form after its city: the student's most frequent error was to answer ""
    ("四川南充西充车龙乡 文化路3号 张三 13800000000", {"西充县"}),
    ("北京市朝阳区建国路88号", {"朝阳区"}),  # the whole name
    ("山东省东营东营黄河路街道工业大街650号", {"东营区"}),  # the city, then its county of the same short name
    ("辽宁朝阳市朝阳 长安西路768号", {"朝阳县"}),
    ("湖南省益阳资阳区沙头镇", {"资阳区"}),  # 资阳 also names 四川's 资阳市: the city written beside it decides
    ("邳州市 新华镇和平村3组", {"邳州市"}),  # a place written whole implies its city: not 石家庄's 新华区
    # an autonomous county and a 新区 as people write them, not as the generator's short form cuts them
    ("河北秦皇岛青龙 燕山路12号 王五 13900000000", {"青龙满族自治县"}),
    ("上海浦东 世纪大道100号", {"浦东新区"}),
    ("湖北宜昌长阳龙舟坪镇", {"长阳土家族自治县"}),
])
def test_a_county_the_text_writes_is_the_only_one_offered(admin, text, expected):
    assert districts(admin, text) == expected


@pytest.mark.parametrize("text", [
    "浙江金华诸葛镇长安大街372号东方大厦",  # 长安 is 西安's 长安区, but the text names 金华
    "收件人:刘丹 抚州詹圩镇黄河东路428号",  # 河东 inside a road, under another city than 天津's 河东区
    "邵阳 幸福街163号名都新村",  # 邵阳 written once: the prefecture 邵阳市, not 邵阳县
    "海南 临高县皇桐镇绿地小区",  # 高县 (宜宾) inside 临高县, a county-level city answered as the city
    "河北邯郸市磁山铁路696号",  # 河北 is the province, not 天津's 河北区
])
def test_a_text_that_writes_no_county_is_answered_without_one(admin, text):
    assert districts(admin, text) == {""}
    assert len(written_combinations(admin, text)) > 300  # every city stays open: the text's city decides


def test_the_schema_of_a_text_lets_the_answer_take_only_what_it_writes(admin):
    jsonschema = pytest.importorskip("jsonschema")
    properties = {n: {"type": "string"} for n in ("district", "city", "province", "name")}
    given = "四川南充西充车龙乡 张三"
    schema = answer_schema(properties, [admin], [written_combinations(admin, given)])
    answer = {"district": "西充县", "city": "南充市", "province": "四川省", "name": "张三"}
    assert jsonschema.Draft202012Validator(schema).is_valid(answer)
    for wrong in ({"district": ""}, {"district": "顺庆区"}, {"city": "成都市"}):
        assert not jsonschema.Draft202012Validator(schema).is_valid({**answer, **wrong}), wrong
    none = answer_schema(properties, [admin], [written_combinations(admin, "杭州文三路1号 张三")])
    assert jsonschema.Draft202012Validator(none).is_valid(
        {"district": "", "city": "杭州市", "province": "浙江省", "name": "张三"})
    assert not jsonschema.Draft202012Validator(none).is_valid(
        {"district": "西湖区", "city": "杭州市", "province": "浙江省", "name": "张三"})


def test_the_recipe_schema_is_per_text_only_where_a_table_is_written():
    """logistics_zh declares its table written: its schema for a text names that text's county alone; with no
    text (export's schema.json, an OpenAI chat) it is the whole table."""
    recipe = load_recipe(ROOT / "recipes" / "logistics_zh.yaml")
    per_text = recipe.json_schema("四川南充西充车龙乡 张三 13800000000")
    assert [b["properties"]["district"] for b in per_text["anyOf"]] == [{"const": "西充县"}]
    assert len(recipe.json_schema()["anyOf"]) > 300


def test_a_second_table_shows_the_mechanism_is_not_about_addresses(tmp_path):
    (tmp_path / "t.csv").write_text("country,city\nFrance,Paris\nFrance,Lyon\nUSA,Paris\nUSA,Boston\n")
    (tmp_path / "a.csv").write_text("value,alias\nUSA,US\nBoston,Beantown\n")
    spec = TableSpec(file="t.csv", fields=["country", "city"], may_be_empty=["city"], aliases="a.csv", written=True)
    table = load_table(tmp_path / "t.csv", spec, tmp_path / "a.csv")
    assert written_combinations(table, "ship to Lyon, 3 rue Neuve") == (("France", "Lyon"),)
    assert set(written_combinations(table, "Paris, 12 Main St")) == {("France", "Paris"), ("USA", "Paris")}
    assert written_combinations(table, "Beantown, MA, US") == (("USA", "Boston"),)
    assert set(written_combinations(table, "no city here")) == {("France", ""), ("USA", "")}


HEADER = "value,alias\n"


@pytest.mark.parametrize("text, line, words", [
    ("", 1, "expected the header line value,alias (the file is empty)"),
    ("\ufeff" + HEADER + "浙江省,浙江\n", 1, "byte order mark"),
    ("name,short\n浙江省,浙江\n", 1, "expected the header line value,alias"),
    (HEADER + "浙江省,浙江\n火星省,火星\n", 3, "'火星省' is not a value of the table admin.csv"),
    (HEADER + "浙江省,浙江\n浙江省,浙江\n", 3, "duplicated line: the same as line 2"),
    (HEADER + "浙江省,浙江省\n", 2, "expected another spelling of '浙江省'"),
    (HEADER + "浙江省, 浙江\n", 2, "without whitespace around it"),
    (HEADER + "浙江省\n", 2, "1 values, expected 2"),
])
def test_a_bad_aliases_file_names_its_line(tmp_path, text, line, words):
    path = tmp_path / "aliases.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_table(ADMIN / "admin.csv", ADMIN_SPEC, path)
    assert str(err.value).startswith(f"{path}:{line}: ") and words in str(err.value), str(err.value)


def test_written_needs_a_leaf_that_may_be_empty():
    with pytest.raises(ValueError, match="written needs may_be_empty to hold 'unit'"):
        TableSpec(file="t.csv", fields=["category", "product", "unit"], written=True)


def test_an_edited_aliases_file_is_another_table(tmp_path, admin):
    """The digest, which evaluation and predict identities hold, covers the aliases' bytes."""
    edited = tmp_path / "aliases.csv"
    edited.write_text((ADMIN / "admin_aliases.csv").read_text(encoding="utf-8") + "西充县,XC县\n", encoding="utf-8")
    other = load_table(ADMIN / "admin.csv", ADMIN_SPEC, edited)
    assert other.digest != admin.digest and other.aliases[-1] == ("西充县", "XC县")
    assert districts(admin, "南充XC县车龙乡") == {""} and districts(other, "南充XC县车龙乡") == {"西充县"}


def test_no_placeholder_is_written_as_a_place():
    """jionlp names a prefecture without counties 市直辖 (a placeholder): the generator wrote it into texts, and it
    would be an alias of four cities."""
    for name in ("admin_aliases.csv", "test.jsonl", "test_unseen.jsonl", "pool.jsonl"):
        assert "直辖" not in (ADMIN / name).read_text(encoding="utf-8"), name
