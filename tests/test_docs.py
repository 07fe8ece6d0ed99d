"""The documentation: every measured table is its results file's (benchmarks/tables.py), the README stays a
five-minute read whose test command is CI's, and every link between the docs leads somewhere."""

import importlib.util
import json
import re
import shlex
import shutil

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("tables", ROOT / "benchmarks" / "tables.py")
tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tables)

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_table_is_its_results_file():
    stale = [f"{p.relative_to(ROOT)}: {name}" for p in DOCS for name in tables.update(p)[1]]
    assert not stale, f"run `python benchmarks/tables.py` and reread the prose around: {stale}"


def test_every_table_is_shown_somewhere():
    shown = {m.group(2) for p in DOCS for m in tables.BLOCK.finditer(p.read_text(encoding="utf-8"))}
    assert shown == set(tables.TABLES)


def test_a_changed_figure_is_found_in_the_doc_and_in_the_results_file(tmp_path):
    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    shipped = json.loads((ROOT / "benchmarks" / "results" / "distill_cpu.json").read_text(encoding="utf-8"))
    test, unseen = (f"{100 * shipped['headline'][f'student-{t}']:.1f}" for t in ("test", "test_unseen"))
    assert f"| **fine-tuned student** | {test} | {unseen} |" in text
    readme.write_text(text.replace(f"| **fine-tuned student** | {test} |", "| **fine-tuned student** | 12.5 |"),
                      encoding="utf-8")
    fixed, changed = tables.update(readme)
    assert changed == ["headline"] and fixed == text

    results = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", results, ignore=shutil.ignore_patterns("*_cpu"))
    data = json.loads((results / "distill_cpu.json").read_text(encoding="utf-8"))
    data["headline"]["student-test"] = 0.125
    (results / "distill_cpu.json").write_text(json.dumps(data), encoding="utf-8")
    readme.write_text(text, encoding="utf-8")
    fixed, changed = tables.update(readme, results)
    assert changed == ["headline"] and f"| **fine-tuned student** | 12.5 | {unseen} |" in fixed


def test_check_mode_exits_1_and_changes_nothing(tmp_path, monkeypatch, capsys):
    doc = tmp_path / "results.md"
    doc.write_text("<!-- table:eval_speed -->\nold\n<!-- /table -->\n", encoding="utf-8")
    monkeypatch.setattr(tables, "DOCS", (doc,))
    monkeypatch.setattr(tables, "ROOT", tmp_path)
    assert tables.main(["--check"]) == 1
    assert "results.md: table eval_speed" in capsys.readouterr().out and "old" in doc.read_text(encoding="utf-8")
    assert tables.main([]) == 0 and tables.main(["--check"]) == 0


def test_readme_is_short_and_its_commands_are_the_ones_that_run():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    block = re.search(r"## Two commands.*?```bash\n(.*?)```", readme, re.S).group(1).splitlines()
    main, test = (line.split("#")[0].strip() for line in block)
    assert main == "bash sft.sh" and (ROOT / "sft.sh").is_file()
    assert test == "bash setup.sh && .venv/bin/python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert any(line.startswith(test) for line in ci.splitlines()), ".ci/run must run the README's test command"


def test_readmes_command_table_names_every_command():
    from toolkit.cli.table import COMMANDS

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## The commands", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `xtk ")]
    missing = [c.name for c in COMMANDS if not any(f"`xtk {c.name}" in row for row in rows)]
    assert not missing, f"README's command table lacks a row for: {missing}"



