"""Bad input files end in a clear error (exit 2 from the CLI) naming the file, the line and what was expected,
before anything is written or sent."""

import json
import os
import re
import shutil

import pytest

from conftest import RECIPE, ROOT
from toolkit.cli import main
from toolkit.io.errors import DataError
from toolkit.data.label import read_inputs
from toolkit.data.prepare import read_records
from toolkit.task.recipe import load_recipe
from toolkit.io.errors import RecipeError
from toolkit.train.swift import free_port  # closed again at once: nothing listens there

LABEL = {"province": "天津市", "city": "天津市", "district": "和平区", "specific_location": "南京路1号",
         "name": "欧阳丽", "phone": "13812345678"}
as_root = pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")


def recipe_copy(tmp_path, text: str):
    """The recipe's text under tmp_path/recipes/, with copies of the project's prompts and data beside it (a recipe
    names only files of its own project: links out of it would be refused)."""
    for folder in ("prompts", "datasets"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    path = tmp_path / "recipes" / "r.yaml"
    path.parent.mkdir()
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, line: str) -> int:
    return text.splitlines().index(line) + 1


def failure(capsys, argv: list[str]) -> str:
    """Run the CLI, expect exit 2, return what it printed."""
    assert main(argv) == 2
    return capsys.readouterr().err


# --- recipe files ------------------------------------------------------------------------------------------

def test_recipe_not_utf8_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"name: x\ndescription: caf\xe9\n")
    err = failure(capsys, ["recipe", "show", str(path)])
    assert f"{path}:2: not valid UTF-8 (byte 0xe9" in err


def test_recipe_that_is_a_directory(tmp_path, capsys):
    err = failure(capsys, ["recipe", "show", str(tmp_path)])
    assert f"{tmp_path}: is a directory, expected a recipe file (YAML)" in err


@as_root
def test_unreadable_recipe_gives_the_os_reason(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.read_text(encoding="utf-8"), encoding="utf-8")
    path.chmod(0)
    assert f"{path}: cannot read: Permission denied" in failure(capsys, ["recipe", "show", str(path)])


@pytest.mark.parametrize("original,added", [
    ("train:\n", "train:\n  lora_rank: 4\n"),  # a whole section twice: PyYAML kept only the last
    ("  lora_rank: 8\n", "  lora_rank: 16\n"),
    ("      nproc_per_node: 2\n", "      nproc_per_node: 1\n"),  # inside a profile
])
def test_duplicate_key_names_its_line(tmp_path, original, added):
    text = RECIPE.read_text(encoding="utf-8").replace(original, original + added, 1)
    path = recipe_copy(tmp_path, text)
    key = added.split(":")[0]
    first, second = [i for i, line in enumerate(text.splitlines(), 1) if line.startswith(key + ":")]
    with pytest.raises(RecipeError) as err:
        load_recipe(path, "cpu")
    assert str(err.value) == (f"{path}:{second}: duplicate key {key.strip()!r} (first given on line {first}): "
                              "give each key once")


def test_missing_prompt_fails_at_load_naming_key_line_and_path(tmp_path, capsys):
    text = RECIPE.read_text(encoding="utf-8").replace("prompts/logistics_zh/short.md", "prompts/logistics_zh/nope.md")
    path = recipe_copy(tmp_path, text)
    line = line_of(text, "  student: prompts/logistics_zh/nope.md")
    err = failure(capsys, ["recipe", "show", str(path)])
    assert f"{path}:{line}: key 'prompts.student': {tmp_path}/prompts/logistics_zh/nope.md: no such file" in err
    err = failure(capsys, ["recipe", "show", str(RECIPE), "prompts.base=prompts"])
    assert "key 'prompts.base' (from a command-line override)" in err
    assert "is a directory, expected a prompt file" in err


def test_missing_choices_file_fails_at_load(tmp_path):
    text = RECIPE.read_text(encoding="utf-8").replace("datasets/logistics_zh/cities.txt", "datasets/cities.txt")
    path = recipe_copy(tmp_path, text)
    line = line_of(text, "    choices_file: datasets/cities.txt")
    with pytest.raises(RecipeError, match=rf"r.yaml:{line}: key 'fields.1.choices_file': .*datasets/cities.txt: "
                                          "no such file"):
        load_recipe(path)


# --- JSONL files: prepare --labelled, eval --test, label --input ------------------------------------------

def test_labelled_file_not_utf8_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "labelled.jsonl"
    row = json.dumps({"id": "1", "text": "欧阳丽 13812345678", "label": LABEL}, ensure_ascii=False).encode()
    bad.write_bytes(row + b"\n" + row.replace("欧阳".encode(), "欧阳".encode("gbk")) + b"\n")
    err = failure(capsys, ["prepare", str(RECIPE), "--run", str(tmp_path / "run"), "--labelled", str(bad)])
    assert f"{bad}:2: not valid UTF-8" in err
    assert not (tmp_path / "run" / "data" / "train.jsonl").exists()


def test_test_file_that_is_a_directory(tmp_path, capsys):
    err = failure(capsys, ["eval", str(RECIPE), "--run", str(tmp_path / "run"), "--model", "rules",
                           "--test", str(tmp_path)])
    assert f"{tmp_path}: is a directory, expected a JSONL file" in err


