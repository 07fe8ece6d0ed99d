"""Which of a knowledge table's combinations a text writes: for a table declared `written`, guided decoding lets
each text's answer take only those (toolkit/task/tables.answer_schema), so a place the text names in a short form
(南充西充车龙乡: 西充县) cannot be answered "", and a place it does not name cannot be made up.

Every spelling of every value (the value, or an alias from the table's aliases file) is looked for in the text;
an occurrence inside a longer one is not counted (高县 in 临高县). A combination is written where the text writes
its most specific value:
- by the value itself (西充县): always;
- by an alias (西充), which a street or a town can share (长安大街, 黄河东路): only where the rest of the text agrees.
  The most specific parent level another occurrence names, or implies by a place written whole, decides
  (浙江金华…长安大街 names 金华市, not 长安区's 西安市); an alias that also spells the place's own parent, written once, names the parent (邵阳 幸福街: 邵阳市,
  not 邵阳县); with no parent named elsewhere, an alias that spells some parent is read as that parent.
Where the text writes none, the answers allowed are the table's combinations with the most specific level "".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

from toolkit.task.tables import Table


@dataclass(frozen=True)
class _Spellings:
    by_level: tuple[dict[str, frozenset[str]], ...]  # per column: spelling -> the values it spells
    longest_first: tuple[str, ...]
    by_leaf: dict[str, tuple[tuple[str, ...], ...]]  # most specific value -> its combinations
    unnamed: tuple[tuple[str, ...], ...]  # the combinations whose most specific level is ""


@lru_cache(maxsize=8)
def _spellings(table: Table) -> _Spellings:
    aliases: dict[str, set[str]] = defaultdict(set)
    for value, alias in table.aliases:
        aliases[value].add(alias)
    by_level: list[dict[str, set[str]]] = [defaultdict(set) for _ in table.columns]
    by_leaf: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for c in table.combinations:
        for level, value in enumerate(c):
            for spelling in {value, *aliases[value]} - {""}:
                by_level[level][spelling].add(value)
        by_leaf[c[-1]].append(c)
    spellings = {s for level in by_level for s in level}
    return _Spellings(tuple({s: frozenset(v) for s, v in level.items()} for level in by_level),
                      tuple(sorted(spellings, key=len, reverse=True)),
                      {leaf: tuple(cs) for leaf, cs in by_leaf.items() if leaf}, tuple(by_leaf.get("", ())))


def _occurrences(sp: _Spellings, text: str) -> list[tuple[int, int, str]]:
    """(start, end, spelling) of every spelling in the text, but those inside a longer occurrence."""
    found = []
    for s in sp.longest_first:
        at = text.find(s)
        while at != -1:
            found.append((at, at + len(s), s))
            at = text.find(s, at + 1)
    return [o for o in found if not any(a <= o[0] and o[1] <= b and b - a > o[1] - o[0] for a, b, _ in found)]


def _agrees(sp: _Spellings, c: tuple[str, ...], spelling: str, others: list[str]) -> bool:
    """Whether an alias of c's most specific value, at one occurrence, is c's (others: the text's other
    occurrences)."""
    parents = range(len(c) - 1)
    # the parents the rest of the text names: spelt, or implied by a place it writes whole (五大连池市: 黑河市)
    implied = [p for o in others for p in sp.by_leaf.get(o, ())]
    names = [{v for o in others for v in sp.by_level[i].get(o, ())} | {p[i] for p in implied} for i in parents]
    if any(c[i] in sp.by_level[i].get(spelling, ()) and c[i] not in names[i] for i in parents):
        return False  # the spelling of its own parent, which nothing else names: it names the parent
    for i in reversed(parents):  # the most specific parent level the rest of the text names decides
        if names[i]:
            return c[i] in names[i]
    return not any(spelling in sp.by_level[i] for i in parents)


def written_combinations(table: Table, text: str) -> tuple[tuple[str, ...], ...]:
    """The table's combinations the text writes (module docstring), in the order it writes them; those with the
    most specific level "" where it writes none."""
    sp = _spellings(table)
    occurrences = _occurrences(sp, text)
    found: dict[tuple[str, ...], None] = {}
    for k, (_, _, spelling) in enumerate(occurrences):
        others = [o[2] for j, o in enumerate(occurrences) if j != k]
        for value in sp.by_level[-1].get(spelling, ()):
            for c in sp.by_leaf[value]:
                if spelling == value or _agrees(sp, c, spelling, others):
                    found[c] = None
    return tuple(found) or sp.unnamed
