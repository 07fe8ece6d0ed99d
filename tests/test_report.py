"""The report: report.md (one table, the run's facts, the worst errors by how wrong), report.html (self-contained,
escaped, confusions of closed-set fields, an error browser tested in a real browser) and `xtk report --compare`.
The run folders are built from hand-written answers scored by xtk's own scoring: no model is needed."""

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import RECIPE, write_recipe
from toolkit.io.jsonl import write_json, write_jsonl
from toolkit.task.recipe import load_recipe
from toolkit.evaluate.report import run_report
from toolkit.task.scoring import compute_metrics, score_record

FIELDS = """\
fields:
  - {name: district, description: district, choices: [锦江区, 锦州市, 武侯区]}
  - {name: name, description: recipient, max_chars: 8}
"""
XSS = "<script>alert(1)</script>"
# (id, text, gold, the answer: parsed JSON or None for no JSON). Edit distances worked by hand:
# a1 district 锦州市/锦江区 2; a2 district 武侯区/锦江区 2 and name 李四四/李四 1; a3 name 5 extra 五;
# a4 unparseable: both fields as far as their gold values, 3 + 2; a5 right.
STUDENT = [
    ("a1", "锦江区 张三", {"district": "锦江区", "name": "张三"}, {"district": "锦州市", "name": "张三"}),
    ("a2", "锦江区 李四", {"district": "锦江区", "name": "李四"}, {"district": "武侯区", "name": "李四四"}),
    ("a3", f"{XSS} 王五", {"district": "锦江区", "name": "王五"}, {"district": "锦江区", "name": "王五五五五五五"}),
    ("a4", "武侯区 赵六", {"district": "武侯区", "name": "赵六"}, None),
    ("a5", "锦州市 钱七", {"district": "锦州市", "name": "钱七"}, {"district": "锦州市", "name": "钱七"}),
]
RULES = [("b1", "锦江区 孙八", {"district": "锦江区", "name": "孙八"}, {"district": "锦州市", "name": "孙八"})]
MANIFEST = {"stages": {"data": {"source": "the teacher", "summary": {"cost": 0.0123, "tokens_in": 1000,
                                                                     "tokens_out": 200}},
                       "prepare": {"stats": {"train": 390, "val": 10}},
                       "train": {"versions": {"commit": "abc123def456"}}}}


@pytest.fixture
def recipe(tmp_path):
    return load_recipe(write_recipe(tmp_path, FIELDS))


def write_eval(recipe, run: Path, name: str, role: str, answers) -> None:
    """eval/<name>/ as evaluation writes it: predictions.jsonl and metrics.json, scored by xtk's scoring."""
    rows = []
    for id_, text, gold, parsed in answers:
        correct = score_record(recipe, parsed, gold)
        rows.append({"id": id_, "input": text, "gold": gold, "raw": "oops" if parsed is None else json.dumps(parsed),
                     "parsed": parsed, "correct": correct, "exact": all(correct.values())})
    write_jsonl(run / "eval" / name / "predictions.jsonl", rows)
    write_json(run / "eval" / name / "metrics.json", {**compute_metrics(recipe, rows, bootstrap=50), "model": role,
                                                      "role": role, "test_file": "test.jsonl", "records_per_s": 1.0})


@pytest.fixture
def run(recipe, tmp_path):
    run = tmp_path / "run"
    write_eval(recipe, run, "student-test", "student", STUDENT)
    write_eval(recipe, run, "rules-test", "rules", RULES)
    run_report(recipe, run, manifest=MANIFEST, train_minutes={"student": 3.5}, data_source="the teacher")
    return run


