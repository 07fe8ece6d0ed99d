"""Backends by name (toolkit/infer/backends.py), roles declared once (toolkit/run/roles.py), run identity (markers) and the
stage order the runner resolves: each decided in one place, and what derives from it."""

import ast
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import ROOT, write_recipe
from toolkit.io.jsonl import read_jsonl, write_jsonl
from toolkit.task.recipe import load_recipe

SENTIMENT = ROOT / "recipes" / "review_sentiment_zh.yaml"
REVIEWS = [("r1", "很好，物超所值", "positive"), ("r2", "质量很好", "positive"), ("r3", "太差了", "negative"),
           ("r4", "不好用，退货", "negative"), ("r5", "还好吧，一般", "negative")]


def write_reviews(path: Path) -> Path:
    write_jsonl(path, [{"id": i, "text": t, "label": {"sentiment": s}} for i, t, s in REVIEWS])
    return path


def test_a_backend_registered_from_a_test_file_runs_an_evaluation(tmp_path, monkeypatch):
    """A new backend is one class and one `register` call, here in this file alone: `xtk eval --backend` offers
    it and an evaluation runs through it into predictions.jsonl and metrics.json."""
    import toolkit.infer.backends as backends
    from toolkit.infer.backends import Backend, BackendKind, Generation, register
    from toolkit.cli import main

    monkeypatch.setattr(backends, "BACKENDS", dict(backends.BACKENDS))  # the registry as it was, after the test
    seen = []

    class Keywords(Backend):
        """positive where the review says 好 and not 不好."""

        name = "keywords"

        def generate(self, batch, max_tokens):
            seen.extend(batch)
            texts = [next(m["content"] for m in chat if m["role"] == "user") for chat in batch]
            return [Generation(json.dumps({"sentiment": "positive" if "好" in t and "不好" not in t else "negative"}))
                    for t in texts]

    register(BackendKind("keywords", lambda served: Keywords(), "a word list", model_folder=False))
    test = write_reviews(tmp_path / "reviews.jsonl")
    assert main(["eval", str(SENTIMENT), "--profile", "cpu", "--run", str(tmp_path / "run"), "--model", "words",
                 "--backend", "keywords", "--test", str(test)]) == 0
    out = tmp_path / "run" / "eval" / "words-reviews"
    rows = read_jsonl(out / "predictions.jsonl")
    assert [(r["id"], r["parsed"]["sentiment"], r["exact"]) for r in rows] == [
        ("r1", "positive", True), ("r2", "positive", True), ("r3", "negative", True), ("r4", "negative", True),
        ("r5", "positive", False)]
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 5 and m["exact_match"]["value"] == 0.8 and m["backend"] == "keywords"
    assert m["role"] == "model" and m["identity"]["backend"] == "keywords"
    assert seen[0][0] == {"role": "system", "content": load_recipe(SENTIMENT, "cpu").prompt("student")}
    # the recipe may name it too (eval.backend is checked against the registry, not a fixed list)
    assert main(["eval", str(SENTIMENT), "--profile", "cpu", "--run", str(tmp_path / "run"), "--model", "words",
                 "--name", "by-recipe", "--test", str(test), "eval.backend=keywords"]) == 0
    assert json.loads((tmp_path / "run" / "eval" / "by-recipe-reviews" / "metrics.json").read_text())["n"] == 5


def test_an_evaluation_gives_a_backend_at_most_the_batch_it_declares(tmp_path, monkeypatch):
    """A backend that answers one chat at a time (llama.cpp) says so, and an evaluation hands it batches of that
    size, not eval.batch_size: its progress moves per record. Five reviews, batch 2: 2, 2, 1."""
    import toolkit.infer.backends as backends
    from toolkit.infer.backends import Backend, BackendKind, Generation, register
    from toolkit.cli import main

    monkeypatch.setattr(backends, "BACKENDS", dict(backends.BACKENDS))
    sizes = []

    class Pairs(Backend):
        name, batch = "pairs", 2

        def generate(self, batch, max_tokens):
            sizes.append(len(batch))
            return [Generation(json.dumps({"sentiment": "positive"})) for _ in batch]

    register(BackendKind("pairs", lambda served: Pairs(), "two at a time", model_folder=False))
    test = write_reviews(tmp_path / "reviews.jsonl")
    assert main(["eval", str(SENTIMENT), "--profile", "cpu", "--run", str(tmp_path / "run"), "--model", "words",
                 "--backend", "pairs", "--test", str(test), "eval.batch_size=64"]) == 0
    assert sizes == [2, 2, 1]


