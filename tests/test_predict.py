"""xtk predict's contracts, fast: arguments, bad input (exit 2, file and line), CSV/TSV/Parquet reading, what is
wrong with an answer, and resuming from the journal. The model is the recipe's rule baseline (`--model rules`): a
real backend that answers in milliseconds; the student itself runs in test_predict_e2e.py."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import RECIPE, ROOT
from toolkit.cli import main
from toolkit.evaluate.evaluation import answer_problems
from toolkit.io.errors import StageError
from toolkit.io.jsonl import read_jsonl, write_jsonl
from toolkit.io.markers import write_marker
from toolkit.deploy.predict import journal_path, local_answerer, predict_role, read_texts, run_predict, student_backend
from toolkit.run.identity import predict_key
from toolkit.task.recipe import load_recipe

TEST = ROOT / "datasets" / "logistics_zh" / "test.jsonl"


@pytest.fixture(scope="module")
def recipe():
    return load_recipe(RECIPE, "cpu")


@pytest.fixture(scope="module")
def texts():
    return [{"id": r["id"], "text": r["text"]} for r in read_jsonl(TEST)[:7]]


def predict(*argv, model="rules"):
    return main(["predict", str(RECIPE), "--profile", "cpu", "--model", model, *map(str, argv)])


def test_answers_one_row_per_input_in_input_order_with_fields_and_problems(tmp_path, texts, recipe, capsys):
    write_jsonl(tmp_path / "in.jsonl", texts)
    assert predict("--input", tmp_path / "in.jsonl", "--out", tmp_path / "out.jsonl") == 0
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in rows] == [t["id"] for t in texts]
    assert all(set(r) == {"id", *recipe.field_names, "problems", "raw"} for r in rows)
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{\n"):])  # after what jionlp prints on import
    valid = sum(not r["problems"] for r in rows)
    assert summary["records"] == 7 and summary["valid"] == valid and 0 < valid < 7  # the rules miss some places
    assert summary["fill_rate"]["phone"] == sum(bool(r["phone"]) for r in rows) / 7
    assert not journal_path(tmp_path / "out.jsonl").exists()  # a finished run leaves no journal


def test_csv_tsv_and_parquet_inputs_give_the_jsonl_inputs_answers(tmp_path, texts, capsys):
    write_jsonl(tmp_path / "in.jsonl", texts)
    predict("--input", tmp_path / "in.jsonl", "--out", tmp_path / "ref.jsonl")
    ref = read_jsonl(tmp_path / "ref.jsonl")
    # a comma, a quote and a line break inside a CSV field, the columns named otherwise
    texts[0]["text"] = 'He said "A, B"\n' + texts[0]["text"]
    import csv
    for name, delimiter in (("in.csv", ","), ("in.tsv", "\t")):
        with (tmp_path / name).open("w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh, delimiter=delimiter)
            w.writerow(["key", "body"])
            w.writerows([t["id"], t["text"]] for t in texts)
    pq.write_table(pa.Table.from_pylist([{"key": t["id"], "body": t["text"]} for t in texts]), tmp_path / "in.parquet")
    for name in ("in.csv", "in.tsv", "in.parquet"):
        read = read_texts(tmp_path / name, "body", "key", max_chars=4000)
        assert [(r["id"], r["text"]) for r in read] == [(t["id"], t["text"]) for t in texts], name
        assert predict("--input", tmp_path / name, "--out", tmp_path / f"{name}.parquet", "--text-column", "body",
                       "--id-column", "key") == 0
        got = pq.read_table(tmp_path / f"{name}.parquet").to_pylist()
        assert got[1:] == ref[1:] and got[0]["id"] == ref[0]["id"], name
    lines = [r["line"] for r in read_texts(tmp_path / "in.csv", "body", "key", max_chars=4000)]
    assert lines[:2] == [2, 4]  # record 1 spans 2 lines


def test_without_an_id_column_a_row_is_named_by_its_line(tmp_path):
    (tmp_path / "in.csv").write_text("text\nfirst\n\nsecond\n", encoding="utf-8")
    assert [r["id"] for r in read_texts(tmp_path / "in.csv", max_chars=4000)] == [2, 4]


@pytest.mark.parametrize("name, content, where, expected", [
    ("in.jsonl", '{"id": 1, "text": "a"}\n{"id": 2, "text": "b"}\n{"id": 3, "text": \n', ":3:", "not valid JSON"),
    ("in.jsonl", '{"id": 1, "text": "a"}\n{"id": 2}\n', ":2:", "no 'text' column"),
    ("in.jsonl", '{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n', ":2:", "duplicate id 1 (first on line 1)"),
    ("in.jsonl", '{"id": [1], "text": "a"}\n', ":1:", "a non-empty string or an integer"),
    ("in.jsonl", '{"id": 1, "text": "  "}\n', ":1:", "non-empty string"),
    ("in.csv", "id,body\n1,a\n", ":2:", "no 'text' column"),
    ("in.csv", "id,text\n1,a\n2,b,c\n", ":3:", "expected 2 fields"),
    ("in.txt", "a\n", ":", "expected a .jsonl, .csv, .tsv, .parquet file"),
    ("in.parquet", "not parquet", ":", "not a Parquet file"),
])
def test_bad_input_exits_2_naming_file_and_line_and_writes_nothing(tmp_path, capsys, name, content, where, expected):
    (tmp_path / name).write_text(content, encoding="utf-8")
    assert predict("--input", tmp_path / name, "--out", tmp_path / "out.jsonl") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{name}{where}" in err and expected in err, err
    assert list(tmp_path.iterdir()) == [tmp_path / name]


def test_predict_reads_no_training_data_but_checks_the_backend(tmp_path, texts, capsys):
    """predict answers with the model, its prompt, schema and tables: a broken training file (the run's data,
    not predict's) stops nothing, while an eval.backend that no backend registers is refused at its key."""
    write_jsonl(tmp_path / "in.jsonl", texts)
    (tmp_path / "labelled.jsonl").write_text('{"id": 1, "text": \n', encoding="utf-8")
    assert predict("--input", tmp_path / "in.jsonl", "--out", tmp_path / "out.jsonl", "--run", tmp_path / "run",
                   f"data.labelled={tmp_path / 'labelled.jsonl'}", "--allow-path", tmp_path) == 0
    assert len(read_jsonl(tmp_path / "out.jsonl")) == len(texts)
    assert predict("--input", tmp_path / "in.jsonl", "--out", tmp_path / "again.jsonl", "--run", tmp_path / "run",
                   "eval.backend=vlm") == 2
    assert "eval.backend" in capsys.readouterr().err and not (tmp_path / "again.jsonl").exists()


def test_bad_arguments_exit_2_before_any_work(tmp_path, capsys):
    write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": "a"}])
    assert predict("--input", tmp_path / "in.jsonl", "--out", tmp_path / "out.csv") == 2
    assert ".jsonl or a .parquet" in capsys.readouterr().err
    assert predict("--input", tmp_path / "missing.jsonl", "--out", tmp_path / "out.jsonl") == 2
    assert "no such file" in capsys.readouterr().err
    assert predict("--input", tmp_path / "in.jsonl", "--out", tmp_path / "o.jsonl", "--run", tmp_path / "run",
                   model="student") == 2
    assert "no student model" in capsys.readouterr().err  # no merged student in that run folder
    assert predict("--input", tmp_path / "in.jsonl", "--out", tmp_path / "o.jsonl", "--address", "h:6379") == 2
    assert "go with --engine ray" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(RECIPE), "--out", str(tmp_path / "o.jsonl")])  # no --input
    assert exc.value.code == 2



