import re
from collections import Counter

import pytest

from conftest import ROOT
from toolkit.data.generators import generate, normalise_text
from toolkit.io.jsonl import read_jsonl
from toolkit.tasks.logistics_zh.generate import (FORMATS, LogisticsGenerator, places,
                                                 shared_district_names)

DATA = ROOT / "datasets" / "logistics_zh"


def place(**match):
    found = [p for p in places() if all(getattr(p, k) == v for k, v in match.items())]
    assert len(found) == 1, f"{match}: {len(found)} places"
    return found[0]


def test_label_convention_on_hand_written_cases():
    dali = place(district="大理市")
    assert (dali.province, dali.city) == ("云南省", "大理白族自治州") and dali.city_short == "大理"
    heping = place(province="天津市", district="和平区")  # municipality: city = province
    assert heping.city == "天津市" and heping.city_is_province
    jiyuan = place(city="济源市")  # county-level unit directly under a province
    assert (jiyuan.province, jiyuan.district) == ("河南省", "")
    dongguan = place(city="东莞市")  # prefecture city without counties
    assert (dongguan.province, dongguan.district) == ("广东省", "") and "东城街道" in dongguan.towns


def test_shared_county_names_are_known():
    names = shared_district_names()
    assert "鼓楼区" in names and len(names) == 28


@pytest.mark.parametrize("mode", ["normal", "unseen", "train"])
def test_records_are_grounded_and_consistent(mode):
    gen = LogisticsGenerator(7, mode)
    variety, seen = Counter(), {}
    for _ in range(300):
        text, label = gen.record()
        assert "\n" not in text
        assert label["specific_location"] in text and label["name"] in text
        assert re.fullmatch(r"\d{11}", label["phone"]) and label["phone"] in re.sub(r"\D", "", text)
        if label["district"]:  # the county is written, in full or (after its city) short
            county = place(province=label["province"], city=label["city"], district=label["district"])
            assert label["district"] in text or county.district_short in text
        if label["district"] in shared_district_names():  # ambiguous county: a city or province stays
            before = text[:text.index(label["district"])]
            assert label["city"][:2] in before or label["province"][:2] in before
        seen.update(
            inner_space=" " in label["specific_location"], bracket="（" in text or "(" in text,
            short_county=bool(label["district"]) and label["district"] not in text,
            no_county=not label["district"] and not any(p.city == label["city"] and not p.district for p in places()),
            title=label["name"][-2:] in ("先生", "女士"),
            digits_noise=len(re.sub(r"\D", "", text)) > 11 + len(re.sub(r"\D", "", label["specific_location"])))
        variety.update(k for k, v in seen.items() if v)
    # the variety of real strings occurs in every mode
    assert set(variety) == {"inner_space", "bracket", "short_county", "no_county", "title", "digits_noise"}, variety


def test_unseen_mode_shares_no_label_word_or_separator():
    def tokens(mode):
        f = FORMATS[mode]
        return {t for key in ("name_labels", "phone_labels", "address_labels", "label_seps", "field_seps",
                              "phone_seps") for t in f[key]}

    normal, unseen = tokens("normal") | tokens("train"), tokens("unseen")
    assert tokens("normal") < tokens("train")
    for a in normal:
        for b in unseen:
            assert (a.strip() or a) not in b and b not in a, (a, b)
    words = [w for k in ("name_labels", "phone_labels", "address_labels") for w in FORMATS["train"][k]]
    for row in read_jsonl(DATA / "test_unseen.jsonl"):
        assert not any(w in row["text"] for w in words), row["text"]
        assert ":" not in row["text"] and "，" not in row["text"]  # spaces occur, inside addresses


def test_shipped_files_sizes_and_no_leakage():
    test, unseen = read_jsonl(DATA / "test.jsonl"), read_jsonl(DATA / "test_unseen.jsonl")
    pool, gold = read_jsonl(DATA / "pool.jsonl"), read_jsonl(DATA / "pool_gold.jsonl")
    assert len(test) == len(unseen) == 400 and len(pool) == len(gold) >= 2000
    assert [r["id"] for r in pool] == [r["id"] for r in gold]
    assert all(set(r) == {"id", "text"} for r in pool)  # gold is kept apart from the raw pool
    held_out = {normalise_text(r["text"]) for r in test + unseen}
    assert not held_out & {normalise_text(r["text"]) for r in pool}
    assert len({normalise_text(r["text"]) for r in pool}) == len(pool)


def test_the_pool_names_every_place_before_any_twice():
    """Covering draws give each place once a round; the shipped pool (more records than places) so names nearly
    every county-level place with its district, where random draws of as many would name ~1 - e^-1.4 = 75%."""
    gen, everywhere = LogisticsGenerator(3, cover=True), set(places())
    assert {gen.place() for _ in everywhere} == everywhere
    pool_gold = read_jsonl(DATA / "pool_gold.jsonl")
    named = {(r["label"]["province"], r["label"]["city"], r["label"]["district"]) for r in pool_gold}
    counties = {(p.province, p.city, p.district) for p in everywhere if p.district}
    assert len(pool_gold) > len(everywhere) and len(named & counties) > 0.95 * len(counties)


def read_lines(path):
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and lines[:-1] == sorted(lines[:-1]), path  # sorted, one a line
    return lines[:-1]


def test_every_shipped_label_is_in_the_allowed_values():
    allowed = {f: set(read_lines(DATA / f"{name}.txt"))
               for f, name in (("province", "provinces"), ("city", "cities"), ("district", "districts"))}
    labels = [r["label"] for name in ("test.jsonl", "test_unseen.jsonl", "pool_gold.jsonl")
              for r in read_jsonl(DATA / name)]
    for field, values in allowed.items():
        assert {lb[field] for lb in labels} <= values, field
        assert values == {getattr(p, field) for p in places()}, field
    assert "天津市" in allowed["city"] and "济源市" in allowed["city"] and "东莞市" in allowed["city"]
    assert "" in allowed["district"] and "" not in allowed["city"]


def test_generate_reproduces_the_shipped_files_byte_for_byte(tmp_path):
    written = generate("logistics_zh", tmp_path)
    shipped = [*DATA.glob("*.jsonl"), *DATA.glob("*.txt"), *DATA.glob("*.csv")]
    assert sorted(p.name for p in written) == sorted(p.name for p in shipped)
    assert {"provinces.txt", "cities.txt", "districts.txt", "admin.csv"} <= {p.name for p in written}
    for p in written:
        assert p.read_bytes() == (DATA / p.name).read_bytes(), p.name
