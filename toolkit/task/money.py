"""The `money` field type: an amount and its currency, in one canonical text, "1234.50 CNY" (the amount with two
decimals, a space, the ISO 4217 code), so that it is a leaf like any other (compared, voted, grounded nowhere,
decoded by a pattern). Read from what documents write: ¥1,234.50, 1.234,50 €, 1 234,50 EUR, USD 12, 12元, and
Chinese capital numerals (壹仟贰佰叁拾肆元伍角). An amount written without a currency takes the field's
`currency`."""

from __future__ import annotations

import json
import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from toolkit.task.fields import NO_VALUE, FieldType, normalise, register

# Currency signs and words (after NFKC: full-width ￥ is ¥). ¥ is the yuan: a yen field says JPY by its code.
SIGNS = {"¥": "CNY", "元": "CNY", "圆": "CNY", "人民币": "CNY", "RMB": "CNY", "US$": "USD", "$": "USD",
         "HK$": "HKD", "港元": "HKD", "港币": "HKD", "€": "EUR", "欧元": "EUR", "£": "GBP", "英镑": "GBP",
         "円": "JPY", "日元": "JPY", "美元": "USD", "₩": "KRW", "₹": "INR"}
MARK = "|".join(sorted(map(re.escape, SIGNS), key=len, reverse=True)) + "|[A-Z]{3}"
WRITTEN = re.compile(rf"(?P<pre>{MARK})?\s*(?P<num>[+-]?\d[\d\s.,'’]*?)\s*(?P<post>{MARK})?")
CANONICAL = "-?[0-9]+[.][0-9]{2} [A-Z]{3}"  # the schema's pattern: what the student writes

DIGITS = dict(zip("零〇壹一贰貳二两叁參三肆四伍五陆陸六柒七捌八玖九",
                  (0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 5, 5, 6, 6, 6, 7, 7, 8, 8, 9, 9)))
UNITS = {"拾": 10, "十": 10, "佰": 100, "百": 100, "仟": 1000, "千": 1000}
NUMERAL = f"[{''.join(DIGITS)}{''.join(UNITS)}万萬亿億]+"
CAPITALS = re.compile(rf"(?:人民币)?(?P<yuan>{NUMERAL})?[元圆]?零?(?:(?P<jiao>[{''.join(DIGITS)}])角)?"
                      rf"零?(?:(?P<fen>[{''.join(DIGITS)}])分)?[整正]?")


def chinese_integer(text: str) -> int:
    """壹仟贰佰叁拾肆 -> 1234, 壹亿贰仟万 -> 120000000 (the digits and units of Chinese numerals)."""
    total = section = number = 0
    for ch in text:
        if ch in DIGITS:
            number = DIGITS[ch]
        elif ch in UNITS:
            section += (number or 1) * UNITS[ch]
            number = 0
        elif ch in "万萬":
            total += (section + number) * 10_000
            section = number = 0
        else:  # 亿
            total = (total + section + number) * 100_000_000
            section = number = 0
    return total + section + number


def _chinese(text: str) -> Decimal | None:
    m = CAPITALS.fullmatch(text)
    if not m or not (m["yuan"] or m["jiao"] or m["fen"]) or not re.search("[元圆角分]", text):
        return None
    yuan = chinese_integer(m["yuan"]) if m["yuan"] else 0
    return Decimal(yuan) + Decimal(DIGITS[m["jiao"]] if m["jiao"] else 0) / 10 + \
        Decimal(DIGITS[m["fen"]] if m["fen"] else 0) / 100


def read_amount(number: str) -> Decimal | None:
    """A number as written with grouped thousands: 1,234.50, 1.234,50, 1 234,50, 1'234.50, 12,5. Spaces and
    apostrophes group thousands; a dot or comma does too where every separator is the same and the last group has
    three digits (1,234 and 1.234 are 1234; 0.125 is not grouped); else the last separator is the decimal mark."""
    sign = -1 if number.startswith("-") else 1
    parts = re.split(r"([.,]|[\s'’]+)", number.lstrip("+-"))
    groups, seps = parts[::2], [s if s in ".," else " " for s in parts[1::2]]
    if not all(g.isdigit() for g in groups):
        return None
    grouped_only = bool(seps) and (seps[-1] == " " or (
        len(set(seps)) == 1 and len(groups[-1]) == 3 and len(groups[0]) <= 3 and not groups[0].startswith("0")))
    whole, grouping, decimals = (groups, seps, "0") if grouped_only or not seps else (groups[:-1], seps[:-1], groups[-1])
    if grouping and (len(set(grouping)) != 1 or not 1 <= len(whole[0]) <= 3 or any(len(g) != 3 for g in whole[1:])
                     or (not grouped_only and grouping[0] == seps[-1])):
        return None
    return sign * Decimal(f"{''.join(whole)}.{decimals}")


def read_money(value: Any, currency: str | None) -> str | object:
    """A value as "1234.50 CNY", or NO_VALUE: text as documents write money, or a number in the field's
    `currency` (a number names none)."""
    if isinstance(value, bool) or value is None:
        return NO_VALUE
    if isinstance(value, int | float):
        amount, code = Decimal(str(value)), currency
    elif isinstance(value, str):
        text = normalise(value, ["strip", "width"])
        if (amount := _chinese(text)) is not None:
            code = "CNY"
        elif m := WRITTEN.fullmatch(text):
            marks = {SIGNS.get(mark, mark) for mark in (m["pre"], m["post"]) if mark}
            if len(marks) > 1 or (amount := read_amount(m["num"].strip())) is None:
                return NO_VALUE
            code = marks.pop() if marks else currency
        else:
            return NO_VALUE
    else:
        return NO_VALUE
    if code is None or not amount.is_finite():
        return NO_VALUE
    return f"{amount.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP)} {code}"


class Money(FieldType):
    """`money`: an amount and its currency, compared, voted and trained in the form "1234.50 CNY"."""

    name = "money"
    json_type = "string"
    takes_currency = True

    def problem(self, spec, value):
        if read_money(value, spec.currency) is NO_VALUE:
            return ("must be an amount of money with its currency (1234.50 CNY, ¥1,234.50, 1.234,50 €, USD 12, "
                    f"12元, 壹仟元{'' if spec.currency else '; a number needs the field`s currency'}), got "
                    f"{json.dumps(value, ensure_ascii=False)}")
        return None

    def compared(self, spec, value):
        return read_money(value, spec.currency)

    def canonical(self, spec, value):
        return read_money(value, spec.currency)

    def schema(self, spec, choices, max_enum):
        return {"type": "string", "description": f"{spec.description} (amount CODE, e.g. 1234.50 CNY)".lstrip(),
                "pattern": f"^{CANONICAL}$"}

    def hint(self, spec, choices):
        return "an amount of money as 1234.50 CNY: two decimals, a space, the ISO 4217 currency code"

    def example(self, spec, choices):
        return f"1234.50 {spec.currency or 'CNY'}"


register(Money())
