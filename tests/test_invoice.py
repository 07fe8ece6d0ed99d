"""invoice_zh (recipes/invoice_zh.yaml, toolkit/tasks/invoice_zh/): the generator is seeded and rebuilds the shipped
files byte for byte, its labels add up and pass the recipe's own label checks on their texts, the unseen test set's
label words are nobody else's, and the rule baseline scores something, not everything."""

import json
import re
from collections import Counter
from decimal import Decimal

import pytest

from conftest import ROOT
from toolkit.cli import main
from toolkit.data.generators import generate
from toolkit.data.label import check_answer
from toolkit.io.jsonl import read_jsonl
from toolkit.model.endpoint import Answer
from toolkit.task.money import read_money
from toolkit.task.recipe import load_recipe
from toolkit.task.scoring import compute_metrics, extract_json
from toolkit.tasks.invoice_zh.baseline import answer
from toolkit.data.generators import normalise_text
from toolkit.tasks.invoice_zh.generate import LAYOUTS, InvoiceGenerator
from toolkit.tasks.invoice_zh.values import CREDIT_CHARS, CREDIT_WEIGHTS, ENGLISH, PRODUCTS, SPOKEN, WORDS, \
    capital

RECIPE = ROOT / "recipes" / "invoice_zh.yaml"
DATA = ROOT / "datasets" / "invoice_zh"


def shipped(name):
    return read_jsonl(DATA / name)


def labelled(name):
    """(text, label) of a shipped file; the pool's labels are kept apart, in pool_gold.jsonl."""
    if name == "pool.jsonl":
        return [(row["text"], gold["label"]) for row, gold in zip(shipped(name), shipped("pool_gold.jsonl"))]
    return [(row["text"], row["label"]) for row in shipped(name)]


@pytest.fixture(scope="module")
def recipe():
    return load_recipe(RECIPE, "cpu")


@pytest.mark.parametrize("mode", sorted(LAYOUTS))
def test_one_seed_gives_the_same_records_and_another_seed_others(mode):
    def records(seed):
        gen = InvoiceGenerator(seed, mode)
        return [gen.record() for _ in range(30)]

    first = records(5)
    assert records(5) == first
    assert {t for t, _ in records(6)}.isdisjoint(t for t, _ in first)
    with pytest.raises(ValueError, match="mode must be one of"):
        InvoiceGenerator(5, "other")


def test_generate_reproduces_the_shipped_files_byte_for_byte(tmp_path):
    written = generate("invoice_zh", tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in DATA.iterdir())
    for p in written:
        assert p.read_bytes() == (DATA / p.name).read_bytes(), p.name


def test_shipped_files_sizes_and_no_text_in_two_places():
    test, unseen, pool, gold = (shipped(n) for n in ("test.jsonl", "test_unseen.jsonl", "pool.jsonl",
                                                     "pool_gold.jsonl"))
    assert len(test) == len(unseen) == 200 and len(pool) == len(gold) == 1500
    assert [r["id"] for r in pool] == [r["id"] for r in gold]
    assert all(set(r) == {"id", "text"} for r in pool)  # gold is kept apart from the raw pool
    texts = [normalise_text(r["text"]) for r in test + unseen + pool]
    assert len(set(texts)) == len(texts)


def amount(money: str, currency: str) -> Decimal:
    value, code = money.split(" ")
    assert code == currency and re.fullmatch(r"-?\d+\.\d{2}", value), money
    return Decimal(value)


@pytest.mark.parametrize("name", ["test.jsonl", "test_unseen.jsonl", "pool.jsonl"])
def test_every_label_adds_up_in_one_currency(name):
    currencies = Counter()
    for _, label in labelled(name):
        code = label["total"].split(" ")[1]
        currencies[code] += 1
        assert 1 <= len(label["items"]) <= 8
        for item in label["items"]:
            assert isinstance(item["quantity"], int) and item["quantity"] > 0
            assert item["quantity"] * amount(item["unit_price"], code) == amount(item["amount"], code), item
        assert sum(amount(i["amount"], code) for i in label["items"]) == amount(label["total"], code), label
    assert set(currencies) == {"CNY", "USD", "EUR"} and currencies["CNY"] > 0.6 * sum(currencies.values())


@pytest.mark.parametrize("name", ["test.jsonl", "test_unseen.jsonl", "pool.jsonl"])
def test_every_gold_label_passes_the_recipes_own_label_check_on_its_text(recipe, name):
    """What `xtk label` asks of a teacher's answer: the schema (each leaf's type, pattern, max_items) and every
    grounded leaf in the text."""
    for text, label in labelled(name):
        accepted, reason, detail = check_answer(recipe, text, Answer(content=json.dumps(label, ensure_ascii=False)))
        assert accepted == label, (reason, detail, text)


def test_tax_ids_are_well_formed_credit_codes():
    """18 characters of GB 32100's set whose last is the weighted check character: a real code passes the same
    check (Tencent's, as published), so the generated ones are no random strings."""
    def valid(code):
        weighted = sum(CREDIT_CHARS.index(c) * w for c, w in zip(code[:17], CREDIT_WEIGHTS))
        return len(code) == 18 and CREDIT_CHARS[(31 - weighted % 31) % 31] == code[17]

    assert valid("91440300708461136T") and not valid("91440300708461136U")
    ids = [party["tax_id"] for _, label in labelled("pool.jsonl") for party in (label["seller"], label["buyer"])]
    assert all(valid(t) for t in ids if t)
    assert 0 < ids.count("") < 0.2 * len(ids)  # a person buys now and then, with no tax id


