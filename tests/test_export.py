"""`xtk export`'s contracts without a conversion: its arguments, the Ollama template and Modelfile, the parity
sample and its estimate, the parity figures and the max_drop verdict on hand-made predictions, the exit codes."""

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from conftest import RECIPE, ROOT
from toolkit.cli import main, parse_args
from toolkit.io.errors import StageError
from toolkit.deploy.export import estimate, go_template, modelfile, on_records, paired, parity_sample, verdict
from toolkit.model.models import GEMMA3_TEXT_TEMPLATE
from toolkit.task.recipe import load_recipe
from toolkit.io.errors import RecipeError

# SmolLM2-Instruct's chat template (ChatML, with its default system prompt when none is given).
CHATML = """{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system
You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
' }}{% endif %}{{'<|im_start|>' + message['role'] + '
' + message['content'] + '<|im_end|>' + '
'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant
' }}{% endif %}"""


def renderer(template: str, bos: str = ""):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    compiled = env.from_string(template)

    def raise_exception(message):
        raise ValueError(message)

    return lambda messages: compiled.render(messages=messages, add_generation_prompt=True, bos_token=bos,
                                            raise_exception=raise_exception)


def fill(go: str, system: str, prompt: str) -> str:
    """What Ollama renders from go_template's output: its only constructs are {{ if .System }} ... {{ else }} ...
    {{ end }}, {{ .System }} and {{ .Prompt }} (a one-turn chat)."""
    head, rest = go.removeprefix("{{ if .System }}").split("{{ else }}")
    branch = head if system else rest.removesuffix("{{ end }}")
    return branch.replace("{{ .System }}", system).replace("{{ .Prompt }}", prompt)


def test_export_arguments():
    args = parse_args(["export", str(RECIPE), "--format", "gguf", "--profile", "cpu", "export.max_drop=0.02"])
    assert (args.format, args.quant, args.model, args.accept_drop, args.parity_full) == \
        ("gguf", None, "student", False, False)
    assert args.overrides == ["export.max_drop=0.02"]
    args = parse_args(["export", str(RECIPE), "--format", "gguf", "--quant", "q4_k_m", "--model", "/m", "--accept-drop",
                       "--parity-full"])
    assert (args.quant, args.model, args.accept_drop, args.parity_full) == ("q4_k_m", "/m", True, True)
    for bad in (["--format", "onnx"], ["--format", "gguf", "--quant", "q5_0"], []):
        with pytest.raises(SystemExit) as exit_:
            parse_args(["export", str(RECIPE), *bad])
        assert exit_.value.code == 2
    assert parse_args(["eval", str(RECIPE), "--model", "x.gguf", "--backend", "llamacpp"]).backend == "llamacpp"


def test_export_recipe_keys():
    recipe = load_recipe(RECIPE)
    assert (recipe.export.quant, recipe.export.max_drop) == ("q8_0", 0.01)  # 1 point of exact match
    assert load_recipe(RECIPE, None, ["export.max_drop=0.05"]).export.max_drop == 0.05
    assert (recipe.export.parity_records, recipe.export.parity_seed) == (200, 0)
    assert load_recipe(RECIPE, None, ["export.parity_records=all"]).export.parity_records == "all"
    for bad in ("export.max_drop=-0.01", "export.quant=q5_0", "export.max_dorp=1", "export.parity_records=0",
                "export.parity_records=most", "export.parity_records=true"):
        with pytest.raises(RecipeError, match="export"):
            load_recipe(RECIPE, None, [bad])


def test_ollama_template_of_chatml_is_chatml_and_renders_what_the_chat_template_does():
    render = renderer(CHATML)
    go = go_template(render, bos="")
    assert go == ("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n<|im_start|>user\n{{ .Prompt }}"
                  "<|im_end|>\n<|im_start|>assistant\n{{ else }}<|im_start|>system\nYou are a helpful AI assistant "
                  "named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n{{ .Prompt }}<|im_end|>\n"
                  "<|im_start|>assistant\n{{ end }}")
    system, text = "抽取收件信息为JSON", "张三 13812345678 北京市朝阳区建国路1号 {{ .Prompt }}"
    assert fill(go, system, text) == render([{"role": "system", "content": system}, {"role": "user", "content": text}])
    assert fill(go, "", text) == render([{"role": "user", "content": text}])


