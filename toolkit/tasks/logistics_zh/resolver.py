"""logistics_zh's resolver: a post-step on a model's answer that completes province and city from the district
it predicted, by the official MCA table. Evaluated as its own row (`resolved`), never mixed into the pure
student's figures: it shows how much of the student's error is knowing which prefecture and province each of
2,845 counties lies in, which a table knows and a 135M model must memorise."""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache

from toolkit.io.trust import recipe_code
from toolkit.tasks.logistics_zh.generate import places


@lru_cache(maxsize=1)
def _index() -> tuple[dict[str, list], dict[str, set[str]]]:
    """Places by district name, and provinces by city name, from the table the generator labels with."""
    by_district: dict[str, list] = defaultdict(list)
    provinces: dict[str, set[str]] = defaultdict(set)
    for p in places():
        if p.district:
            by_district[p.district].append(p)
        provinces[p.city].add(p.province)
    return dict(by_district), dict(provinces)


def _named_in(text: str, place) -> bool:
    return any(n and n in text for n in (place.city, place.city_short, place.province, place.province_short))


@recipe_code("resolver")
def complete_admin(text: str, answer: dict | None) -> dict | None:
    """The answer with province and city taken from the table where its district names one place, or one place
    consistent with the city or province it predicted (else with a city or province the text names: 28 district
    names are shared by 64 districts); otherwise (no district, or one the table lacks) the province of its city
    where the city names one. Anything else, an unparseable answer included, is returned unchanged."""
    if not isinstance(answer, dict):
        return answer
    district, city = answer.get("district"), answer.get("city")
    by_district, provinces = _index()
    out = dict(answer)
    if isinstance(district, str) and district in by_district:
        found = by_district[district]
        narrowed = ([p for p in found if p.city == city] or [p for p in found if p.province == answer.get("province")]
                    or [p for p in found if _named_in(text, p)] or found)
        if len({(p.province, p.city) for p in narrowed}) == 1:
            out.update(province=narrowed[0].province, city=narrowed[0].city)
    elif isinstance(city, str) and len(provinces.get(city, ())) == 1:
        out["province"] = next(iter(provinces[city]))
    return out