def doc_commands(text: str):
    """Each command a doc gives: (line, command, the flags given it) for `xtk COMMAND ...` in code (a `span` or a
    fenced block, pipes and continued lines read), and for prose that gives commands a flag ("`xtk predict` and
    `xtk serve` with `--backend llamacpp`")."""
    from toolkit.cli.table import COMMANDS

    names = sorted((c.name for c in COMMANDS), key=len, reverse=True)

    def named(words: str) -> str | None:
        return next((n for n in names if words == n or words.startswith(n + " ")), None)

    for m in re.finditer(r"```[a-z]*\n(.*?)```|`([^`\n]+)`", text, re.S):
        code = (m.group(1) or m.group(2)).replace("\\\n", " ").replace("\\|", " ")
        for segment in re.split(r"[|;&\n]|\$\(", code):
            found = re.match(r"\s*(?:\S*/)?xtk\s+(.*)", segment)
            if found and (name := named(found.group(1))):
                yield (text.count("\n", 0, m.start()) + 1, name,
                       re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", found.group(1)[len(name):]))
    span = r"`xtk ([a-z]+(?: [a-z]+)?)`"
    for m in re.finditer(rf"((?:{span}(?:,|\s+and|\s+or)?\s+)+)with\s+`(--[\w-]+)", text):
        for words in re.findall(span, m.group(1)):
            if name := named(words):
                yield text.count("\n", 0, m.start()) + 1, name, [m.group(m.lastindex)]


def test_every_flag_a_doc_gives_a_command_is_one_the_command_takes():
    """docs/export.md told users to run predict and serve "with `--backend llamacpp`", which neither takes."""
    from toolkit.cli.table import COMMANDS

    takes = {c.name: {f for a in c.args for f in a.flags if f.startswith("-")} | {"-h", "--help"} for c in COMMANDS}
    assert ("predict", ["--backend"]) in [(n, f) for _, n, f in doc_commands(
        "`xtk export`'s parity, `xtk predict` and `xtk serve` with\n`--backend llamacpp`")]
    found = [(doc, *c) for doc in DOCS for c in doc_commands(doc.read_text(encoding="utf-8"))]
    assert len(found) > 100  # the docs' commands are read
    bad = [f"{doc.relative_to(ROOT)}:{line}: xtk {name} has no {flag}"
           for doc, line, name, flags in found for flag in flags if flag not in takes[name]]
    assert not bad, "\n".join(bad)


def test_the_readmes_five_minute_path_runs_as_written(tmp_path, monkeypatch, capsys):
    """Every command of the path but the last (`xtk run`, which trains) on the invoice rows test_init writes,
    as README prints them: a path whose init leaves a TODO would stop at `xtk recipe check` (exit 2)."""
    from test_init import write_examples
    from toolkit.cli import main

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Your own task in five minutes.*?```bash\n(.*?)```", readme, re.S).group(1)
    commands = [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()]
    assert commands[-1][:4] == ["xtk", "run", "recipes/invoice.yaml", "--profile"]
    monkeypatch.chdir(tmp_path)
    write_examples(tmp_path / "invoices.jsonl", 20)
    for argv in commands[:-1]:
        assert argv[0] == "xtk" and main(argv[1:]) == 0, (argv, capsys.readouterr().err)
    assert "=== student (training, the student's evaluation, predict, serve): system ===" in capsys.readouterr().out


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_lead_somewhere(doc):
    text = doc.read_text(encoding="utf-8")
    assert "DESIGN.md" not in text
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, fragment = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        assert linked.is_file(), f"{doc.name}: {target} is no file"
        if fragment:
            headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M)
            assert fragment in {anchor(h) for h in headings}, f"{doc.name}: {target} names no heading"