def test_ollama_template_of_gemma_leaves_bos_to_the_runtime():
    """Gemma's template writes <bos> itself; a GGUF that adds BOS must not get it twice from Ollama."""
    render = renderer(GEMMA3_TEXT_TEMPLATE, bos="<bos>")
    go = go_template(render, bos="<bos>")
    assert "<bos>" not in go
    system, text = "抽取JSON", "李四 广州市天河区"
    assert "<bos>" + fill(go, system, text) == render([{"role": "system", "content": system},
                                                       {"role": "user", "content": text}])
    assert fill(go, system, text) == f"<start_of_turn>user\n{system}\n\n{text}<end_of_turn>\n<start_of_turn>model\n"


def test_a_template_that_rewrites_the_text_cannot_become_an_ollama_template():
    with pytest.raises(StageError, match="Ollama"):
        go_template(renderer("{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"), bos="")


def test_modelfile_content():
    text = modelfile("logistics_zh-student-q8_0.gguf", "{{ .Prompt }}", "抽取JSON", ["<|im_end|>", "<|endoftext|>"],
                     160, 1024)
    lines = text.splitlines()
    assert "FROM ./logistics_zh-student-q8_0.gguf" in lines
    assert 'TEMPLATE """{{ .Prompt }}"""' in lines and 'SYSTEM """抽取JSON"""' in lines
    assert {"PARAMETER temperature 0", "PARAMETER num_predict 160", "PARAMETER num_ctx 1024",
            'PARAMETER stop "<|im_end|>"', 'PARAMETER stop "<|endoftext|>"'} <= set(lines)
    with pytest.raises(StageError, match='"""'):
        modelfile("m.gguf", "{{ .Prompt }}", 'say """hi"""', [], 16, 64)


def predictions(rights: list[bool], fields: int = 2) -> list[dict]:
    return [{"id": i, "raw": str(r), "exact": r, "correct": {f"f{j}": r or j == 0 for j in range(fields)}}
            for i, r in enumerate(rights)]


class TwoFields:
    field_names = ["f0", "f1"]


def test_parity_sample_is_seeded_and_keeps_each_files_order():
    tests = {"test": [{"id": i} for i in range(400)], "test_hard": [{"id": f"h{i}"} for i in range(400)]}
    sample = parity_sample(tests, 200, seed=0)
    assert sum(map(len, sample.values())) == 200
    assert sample == parity_sample(tests, 200, seed=0)  # the same records every time
    assert sample != parity_sample(tests, 200, seed=1)
    assert all(0 < len(rows) < 200 for rows in sample.values())  # drawn from both files together
    order = {stem: [r["id"] for r in rows] for stem, rows in tests.items()}
    for stem, rows in sample.items():
        ids = [r["id"] for r in rows]
        assert ids == sorted(ids, key=order[stem].index)
    assert parity_sample(tests, None, seed=0) == tests  # --parity-full, export.parity_records=all
    assert parity_sample(tests, 800, seed=0) == parity_sample(tests, 5000, seed=0) == tests
    few = parity_sample(tests, 1, seed=0)
    assert len(few) == 1 and len(next(iter(few.values()))) == 1  # a file none was drawn from is left out


def test_both_sides_are_compared_on_the_sampled_records(tmp_path):
    """The student's evaluation holds every test record, the GGUF's the sample (or more, from an earlier full
    check): both are taken on the sampled ids, in the sample's order."""
    rows = [{"id": i} for i in range(100)]
    sample = parity_sample({"test": rows}, 30, seed=3)["test"]
    student = predictions([i % 3 != 0 for i in range(100)])
    exported = [p for p in predictions([i % 4 != 0 for i in range(100)]) if p["id"] in {r["id"] for r in sample}][::-1]
    s, e = on_records(student, sample, tmp_path), on_records(exported, sample, tmp_path)
    assert [p["id"] for p in s] == [p["id"] for p in e] == [r["id"] for r in sample]
    assert paired(TwoFields, s, e)["student"]["n"] == 30
    with pytest.raises(StageError, match=f"{tmp_path}.*no prediction of 1 .*id 100"):
        on_records(student, sample + [{"id": 100}], tmp_path)


