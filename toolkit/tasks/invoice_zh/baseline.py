"""The rule baseline for invoice_zh: what a careful engineer writes without a model.

The number, date, parties and total by regexes after the label words of the common Chinese layouts (it knows no
others); a company named in an e-mail with its tax id in brackets after it; the line items as the runs of three
figures where quantity x unit price = amount, each named by the text before it (so not a service printed with its
amount alone, nor a count written in words: 两箱). Money is read with the recipe's own
reader (toolkit/task/money.py), in the one currency the document's signs name.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal

from toolkit.io.trust import recipe_code
from toolkit.task.money import read_amount, read_money

SELLER = "销售方|销方|卖方|销货单位|开票方|供应商"
BUYER = "购买方|购方|买方|购货单位|受票方|客户"
TAX_WORDS = "统一社会信用代码/纳税人识别号|纳税人识别号|统一社会信用代码|社会信用代码|纳税识别号|识别号|税号"
CODE = "[0-9A-HJ-NPQRTUWXY]{18}"  # the unified social credit code
NUMBER = re.compile(r"(?:发票号码|发票号|票号|号码)\s*[:：]?\s*(\d{20}|\d{8})(?!\d)")
DATE = re.compile(r"\d{4}年\d{1,2}月\d{1,2}[日号]|\d{4}[-/.]\d{1,2}[-/.]\d{1,2}")
TOTAL = re.compile(r"(?:价税合计|合计金额|总金额|应收金额|合计|总计)\s*[:：]?(?P<rest>[^\n]*)")
CAPITALS = re.compile(r"[零壹贰叁肆伍陆柒捌玖拾佰仟万亿]+[元圆][零壹贰叁肆伍陆柒捌玖角分]*[整正]?")
FIGURE = re.compile(r"\d+(?:[,.]\d+)*")
COMPANY = re.compile(rf"(?P<name>[\u4e00-\u9fff]{{4,30}}?(?:有限责任公司|股份有限公司|有限公司|商行|经营部))"
                     rf"[（(][^）)]*?(?P<code>{CODE})[）)]")
CUES = ("我司", "贵司", "收到", "向")  # words an e-mail writes right before a company
CHUNK = re.compile(r"[\s|，,；;。：:、=→》]+")
LABELS = re.compile(r"^(?:\d+\.|项目名称|货物或应税劳务、服务名称|商品名称|货物名称|服务名称|明细|内容为)")


def currency(text: str) -> str:
    if re.search(r"USD|US\$|\$|美元", text):
        return "USD"
    return "EUR" if re.search(r"EUR|€|欧元", text) else "CNY"


def money(value: Decimal, code: str) -> str:
    return f"{value:.2f} {code}"


def party(text: str, role: str) -> dict[str, str]:
    name = re.search(rf"(?:{role})(?:单位名称|名称)?\s*[:：]?\s*(?!{TAX_WORDS})(?P<v>[^\s，,；;|/（(:：]+)", text)
    tax = re.search(rf"(?:{role})(?:{TAX_WORDS})\s*[:：]?\s*(?P<v>{CODE})(?![0-9A-Z])", text)
    return {"name": name["v"] if name else "", "tax_id": tax["v"] if tax else ""}


def parties(text: str) -> tuple[dict, dict]:
    """(seller, buyer): after their label words; else the companies of an e-mail, in the order its wording gives."""
    seller, buyer = party(text, SELLER), party(text, BUYER)
    named = [{"name": re.sub(f"^(?:{'|'.join(CUES)})", "", m["name"]), "tax_id": m["code"]}
             for m in COMPANY.finditer(text)]
    if not seller["name"] and not buyer["name"] and len(named) >= 2:
        seller, buyer = (named[1], named[0]) if "我司" in text else (named[0], named[1])
    return seller, buyer


def figures(text: str) -> list[tuple[int, int, Decimal, bool]]:
    """(start, end, value, written as a whole number) of every figure that reads as one."""
    out = []
    for m in FIGURE.finditer(text):
        if (value := read_amount(m.group())) is not None:
            out.append((m.start(), m.end(), value, m.group().isdigit()))
    return out


def item_name(text: str, start: int, before: int) -> str:
    """The name of the item whose quantity starts at `start`: in a text of lines, the first chunk of a line that
    holds one item (a table's row, a numbered line); else the chunk right before the quantity, in the text after
    the previous item (from `before`)."""
    line_start, line_end = text.rfind("\n", 0, start) + 1, text.find("\n", start)
    line = text[line_start:len(text) if line_end == -1 else line_end]
    if "\n" in text and len(triples(line)) == 1:
        name = next((c for c in CHUNK.split(LABELS.sub("", line.strip())) if c), "")
    else:
        name = CHUNK.split(text[before:start].rstrip(" ×"))[-1]
    return re.sub(r"^\*[^*]+\*", "", LABELS.sub("", name))


def triples(text: str) -> list[tuple]:
    """Runs of three consecutive figures where the first, a whole number, times the second is the third."""
    found, nums, i = [], figures(text), 0
    while i + 2 < len(nums):
        q, p, a = nums[i], nums[i + 1], nums[i + 2]
        if q[3] and 0 < q[2] <= 10_000 and q[2] * p[2] == a[2]:
            found.append((q, p, a))
            i += 3
        else:
            i += 1
    return found


def extract(text: str) -> dict:
    """Fields of one invoice text, by rules."""
    code = currency(text)
    items, before = [], 0
    for q, p, a in triples(text):
        items.append({"name": item_name(text, q[0], before), "quantity": int(q[2]), "unit_price": money(p[2], code),
                      "amount": money(a[2], code)})
        before = a[1]
    total = None
    if m := TOTAL.search(text):
        rest = m["rest"]
        if (capitals := CAPITALS.search(rest)) and not FIGURE.search(rest):
            read = read_money(capitals.group(), code)
            total = read if isinstance(read, str) else None  # NO_VALUE: capitals the reader refuses
        elif found := figures(rest):
            total = money(found[0][2], code)
    number, day = NUMBER.search(text), DATE.search(text)
    seller, buyer = parties(text)
    return {"invoice_number": number.group(1) if number else "", "date": day.group() if day else None,
            "seller": seller, "buyer": buyer, "items": items[:8], "total": total}


@recipe_code("baseline")
def answer(text: str) -> str:
    """The baseline's output as the JSON text a model would give."""
    return json.dumps(extract(text), ensure_ascii=False)
