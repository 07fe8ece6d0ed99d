"""Bad input as a stranger's recipe, folder or file gives it: every case of issue 45's nine holes and of the last
round's audit (tests/test_bad_input.py, tests/test_consent.py), each run as a real `xtk` command.

    .venv/bin/python benchmarks/bad_input.py [--only SUBSTRING] [--out benchmarks/results/bad_input.json]

Each case builds what it needs in a fresh folder of its own (a recipe from elsewhere, a planted link, a bad file),
runs `python -m toolkit ...` there as a child process, and records: its exit status against the one expected (2:
refused; 3: a teacher that died mid-run; 0 where the case is that xtk writes safely past a planted link), whether
stderr names the file at fault with its line (`file:line`; the file alone where it has no line to name: a folder, a
file that is missing) or the key (an override), a traceback, a silent pass (exit 0 where a refusal was expected),
what the case checks besides (a victim file untouched, nothing written), and the child's peak memory (the kernel's
peak resident set, from wait4); for the YAML alias bomb also psutil's samples of it every 10 ms. Nothing is trained
and no real teacher is asked: where a teacher must answer, it is the local test double (tests/teacher_server.py).
Cases that cannot happen as root (a file made unreadable) are recorded as skipped when run as root.

The whole results file is written at the end of one run, with the commit, whether the tree was clean, the CPU, the
core count and the date; the exit status is 1 when any case is not as expected.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance  # noqa: E402

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from conftest import write_recipe  # noqa: E402
from teacher_server import TeacherServer  # noqa: E402
from toolkit.io.jsonl import read_jsonl, write_json, write_jsonl  # noqa: E402
from toolkit.train.swift import free_port  # noqa: E402

RECIPE = ROOT / "recipes" / "logistics_zh.yaml"
DATA = ROOT / "datasets" / "logistics_zh"
FIELD = "fields:\n  - {name: a, description: anything}\n"
KEY = "sk-bad-input-0a1b2c"
TIME_LIMIT_S = 180  # a case that runs longer is stopped and counted as not as expected
BOMB_LEVELS = 9  # 10**9 values once expanded: 8.9 GB in 2 minutes before the bound, when it was stopped


@dataclass
class Run:
    """What a case runs and what it expects. `file`: the name of the file at fault, which stderr must name (with
    its line where `line`); `key`: the recipe key stderr must name; `says`: words stderr must hold; `check`: a
    check after the run (a victim untouched...), returning what is wrong or None. `gold`: texts a local test
    teacher answers from (its URL replaces {url} in argv), with `teacher` its settings."""
    argv: list[str]
    expect: int = 2
    file: str | None = None
    line: bool = True
    key: str | None = None
    says: str | None = None
    check: Callable[[], str | None] | None = None
    gold: dict | None = None
    teacher: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    skip: str | None = None


@dataclass(frozen=True)
class Case:
    name: str
    hole: str  # "1".."9": issue 45's holes; "teacher": its teacher's money and a dead teacher; "round 1": issue 29
    make: Callable[[Path], Run]


CASES: list[Case] = []


def case(hole: str, name: str):
    def register(make: Callable[[Path], Run]) -> Callable[[Path], Run]:
        CASES.append(Case(name, hole, make))
        return make
    return register


# --- helpers that build what a case needs -------------------------------------------------------------------------

def recipe_in(w: Path, fields: str = FIELD, extra: str = "", data: str | None = None) -> Path:
    """A small recipe of someone else's project under w/p (tests/conftest.py's write_recipe), with a test file."""
    kwargs = {"data": data} if data else {}
    path = write_recipe(w / "p", fields, extra=extra, **kwargs)
    write_jsonl(w / "p" / "test.jsonl", [{"id": 1, "text": "t", "label": {"a": "x"}}])
    return path


def edited(path: Path, old: str, new: str) -> Path:
    text = path.read_text(encoding="utf-8")
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def shipped_copy(w: Path) -> Path:
    """logistics_zh's recipe in a project of its own under w/p, with copies of its prompts and data."""
    for folder in ("prompts", "datasets"):
        shutil.copytree(ROOT / folder, w / "p" / folder)
    (w / "p" / "recipes").mkdir()
    return Path(shutil.copy(RECIPE, w / "p" / "recipes" / "r.yaml"))


def victim(w: Path, name: str = "victim", folder: bool = False) -> Path:
    """Something outside the folder xtk writes in that it must never write: a file with known words, or an empty
    folder."""
    path = w / name
    if folder:
        path.mkdir()
    else:
        path.write_text("precious\n")
    return path


def untouched(path: Path) -> Callable[[], str | None]:
    def check() -> str | None:
        if path.is_dir():
            return f"{path.name} has {sorted(p.name for p in path.iterdir())}" if any(path.iterdir()) else None
        return None if path.read_text() == "precious\n" else f"{path.name} was written"
    return check


def absent(path: Path) -> Callable[[], str | None]:
    return lambda: f"{path.name} was written" if path.exists() else None


def test_rows(n: int) -> list[dict]:
    return read_jsonl(DATA / "test.jsonl")[:n]


def pool_rows(n: int) -> list[dict]:
    gold = {r["id"]: r["label"] for r in read_jsonl(DATA / "pool_gold.jsonl")}
    return [{**r, "label": gold[r["id"]]} for r in read_jsonl(DATA / "pool.jsonl")[:n]]