def test_the_estimate_says_how_many_records_and_how_long():
    line = estimate(200, 3.0, 3, "1 thread, OMP_NUM_THREADS", total=800, sampled=True)
    assert line.startswith("export: llama.cpp scores 200 test records for parity, about 10 min at 3.0 s a record "
                           "(the first 3 timed; 1 thread, OMP_NUM_THREADS)")
    assert line.endswith("a seeded sample of the 800 (export.parity_records): --parity-full scores all, about 40 min")
    full = estimate(800, 45.0, 3, "2 threads: 1.9 of the 2 cores this process may use idle", total=800, sampled=False)
    assert "800 test records for parity, about 10.0 h at 45.0 s a record" in full and "--parity-full" not in full
    assert "about 18 s at 6.0 s a record" in estimate(3, 6.0, 3, "1 thread", total=3, sampled=False)


def test_parity_figures_and_the_max_drop_verdict():
    # 100 records: the student gets 90 right, the export 88; 3 only the student, 1 only the export.
    student = [True] * 90 + [False] * 10
    exported = [True] * 87 + [False] * 3 + [True] + [False] * 9
    p = paired(TwoFields, predictions(student), predictions(exported))
    assert p["student"]["exact_match"] == 0.9 and p["exported"]["exact_match"] == 0.88
    assert p["student"]["fields"] == {"f0": 1.0, "f1": 0.9} and p["exported"]["fields"] == {"f0": 1.0, "f1": 0.88}
    assert p["exact_match_difference"]["value"] == -0.02
    lo, hi = p["exact_match_difference"]["ci95"]
    assert lo < -0.02 < hi
    assert (p["only_student_right"], p["only_exported_right"]) == (3, 1)
    assert p["mcnemar_p"] == 0.625  # 2 * P(X <= 1) for X ~ Bin(4, 1/2) = 2 * 5/16
    assert p["fields_difference"] == {"f0": 0.0, "f1": -0.02}
    assert p["identical_answers"] == 96
    # 2 points beyond the 1 allowed, but 3 against 1 is what chance gives (p 0.625): said, not failed
    assert verdict(p, 0.01) == {"max_drop": 0.01, "drop": 0.02, "within": False, "shown": False, "ok": True}
    assert verdict(p, 0.02)["within"]  # exactly max_drop is within
    assert verdict(paired(TwoFields, predictions(exported), predictions(student)), 0.0)["ok"]  # a gain passes


@pytest.mark.parametrize("records, lost, ok", [
    (10, 1, True),   # one answer of 10 is 10 points: McNemar p 1.0
    (10, 5, True),   # 5 against 0: p 0.0625, still what chance gives one time in 16
    (10, 6, False),  # 6 against 0: p 0.031, shown
    (200, 2, True),  # the default sample: 1 point beyond max_drop, p 0.5
    (200, 12, False),
])
def test_a_drop_fails_only_where_mcnemars_test_shows_it(records, lost, ok):
    student = predictions([True] * records)
    exported = predictions([False] * lost + [True] * (records - lost))
    v = verdict(paired(TwoFields, student, exported), 0.0)
    assert (v["within"], v["shown"], v["ok"]) == (False, not ok, ok)


def test_a_drop_of_exactly_max_drop_is_kept_whatever_the_rates_round_to():
    # 800 records: the student gets 579 right (0.72375), the export 571 (0.71375): 9 only the student, 1 only the
    # export, a drop of 8 records, exactly 1 point; the rates round to 0.7238 and 0.7137, 0.0101 apart.
    student = [True] * 570 + [True] * 9 + [False] + [False] * 220
    exported = [True] * 570 + [False] * 9 + [True] + [False] * 220
    p = paired(TwoFields, predictions(student), predictions(exported))
    assert (p["student"]["exact_match"], p["exported"]["exact_match"]) == (0.7238, 0.7137)
    assert verdict(p, 0.01) == {"max_drop": 0.01, "drop": 0.01, "within": True, "shown": True, "ok": True}
    assert not verdict(p, 0.0099)["ok"]  # 9 against 1 is shown (p 0.021)