def test_a_verdict_is_computed_from_the_p_value_never_read_from_the_file(tmp_path):
    """teacher_noise_cpu.json's (c) vs (b): McNemar p 0.0066 for a difference of -6.3 points, which the file's own
    verdict string (written before the "below" fix) calls "not shown"."""
    results = tmp_path / "results"
    results.mkdir()
    data = json.loads((ROOT / "benchmarks" / "results" / "teacher_noise_cpu.json").read_text(encoding="utf-8"))

    def row(pair: str) -> str:
        (results / "teacher_noise_cpu.json").write_text(json.dumps(data), encoding="utf-8")
        text = tables.render("teacher_noise_cpu", results, stale=False)
        return next(line for line in text.splitlines() if line.startswith(f"| {pair} |"))

    assert row("c vs b").endswith("| 0.0066 | shown worse at 5% |")
    data["paired"]["c vs b"]["verdict"] = "beats"  # a typed verdict is never shown
    data["paired"]["c vs b"]["p_mcnemar"] = 0.2
    assert row("c vs b").endswith("| 0.2 | not shown at 5% |")
    data["paired"]["c vs b"]["p_mcnemar"], data["paired"]["c vs b"]["difference"]["value"] = 0.01, 0.05
    assert row("c vs b").endswith("| 0.01 | shown better at 5% |")
    assert row("a vs c").endswith("| < 0.0001 | shown better at 5% |")  # the file rounds p to 4 places: 0.0


def test_an_arm_the_file_predates_is_not_yet_measured_until_the_file_has_it(tmp_path):
    """teacher_noise_cpu.json was written before the size-matched (e) and repaired (f) arms: the tables show each as
    not yet measured, never a figure. A copy of the file with (f) against (c) measured shows its figure and the
    verdict its p-value gives."""
    results = tmp_path / "results"
    results.mkdir()
    data = json.loads((ROOT / "benchmarks" / "results" / "teacher_noise_cpu.json").read_text(encoding="utf-8"))

    def lines(name: str) -> list[str]:
        (results / "teacher_noise_cpu.json").write_text(json.dumps(data), encoding="utf-8")
        return tables.render(name, results, stale=False).splitlines()

    assert "f vs c" not in data["paired"] and "f" not in data["students"]
    full, headline = lines("teacher_noise_cpu"), lines("teacher_noise_headline")
    for pair in ("e vs b", "e vs c", "f vs b", "f vs c"):
        assert next(x for x in full if x.startswith(f"| {pair} |")).endswith("| not yet measured | — | — | — |")
    assert any(x.startswith("| (e) ") and x.endswith("| — | — | not yet measured |") for x in full)
    assert next(x for x in headline if "| (f) vs (c) |" in x).endswith("| (f) vs (c) | not yet measured | — | — |")
    data["paired"]["f vs c"] = {"question": "repairing against rejecting", "records": 300, "first_only_right": 30,
                                "second_only_right": 12, "p_mcnemar": 0.008,
                                "difference": {"value": 0.06, "ci95": [0.02, 0.1]}}
    row = next(x for x in lines("teacher_noise_headline") if "| (f) vs (c) |" in x)
    assert row.endswith("| (f) vs (c) | +6.0 [+2.0, +10.0] | 0.008 | shown better at 5% |")
    data["paired"]["f vs c"]["p_mcnemar"] = 0.3
    assert next(x for x in lines("teacher_noise_cpu") if x.startswith("| f vs c |")).endswith(
        "| 30 / 12 | 0.3 | not shown at 5% |")


def test_a_bootstrap_verdict_is_read_from_its_interval(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    data = json.loads((ROOT / "benchmarks" / "results" / "review_sentiment_zh_cpu.json").read_text(encoding="utf-8"))
    versus = data["student_vs_baseline"]["test"]
    for ci, says in (([-0.0061, 0.0766], "not shown at 5%"), ([0.004, 0.0766], "shown better at 5%"),
                     ([-0.07, -0.001], "shown worse at 5%")):
        versus["difference"]["ci95"] = ci
        (results / "review_sentiment_zh_cpu.json").write_text(json.dumps(data), encoding="utf-8")
        text = tables.render("review_sentiment_zh_cpu", results, stale=False)
        assert f"paired bootstrap (1000 resamples): **{says}**" in text


def test_the_readme_says_what_each_embedded_students_weights_are():
    from toolkit.model.models import EMBEDDED

    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    for model in EMBEDDED.values():
        assert f"dequantised from a {model.quantisation} GGUF" in readme


def shipped(name: str) -> dict:
    return json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text(encoding="utf-8"))