def test_report_md_has_one_table_the_runs_facts_and_the_worst_errors_first(run):
    report = (run / "report.md").read_text(encoding="utf-8")
    assert sum(line.startswith("|---") for line in report.splitlines()) == 1
    for fact in ("- student: smollm2-135m-instruct (llama), dequantised from a Q4_1 GGUF (not the publisher's "
                 "original weights)", "- training labels: the teacher",
                 "- labelling cost: 0.0123 (teacher.price_*_per_mtok; 1000 tokens in, 200 out)",
                 "- training rows: 390 (+ 10 validation)", "- training time: 3.5 min", "- xtk commit: abc123def456",
                 "- hyper-parameters: lora, rank 8, alpha 32, 1 epoch, learning rate 0.0001 (cosine), batch 1 × 1 "
                 "accumulated, max length 256, seed 42"):
        assert fact in report
    # the student's row: its prompt file, the student's name (not its `merged` folder), its weakest field
    assert ("| student-test (fine-tuned student, prompt s.md) | smollm2-135m-instruct, fine-tuned | test.jsonl | 5 "
            "| 20.0 [4–62] |") in report
    assert "| district 40.0 [" in report  # 2 of 5 right, as name: the first field of the lowest
    worst = re.findall(r"^- `(\w+)`", report.split("**student-test**")[1].split("**rules-test**")[0], re.M)
    assert worst == ["a2", "a3", "a1", "a4"]  # two wrong fields; then edit distance 5 before 2; no JSON last
    assert "district '锦江区' → '武侯区'; name '李四' → '李四四'" in report


def test_report_html_is_one_escaped_file_with_the_confusions_of_closed_set_fields(run):
    page = (run / "report.html").read_text(encoding="utf-8")
    assert XSS not in page and "<script>alert" not in page  # a record's text is data, never markup
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched: it opens from scp
    assert page.index('id="summary"') < page.index('id="accuracy"') < page.index('id="errors"')
    assert "<tr><td>xtk commit</td><td>abc123def456</td></tr>" in page
    # district is a closed set: what its gold value was answered as; name is free text: none
    assert "<tr><td>student-test</td><td>锦江区</td><td>锦州市</td><td>1</td></tr>" in page
    assert "<tr><td>student-test</td><td>武侯区</td><td>(no JSON)</td><td>1</td></tr>" in page
    confusions = page[page.index('id="confusions"'):page.index('id="errors"')]
    assert "<h3>district</h3>" in confusions and "<h3>name</h3>" not in confusions
    assert 'aria-label="40.0 [' in page  # district's accuracy drawn with its interval


def test_the_loss_chart_turns_logarithmic_when_the_loss_falls_over_a_decade():
    from toolkit.train.losschart import log_scale_helps

    assert log_scale_helps([3.0, 0.5, 0.29]) and not log_scale_helps([3.0, 0.5, 0.31])
    assert not log_scale_helps([3.0, 0.0])  # a zero has no logarithm


def test_the_commit_is_recorded_with_the_versions():
    from toolkit.run.manifest import versions

    assert re.fullmatch(r"[0-9a-f]{12}(-dirty)?", versions()["commit"])  # the tests run from a git checkout


