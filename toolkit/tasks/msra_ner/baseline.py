"""msra_ner's baseline: names by jieba's part-of-speech tagger, mapped onto the recipe's three list fields."""

from __future__ import annotations

import json

from toolkit.io.trust import recipe_code

# jieba's part-of-speech tags for names: nr person (nrfg, nrt: other person names), ns place, nt organisation.
JIEBA_TAGS = {"nr": "persons", "ns": "locations", "nt": "organizations"}


@recipe_code("baseline")
def jieba_entities(text: str) -> str:
    """Persons, locations and organisations by jieba's part-of-speech tagger (its HMM on, as jieba's default):
    the dictionary-and-HMM way to find names in Chinese without a trained NER model. Entities are listed in the
    order they occur, repeats kept, as MSRA's gold lists are."""
    import jieba
    import jieba.posseg

    jieba.setLogLevel(60)  # its "Building prefix dict" chatter on stderr
    found = {field: [] for field in JIEBA_TAGS.values()}
    for pair in jieba.posseg.cut(text):
        field = JIEBA_TAGS.get(pair.flag[:2])
        if field:
            found[field].append(pair.word)
    return json.dumps(found, ensure_ascii=False)