def goals_line(tmp_path, name: str, table_name: str, data: dict) -> str:
    """The "Goals:" line of table `table_name` rendered from `data` written as results file `name` in a copy."""
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(data), encoding="utf-8")
    return next(line for line in tables.render(table_name, results, stale=False).splitlines()
                if line.startswith("Goals:"))


def test_the_headlines_goals_are_computed_from_its_figures(tmp_path):
    """The README's goals line is read off distill_cpu.json's figures at render time: a copy of the file with the
    student's test.jsonl figure and the flow's minutes changed says otherwise, whatever the file's own booleans."""
    data = shipped("distill_cpu")

    def goals() -> str:
        return goals_line(tmp_path, "distill_cpu", "headline", data)

    data["headline"]["student-test"], data["headline"]["student-test_unseen"], data["total_minutes"] = 0.949, 0.93, 60.1
    data["goals"] = {k: True for k in data["goals"]}  # the script's booleans are not what the line reads
    assert goals() == ("Goals: the student ≥ 95% exact match on `test.jsonl`: **not met**; the student ≥ 93% exact "
                       "match on `test_unseen.jsonl`: **met**; the flow within 60 minutes on this machine (set-up not "
                       "counted): **not met** (60.1 min).")
    data["headline"]["student-test"], data["total_minutes"] = 0.95, 59.9
    assert "`test.jsonl`: **met**" in goals() and goals().endswith("**met** (59.9 min).")


def test_the_serving_goals_are_computed_from_its_figures(tmp_path):
    """docs/predict.md's serving goals are read off serve_load.json's figures at render time: the faster engine at
    one client against 1.5 s, each engine at 32 clients against its own offline predict and 15 s, and every served
    answer against predict's; a copy of the file with figures changed says otherwise."""
    data = shipped("serve_load")

    def goals() -> str:
        return goals_line(tmp_path, "serve_load", "serve_load", data)

    vllm, llama = data["engines"]["vllm"], data["engines"]["llamacpp"]
    vllm["serve"]["1"]["latency_p50_s"], llama["serve"]["1"]["latency_p50_s"] = 1.4, 1.6
    vllm["offline_predict"]["records_per_s"] = 2 * vllm["serve"]["32"]["records_per_s"]
    llama["offline_predict"]["records_per_s"] = llama["serve"]["32"]["records_per_s"]
    vllm["serve"]["32"]["latency_p95_s"], llama["serve"]["32"]["latency_p95_s"] = 15.0, 15.1
    llama["serve"]["8"]["answers_equal_predict"] = llama["serve"]["8"]["records"] - 2
    line = goals()
    assert "(vLLM, merged student, the faster there: 1.40 s): **met**" in line
    assert "vLLM, merged student at 32 clients, ≥ 1.0× its offline predict: **not met** (0.50×), p95 ≤ 15 s: **met**" in line
    assert "llama.cpp, GGUF at 32 clients, ≥ 1.0× its offline predict: **met** (1.00×), p95 ≤ 15 s: **not met**" in line
    assert line.endswith("every served answer equal to predict's: **not met** (2 differ).")
    vllm["serve"]["1"]["latency_p50_s"] = 1.7
    assert "(llama.cpp, GGUF, the faster there: 1.60 s): **not met**" in goals()


def test_the_export_time_goal_is_computed_from_its_minutes(tmp_path):
    """docs/export.md's "within 15 minutes" verdict is read off export_default.json's minutes, not a stored flag."""
    results = tmp_path / "results"
    results.mkdir()
    data = shipped("export_default")
    for minutes, said in ((15.0, "**met**"), (15.1, "**not met**")):
        data["minutes"] = minutes
        (results / "export_default.json").write_text(json.dumps(data), encoding="utf-8")
        assert tables.render("export_default", results, stale=False).rstrip().endswith(
            f"Goal: the default check within 15 minutes: {said}.")