def test_parity_needs_the_same_records():
    with pytest.raises(StageError, match="same records"):
        paired(TwoFields, predictions([True, False]), predictions([True]))


@pytest.mark.parametrize("accept", [False, True])
def test_a_drop_beyond_max_drop_exits_1_unless_accepted(tmp_path, monkeypatch, capsys, accept):
    """run_export is replaced by a double returning hand-made parity figures: the exit code and the warning are
    the CLI's, whatever the conversion gives (the real one runs in test_export_e2e.py)."""
    import toolkit.cli.deploy
    import toolkit.deploy.export as export

    # 8 of 40 lost, none gained: 20 points, McNemar p 0.0078
    overall = paired(TwoFields, predictions([True] * 40), predictions([True] * 32 + [False] * 8))
    record = {"parity": {"all": overall, "verdict": verdict(overall, 0.01),
                         "sample": {"records": 40, "of": 160, "seed": 0}}}
    monkeypatch.setattr(toolkit.cli.deploy, "run_export",  # where `xtk export` finds it
                        lambda ctx, quant, model, accept_drop, parity_full: export.ExportResult(
                            tmp_path, tmp_path / "m.gguf", record))
    code = main(["export", str(RECIPE), "--format", "gguf", "--run", str(tmp_path / "run"),
                 *(["--accept-drop"] if accept else [])])
    err = capsys.readouterr().err
    assert code == (0 if accept else 1)
    assert "WARNING" in err and "20.0 points" in err and "-20.0 points" in err and "McNemar's test shows" in err
    assert "parity on 40 of 160 (a sample, seed 0; --parity-full for all) test records" in err


def test_a_drop_the_paired_test_does_not_show_exits_0_and_says_so(tmp_path, monkeypatch, capsys):
    """2 of 10 sampled records lost: 20 points beyond max_drop, but McNemar p 0.5: noise on a small set."""
    import toolkit.cli.deploy
    import toolkit.deploy.export as export

    overall = paired(TwoFields, predictions([True] * 10), predictions([True] * 8 + [False] * 2))
    record = {"parity": {"all": overall, "verdict": verdict(overall, 0.01),
                         "sample": {"records": 10, "of": 40, "seed": 0}}}
    monkeypatch.setattr(toolkit.cli.deploy, "run_export",
                        lambda ctx, quant, model, accept_drop, parity_full: export.ExportResult(
                            tmp_path, tmp_path / "m.gguf", record))
    assert main(["export", str(RECIPE), "--format", "gguf", "--run", str(tmp_path / "run")]) == 0
    err = " ".join(capsys.readouterr().err.split())  # the console folds long lines
    assert "WARNING" not in err
    assert ("loses 20.0 points of exact match on these records, more than export.max_drop (1.0), but McNemar's test "
            "does not show a drop (p=0.5)") in err and "--parity-full or more test records" in err


def test_export_on_a_run_folder_uses_the_settings_the_run_was_made_with(tmp_path, monkeypatch):
    """`xtk export RECIPE --run DIR` after `xtk run RECIPE --profile cpu train.max_steps=5 ... --run DIR` (issue 47:
    export used other settings): the profile and overrides kept in the folder are the recipe export works under."""
    import toolkit.cli.deploy
    from toolkit.cli.resolve import load, open_to_make

    run = tmp_path / "run"
    made = parse_args(["run", str(RECIPE), "--profile", "cpu", "train.max_steps=5", "export.max_drop=0.05",
                       "--run", str(run)])
    with open_to_make(made, load(made)):  # as `xtk run` opens its folder, before its first stage
        pass
    seen = []

    def run_export(ctx, quant, model, accept_drop, parity_full):  # where export has resolved everything
        seen.append((ctx.recipe, ctx.run_dir, quant))
        raise StageError("no conversion here")

    monkeypatch.setattr(toolkit.cli.deploy, "run_export", run_export)
    assert main(["export", str(RECIPE), "--format", "gguf", "--run", str(run)]) == 2
    recipe, where, quant = seen[0]
    assert (recipe.profile, recipe.train.max_steps, recipe.export.max_drop, where) == ("cpu", 5, 0.05, run)
    assert quant == recipe.export.quant