@pytest.mark.parametrize("verbose", [False, True])
def test_out_dash_writes_only_json_lines_on_stdout(tmp_path, texts, verbose):
    """`xtk predict ... --out - | jq .`: stdout carries the rows, one JSON object a line in input order, the same
    rows as --out FILE, and nothing else; what the engine prints (the rule baseline's jionlp prints a banner on
    stdout as it loads) goes to the run folder's predict.log, or with -v to stderr, beside the summary."""
    write_jsonl(tmp_path / "in.jsonl", texts)
    (tmp_path / "run").mkdir()
    argv = [sys.executable, "-m", "toolkit", "predict", str(RECIPE), "--profile", "cpu", "--model", "rules",
            "--run", str(tmp_path / "run"), "--input", str(tmp_path / "in.jsonl")]
    res = subprocess.run([*argv, "--out", "-", *(["-v"] if verbose else [])], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in res.stdout.splitlines()]  # every line is JSON, or this fails
    assert main(["predict", str(RECIPE), "--profile", "cpu", "--model", "rules", "--run", str(tmp_path / "run"),
                 "--input", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.jsonl")]) == 0
    assert rows == read_jsonl(tmp_path / "out.jsonl")
    assert '"records": 7' in res.stderr  # the summary, on stderr
    log = tmp_path / "run" / "predict.log"
    assert ("jionlp" in res.stderr) == verbose and (log.is_file() and "jionlp" in log.read_text()) != verbose

def answering(recipe, backend, r, asked: list, stop_after: int | None = None):
    """local_answerer, noting the ids it is asked, killed after batch `stop_after`: the kill is a
    KeyboardInterrupt (a real SIGKILL lands at a moment a test cannot choose)."""
    inner = local_answerer(recipe, backend, r)

    def answer(todo):
        for n, batch in enumerate(inner(todo), 1):
            asked.extend(row["id"] for row in batch)
            yield batch
            if n == stop_after:
                raise KeyboardInterrupt

    return answer


def test_a_killed_run_resumes_answering_each_record_once(tmp_path, recipe, texts):
    """Killed after its second batch, then run again; the journal's torn last line is what a kill mid-write
    leaves."""
    r = predict_role(recipe, "rules", tmp_path)
    backend = student_backend(recipe, r)
    small = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"batch_size": 2})})
    asked: list = []

    def counting(stop_after: int | None):
        return answering(small, backend, r, asked, stop_after)

    out, key = tmp_path / "out.parquet", predict_key(recipe, r)
    with pytest.raises(KeyboardInterrupt):
        run_predict(small, texts, out, key, counting(2))
    assert not out.exists() and len(read_jsonl(journal_path(out))) == 1 + 4
    with journal_path(out).open("a", encoding="utf-8") as fh:
        fh.write('{"id": "' + texts[4]["id"] + '", "distr')  # torn mid-write
    summary = run_predict(small, texts, out, key, counting(None))
    assert sorted(asked) == sorted(t["id"] for t in texts) and summary["answered_now"] == 3
    whole = run_predict(small, texts, tmp_path / "whole.parquet", key, local_answerer(small, backend, r))
    assert pq.read_table(out).to_pylist() == pq.read_table(tmp_path / "whole.parquet").to_pylist()
    assert summary["valid"] == whole["valid"] and not journal_path(out).exists()