def test_a_backend_the_registry_does_not_hold_is_refused_where_the_recipe_loads(tmp_path, capsys):
    from toolkit.cli import main

    assert main(["eval", str(SENTIMENT), "--profile", "cpu", "--run", str(tmp_path / "run"), "--model", "words",
                 "eval.backend=vlm"]) == 2
    err = capsys.readouterr().err
    assert "eval.backend" in err and "no backend 'vlm'; backends: auto, vllm, transformers, openai" in err
    assert not (tmp_path / "run").exists()


def test_guided_decoding_reaches_no_backend_that_cannot_guide(tmp_path, smollm2):
    """review_sentiment_zh with eval.guided_json=true: option likelihood and the classification head, evaluated as
    their stages evaluate them, answer (neither can be guided, and neither needs it: each answers one of the
    classes). The head here is SmolLM2 with an untrained 2-class layer: training a real one takes minutes
    (tests/test_seqcls.py does), and what is under test is only that guided decoding does not reach it."""
    from toolkit.flow.pipeline import evaluate_model, open_run, role

    recipe = load_recipe(SENTIMENT, "cpu", ["eval.guided_json=true"])
    test = write_reviews(tmp_path / "reviews.jsonl")
    with open_run(recipe, tmp_path / "run") as ctx:
        evaluate_model(ctx, role(ctx, "likelihood"), tests=[str(test)])
        evaluate_model(ctx, replace(role(ctx, "head"), model=str(smollm2)), tests=[str(test)])
        assert role(ctx, "base").guided_json is True  # where guided decoding applies, the recipe's value stands
    for who in ("likelihood", "head"):
        m = json.loads((tmp_path / "run" / "eval" / f"{who}-reviews" / "metrics.json").read_text())
        assert (m["backend"], m["n"], m["json_parse_rate"]["value"]) == (who, 5, 1.0)


def test_every_role_that_cannot_be_guided_is_not(tmp_path):
    from toolkit.infer.backends import backend_kind
    from toolkit.flow.pipeline import open_run
    from toolkit.run.roles import ROLES, role

    with open_run(load_recipe(SENTIMENT, "cpu", ["eval.guided_json=true", "eval.backend=vllm"]), tmp_path) as ctx:
        for who in ROLES:
            r = role(ctx, who)
            assert r.guided_json == (backend_kind(r.backend).guided and who not in ("teacher", "rules")), who


def test_thinking_off_is_decided_by_the_served_template():
    from toolkit.infer.backends import make_backend
    from toolkit.model.thinking import thinking_off

    assert thinking_off("qwen3", "qwen3") and thinking_off(None, "qwen3")
    assert not thinking_off("llama", "chatml", "Qwen3-named-llama")  # the template decides, not the name
    assert thinking_off(None, None, "qwen3-235b-a22b") and thinking_off(None, None, "Qwen/Qwen3-8B")
    assert not thinking_off(None, None, "gpt-4o") and not thinking_off("gemma3_text", "gemma3_text")
    # an endpoint's template is not known: every model there is sent the recipe's teacher.enable_thinking, as
    # labelling sends it (toolkit/model/thinking.py), whatever the model's name
    for setting, body in (("false", {"enable_thinking": False}), ("null", {})):
        recipe = load_recipe(SENTIMENT, None, [f"teacher.enable_thinking={setting}"])
        for model in ("qwen3-235b-a22b", "deepseek-v3"):
            teacher = make_backend(recipe, "openai", model, base_url="http://127.0.0.1:1/v1")
            assert teacher.endpoint.extra_body == body
            teacher.close()


def test_roles_are_the_reports_rows_the_bakeoffs_evaluations_and_the_clis_choices():
    from toolkit.evaluate import report
    from toolkit.choose.bakeoff_scores import EVALUATIONS
    from toolkit.infer.backends import BACKENDS
    from toolkit.cli import make_parser
    from toolkit.flow.pipeline import STAGE_NAMES
    from toolkit.run.roles import ROLES

    assert report.ORDER == tuple(ROLES)
    assert set(EVALUATIONS) <= set(ROLES)
    assert {r.stage for r in ROLES.values() if r.stage} <= set(STAGE_NAMES)
    eval_cmd = make_parser()._subparsers._group_actions[0].choices["eval"]
    backend = next(a for a in eval_cmd._actions if a.dest == "backend")
    assert backend.choices == ("auto", *BACKENDS)