def test_export_without_a_merged_student_exits_2(tmp_path, capsys):
    assert main(["export", str(RECIPE), "--format", "gguf", "--run", str(tmp_path)]) == 2
    assert "no merged student" in capsys.readouterr().err
    assert not (tmp_path / "export").exists()


def test_json_grammar_is_the_schema_with_bounded_whitespace():
    from llama_cpp import LlamaGrammar

    from toolkit.infer.llamacpp import json_grammar

    recipe = load_recipe(RECIPE, "cpu")
    gbnf = json_grammar(recipe.json_schema())
    assert 'space ::= | " " | "\\n" [ \\t]{0,20}' in gbnf.splitlines()
    rules = dict(line.split(" ::= ", 1) for line in gbnf.splitlines())
    # one alternative per province and city of the recipe's table, each in the schema's order, nothing after the brace
    branches = recipe.json_schema()["anyOf"]
    assert rules["root"] == " | ".join(f"alternative-{i}" for i in range(len(branches)))
    assert all(rules[f"alternative-{i}"] == (
        f'"{{" space a-district-kv "," space a-city-kv "," space a-province-kv "," space a-specific-location-kv '
        f'"," space a-name-kv "," space a-phone-kv "}}"').replace("a-", f"alternative-{i}-") for i in range(len(branches)))
    provinces = {rules[f"alternative-{i}-province"] for i in range(len(branches))}  # each a branch's constant
    assert len(provinces) == len(recipe.choices("province"))
    LlamaGrammar.from_string(gbnf, verbose=False)  # llama.cpp parses it


@pytest.mark.slow
def test_guided_answers_are_llama_cpps_own_grammar_answers():
    """The llamacpp backend checks the model's best token against the grammar and runs the grammar over the whole
    vocabulary only when it rejects that token; llama-cpp-python's own grammar sampler runs it over every token at
    every step. The answers must be the same: the embedded SmolLM2 GGUF, eight test texts, each under its own
    logistics_zh schema (the places it writes, or every city with no district). Zero-shot, the model breaks the
    grammar often, so both paths are taken (asserted)."""
    from llama_cpp import LlamaGrammar

    from toolkit.evaluate.evaluation import chat
    from toolkit.io.jsonl import read_jsonl
    from toolkit.infer.llamacpp import LlamaCppBackend, json_grammar
    from toolkit.model.models import EMBEDDED, _gguf_path

    recipe = load_recipe(RECIPE, "cpu")
    backend = LlamaCppBackend(recipe, _gguf_path(EMBEDDED["smollm2-135m-instruct"]), guided_json=True)
    texts = [r["text"] for r in read_jsonl(ROOT / "datasets" / "logistics_zh" / "test.jsonl")[:8]]
    chats = [chat(recipe.prompt("student"), text) for text in texts]
    ours, searched, checked = [], 0, 0
    for c in chats:
        [g] = backend.generate([c], recipe.eval.max_new_tokens)
        used = next(reversed(backend.grammars.values()))  # the grammar that answered, counting this answer
        ours, searched, checked = ours + [g.text], searched + used.searched, checked + used.checked
    theirs = [backend.llm.create_completion(
        backend.prompt_tokens(c), max_tokens=recipe.eval.max_new_tokens, temperature=0.0, repeat_penalty=1.0,
        grammar=LlamaGrammar.from_string(json_grammar(recipe.json_schema(text)), verbose=False))["choices"][0]["text"]
        for c, text in zip(chats, texts)]
    assert ours == theirs
    assert all(text.startswith("{") for text in ours)
    assert 0 < searched < checked
    backend.close()