def test_a_student_retrained_into_the_same_folder_reuses_none_of_the_old_students_answers(tmp_path, recipe, texts):
    """Interrupt predict, retrain the student into the same run folder, predict again: the journal holds the old
    student's answers, and not one of them is taken for the new student's. A trained run is faked as cheaply as
    a test can: merged/ with a config.json and the marker a training leaves (its training key), the answers
    coming from the rule baseline's engine; the retraining is a new training key in that marker."""
    run = tmp_path / "run"
    (run / "merged").mkdir(parents=True)
    (run / "merged" / "config.json").write_text("{}", encoding="utf-8")
    write_marker(run / "merged", {"train_key": "the first training"})
    rules = predict_role(recipe, "rules", run)
    backend = student_backend(recipe, rules)
    small = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"batch_size": 2})})
    out, asked = tmp_path / "out.jsonl", []
    first = predict_role(small, "student", run)
    with pytest.raises(KeyboardInterrupt):
        run_predict(small, texts, out, predict_key(small, first), answering(small, backend, rules, asked, 2))
    assert len(read_jsonl(journal_path(out))) == 1 + 4  # the old student's answers, waiting to be resumed

    write_marker(run / "merged", {"train_key": "the second training"})  # retrained into the same folder
    again = predict_role(small, "student", run)
    assert again == first  # the same folder, prompt and settings: only the training tells the students apart
    asked.clear()
    with pytest.raises(StageError, match="another model"):
        run_predict(small, texts, out, predict_key(small, again), answering(small, backend, rules, asked))
    assert asked == [] and not out.exists()
    journal_path(out).unlink()  # as the error says: start afresh
    summary = run_predict(small, texts, out, predict_key(small, again), answering(small, backend, rules, asked))
    assert summary["answered_now"] == len(texts) and sorted(asked) == sorted(t["id"] for t in texts)


def test_a_journal_of_another_model_is_not_resumed(tmp_path, recipe, texts):
    write_jsonl(journal_path(tmp_path / "out.jsonl"), [{"xtk_predict": "another", "recipe": "x"}])
    with pytest.raises(StageError, match="another model"):
        run_predict(recipe, texts, tmp_path / "out.jsonl", "this", lambda todo: iter(()))


def test_problems_name_what_is_wrong_with_an_answer(recipe):
    text = "北京市朝阳区建国路1号 张三 13800000000"
    good = {"province": "北京市", "city": "北京市", "district": "朝阳区", "specific_location": "建国路1号",
            "name": "张三", "phone": "13800000000"}
    assert answer_problems(recipe, text, good) == []
    assert answer_problems(recipe, text, None) == ["unparseable: no complete JSON object in the answer"]
    bad = {**good, "district": "火星区", "name": "李四", "phone": 13800000000, "extra": 1}
    del bad["city"]
    assert answer_problems(recipe, text, bad) == [
        "unexpected field 'extra'", "district: '火星区' is not in the closed set", "city: missing",
        "name: '李四' does not occur in the input", "phone: must be a string, got 13800000000"]