def role_name_comparisons(source: str, names: set[str]) -> list[str]:
    """Each comparison in `source` with one of `names` written out as a string (alone or in a tuple, list or set)."""
    def strings(node) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return {s for e in node.elts for s in strings(e)}
        return set()

    return [f"{node.lineno}: {ast.unparse(node)}" for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Compare) and names & {s for n in (node.left, *node.comparators) for s in strings(n)}]


def test_no_module_but_the_registry_compares_a_role_name():
    """Roles are told apart by their traits (toolkit/run/roles.py: training, endpoint, deployed, ...), so a new
    role is one entry there: a role name compared anywhere else is a decision the registry does not make. Below
    run/ no module can see the roles; there "student" or "teacher" names a prompt."""
    from test_imports import floor, modules
    from toolkit.run.roles import ROLES

    names = set(ROLES)
    assert role_name_comparisons('if m.get("role") in ("student", "resolved"): pass', names) == [
        "1: m.get('role') in ('student', 'resolved')"]
    lowest = floor("toolkit.run.roles")[0]
    found = [f"{path.relative_to(ROOT)}:{where}" for name, path in sorted(modules(ROOT).items())
             if name != "toolkit.run.roles" and floor(name)[0] >= lowest
             for where in role_name_comparisons(path.read_text(encoding="utf-8"), names)]
    assert not found, "role names compared outside toolkit/run/roles.py (ask a trait):\n" + "\n".join(found)


