"""`xtk init` (toolkit/data/init.py): a new task's recipe from a line of fields, then `xtk recipe check` and `xtk run`
on it with no edit: "Your own task in five minutes" (README.md) in a test."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from toolkit.cli import main
from toolkit.data.init import parse_fields
from toolkit.task.recipe import load_recipe
from toolkit.io.errors import RecipeError

FIELDS = "seller:str:grounded, amount:float?, date:date, currency:enum(CNY|USD)"
SELLERS = ["华为技术有限公司", "阿里巴巴", "Acme Corp", "小米科技", "京东商城"]


def invoice(i: int) -> dict:
    """An invoice row as a user labels it: every fourth has no amount (null), dates and amounts as written."""
    seller, currency = SELLERS[i % 5], ["CNY", "USD"][i % 2]
    amount = None if i % 4 == 3 else 100 + i * 37.5
    written = "金额未填" if amount is None else f"¥{amount:,.2f}" if currency == "CNY" else f"USD {amount:,.2f}"
    text = f"发票 卖方：{seller} 开票日期：2024年{i % 9 + 1}月{i % 9 + 10}日 {written}"
    return {"id": f"inv{i}", "text": text,
            "label": {"seller": seller, "amount": amount, "date": f"2024-{i % 9 + 1:02d}-{i % 9 + 10}",
                      "currency": currency}}


def write_examples(path, n):
    path.write_text("".join(json.dumps(invoice(i), ensure_ascii=False) + "\n" for i in range(n)), encoding="utf-8")
    return path


def test_fields_line_becomes_the_recipes_fields():
    def todo(name):  # what init cannot know is marked, not made up from the field's name
        return f"TODO: what {name} holds, in words"

    assert parse_fields(FIELDS) == [
        {"name": "seller", "type": "str", "description": todo("seller"), "grounded": True},
        {"name": "amount", "type": "float?", "description": todo("amount")},
        {"name": "date", "type": "date", "description": todo("date")},
        {"name": "currency", "type": "enum", "description": todo("currency"), "choices": ["CNY", "USD"]},
    ]
    assert parse_fields("items:list[str]:grounded,note,tone:str(好|坏)?") == [
        {"name": "items", "type": "list[str]", "description": todo("items"), "grounded": True},
        {"name": "note", "type": "str", "description": todo("note")},
        {"name": "tone", "type": "str?", "description": todo("tone"), "choices": ["好", "坏"]}]


@pytest.mark.parametrize("fields,problem", [
    ("", "expected at least one field"),
    ("seller:str:loud", "unknown flag 'loud'; expected grounded or optional"),
    ("amount:cash", "'amount:cash': .*expected 'str', 'enum'"),
    ("currency:enum(CNY|USD|CNY)", "each choice once: 'CNY' is 'CNY' again"),
    ("amount:float:grounded", "grounded applies to str and list"),
    ("1x:str", "expected name\\[:type\\[:flag...\\]\\]"),
])
def test_a_bad_fields_line_names_the_item(tmp_path, fields, problem):
    with pytest.raises(RecipeError, match=rf"--fields.*{problem}"):
        parse_fields(fields)


def test_init_splits_the_examples_and_writes_nothing_when_a_row_is_bad(tmp_path, capsys):
    examples = write_examples(tmp_path / "examples.jsonl", 10)
    assert main(["init", "invoice", "--fields", FIELDS, "--from", str(examples), "--out", str(tmp_path),
                 "--describe", "currency=the currency of the total"]) == 0
    recipe = load_recipe(tmp_path / "recipes" / "invoice.yaml", "cpu")
    assert [f.name for f in recipe.fields] == ["seller", "amount", "date", "currency"]
    assert recipe.field("amount").optional and recipe.student.model == "gemma3-270m"
    rows = {n: (tmp_path / "data" / "invoice" / f"{n}.jsonl").read_text(encoding="utf-8").splitlines()
            for n in ("labelled", "test")}
    assert (len(rows["labelled"]), len(rows["test"])) == (8, 2)  # a fifth held out for the test file
    assert sorted(json.loads(r)["id"] for r in rows["labelled"] + rows["test"]) == sorted(f"inv{i}" for i in range(10))
    assert "currency: the currency of the total (one of \"CNY\", \"USD\")" in recipe.prompt("teacher")
    # the example value: --from's first row's (inv0), for a field whose values are not a closed set
    assert "- seller: TODO: what seller holds, in words; e.g. 华为技术有限公司 (text copied" in recipe.prompt("teacher")
    assert "- amount: TODO: what amount holds, in words; e.g. 100.0 (a JSON number" in recipe.prompt("teacher")
    # again: the recipe is there, so nothing is overwritten
    assert main(["init", "invoice", "--fields", FIELDS, "--out", str(tmp_path)]) == 2
    assert "invoice.yaml: already there" in capsys.readouterr().err

    with examples.open("a", encoding="utf-8") as f:
        f.write(json.dumps({**invoice(10), "label": {**invoice(10)["label"], "currency": "EUR"}}) + "\n")
    assert main(["init", "other", "--fields", FIELDS, "--from", str(examples), "--out", str(tmp_path)]) == 2
    assert "examples.jsonl:11: currency 'EUR' is not one of the allowed values" in capsys.readouterr().err
    assert not (tmp_path / "recipes" / "other.yaml").exists() and not (tmp_path / "data" / "other").exists()


def test_init_without_examples_names_the_files_to_write(tmp_path, capsys):
    assert main(["init", "invoice", "--fields", FIELDS, "--out", str(tmp_path)]) == 0
    assert "data/invoice/labelled.jsonl and test.jsonl" in capsys.readouterr().err
    assert main(["recipe", "check", str(tmp_path / "recipes" / "invoice.yaml")]) == 2
    assert "key 'data.labelled': " in capsys.readouterr().err


def test_init_marks_what_it_cannot_know_and_check_lists_every_todo_with_its_line(tmp_path, capsys):
    """A description and an example not given are TODOs, which `recipe check` refuses (exit 2) one line each; given
    (or the example taken from --from's rows) the same recipe passes. The teacher has prices, a currency and a
    cap: a labelling run of an init recipe is counted and bounded."""
    examples = write_examples(tmp_path / "examples.jsonl", 10)
    assert main(["init", "invoice", "--fields", FIELDS, "--from", str(examples), "--out", str(tmp_path),
                 "--describe", "seller=the company that sells", "--example", "date=2024-03-05"]) == 0
    assert "replace the TODOs on 3 lines of" in " ".join(capsys.readouterr().err.split())
    path = tmp_path / "recipes" / "invoice.yaml"
    teacher = load_recipe(path).teacher
    assert (teacher.price_in_per_mtok, teacher.price_out_per_mtok, teacher.currency, teacher.max_cost) == (
        0.29, 1.15, "USD", 5.0)
    assert main(["recipe", "check", str(path)]) == 2
    err = capsys.readouterr().err.replace("\n  ", "\n").splitlines()
    lines = path.read_text(encoding="utf-8").splitlines()
    todo = [n for n, line in enumerate(lines, 1) if "TODO" in line]
    assert [line.split(": key ")[0] for line in err if "TODO" in line] == [f"{path}:{n}" for n in todo]
    assert [line.split("'")[1] for line in err if "TODO" in line] == [
        "fields.1.description", "fields.2.description", "fields.3.description"]  # seller: described, example 华为…
    assert "key 'fields.2.description': 'TODO: what date holds, in words; e.g. 2024-03-05'" in " ".join(err)

    text = path.read_text(encoding="utf-8").replace("TODO: what amount holds, in words", "the total").replace(
        "TODO: what date holds, in words", "the date of issue").replace("TODO: what currency holds, in words", "its "
                                                                        "currency")
    path.write_text(text, encoding="utf-8")
    assert main(["recipe", "check", str(path)]) == 0


def test_prompt_prints_what_the_teacher_and_the_student_are_given(tmp_path, capsys):
    assert main(["init", "invoice", "--fields", "seller:str, currency:enum(CNY|USD)", "--out", str(tmp_path),
                 "--describe", "seller=the company that sells", "--example", "seller=华为"]) == 0
    capsys.readouterr()
    path = str(tmp_path / "recipes" / "invoice.yaml")
    assert main(["prompt", path]) == 0
    out = capsys.readouterr().out
    assert out.startswith("=== teacher (labelling, the teacher gate, the teacher's evaluation): system ===\n"
                          "invoice: seller, currency from the input.\n\nRead the input and answer with one JSON object")
    assert "- seller: the company that sells; e.g. 华为 (text)\n" in out
    assert "=== teacher (labelling, the teacher gate, the teacher's evaluation): user ===\n<the input text>\n" in out
    assert ("=== student (training, the student's evaluation, predict, serve): system ===\n"
            "Extract as JSON: seller, currency.\n") in out
    assert "JSON schema" not in out  # the recipe decodes freely (eval.guided_json false)
    assert main(["prompt", path, "eval.guided_json=true"]) == 0
    schema = capsys.readouterr().out.split("(eval.guided_json) ===\n")[1]
    assert json.loads(schema)["properties"]["currency"]["enum"] == ["CNY", "USD"]


@pytest.mark.parametrize("planted", ["recipes", "data"])
def test_a_planted_link_does_not_carry_inits_files_out_of_the_folder(tmp_path, capsys, planted):
    """A project folder from someone else may hold `recipes` or `data` as a link to elsewhere: init refuses
    (exit 2) and writes nothing there."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir(), elsewhere.mkdir()
    (project / planted).symlink_to(elsewhere, target_is_directory=True)
    examples = write_examples(tmp_path / "examples.jsonl", 10)
    assert main(["init", "invoice", "--fields", FIELDS, "--from", str(examples), "--out", str(project)]) == 2
    assert "leads outside" in capsys.readouterr().err
    assert list(elsewhere.rglob("*")) == [] and not (project / "recipes" / "invoice.yaml").exists()


@pytest.mark.slow
def test_init_then_check_then_run_with_no_edit(tmp_path, smollm2):
    """The issue's invoice task: `xtk init` with an optional float, a date and an enum, then `xtk recipe check` and
    `xtk run` (cpu profile, tiny sizes as overrides) on the recipe as written. About 3 minutes on 2 cores (171 s)."""
    from conftest import SMOLLM2_STUDENT

    write_examples(tmp_path / "examples.jsonl", 20)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DASHSCOPE_API_KEY": ""}

    def xtk(*args):
        res = subprocess.run([sys.executable, "-m", "toolkit", *args], cwd=tmp_path, env=env, capture_output=True,
                             text=True)
        assert res.returncode == 0, res.stderr[-4000:]
        return res

    xtk("init", "invoice", "--fields", FIELDS, "--from", "examples.jsonl", "--describe", "seller=the seller",
        "--describe", "amount=the total", "--describe", "date=the date of issue", "--describe", "currency=its currency")
    check = xtk("recipe", "check", "recipes/invoice.yaml", "--profile", "cpu")
    assert "data.labelled: data/invoice/labelled.jsonl: 16 rows" in check.stdout
    assert "is 2000, but data/invoice/labelled.jsonl has 16 rows" in check.stderr  # said, not silently cut
    tiny = [*SMOLLM2_STUDENT, "data.val_fraction=0.2", "train.max_steps=2", "train.save_steps=2", "train.eval_steps=2",
            "eval.backend=transformers", "eval.limit=2", "eval.max_new_tokens=48"]
    res = xtk("run", "recipes/invoice.yaml", "--profile", "cpu", "--run", "run", *tiny)
    assert re.findall(r"^stage (\w+)$", res.stderr, re.M)[-1] == "report"
    for who in ("base", "student"):
        m = json.loads((tmp_path / "run" / "eval" / f"{who}-test" / "metrics.json").read_text())
        assert m["n"] == 2 and set(m["enums"]) == {"currency"}
    rows = [json.loads(line) for name in ("train.jsonl", "val.jsonl")
            for line in (tmp_path / "run" / "data" / name).read_text(encoding="utf-8").splitlines()]
    assert {r["messages"][0]["content"] for r in rows} == {"Extract as JSON: seller, amount, date, currency."}
    answers = [json.loads(r["messages"][-1]["content"]) for r in rows]
    assert len(answers) == 16 and any(a["amount"] is None for a in answers)  # an invoice without a total: null