def raw(w: Path, rows: list[dict]) -> Path:
    return write_jsonl(w / "raw.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows])


def nowhere() -> str:
    """An endpoint nobody listens on: a request that got through would fail to connect, never reach a teacher."""
    return f"http://127.0.0.1:{free_port()}/v1"


def label_argv(w: Path, inputs: Path, *more: str, recipe: Path = RECIPE) -> list[str]:
    return ["label", str(recipe), "--input", str(inputs), "--out", str(w / "out"), "--base-url", nowhere(),
            "teacher.gate.records=0", *more]


def bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


# --- issue 45, hole 1: words a recipe adds to ms-swift's command line ---------------------------------------------

@case("1", "train.extra_args --external_plugins in a recipe file")
def train_extra_args_external_plugins_in_a_r(w):
    path = recipe_in(w)
    edited(path, "dataloader_num_workers: 0}", "dataloader_num_workers: 0,\n        extra_args: [--external_plugins, "
           "evil.py]}")
    (w / "p" / "evil.py").write_text(f"open({str(w / 'pwned')!r}, 'w')\n")
    return Run(["recipe", "check", str(path)], file="typed.yaml", key="train.extra_args",
               says="--allow-code swift:external_plugins", check=absent(w / "pwned"))


for _name, _words in (("--external_plugins=FILE as one word", "[--external_plugins=/tmp/evil.py]"),
                      ("a prefix of --external_plugins", "[--external_plug, /tmp/evil.py]"),
                      ("--output_dir after an allowed flag", "[--lorap_lr_ratio, '16', --output_dir, /tmp/x]"),
                      ("--report_to sends metrics out", "[--report_to, wandb]"),
                      ("a value before any flag", "[/tmp/evil.py]"),
                      ("--attn_impl naming a hub kernel", "[--attn_impl, kernels-community/flash-attn]")):
    case("1", f"train.extra_args: {_name}")(
        lambda w, words=_words: Run(["recipe", "check", str(RECIPE), f"train.extra_args={words}"],
                                    key="train.extra_args"))


# --- hole 2: code a recipe names ----------------------------------------------------------------------------------

@case("2", "baseline: a toolkit function that writes files")
def baseline_a_toolkit_function_that_writes(w):
    path = recipe_in(w, extra="baseline: toolkit.io.jsonl:write_json\n")
    return Run(["eval", str(path), "--model", "rules", "--run", str(w / "run")], file="typed.yaml", key="baseline",
               says="is not one of xtk's baseline functions")


for _key, _ref in (("baseline", "toolkit.tasks.logistics_zh.generate:build"),
                   ("data.generator", "toolkit.tasks.logistics_zh.baseline:answer")):
    case("2", f"{_key}: a toolkit function registered for no such key")(
        lambda w, key=_key, ref=_ref: Run(["recipe", "show", str(RECIPE), f"{key}={ref}"], key=key))


# --- hole 3: the key's variable and the files a recipe names ------------------------------------------------------

@case("3", "api_key_env: GITHUB_TOKEN in a recipe file")
def api_key_env_github_token_in_a_recipe_fil(w):
    path = edited(recipe_in(w), "api_key_env: XTK_TEST_API_KEY", "api_key_env: GITHUB_TOKEN")
    raw_file = write_jsonl(w / "in.jsonl", [{"id": 1, "text": "t"}])
    return Run(label_argv(w, raw_file, recipe=path), file="typed.yaml", key="teacher.api_key_env",
               env={"GITHUB_TOKEN": "ghp_not_a_teacher_key"}, says="--api-key-env GITHUB_TOKEN")


def _outside_file(w: Path, name: str = "secret.md") -> Path:
    (w / "home").mkdir(exist_ok=True)
    path = w / "home" / name
    path.write_text("the user's secret\n")
    return path


@case("3", "prompts.teacher: an absolute path in a recipe file")
def prompts_teacher_an_absolute_path_in_a_re(w):
    path = edited(recipe_in(w), "teacher: t.md", f"teacher: {_outside_file(w)}")
    return Run(["recipe", "check", str(path)], file="typed.yaml", key="prompts.teacher", says="--allow-path")


@case("3", "prompts.base: a path climbing out of the project")
def prompts_base_a_path_climbing_out_of_the(w):
    _outside_file(w)
    path = edited(recipe_in(w), "base: d.md", "base: ../home/secret.md")
    return Run(["recipe", "check", str(path)], file="typed.yaml", key="prompts.base", says="--allow-path")


@case("3", "prompts.student: through a link inside the project")
def prompts_student_through_a_link_inside_th(w):
    _outside_file(w)
    path = edited(recipe_in(w), "student: s.md", "student: linked/secret.md")
    (w / "p" / "linked").symlink_to(w / "home", target_is_directory=True)
    return Run(["recipe", "check", str(path)], file="typed.yaml", key="prompts.student", says="--allow-path")


@case("3", "choices_file outside the project")
def choices_file_outside_the_project(w):
    outside = _outside_file(w, "places.txt")
    path = recipe_in(w, f"fields:\n  - {{name: a, description: p, choices_file: {outside}}}\n")
    return Run(["recipe", "check", str(path)], file="typed.yaml", key="fields.0.choices_file", says="--allow-path")


@case("3", "data.test outside the project (override)")
def data_test_outside_the_project_override(w):
    outside = write_jsonl(w / "home" / "t.jsonl", test_rows(2))
    return Run(["recipe", "check", str(RECIPE), f"data.test=[{outside}]"], key="data.test.0", says="--allow-path")


# --- holes 4 and 5: links planted where xtk writes ----------------------------------------------------------------

def _planted_folder(w: Path, run: Path, name: str) -> Path:
    target = victim(w, f"victim-{name}", folder=True)
    run.mkdir(parents=True, exist_ok=True)
    (run / name).symlink_to(target, target_is_directory=True)
    return target


@case("4", "a link at the run's data/ (xtk label)")
def a_link_at_the_run_s_data_xtk_label(w):
    target = _planted_folder(w, w / "run", "data")
    return Run(["label", str(RECIPE), "--run", str(w / "run"), "--input", str(raw(w, pool_rows(3))), "--base-url",
                nowhere(), "teacher.gate.records=0"], file="data", line=False, check=untouched(target),
               env={"DASHSCOPE_API_KEY": KEY})


@case("4", "a link at the run's data/ (xtk run --only data, gold labels)")
def a_link_at_the_run_s_data_xtk_run_only_da(w):
    target = _planted_folder(w, w / "run", "data")
    return Run(["run", str(RECIPE), "--only", "data", "--run", str(w / "run"), "teacher.api_key_env=NO_SUCH_API_KEY"],
               file="data", line=False, check=untouched(target))


@case("4", "a link at the run's eval/ (xtk eval)")
def a_link_at_the_run_s_eval_xtk_eval(w):
    target = _planted_folder(w, w / "run", "eval")
    return Run(["eval", str(RECIPE), "--model", "rules", "--run", str(w / "run"), "eval.limit=2"], file="eval",
               line=False, check=untouched(target))


@case("4", "a link at the run's gate/ (the teacher gate, a teacher answering)")
def a_link_at_the_run_s_gate_the_teacher_gat(w):
    target = _planted_folder(w, w / "run", "gate")
    return Run(["run", str(RECIPE), "--only", "teacher_gate", "--run", str(w / "run"), "teacher.base_url={url}",
                "teacher.gate.records=5"], file="gate", line=False, check=untouched(target),
               gold={r["text"]: r["label"] for r in test_rows(5)})


def _predict(w: Path, out: Path) -> list[str]:
    texts = write_jsonl(w / "in.jsonl", [{"id": r["id"], "text": r["text"]} for r in test_rows(3)])
    return ["predict", str(RECIPE), "--model", "rules", "--input", str(texts), "--out", str(out), "--run",
            str(w / "run")]


@case("5", "predict: a link planted at out.parquet.tmp (written past, never through)")
def predict_a_link_planted_at_out_parquet_tm(w):
    target = victim(w)
    (w / "out.parquet.tmp").symlink_to(target)

    def check():
        out = w / "out.parquet"
        return untouched(target)() or (None if out.is_file() and not out.is_symlink() else "no out.parquet")
    return Run(_predict(w, w / "out.parquet"), expect=0, check=check)


@case("5", "predict: a link planted at its journal")
def predict_a_link_planted_at_its_journal(w):
    target = victim(w)
    (w / "out.parquet.journal").symlink_to(target)
    return Run(_predict(w, w / "out.parquet"), file="out.parquet.journal", line=False, check=untouched(target))


# --- hole 6: YAML ----------------------------------------------------------------------------------------------------

@case("6", "a YAML alias bomb (nested anchors, 10**9 values)")
def a_yaml_alias_bomb_nested_anchors_10_9_va(w):
    path = w / "bomb.yaml"
    path.write_text("name: bomb\n" + bomb(BOMB_LEVELS))
    return Run(["recipe", "show", str(path)], file="bomb.yaml", says="aliases expand to more than")


@case("6", "a YAML alias inside its own anchor")
def a_yaml_alias_inside_its_own_anchor(w):
    path = w / "loop.yaml"
    path.write_text("name: loop\na: &a [1, *a]\n")
    return Run(["recipe", "show", str(path)], file="loop.yaml", says="an alias inside its own anchor")


# --- hole 7: choices -------------------------------------------------------------------------------------------------

@case("7", "a choices file that starts with a byte-order mark (recipe check)")
def a_choices_file_that_starts_with_a_byte_o(w):
    path = recipe_in(w, "fields:\n  - {name: province, description: p, choices_file: places.txt}\n")
    (w / "p" / "places.txt").write_bytes("\ufeff北京市\n上海市\n".encode())
    return Run(["recipe", "check", str(path)], file="places.txt", key="fields.0.choices_file",
               says="a byte-order mark")


# --- hole 8: xtk init ------------------------------------------------------------------------------------------------

def _init(w: Path, *argv: str) -> list[str]:
    return ["init", "t", "--out", str(w / "p"), *argv]


@case("8", "init: a field named twice")
def init_a_field_named_twice(w):
    return Run(_init(w, "--fields", "a:str, a:int"), says="each field name once", check=absent(w / "p"))


@case("8", "init: --out is a file")
def init_out_is_a_file(w):
    (w / "afile").write_text("")
    return Run(["init", "t", "--fields", "a", "--out", str(w / "afile")], file="afile/recipes", line=False)


@case("8", "init: --out lies under a file")
def init_out_lies_under_a_file(w):
    (w / "afile").write_text("")
    return Run(["init", "t", "--fields", "a", "--out", str(w / "afile" / "sub")], file="afile/sub/recipes",
               line=False)


@case("8", "init: --from a device that refuses reads")
def init_from_a_device_that_refuses_reads(w):
    return Run(_init(w, "--fields", "a", "--from", "/proc/self/mem"), file="mem", check=absent(w / "p"))


@case("8", "init: --from JSON nested too deeply")
def init_from_json_nested_too_deeply(w):
    (w / "deep.jsonl").write_text('{"id": 1, "text": "x", "label": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}\n")
    return Run(_init(w, "--fields", "a", "--from", str(w / "deep.jsonl")), file="deep.jsonl", check=absent(w / "p"))


@case("8", "init: an unknown field type")
def init_an_unknown_field_type(w):
    return Run(_init(w, "--fields", "a:nosuch"), says="--fields item 'a:nosuch'", check=absent(w / "p"))


# --- hole 9: accepted silently before ------------------------------------------------------------------------------

@case("9", "num_train_epochs: .inf in a recipe file")
def num_train_epochs_inf_in_a_recipe_file(w):
    path = edited(recipe_in(w), "num_train_epochs: 1", "num_train_epochs: .inf")
    return Run(["recipe", "check", str(path)], file="typed.yaml", key="train.num_train_epochs", says="finite")


for _name, _override, _key in (("a negative price", "teacher.price_in_per_mtok=-1", "teacher.price_in_per_mtok"),
                               ("a negative temperature", "teacher.temperature=-0.5", "teacher.temperature"),
                               ("max_steps: 0", "train.max_steps=0", "train.max_steps"),
                               ("an empty test list", "data.test=[]", "data.test"),
                               ("the same test file twice", "data.test=[datasets/logistics_zh/test.jsonl, "
                                "./datasets/logistics_zh/test.jsonl]", "data.test.1")):
    case("9", _name)(lambda w, o=_override, k=_key: Run(["recipe", "check", str(RECIPE), o], key=k))


def _test_file(w: Path, text: str) -> Path:
    rows = test_rows(2)
    return write_jsonl(w / "t.jsonl", [rows[0], {**rows[1], "text": text}])


@case("9", "an empty text in a test file (eval)")
def an_empty_text_in_a_test_file_eval(w):
    return Run(["eval", str(RECIPE), "--model", "rules", "--run", str(w / "run"), "--test",
                str(_test_file(w, ""))], file="t.jsonl", says="the input text is empty")


@case("9", "a 5 MB line in a test file (eval)")
def a_5_mb_line_in_a_test_file_eval(w):
    return Run(["eval", str(RECIPE), "--model", "rules", "--run", str(w / "run"), "--test",
                str(_test_file(w, "长" * 5_000_000))], file="t.jsonl", says="over data.max_input_chars")


@case("9", "a 5 MB line in predict's input")
def a_5_mb_line_in_predict_s_input(w):
    texts = write_jsonl(w / "in.jsonl", [{"id": 1, "text": "短"}, {"id": 2, "text": "长" * 5_000_000}])
    return Run(["predict", str(RECIPE), "--model", "rules", "--input", str(texts), "--out", str(w / "o.jsonl"),
                "--run", str(w / "run")], file="in.jsonl", says="over data.max_input_chars",
               check=absent(w / "o.jsonl"))


@case("9", "enum() with no values (init)")
def enum_with_no_values_init(w):
    return Run(_init(w, "--fields", "a:enum()"), says="needs at least one class", check=absent(w / "p"))


@case("9", "enum choices: [] in a recipe file")
def enum_choices_in_a_recipe_file(w):
    path = recipe_in(w, "fields:\n  - {name: a, type: enum, description: p, choices: []}\n")
    return Run(["recipe", "show", str(path)], file="typed.yaml", key="fields.0", says="at least one class")


@case("9", "advise on a folder that does not exist")
def advise_on_a_folder_that_does_not_exist(w):
    return Run(["advise", str(RECIPE), "--candidates", f"{w}/no-such-folder"], says="no such model folder")


# --- the teacher's money and a teacher that dies (F2's half of issue 45) ---------------------------------------------

@case("teacher", "max_cost with prices of 0")
def max_cost_with_prices_of_0(w):
    return Run(["recipe", "check", str(RECIPE), "teacher.price_in_per_mtok=0", "teacher.price_out_per_mtok=0",
                "teacher.max_cost=5"], key="teacher.max_cost")


@case("teacher", "a teacher that answers three records, then hangs (exit 3)")
def a_teacher_that_answers_three_records_the(w):
    rows = pool_rows(30)
    argv = ["label", str(RECIPE), "--input", str(raw(w, rows)), "--out", str(w / "out"), "--base-url", "{url}",
            "teacher.gate.records=0", "teacher.timeout_s=2"]
    return Run(argv, expect=3, says="stopped answering", gold={r["text"]: r["label"] for r in rows},
               teacher={"hold_after": 3})


# --- round 1 (issue 29 and the bad-input files before it): tests/test_bad_input.py, tests/test_consent.py -------------

@case("round 1", "a recipe that is not UTF-8")
def a_recipe_that_is_not_utf_8(w):
    (w / "r.yaml").write_bytes(b"name: x\ndescription: caf\xe9\n")
    return Run(["recipe", "show", str(w / "r.yaml")], file="r.yaml", says="not valid UTF-8")


@case("round 1", "a recipe that is a directory")
def a_recipe_that_is_a_directory(w):
    return Run(["recipe", "show", str(w)], file=w.name, line=False, says="is a directory")


@case("round 1", "an unreadable recipe")
def an_unreadable_recipe(w):
    (w / "r.yaml").write_text(RECIPE.read_text(encoding="utf-8"), encoding="utf-8")
    (w / "r.yaml").chmod(0)
    return Run(["recipe", "show", str(w / "r.yaml")], file="r.yaml", line=False, says="Permission denied",
               skip="root reads any file" if os.geteuid() == 0 else None)


@case("round 1", "a key given twice")
def a_key_given_twice(w):
    path = edited(shipped_copy(w), "  lora_rank: 8\n", "  lora_rank: 8\n  lora_rank: 16\n")
    return Run(["recipe", "show", str(path)], file="r.yaml", says="duplicate key 'lora_rank'")


@case("round 1", "a prompt file that does not exist")
def a_prompt_file_that_does_not_exist(w):
    path = edited(shipped_copy(w), "prompts/logistics_zh/short.md", "prompts/logistics_zh/nope.md")
    return Run(["recipe", "show", str(path)], file="r.yaml", key="prompts.student", says="no such file")


@case("round 1", "a prompt that is a directory (override)")
def a_prompt_that_is_a_directory_override(w):
    return Run(["recipe", "show", str(RECIPE), "prompts.base=prompts"], key="prompts.base", says="is a directory")


@case("round 1", "a choices file that does not exist")
def a_choices_file_that_does_not_exist(w):
    path = edited(shipped_copy(w), "datasets/logistics_zh/cities.txt", "datasets/cities.txt")
    return Run(["recipe", "show", str(path)], file="r.yaml", key="fields.1.choices_file", says="no such file")


@case("round 1", "a labelled file that is not UTF-8 (prepare)")
def a_labelled_file_that_is_not_utf_8_prepar(w):
    row = json.dumps({"id": "1", "text": "欧阳丽 13812345678", "label": pool_rows(1)[0]["label"]},
                     ensure_ascii=False).encode()
    (w / "labelled.jsonl").write_bytes(row + b"\n" + row.replace("欧阳".encode(), "欧阳".encode("gbk")) + b"\n")
    return Run(["prepare", str(RECIPE), "--run", str(w / "run"), "--labelled", str(w / "labelled.jsonl")],
               file="labelled.jsonl", says="not valid UTF-8", check=absent(w / "run" / "data" / "train.jsonl"))


@case("round 1", "a test file that is a directory (eval)")
def a_test_file_that_is_a_directory_eval(w):
    (w / "tests").mkdir()
    return Run(["eval", str(RECIPE), "--run", str(w / "run"), "--model", "rules", "--test", str(w / "tests")],
               file="tests", line=False, says="is a directory")


@case("round 1", "an unreadable test file (eval)")
def an_unreadable_test_file_eval(w):
    (w / "t.jsonl").write_text("{}\n")
    (w / "t.jsonl").chmod(0)
    return Run(["eval", str(RECIPE), "--run", str(w / "run"), "--model", "rules", "--test", str(w / "t.jsonl")],
               file="t.jsonl", line=False, says="Permission denied",
               skip="root reads any file" if os.geteuid() == 0 else None)


@case("round 1", "label inputs (.txt) that are not UTF-8")
def label_inputs_txt_that_are_not_utf_8(w):
    (w / "in.txt").write_bytes("第一条\n\n".encode() + "第三条".encode("gbk") + b"\n")
    return Run(label_argv(w, w / "in.txt"), file="in.txt", says="not valid UTF-8", env={"DASHSCOPE_API_KEY": KEY})


@case("round 1", "a 5 MB text to label")
def a_5_mb_text_to_label(w):
    inputs = write_jsonl(w / "in.jsonl", [{"id": "a", "text": "短"}, {"id": "b", "text": "长" * 5_000_000}])
    return Run(label_argv(w, inputs), file="in.jsonl", says="over data.max_input_chars", env={"DASHSCOPE_API_KEY": KEY},
               check=absent(w / "out" / "labelled.jsonl"))


@case("round 1", "a duplicate id in the texts to label")
def a_duplicate_id_in_the_texts_to_label(w):
    inputs = write_jsonl(w / "in.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}])
    return Run(label_argv(w, inputs), file="in.jsonl", says="duplicate id 'a'", env={"DASHSCOPE_API_KEY": KEY})


@case("round 1", "texts to label with no text at all")
def texts_to_label_with_no_text_at_all(w):
    (w / "in.txt").write_text("\n  \n\n")
    return Run(label_argv(w, w / "in.txt"), file="in.txt", line=False, says="no texts", env={"DASHSCOPE_API_KEY": KEY})


@case("round 1", "a labelled text over data.max_input_chars (prepare)")
def a_labelled_text_over_data_max_input_char(w):
    label = pool_rows(1)[0]["label"]
    rows = [{"id": str(i), "text": t, "label": label} for i, t in enumerate(["短" * 20, "长" * 21])]
    labelled = write_jsonl(w / "labelled.jsonl", rows)
    test = write_jsonl(w / "t.jsonl", [{**rows[0], "id": "t"}])  # the recipe's own test texts are longer than 20
    return Run(["prepare", str(RECIPE), "--run", str(w / "run"), "--labelled", str(labelled), "--allow-path", str(w),
                "data.max_input_chars=20", f"data.labelled={labelled}", "data.pool=null", "data.pool_gold=null",
                f"data.test=[{test}]"], file="labelled.jsonl", says="over data.max_input_chars=20")


@case("round 1", "an empty labelled file (prepare)")
def an_empty_labelled_file_prepare(w):
    (w / "labelled.jsonl").write_text("\n")
    return Run(["prepare", str(RECIPE), "--run", str(w / "run"), "--labelled", str(w / "labelled.jsonl")],
               file="labelled.jsonl", line=False, says="no records")


@case("round 1", "a run folder whose lock file is a link")
def a_run_folder_whose_lock_file_is_a_link(w):
    target = victim(w)
    (w / "run").mkdir()
    (w / "run" / ".xtk.lock").symlink_to(target)
    return Run(["report", str(RECIPE), "--run", str(w / "run")], file=".xtk.lock", line=False, check=untouched(target))


@case("round 1", "a manifest lock planted as a link")
def a_manifest_lock_planted_as_a_link(w):
    target = victim(w)
    (w / "run").mkdir()
    (w / "run" / "manifest.json.lock").symlink_to(target)
    return Run(["report", str(RECIPE), "--run", str(w / "run")], file="manifest.json.lock", line=False,
               check=untouched(target))


@case("round 1", "a labels journal planted as a link (a teacher answering)")
def a_labels_journal_planted_as_a_link_a_tea(w):
    rows = pool_rows(3)
    target = victim(w)
    (w / "out").mkdir()
    (w / "out" / "labelled.jsonl").symlink_to(target)
    return Run(["label", str(RECIPE), "--input", str(raw(w, rows)), "--out", str(w / "out"), "--base-url", "{url}",
                "teacher.gate.records=0"], file="labelled.jsonl", line=False, check=untouched(target),
               gold={r["text"]: r["label"] for r in rows})


@case("round 1", "baseline: os:system, a test row that is a shell command")
def baseline_os_system_a_test_row_that_is_a(w):
    path = recipe_in(w, extra="baseline: os:system\n")
    write_jsonl(w / "p" / "test.jsonl", [{"id": 1, "text": f"touch {w / 'pwned'}", "label": {"a": "x"}}])
    return Run(["eval", str(path), "--model", "rules", "--run", str(w / "run")], file="typed.yaml", key="baseline",
               says="--allow-code os", check=absent(w / "pwned"))


for _key, _ref in (("baseline", "subprocess:call"), ("data.generator", "shutil:rmtree")):
    case("round 1", f"{_key}: {_ref} (override)")(
        lambda w, key=_key, ref=_ref: Run(["recipe", "show", str(RECIPE), f"{key}={ref}"], key=key,
                                          says="--allow-code"))


@case("round 1", "a generator planted beside a downloaded recipe, allowed, run from its folder")
def a_generator_planted_beside_a_downloaded(w):
    path = edited(recipe_in(w), "data: {", "data: {generator: 'evil_gen:build', ")
    (w / "p" / "recipes" / "evil_gen.py").write_text(f"open({str(w / 'pwned')!r}, 'w')\n"
                                                      "def build():\n    return {}\n")
    return Run(["data", "generate", str(path), "--allow-code", "evil_gen"], says="cannot import evil_gen",
               check=absent(w / "pwned"), env={"cwd": str(w / "p" / "recipes")})


@case("round 1", "a generator's file names climbing out of the datasets folder")
def a_generator_s_file_names_climbing_out_of(w):
    (w / "lib").mkdir()
    (w / "lib" / "climbing_gen.py").write_text(
        "def build():\n    return {'ok.txt': 'fine', '../../../escaped.txt': 'x'}\n")
    path = edited(recipe_in(w), "data: {", "data: {generator: 'climbing_gen:build', ")
    return Run(["data", "generate", str(path), "--out", str(w / "p" / "a" / "b" / "datasets"), "--allow-code",
                "climbing_gen"], says="is not a file name inside", env={"PYTHONPATH": str(w / "lib")},
               check=lambda: "escaped.txt was written" if list(w.rglob("escaped.txt")) else None)


@case("round 1", "a recipe granting itself trust_remote_code")
def a_recipe_granting_itself_trust_remote_co(w):
    path = edited(recipe_in(w), "template: chatml}", "template: chatml,\n  trust_remote_code: true}")
    return Run(["recipe", "show", str(path)], file="typed.yaml", key="student.trust_remote_code",
               says="--trust-remote-code")


@case("round 1", "a bake-off spec granting its student trust_remote_code")
def a_bake_off_spec_granting_its_student_tru(w):
    (w / "spec.yaml").write_text(f"students:\n  - model: smollm2-135m-instruct\n    trust_remote_code: true\n"
                                 f"recipes:\n  - recipe: {RECIPE}\n")
    return Run(["bakeoff", str(w / "spec.yaml"), "--out", str(w / "b")], file="spec.yaml",
               key="students.0.trust_remote_code", says="--trust-remote-code")


@case("round 1", "a bake-off spec's overrides naming os:system")
def a_bake_off_spec_s_overrides_naming_os_sy(w):
    (w / "spec.yaml").write_text(f"students: [smollm2-135m-instruct]\nrecipes:\n  - recipe: {RECIPE}\n"
                                 "    overrides: ['baseline=os:system']\n")
    return Run(["bakeoff", str(w / "spec.yaml"), "--out", str(w / "b")], key="baseline", says="--allow-code os")


@case("round 1", "a recipe name that climbs out of runs/")
def a_recipe_name_that_climbs_out_of_runs(w):
    path = edited(recipe_in(w), "name: typed", 'name: "../../escaped"')
    return Run(["recipe", "show", str(path)], file="typed.yaml", key="name", says="expected a plain name")


@case("round 1", "a profile name that climbs out of runs/")
def a_profile_name_that_climbs_out_of_runs(w):
    path = recipe_in(w, extra="profiles:\n  '../../../x': {eval: {limit: 1}}\n")
    return Run(["eval", str(path), "--profile", "../../../x", "--model", "rules", "--run", str(w / "run")],
               file="typed.yaml", says="profile: expected a plain name")


@case("round 1", "a teacher prompt that is not UTF-8")
def a_teacher_prompt_that_is_not_utf_8(w):
    path = recipe_in(w)
    (w / "p" / "t.md").write_bytes(b"Answer \xff JSON.\n")
    return Run(["recipe", "show", str(path)], file="t.md", key="prompts.teacher", says="not valid UTF-8")


@case("round 1", "a teacher prompt that is empty")
def a_teacher_prompt_that_is_empty(w):
    path = recipe_in(w)
    (w / "p" / "t.md").write_bytes(b"  \n\n")
    return Run(["recipe", "show", str(path)], file="t.md", line=False, key="prompts.teacher", says="is empty")


@case("round 1", "a choices file with a line that is not UTF-8")
def a_choices_file_with_a_line_that_is_not_u(w):
    path = recipe_in(w, "fields:\n  - {name: province, description: p, choices_file: places.txt}\n")
    (w / "p" / "places.txt").write_bytes("北京市\n上海市\n\xa0\n".encode() + b"\xc3\x28\n")
    return Run(["recipe", "show", str(path)], file="places.txt", key="fields.0.choices_file", says="not valid UTF-8")


@case("round 1", "a duplicate id in a test file (eval --test)")
def a_duplicate_id_in_a_test_file_eval_test(w):
    rows = test_rows(5)
    test = write_jsonl(w / "dup.jsonl", rows + [rows[2]])
    return Run(["eval", str(RECIPE), "--model", "rules", "--test", str(test), "--run", str(w / "run")],
               file="dup.jsonl", says="duplicate id")


@case("round 1", "a duplicate id in a recipe's own test file")
def a_duplicate_id_in_a_recipe_s_own_test_fi(w):
    path = recipe_in(w)
    write_jsonl(w / "p" / "test.jsonl", [{"id": 1, "text": "t", "label": {"a": "x"}}] * 2)
    return Run(["recipe", "show", str(path)], file="test.jsonl", key="data.test.0", says="duplicate id 1")


for _flag, _value in (("--rows", "-5"), ("--ram", "inf"), ("--gpu", "nan")):
    case("round 1", f"advise {_flag} {_value}")(
        lambda w, flag=_flag, value=_value: Run(["advise", str(RECIPE), flag, value, "--json"],
                                                says=f"argument {flag}"))


for _override, _key in (("root=/tmp", "root"), ("profile=gpu", "profile"), ("data.spread_over=[nope]",
                                                                             "data.spread_over")):
    case("round 1", f"override {_override}")(
        lambda w, o=_override, k=_key: Run(["recipe", "show", str(RECIPE), o], key=k))


@case("round 1", "a check across keys names its key and line")
def a_check_across_keys_names_its_key_and_li(w):
    path = recipe_in(w, data="{pool: pool.jsonl, test: [test.jsonl], train_records: 10,\n       val_fraction: 0, "
                     "spread_over: [nope]}")
    return Run(["recipe", "show", str(path)], file="typed.yaml", key="data.spread_over")


@case("round 1", "fields: []")
def fields(w):
    return Run(["recipe", "show", str(recipe_in(w, "fields: []\n"))], file="typed.yaml", key="fields",
               says="at least one field")


@case("round 1", "eval --name climbing out of eval/")
def eval_name_climbing_out_of_eval(w):
    return Run(["eval", str(RECIPE), "--run", str(w / "run"), "--model", "rules", "--name=../../etc"], says="--name")


@case("round 1", "a student folder that ships code")
def a_student_folder_that_ships_code(w):
    model = w / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / "tokenization_x.py").write_text(f"open({str(w / 'pwned')!r}, 'w')\n")
    return Run(["prepare", str(RECIPE), f"student.model={model}", "--run", str(w / "run")],
               says="--trust-remote-code", check=absent(w / "pwned"))


@case("round 1", "a teacher that never answers")
def a_teacher_that_never_answers(w):
    rows = pool_rows(6)
    return Run(["label", str(RECIPE), "--input", str(raw(w, rows)), "--out", str(w / "out"), "--base-url", "{url}",
                "teacher.timeout_s=1", "teacher.concurrency=2", "teacher.gate.records=0"], says="has never answered",
               gold={r["text"]: r["label"] for r in rows}, teacher={"latency_s": 600})


# --- running them ----------------------------------------------------------------------------------------------------

def run_child(argv: list[str], cwd: Path, env: dict, sample: bool) -> dict:
    """`python -m toolkit ARGV` in `cwd`: exit status, stderr, seconds, and its peak memory (the kernel's, from
    wait4; with `sample`, psutil's highest reading every 10 ms too)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "toolkit", *argv], cwd=cwd, env=env, stdout=out, stderr=err)
        sampled, stop = [0], threading.Event()

        def watch() -> None:
            try:
                p = psutil.Process(proc.pid)
                while not stop.is_set():
                    sampled[0] = max(sampled[0], p.memory_info().rss)
                    time.sleep(0.01)
            except psutil.Error:
                pass

        watcher = threading.Thread(target=watch, daemon=True)
        if sample:
            watcher.start()
        timer = threading.Timer(TIME_LIMIT_S, proc.kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        timer.cancel()
        stop.set()
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        err.seek(0)
        stderr = err.read().decode("utf-8", errors="replace")
    return {"exit": proc.returncode, "stderr": stderr, "seconds": round(seconds, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            **({"sampled_peak_rss_mb": round(sampled[0] / 2 ** 20, 1)} if sample else {})}


def names(stderr: str, run: Run) -> dict:
    """Whether stderr names what is at fault: the file (with its line where `run.line`) and the key."""
    found = {}
    if run.file:
        pattern = re.escape(run.file) + (r":\d+" if run.line else r"")
        found["file_line" if run.line else "file"] = bool(re.search(pattern, stderr))
    if run.key:
        found["key"] = f"key '{run.key}'" in stderr
    if run.says:
        found["says"] = run.says in " ".join(stderr.split())
    return found


def run_case(c: Case, base: Path) -> dict:
    w = base / re.sub(r"\W+", "-", c.name).strip("-")[:60]
    w.mkdir()
    run = c.make(w)
    row = {"name": c.name, "hole": c.hole}
    if run.skip:
        return {**row, "skipped": run.skip, "as_expected": True}
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}  # no real teacher is ever asked
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **{k: v for k, v in run.env.items() if k != "cwd"})
    # this checkout's xtk, wherever the installed one lives (a clean worktree run beside a working one)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), run.env.get("PYTHONPATH"))))
    if run.gold is not None:  # the local test teacher takes any key
        env["DASHSCOPE_API_KEY"] = KEY
    cwd = Path(run.env.get("cwd", w))
    argv = run.argv
    if run.gold is not None:
        with TeacherServer(run.gold, **run.teacher) as server:
            argv = [a.replace("{url}", server.base_url) for a in argv]
            got = run_child(argv, cwd, env, sample=False)
            server.release()
    else:
        got = run_child(argv, cwd, env, sample=c.hole == "6")
    stderr = got.pop("stderr")
    found = names(stderr, run)
    problem = run.check() if run.check else None
    traceback = "Traceback (most recent call last)" in stderr
    silent = got["exit"] == 0 and run.expect != 0
    ok = got["exit"] == run.expect and all(found.values()) and problem is None and not traceback
    return {**row, "argv": ["xtk", *(a.replace(str(w), "WORK").replace(str(ROOT), "ROOT") for a in argv)],
            "expected_exit": run.expect, **got, "names": found, "traceback": traceback, "silent": silent,
            "check": problem, "as_expected": ok,
            "stderr_tail": stderr.strip()[-400:].replace(str(w), "WORK").replace(str(ROOT), "ROOT")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run only the cases whose name holds this (the results file is not written)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bad_input.json"))
    args = parser.parse_args()
    cases = [c for c in CASES if not args.only or args.only in c.name]
    rows = []
    with tempfile.TemporaryDirectory(prefix="xtk-bad-input-") as tmp:
        for i, c in enumerate(cases, 1):
            row = run_case(c, Path(tmp))
            rows.append(row)
            mark = "skip" if row.get("skipped") else "ok" if row["as_expected"] else "NOT AS EXPECTED"
            print(f"[{i}/{len(cases)}] hole {c.hole}: {c.name}: exit {row.get('exit')} "
                  f"({row.get('seconds')} s) {mark}", flush=True)
    ran = [r for r in rows if not r.get("skipped")]
    bomb_row = next((r for r in ran if r["hole"] == "6" and "bomb" in r["name"]), None)
    summary = {
        "cases": len(rows), "skipped": len(rows) - len(ran), "as_expected": sum(r["as_expected"] for r in rows),
        "exit_codes": {str(code): sum(r["exit"] == code for r in ran) for code in sorted({r["exit"] for r in ran})},
        "tracebacks": sum(r["traceback"] for r in ran), "silent": sum(r["silent"] for r in ran),
        "not_naming_what_is_at_fault": [r["name"] for r in ran if not all(r["names"].values())],
        "failed_checks": {r["name"]: r["check"] for r in ran if r["check"]},
        "not_as_expected": [r["name"] for r in rows if not r["as_expected"]],
        "by_hole": {h: sum(r["hole"] == h for r in rows) for h in dict.fromkeys(c.hole for c in cases)},
        "alias_bomb_peak_rss_mb": bomb_row and bomb_row["peak_rss_mb"],
        "alias_bomb_sampled_peak_rss_mb": bomb_row and bomb_row["sampled_peak_rss_mb"],
        "wall_s": round(sum(r.get("seconds", 0) for r in rows), 1),
    }
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    if args.only:
        return 0 if summary["as_expected"] == len(rows) else 1
    write_json(args.out, {**provenance(one_run=True), "benchmark": "bad_input", "what": __doc__.split("\n\n")[0].replace("\n", " "),
                          "python": sys.version.split()[0], "summary": summary, "results": rows})
    print(f"written: {args.out}")
    return 0 if summary["as_expected"] == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
