"""`python -m benchmarks.check`: every results file says where it comes from (commit, dirty flag, date, CPU,
one_run), and a file whose script or the code it runs changed after its commit is listed stale, its tables in the
docs saying so."""

import json
import shutil
import subprocess
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts import each other as scripts do
import check  # noqa: E402
import provenance  # noqa: E402
import tables  # noqa: E402

FULL = {"date": "2026-12-01T10:00:00+00:00", "machine": {"cpu_model": "AMD EPYC", "cpu_count": 2, "cpus_usable": 2},
        "one_run": True}


def test_the_checkout_passes():
    done = subprocess.run([sys.executable, "-m", "benchmarks.check"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_file_without_provenance_fails_naming_what_it_lacks(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "distill_cpu.json").write_text(json.dumps({"date": "2026-12-01", "git": {"commit": "abc"}}))
    (results / "levers_cpu.json").write_text(json.dumps({**FULL, "git": {"commit": "abc", "dirty": False}}))
    monkeypatch.setattr(check, "RESULTS", results)
    monkeypatch.setattr(check, "DOCS", ())
    assert check.main() == 1
    out = capsys.readouterr().out
    assert "FAIL results/distill_cpu.json: no provenance: lacks git.dirty, machine.cpu_model, machine.cpu_count, " \
           "one_run" in out.replace(str(tmp_path) + "/", "")
    # a legacy file that says one_run now is named for leaving the legacy list, and does not fail on its own
    assert "levers_cpu.json: says `one_run` now: take levers_cpu off LEGACY_WITHOUT_ONE_RUN" in out
    assert "FAIL results/levers_cpu.json" not in out.replace(str(tmp_path) + "/", "")


def git(root, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_a_file_older_than_the_code_its_script_imports_is_stale_and_its_tables_must_say_so(tmp_path):
    """A checkout of its own: benchmarks/teacher_noise_cpu.py imports toolkit/speed.py, which changes after the
    commit teacher_noise_cpu.json names; distill_cpu.json names the later commit and is current."""
    root = tmp_path / "repo"
    (root / "benchmarks" / "results").mkdir(parents=True)
    (root / "toolkit").mkdir()
    (root / "toolkit" / "__init__.py").write_text("")
    (root / "toolkit" / "speed.py").write_text("FAST = 1\n")
    for name in ("teacher_noise_cpu", "distill_cpu"):
        (root / "benchmarks" / f"{name}.py").write_text("def main():\n    from toolkit.speed import FAST\n")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-qm", "first")
    first = git(root, "rev-parse", "HEAD")
    (root / "toolkit" / "speed.py").write_text("FAST = 2\n")
    git(root, "commit", "-qam", "faster")
    second = git(root, "rev-parse", "HEAD")
    for name, commit in (("teacher_noise_cpu", first), ("distill_cpu", second)):
        (root / "benchmarks" / "results" / f"{name}.json").write_text(
            json.dumps({**FULL, "git": {"commit": commit, "dirty": False}}))
    block = (root / "doc.md")
    block.write_text("<!-- table:teacher_noise_cpu -->\nold\n<!-- /table -->\n")

    failures, notes = check.check(root / "benchmarks" / "results", (block,), root)
    assert notes == [f"benchmarks/results/teacher_noise_cpu.json: stale: 1 commit(s) since {first[:7]} changed "
                     f"benchmarks/teacher_noise_cpu.py or the code it runs: {second[:7]}"]
    assert failures == ["doc.md: table teacher_noise_cpu shows teacher_noise_cpu.json, which is stale, without saying so: run "
                        "benchmarks/tables.py"]
    block.write_text(f"<!-- table:teacher_noise_cpu -->\nFrom ... {tables.STALE}\n<!-- /table -->\n")
    assert check.check(root / "benchmarks" / "results", (block,), root)[0] == []


def test_the_tables_say_stale_where_git_says_so_and_keep_their_word_where_it_cannot_tell(tmp_path, monkeypatch):
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- table:label_throughput -->\nold\n<!-- /table -->\n")
    results = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", results, ignore=shutil.ignore_patterns("*_cpu*"))
    monkeypatch.setattr(provenance, "stale", lambda name, data, root=ROOT: ["abc1234"])
    text, changed = tables.update(doc, results)
    assert changed == ["label_throughput"] and tables.STALE in text
    doc.write_text(text)
    monkeypatch.setattr(provenance, "stale", lambda name, data, root=ROOT: None)  # a copy without history
    assert tables.update(doc, results) == (text, [])
    monkeypatch.setattr(provenance, "stale", lambda name, data, root=ROOT: [])
    assert tables.STALE not in tables.update(doc, results)[0]