@pytest.mark.parametrize("value,written", [("1234.50", "壹仟贰佰叁拾肆元伍角"), ("100500", "壹拾万零伍佰元整"),
                                           ("1004.05", "壹仟零肆元零伍分"), ("105000", "壹拾万伍仟元整"),
                                           ("120000000.10", "壹亿贰仟万元壹角"), ("0.36", "叁角陆分")])
def test_capital_numerals_write_what_the_money_type_reads(value, written):
    assert capital(Decimal(value)) == written
    assert read_money(written, None) == f"{Decimal(value):.2f} CNY"


def test_every_capital_total_in_the_files_reads_as_its_label():
    """The capital numerals written for a total are read back, by the recipe's money type, as the label says."""
    seen = 0
    for text, label in labelled("test.jsonl") + labelled("pool.jsonl"):
        for written in re.findall(r"[零壹贰叁肆伍陆柒捌玖拾佰仟万亿]+元[零壹贰叁肆伍陆柒捌玖角分整]*", text):
            assert read_money(written, None) == label["total"], (written, text)
            seen += 1
    assert seen > 200


def test_the_unseen_set_shares_no_label_word_with_the_others():
    def words(mode):
        return {w for key, values in WORDS[mode].items() if key != "label_seps" for w in values}

    known, unseen = words("normal") | words("train"), words("unseen") | set(ENGLISH)
    assert words("normal") < words("train")
    for a in known:
        for b in unseen:
            assert a not in b and b not in a, (a, b)
    for _, name, *_ in PRODUCTS:  # a product's name is no label word of any mode
        assert not any(w in name for w in known | unseen), name
    for text, _ in labelled("test_unseen.jsonl"):
        assert not any(w in text for w in known), text


def test_each_file_has_its_layouts_and_the_ways_documents_write_money_and_dates():
    def kinds(name):
        found = Counter()
        for text, label in labelled(name):
            found.update(k for k, hit in {
                "table": bool(re.search(r"\n[^\n]*(\t| \| |  )[^\n]*\n", text)) and "\n" in text,
                "paragraph": "\n" not in text, "yen": "¥" in text or "￥" in text, "yuan": bool(re.search(r"\d元", text)),
                "capitals": "角" in text or "整" in text, "usd": "USD" in label["total"], "eur": "EUR" in label["total"],
                "category": bool(re.search(r"\*[^*\n]+\*", text)), "chinese_date": "年" in text,
                "dashed_date": label["date"] in text, "many_items": len(label["items"]) >= 5,
            }.items() if hit)
        return found

    assert set(kinds("test.jsonl")) == set(kinds("pool.jsonl")) == {
        "table", "paragraph", "yen", "yuan", "capitals", "usd", "eur", "category", "chinese_date", "dashed_date",
        "many_items"}
    unseen = kinds("test_unseen.jsonl")
    assert {"table", "paragraph", "usd", "eur", "capitals", "many_items"} <= set(unseen)
    assert "category" not in unseen  # the unseen layouts print names alone


def test_the_rule_baseline_scores_something_not_everything(recipe):
    def metrics(name):
        rows = [{"parsed": extract_json(answer(text)), "gold": label} for text, label in labelled(name)]
        return compute_metrics(recipe, rows, bootstrap=10)

    test, unseen = metrics("test.jsonl"), metrics("test_unseen.jsonl")
    assert test["json_parse_rate"]["value"] == 1.0
    assert 0.5 < test["exact_match"]["value"] < 1.0
    assert all(0.8 < test["leaves"][leaf]["value"] for leaf in ("items[].name", "items[].amount", "seller.tax_id"))
    # its label words are normal's: on the unseen set it finds the items (three figures that multiply), little else
    assert unseen["exact_match"]["value"] < 0.1 < unseen["leaves"]["items[].amount"]["value"]


@pytest.mark.parametrize("name", ["test.jsonl", "test_unseen.jsonl", "pool.jsonl"])
def test_services_billed_once_print_their_amount_alone_and_sentences_spell_counts(name):
    """Two ways real invoices write items that three multiplying figures do not find: a service with its amount
    alone (quantity and unit price blank; labelled quantity 1, unit price = amount) and a count in words (两箱)."""
    alone = spelled = 0
    for text, label in labelled(name):
        found = {item["name"] for item in extract_json(answer(text))["items"]}
        alone += any(it["quantity"] == 1 and it["unit_price"] == it["amount"] and it["name"] not in found
                     for it in label["items"])
        spelled += any(re.search(f"{re.escape(it['name'])} ?{SPOKEN.get(it['quantity'], '-')}", text)
                       for it in label["items"] if it["quantity"] > 1)
    assert alone > 0.1 * len(labelled(name)), alone
    assert spelled > 0.03 * len(labelled(name)), spelled


def test_recipe_check_passes_for_every_profile(capsys):
    for profile in ("cpu", "gpu"):
        assert main(["recipe", "check", str(RECIPE), "--profile", profile]) == 0
        out = capsys.readouterr().out
        assert "datasets/invoice_zh/pool_gold.jsonl: 1500 rows" in out and "warning" not in out.lower(), out
