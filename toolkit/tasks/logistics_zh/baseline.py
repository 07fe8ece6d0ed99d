"""The rule-based baseline for logistics_zh: what a careful engineer writes without a model.

Phone by regex (11 digits, dash/space separators removed), name after a label word or as a short
stand-alone Chinese segment, and the address by `jionlp.parse_location`, mapped to the recipe's
convention. It knows the label words and separators of the common formats, no others.
"""

from __future__ import annotations

import json
import re

from toolkit.io.trust import recipe_code

LABEL_WORDS = r"(收件人|收货人|联系人|姓名|联系电话|手机号|电话|手机|收货地址|详细地址|收件地址|地址)"
SEPARATORS = r"[，,；;|/\s]+"
_PHONE = re.compile(r"(?<!\d)(?:\d[\s-]?){10}\d(?!\d)")
_LABELLED = re.compile(LABEL_WORDS + r"[:：\s]*")
_NAMED = re.compile(r"(收件人|收货人|联系人|姓名)[:：\s]*([\u4e00-\u9fff]{2,4})")
_CJK_NAME = re.compile(r"^[\u4e00-\u9fff]{2,4}$")
FILLER = {"谢谢", "急件", "麻烦尽快发货", "请放快递柜", "工作日送货", "尽快发货", "放快递柜"}
_ADDRESS_HINT = re.compile(r"[省市区县镇乡路街道号]")


def _phone(text: str) -> tuple[str, str]:
    """(phone digits, text without the phone)."""
    m = _PHONE.search(text)
    if not m:
        return "", text
    return re.sub(r"\D", "", m.group()), text[:m.start()] + " " + text[m.end():]


def extract(text: str) -> dict[str, str]:
    """Fields of one shipping string, by rules."""
    import jionlp

    phone, rest = _phone(text)
    segments = [s for s in re.split(SEPARATORS, _LABELLED.sub(" ", rest)) if s and s not in FILLER]
    named = _NAMED.search(rest)
    name = named.group(2) if named else next(
        (s for s in segments if _CJK_NAME.match(s) and not _ADDRESS_HINT.search(s)
         and not jionlp.parse_location(s).get("province")), "")
    address = max((s for s in segments if s != name), key=lambda s: len(_ADDRESS_HINT.findall(s)), default="")
    loc = jionlp.parse_location(address) if address else {}
    province, city, county = loc.get("province") or "", loc.get("city") or "", loc.get("county") or ""
    if not city and county:  # a county-level unit directly under its province: city = the unit
        city, county = county, ""
    return {"province": province, "city": city, "district": county,
            "specific_location": loc.get("detail") or "", "name": name, "phone": phone}


@recipe_code("baseline")
def answer(text: str) -> str:
    """The baseline's output as the JSON text a model would give."""
    return json.dumps(extract(text), ensure_ascii=False)