@as_root
def test_unreadable_jsonl_gives_the_os_reason(tmp_path, capsys):
    bad = tmp_path / "t.jsonl"
    bad.write_text("{}\n")
    bad.chmod(0)
    err = failure(capsys, ["eval", str(RECIPE), "--run", str(tmp_path / "run"), "--model", "rules",
                           "--test", str(bad)])
    assert f"{bad}: cannot read: Permission denied" in err


# --- the teacher's raw inputs ------------------------------------------------------------------------------

def label_argv(tmp_path, inputs) -> list[str]:
    # A port nobody listens on: a text that got through would fail to connect instead of reaching a teacher.
    return ["label", str(RECIPE), "--input", str(inputs), "--out", str(tmp_path / "out"),
            "--base-url", f"http://127.0.0.1:{free_port()}/v1", "teacher.gate.records=0"]


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test")


def test_txt_inputs_not_utf8_name_the_line(tmp_path, capsys, key):
    bad = tmp_path / "in.txt"
    bad.write_bytes("第一条\n\n".encode() + "第三条".encode("gbk") + b"\n")
    assert f"{bad}:3: not valid UTF-8" in failure(capsys, label_argv(tmp_path, bad))


def test_a_huge_input_text_is_refused_before_any_request(tmp_path, capsys, key):
    bad = tmp_path / "in.jsonl"
    bad.write_text(json.dumps({"id": "a", "text": "短"}) + "\n" + json.dumps({"id": "b", "text": "长" * 5_000_000})
                   + "\n", encoding="utf-8")
    err = failure(capsys, label_argv(tmp_path, bad))
    assert f"{bad}:2: text is 5000000 characters, over data.max_input_chars=4000" in err
    assert not (tmp_path / "out" / "labelled.jsonl").exists()


def test_duplicate_id_names_the_file_line_of_the_second(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n\n{"id": "b", "text": "y"}\n\n{"id": "a", "text": "z"}\n')
    with pytest.raises(DataError, match=r"in.jsonl:5: duplicate id 'a' \(first on line 1\)"):
        read_inputs(path, 100)


@pytest.mark.parametrize("name,content", [("in.txt", ""), ("in.txt", "\n  \n\n"), ("in.jsonl", "\n\n")])
def test_inputs_without_any_text(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=rf"{name}: no texts"):
        read_inputs(path, 100)


# --- prepare -----------------------------------------------------------------------------------------------

def test_prepare_refuses_a_text_over_max_input_chars(tmp_path):
    recipe = load_recipe(RECIPE, "cpu")
    recipe.data.max_input_chars = 20  # set after loading: the recipe's own pool has longer texts, refused at load
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "text": text, "label": LABEL}, ensure_ascii=False) + "\n"
                            for i, text in enumerate(["短" * 20, "长" * 21])), encoding="utf-8")
    with pytest.raises(DataError, match=r"labelled.jsonl:2: text is 21 characters, over data.max_input_chars=20"):
        read_records(recipe, path)


def test_prepare_refuses_an_empty_labelled_file(tmp_path):
    path = tmp_path / "labelled.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match=r"labelled.jsonl: no records"):
        read_records(load_recipe(RECIPE, "cpu"), path)


# --- every bad row at once -----------------------------------------------------------------------------------

def test_every_bad_row_of_a_labelled_file_is_named_in_one_pass(tmp_path, capsys):
    """25 bad rows among good ones (a broken JSON line, a missing key, a wrong type): one error lists the first 20,
    each with its line, then how many more; the CLI exits 2 and init writes nothing."""
    good = {"id": "g", "text": "天津市和平区南京路1号 欧阳丽 13812345678", "label": LABEL}
    lines = []
    for i in range(30):
        row = {**good, "id": f"r{i}"}
        if i % 6 == 1:
            lines.append('{"id": "broken", "text": ')
            continue
        if i % 6 in (2, 3):
            row["label"] = {k: v for k, v in LABEL.items() if k != "phone"}
        elif i % 6 in (4, 5):
            row["label"] = {**LABEL, "phone": 13812345678}
        lines.append(json.dumps(row, ensure_ascii=False))
    path = tmp_path / "labelled.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_records(load_recipe(RECIPE, "cpu"), path)
    message = str(caught.value)
    assert message.startswith(f"{path}: 25 bad rows:") and message.endswith("and 5 more")
    shown = [int(n) for n in re.findall(rf"^  {path}:(\d+): ", message, flags=re.M)]
    assert shown == [n + 1 for n in range(30) if n % 6][:20]  # every bad line in order, the good ones not
    assert f"{path}:2: not valid JSON" in message and f"{path}:3: label fields must be exactly" in message
    assert f"{path}:5: field 'phone' must be a string" in message

    fields = "province, city, district, specific_location, name, phone"
    err = failure(capsys, ["init", "t", "--fields", fields, "--from", str(path), "--out", str(tmp_path / "p")])
    assert "25 bad rows" in err and f"{path}:24: field 'phone'" in err.replace("\n", "")
    assert not (tmp_path / "p").exists()


def test_every_bad_text_of_an_input_file_is_named_in_one_pass(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "b"}\n{"id": "a", "text": "z"}\n[1]\n', encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_inputs(path, 100)
    assert str(caught.value).splitlines() == [
        f"{path}: 3 bad rows:", f"  {path}:2: expected a JSON object with a non-empty text field",
        f"  {path}:3: duplicate id 'a' (first on line 1)", f"  {path}:4: expected a JSON object, got list"]