def test_no_stage_body_calls_another_stage():
    """The order of the stages is stated once, in their needs: the runner runs what a stage needs."""
    tree = ast.parse((ROOT / "toolkit" / "flow" / "pipeline.py").read_text(encoding="utf-8"))
    bodies = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name.startswith("stage_")]
    assert len(bodies) >= 6
    for f in bodies:
        called = {n.func.id for n in ast.walk(f) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert not {c for c in called if c.startswith(("stage_", "run_stage"))}, f.name


def test_a_full_fine_tunes_checkpoint_is_its_merged_model(tmp_path, smollm2):
    """train.tuner_type full: ms-swift saves the whole model (and its tokenizer) in each checkpoint, beside the
    trainer's state; the "merge" is the model without that state. The checkpoint here is the embedded model's
    folder with a trainer's files added (a real full fine-tune is in test_a_full_fine_tune_runs_end_to_end)."""
    from transformers import AutoModelForCausalLM

    from toolkit.train.swift import run_merge

    ckpt = tmp_path / "train" / "checkpoint-2"
    shutil.copytree(smollm2, ckpt)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin"):
        (ckpt / name).write_bytes(b"state")
    assert run_merge(ckpt, tmp_path / "merged", tmp_path / "merge.log") == []
    merged = tmp_path / "merged"
    assert sorted(p.name for p in merged.iterdir()) == sorted(p.name for p in smollm2.iterdir())
    assert AutoModelForCausalLM.from_pretrained(merged).config.model_type == "llama"


MOOD = """\
fields:
  - {name: mood, type: enum, description: mood, choices: [good, bad]}
"""


@pytest.mark.slow
def test_a_full_fine_tune_runs_end_to_end(tmp_path):
    """`train.tuner_type: full`, two real `swift sft` steps on SmolLM2, then the student's evaluation alone: the
    runner trains and merges first (what eval_student needs), and the student answers."""
    from toolkit.io.markers import trained_key
    from toolkit.flow.pipeline import open_run, run_stage

    rows = [{"id": f"r{i}", "text": t, "label": {"mood": m}}
            for i, (t, m) in enumerate([("很好吃", "good"), ("不新鲜", "bad"), ("下次还买", "good"), ("难吃", "bad")])]
    write_jsonl(tmp_path / "mine.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", rows[:2])
    recipe = load_recipe(write_recipe(tmp_path, MOOD, "{labelled: mine.jsonl, test: [test.jsonl], "
                                                      "train_records: 10, val_fraction: 0}"),
                         overrides=["train.tuner_type=full", "train.max_steps=2", "eval.backend=transformers"])
    with open_run(recipe, tmp_path / "run") as ctx:
        ran: list[str] = []
        run_stage(ctx, "eval_student", ran)
        assert ran == ["data", "prepare", "train", "merge"]
        assert not (ctx.merged_dir / "adapter_config.json").exists() and not (ctx.merged_dir / "optimizer.pt").exists()
        assert trained_key(ctx.merged_dir) == ctx.manifest.data["stages"]["train"]["key"]
    m = json.loads((tmp_path / "run" / "eval" / "student-test" / "metrics.json").read_text())
    assert m["n"] == 2 and m["role"] == "student"


def test_an_evaluation_of_a_merged_folder_is_current_only_for_the_training_that_made_it(tmp_path):
    """What the benchmarks ask before reusing an evaluation of a folder they merged (distill_cpu.py's curve,
    levers_cpu.py's re-evaluations), and what the report asks of the same metrics: one answer, from the marker."""
    from toolkit.io.jsonl import write_json
    from toolkit.io.markers import mark_trained
    from toolkit.flow.pipeline import open_run
    from toolkit.run.identity import evaluations_current, identity, not_current
    from toolkit.run.roles import named_model

    recipe = load_recipe(SENTIMENT, "cpu")
    merged = tmp_path / "curve" / "checkpoint-50"
    merged.mkdir(parents=True)
    mark_trained(merged, "a curve point", "smollm2-135m-instruct", tmp_path / "ckpt", "key-1", "llama", "chatml")
    metrics = tmp_path / "run" / "eval" / "curve-50-test" / "metrics.json"
    with open_run(recipe, tmp_path / "run") as ctx:
        r = named_model(ctx, str(merged), name="curve-50")
        assert evaluations_current(ctx, r, recipe.data.test) == "no curve-50-test"
        write_json(metrics, {"role": "model", "identity": identity(ctx, r)})
        assert evaluations_current(ctx, r, recipe.data.test) is None
        assert not_current(ctx, json.loads(metrics.read_text())) is None
        mark_trained(merged, "a curve point", "smollm2-135m-instruct", tmp_path / "ckpt", "key-2", "llama", "chatml")
        assert evaluations_current(ctx, r, recipe.data.test) == \
            "curve-50-test: made with other settings (train_key changed since)"
        assert not_current(ctx, json.loads(metrics.read_text())) == "made with other settings (train_key changed since)"
    with open_run(load_recipe(SENTIMENT, "cpu", ["eval.max_new_tokens=9"]), tmp_path / "run") as ctx:
        assert "eval_config" in evaluations_current(ctx, named_model(ctx, str(merged), name="curve-50"),
                                                    recipe.data.test)


def test_an_exported_files_evaluation_is_current_while_what_it_was_exported_from_is(tmp_path):
    """A GGUF's evaluation (xtk export) names the model it was exported from. `not_current` judges it as any other
    evaluation: current while that model is the run's student of the same training under the same evaluation
    settings; stale once the student is retrained or the settings change. From a named folder: that folder's
    training now."""
    from toolkit.io.markers import write_marker
    from toolkit.flow.pipeline import open_run
    from toolkit.run.identity import EVAL_CONFIG, config_digest, identity, not_current
    from toolkit.run.roles import named_model, role

    def exported(ctx, source):
        return {"role": "gguf", "identity": {"source": identity(ctx, source), "gguf_sha256": "ab12", "quant": "q8_0",
                                             "prompt": "student", "eval_config": config_digest(ctx.recipe, EVAL_CONFIG)}}

    other = tmp_path / "other-merged"
    with open_run(load_recipe(SENTIMENT, "cpu"), tmp_path / "run") as ctx:
        write_marker(ctx.merged_dir, {"train_key": "k1"})
        write_marker(other, {"train_key": "o1"})
        of_student, of_folder = exported(ctx, role(ctx, "student")), exported(ctx, named_model(ctx, str(other)))
        assert not_current(ctx, of_student) is None and not_current(ctx, of_folder) is None
        write_marker(ctx.merged_dir, {"train_key": "k2"})  # the run's student retrained
        assert not_current(ctx, of_student) == "made with other settings (source changed since)"
        assert not_current(ctx, of_folder) is None
        write_marker(other, {"train_key": "o2"})
        assert not_current(ctx, of_folder) == "made with other settings (source changed since)"
    with open_run(load_recipe(SENTIMENT, "cpu", ["eval.max_new_tokens=9"]), tmp_path / "run") as ctx:
        write_marker(other, {"train_key": "o1"})
        assert not_current(ctx, of_folder) == "made with other settings (eval_config, source changed since)"
