"""`xtk export` for real: the embedded SmolLM2 converted to f16 by llama.cpp's converter, then scored by llama.cpp
beside ms-swift's transformers engine on a few logistics records (slow: minutes)."""

import json
import subprocess
import sys

import pytest

from conftest import RECIPE, ROOT, SMOLLM2_STUDENT

pytestmark = pytest.mark.slow


def test_export_smollm2_to_f16_answers_as_the_transformers_path(tmp_path, smollm2):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from toolkit.run.manifest import slug
    from toolkit.task.recipe import load_recipe

    run = tmp_path / "run"
    # The base model, not a trained one: parity is about the file answering as the folder does, whatever it says.
    args = [sys.executable, "-m", "toolkit", "export", str(RECIPE), "--profile", "cpu", "--run", str(run),
            *SMOLLM2_STUDENT, "--model", str(smollm2), "--format", "gguf", "--quant", "f16", "eval.limit=3",
            "eval.backend=transformers", "eval.max_new_tokens=32"]
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    name = slug(str(smollm2))
    folder = run / "export" / f"{name}-f16"
    gguf = folder / f"logistics_zh-{name}-f16.gguf"
    assert res.stdout.splitlines()[0] == str(gguf)

    reader = GGUFReader(gguf)
    template = AutoTokenizer.from_pretrained(smollm2).chat_template
    assert reader.get_field("tokenizer.chat_template").contents() == template  # the evaluated template, verbatim
    assert reader.get_field("general.architecture").contents() == "llama"
    assert reader.get_field("general.file_type").contents() == 1  # LLAMA_FTYPE_MOSTLY_F16

    recipe = load_recipe(RECIPE, "cpu", SMOLLM2_STUDENT)
    lines = (folder / "Modelfile").read_text(encoding="utf-8").splitlines()
    assert f"FROM ./{gguf.name}" in lines and 'PARAMETER stop "<|im_end|>"' in lines
    assert f'SYSTEM """{recipe.prompt("student")}"""' in lines
    assert json.loads((folder / "schema.json").read_text(encoding="utf-8")) == recipe.json_schema()

    record = json.loads((folder / "export.json").read_text(encoding="utf-8"))
    assert record["prompt_tokens"]["checked"] == record["prompt_tokens"]["identical"] == 6  # vLLM's tokens exactly
    parity = record["parity"]
    assert parity["all"]["student"]["n"] == parity["all"]["exported"]["n"] == 6
    assert parity["sample"] == {"records": 6, "of": 6, "seed": None}  # fewer than export.parity_records: all
    assert "llama.cpp scores 6 test records for parity, about " in res.stderr  # said before scoring
    assert parity["verdict"]["ok"]
    answers = {}
    for side, folder_name in (("transformers", f"{name}-test"), ("llamacpp", f"gguf-{name}-f16-test")):
        metrics = json.loads((run / "eval" / folder_name / "metrics.json").read_text(encoding="utf-8"))
        assert metrics["backend"] == side and metrics["n"] == 3
        answers[side] = [json.loads(line)["raw"] for line in
                         (run / "eval" / folder_name / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    # f16 weights against float32: greedy answers from the same tokens start alike (they may part later, and an
    # answer cut by max_new_tokens ends where a character's bytes were cut).
    for a, b in zip(answers["transformers"], answers["llamacpp"]):
        n = min(16, len(a), len(b))
        assert n > 0 and a[:n] == b[:n], (a, b)

    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "is current, kept" in again.stderr  # nothing done twice: neither converted nor scored again
    assert "evaluating" not in again.stderr and "eval gguf-" not in again.stderr

    # A sample of 4: both sides on the same 4 records, the GGUF's answers taken from its evaluation of all 6.
    sampled = subprocess.run([*args, "export.parity_records=4"], cwd=ROOT, capture_output=True, text=True)
    assert sampled.returncode in (0, 1), sampled.stderr[-3000:]
    assert "eval gguf-" not in sampled.stderr
    parity = json.loads((folder / "export.json").read_text(encoding="utf-8"))["parity"]
    assert parity["sample"] == {"records": 4, "of": 6, "seed": 0}
    assert parity["all"]["student"]["n"] == parity["all"]["exported"]["n"] == 4
    assert "parity on 4 of 6 (a sample, seed 0" in sampled.stderr
