import json

import pytest

from conftest import RECIPE
from toolkit.io.jsonl import read_jsonl
from toolkit.io.errors import DataError
from toolkit.data.prepare import check_messages_file, gold_records, normalise_input, read_records, run_prepare
from toolkit.task.recipe import load_recipe

LABEL = {"province": "天津市", "city": "天津市", "district": "和平区", "specific_location": "南京路1号",
         "name": "欧阳丽", "phone": "13812345678"}


@pytest.fixture
def recipe():
    return load_recipe(RECIPE, "cpu", ["data.train_records=100", "data.val_fraction=0.1"])


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def record(i, text=None):
    return json.dumps({"id": f"r{i}", "text": text or f"欧阳丽 13812345678 天津市和平区南京路{i}号", "label": LABEL},
                      ensure_ascii=False)


@pytest.mark.parametrize("bad,reason", [
    ('{"id": "x", "text": "abc", "label": ', "not valid JSON"),
    ('{"messages": [{"role": "user", "content": "abc"}]}', "no assistant turn"),
    (json.dumps({"id": "x", "text": "abc", "label": {k: v for k, v in LABEL.items() if k != "phone"}}),
     r"missing \['phone'\]"),
    (json.dumps({"id": "x", "text": "abc", "label": {**LABEL, "phone": 13812345678}}), "'phone' must be a string"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "not json"}]}',
     "assistant turn is not JSON"),
    (json.dumps({"id": "x", "text": "  ", "label": LABEL}), "input text is empty"),
    (json.dumps({"id": "x", "text": "abc", "label": {**LABEL, "province": "火星省"}}, ensure_ascii=False),
     r"province '火星省' is not one of the allowed values \(datasets/logistics_zh/provinces.txt\)"),
    (json.dumps({"id": "x", "text": "abc", "label": {**LABEL, "city": ""}}),
     r"city '' is not one of the allowed values \(datasets/logistics_zh/cities.txt\)"),
    ('["a list"]', "expected a JSON object"),
])
def test_a_malformed_row_names_file_and_line(recipe, tmp_path, bad, reason):
    path = write_lines(tmp_path / "labelled.jsonl", [record(1), record(2), bad, record(4)])
    with pytest.raises(DataError, match=rf"labelled.jsonl:3: .*{reason}"):
        read_records(recipe, path)


def test_messages_rows_are_accepted_and_canonicalised(recipe, tmp_path):
    answer = json.dumps(dict(reversed(list(LABEL.items()))), ensure_ascii=False)
    row = {"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "abc"},
                        {"role": "assistant", "content": answer}]}
    (r,) = read_records(recipe, write_lines(tmp_path / "m.jsonl", [json.dumps(row, ensure_ascii=False)]))
    assert r["text"] == "abc" and r["label"] == LABEL and r["id"] == "m-1"


def test_prepare_dedupes_splits_and_drops_test_leaks(recipe, tmp_path):
    test_text = read_jsonl(recipe.path(recipe.data.test[0]))[0]["text"]
    lines = [record(i) for i in range(40)] + [record(99, "欧阳丽 13812345678  天津市和平区南京路3号"),  # dup by spaces
                                            record(100, test_text + " ")]  # a test input, re-spaced
    records = read_records(recipe, write_lines(tmp_path / "in.jsonl", lines))
    stats = run_prepare(recipe, records, tmp_path / "out")
    assert stats["dropped"] == {"duplicate input": 1, "in a test file (leak)": 1}
    assert (stats["train"], stats["val"]) == (36, 4)
    train, val = read_jsonl(tmp_path / "out" / "train.jsonl"), read_jsonl(tmp_path / "out" / "val.jsonl")
    assert not {r["id"] for r in train} & {r["id"] for r in val}
    row = train[0]
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert row["messages"][0]["content"] == recipe.prompt("student")
    assert list(json.loads(row["messages"][2]["content"])) == recipe.field_names  # recipe key order
    assert "欧阳丽" in row["messages"][2]["content"]  # not \\u-escaped
    assert check_messages_file(recipe, tmp_path / "out" / "train.jsonl") == 36
    # the same seed gives the same split
    run_prepare(recipe, records, tmp_path / "again")
    assert (tmp_path / "again" / "train.jsonl").read_bytes() == (tmp_path / "out" / "train.jsonl").read_bytes()


def test_spread_over_keeps_every_value_once_before_any_twice(tmp_path):
    """30 records, 20 of one district: 12 training rows spread over the district hold all 11 districts."""
    districts = ["和平区"] * 20 + ["河东区", "河西区", "南开区", "河北区", "红桥区", "东丽区", "西青区", "津南区",
                                  "北辰区", "武清区"]
    records = [{**json.loads(record(i)), "label": {**LABEL, "district": d}} for i, d in enumerate(districts)]
    spread = load_recipe(RECIPE, "cpu", ["data.train_records=12", "data.val_fraction=0",
                                         "data.spread_over=[province, city, district]"])
    stats = run_prepare(spread, records, tmp_path / "spread")
    assert stats["dropped"] == {"over data.train_records": 18} and stats["spread_over"]["values"] == 11
    kept = [json.loads(r["messages"][2]["content"])["district"] for r in read_jsonl(tmp_path / "spread" / "train.jsonl")]
    assert sorted(kept) == sorted([*set(districts), "和平区"])  # 和平区 twice, every other district once


def test_prepare_measures_token_lengths_and_drops_what_would_not_fit(tmp_path, smollm2):
    recipe = load_recipe(RECIPE, "cpu", ["train.max_length=340", "data.val_fraction=0"])
    records = [json.loads(record(i)) for i in range(3)] + [json.loads(record(9, "很长" * 200))]
    stats = run_prepare(recipe, records, tmp_path, str(smollm2))
    assert stats["dropped"] == {"longer than max_length 340": 1} and stats["train"] == 3
    assert stats["tokens"]["max"] <= 340 and stats["tokenizer"] == str(smollm2)


def test_gold_records_join_pool_and_gold(recipe):
    records = gold_records(recipe)
    assert len(records) == len(read_jsonl(recipe.path(recipe.data.pool)))
    assert all(normalise_input(r["label"]["specific_location"]) in normalise_input(r["text"]) for r in records)