def test_compare_pairs_two_runs_records_by_id(recipe, tmp_path, capsys):
    from toolkit.cli import main

    write_eval(recipe, tmp_path / "a", "student-test", "student", STUDENT)
    better = [(i, t, g, None if i == "a4" else g) for i, t, g, _ in STUDENT]  # right but a4
    write_eval(recipe, tmp_path / "b", "student-test", "student",
               better + [("x9", "锦江区 周九", {"district": "锦江区", "name": "周九"}, None)])
    write_eval(recipe, tmp_path / "b", "rules-test", "rules", RULES)
    assert main(["report", str(recipe.root / "recipes" / "typed.yaml"), "--compare", str(tmp_path / "a"),
                 str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    # exact match 1 of 5 against 4 of 5 on the 5 common records (x9 is B's only); a1-a3 right in B alone:
    # McNemar's exact p = 2 · C(3, 0) / 2^3 = 0.25
    assert re.search(r"^\| student-test \| exact match \| 5 \| 20\.0 \| 80\.0 \| \+60\.0 \[\+[\d.]+, \+[\d.]+\] "
                     r"\| 0 / 3 \| 0\.25 \|$", out, re.M)
    # name right in a1 and a5 in A, all but a4 in B: a2 and a3 in B alone, p = 2 · C(2, 0) / 2^2 = 0.5
    assert "| student-test | name | 5 | 40.0 | 80.0 | +40.0 [" in out and "| 0 / 2 | 0.5 |" in out
    assert "In one run only: rules-test." in out
    (tmp_path / "empty").mkdir()
    assert main(["report", str(recipe.root / "recipes" / "typed.yaml"), "--compare", str(tmp_path / "a"),
                 str(tmp_path / "empty")]) == 2
    assert "no evaluation of the same name in" in " ".join(capsys.readouterr().err.split())


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


in_a_browser = pytest.mark.skipif(not Path(CHROMIUM).is_file() and not os.environ.get("CI"),
                                  reason="Debian's chromium is not installed (CI installs it: .ci/run)")


@contextmanager
def browser_page(errors: list, **options):
    """A page of Debian's chromium driven by playwright; console errors, page errors and dialogs go to `errors`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(**options)
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: errors.append(f"dialog: {d.message}"))  # an alert() from a record
            yield page
        finally:
            browser.close()


@in_a_browser
def test_report_html_in_a_browser_filters_and_sorts_the_errors(run):
    """Debian's chromium driven by playwright: the page loads with no console error, and the error browser's
    filters and sort change which answers it shows, in the order worked out by hand above."""
    errors = []
    with browser_page(errors) as page:
        page.goto((run / "report.html").as_uri())

        def shown():
            return page.eval_on_selector_all("#error-rows tr", "rows => rows.map(r => r.dataset.id)")

        # wrong fields, then edit distance; ties by evaluation and id (b1 of rules-test before a1)
        assert shown() == ["a4", "a2", "a3", "b1", "a1"]
        page.select_option("#f-sort", "distance")
        assert shown() == ["a4", "a3", "a2", "b1", "a1"]
        page.select_option("#f-field", "name")  # name's own edit distance: 5, 2 (no JSON), 1
        assert shown() == ["a3", "a4", "a2"]
        page.select_option("#f-field", "")
        page.select_option("#f-eval", "rules-test")
        assert shown() == ["b1"] and page.inner_text("#count") == "1 wrong answers"
        page.select_option("#f-eval", "student-test")
        a3 = page.locator('#error-rows tr[data-id="a3"] td.text')
        assert a3.inner_text() == f"{XSS} 王五"  # shown as text
    assert errors == []


WIDE = "fields:\n" + "".join(f"  - {{name: recipient_detailed_field_{i}, type: \"str?\", description: d}}\n"
                              for i in range(12))


@in_a_browser
def test_report_html_fits_a_1400_pixel_window_and_marks_null_and_the_empty_text(tmp_path):
    """12 fields, a text of 600 characters with no space, five evaluations: the page does not scroll sideways in a
    1400-pixel window (a screenshot is kept beside it); the error browser draws null, "" and a field left out
    apart from any text."""
    recipe = load_recipe(write_recipe(tmp_path, WIDE))
    names = recipe.field_names
    gold = {f: "x" for f in names}
    answers = [("w1", "W" * 600, gold, {**gold, names[0]: None, names[1]: "", names[2]: "null"}),
               ("w2", "短", {**gold, names[0]: ""}, {k: v for k, v in gold.items() if k != names[1]})]
    run = tmp_path / "run"
    for who in ("base", "likelihood", "student", "teacher", "rules"):
        write_eval(recipe, run, f"{who}-test", who, answers)
    run_report(recipe, run)
    errors = []
    with browser_page(errors, viewport={"width": 1400, "height": 900}) as page:
        page.goto((run / "report.html").as_uri())
        page.screenshot(path=str(tmp_path / "report-1400.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= 1400
        page.select_option("#f-eval", "student-test")
        w1 = page.locator('#error-rows tr[data-id="w1"] td').nth(6)  # the prediction
        assert w1.locator(".null").inner_text() == "null" and w1.locator(".empty").inner_text() == '""'
        assert w1.locator(".null").count() == 1  # the text "null" is text, not marked
        w2 = page.locator('#error-rows tr[data-id="w2"] td')
        assert w2.nth(5).locator(".empty").count() == 1 and w2.nth(6).locator(".missing").inner_text() == "(missing)"
    assert errors == []


def test_a_row_names_the_prompt_file_or_says_the_prompt_was_rendered_from_the_fields():
    """A recipe's prompt may be a file or, left out, rendered from its fields (xtk init writes no prompt files):
    the table's row says which, and a run of such a recipe gets its report (it crashed on the missing file name)."""
    from toolkit.evaluate.report import row_label

    shipped = load_recipe(RECIPE, "cpu")
    assert row_label(shipped, "base-test", {"role": "base"}) == "base-test (base student, prompt detailed.md)"
    rendered = load_recipe(RECIPE, "cpu", ["prompts.base=null"])
    assert row_label(rendered, "base-test", {"role": "base"}) == (
        "base-test (base student, prompt rendered from the fields)")
    assert row_label(rendered, "mine-test", {"role": "model"}) == "mine-test"


# --- the headline: one sentence, its comparisons by a paired test ------------------------------------------------

def twelve(right: int) -> list:
    """12 records, the first `right` answered right, the others with a wrong district."""
    rows = []
    for i in range(12):
        gold = {"district": "锦江区", "name": f"张{i}"}
        rows.append((f"h{i}", f"锦江区 张{i}", gold, gold if i < right else {**gold, "district": "武侯区"}))
    return rows


def headline_of(run: Path) -> str:
    report = (run / "report.md").read_text(encoding="utf-8").splitlines()
    assert report[1] == "" and report[2].startswith("**") and report[2].endswith("**")  # right under the title
    return report[2].strip("*")


def test_the_headline_compares_the_student_with_the_teacher_by_mcnemar(recipe, tmp_path):
    run = tmp_path / "run"
    write_eval(recipe, run, "student-test", "student", twelve(2))
    write_eval(recipe, run, "teacher-test", "teacher", twelve(12))
    run_report(recipe, run)
    # 10 records only the teacher got right: p = 2 / 2^10 = 0.00195, shown at 5%
    assert headline_of(run) == ("The student gets 16.7% [5–45] of the 12 records of test.jsonl fully right; 83.3 "
                                "points behind the teacher (McNemar p = 0.002, 12 records both answered); at 1.00 "
                                "records/s.")
    page = (run / "report.html").read_text(encoding="utf-8")
    assert page.index('<p class="headline">The student gets 16.7% [5–45]') < page.index('id="summary"')

    write_eval(recipe, run, "teacher-test", "teacher", twelve(5))  # 3 records apart: p = 0.25, not shown
    run_report(recipe, run)
    assert "; -25.0 points against the teacher, a difference not shown at 5% (McNemar p = 0.25, 12 records both " \
           "answered);" in headline_of(run)


def test_the_headline_says_the_teacher_was_not_evaluated_and_the_worst_errors_start_with_the_student(recipe,
                                                                                                      tmp_path):
    run = tmp_path / "run"
    write_eval(recipe, run, "base-test", "base", twelve(0))
    write_eval(recipe, run, "student-test", "student", twelve(11))
    write_eval(recipe, run, "rules-test", "rules", twelve(11))
    run_report(recipe, run, skipped={"eval_teacher": "$XTK_TEST_API_KEY is not set"})
    assert headline_of(run) == (
        "The student gets 91.7% [65–99] of the 12 records of test.jsonl fully right; the teacher was not evaluated "
        "on it ($XTK_TEST_API_KEY is not set); +0.0 points against the rule baseline, a difference not shown at 5% "
        "(McNemar p = 1, 12 records both answered); at 1.00 records/s.")
    report = (run / "report.md").read_text(encoding="utf-8")
    errors = report.split("## Worst errors")[1]
    assert errors.index("**student-test**") < errors.index("**base-test**")  # the base model's misses after


NULLS = """\
fields:
  - {name: district, description: district, choices: [锦江区, 武侯区]}
  - {name: note, type: "str?", description: a note, choices: ["", "null", 加急]}
"""


def test_null_and_the_empty_text_are_told_apart(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, NULLS))
    run = tmp_path / "run"
    write_eval(recipe, run, "student-test", "student", [
        ("n1", "锦江区", {"district": "锦江区", "note": ""}, {"district": "锦江区", "note": None}),
        ("n2", "武侯区", {"district": "武侯区", "note": None}, {"district": "锦江区", "note": "null"})])
    run_report(recipe, run)
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "note '' → `null`" in report and "note `null` → 'null'" in report
    page = (run / "report.html").read_text(encoding="utf-8")
    # note is a closed set: its confusions mark null and the empty text, and the text "null" stays text
    confusions = page[page.index('id="confusions"'):page.index('id="errors"')]
    assert '<td><span class="empty">""</span></td><td><span class="null">null</span></td><td>1</td>' in confusions
    assert '<td><span class="null">null</span></td><td>null</td><td>1</td>' in confusions
