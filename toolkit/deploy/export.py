"""export: the student as one GGUF file for llama.cpp and Ollama, and the check that it still answers as the
evaluated student does.

- Conversion by llama.cpp's own converter of the pinned release (toolkit/infer/llamacpp.py): f16 and q8_0 directly,
  q4_k_m by llama.cpp's quantiser from an f16 file. The converter is handed the model folder with its chat
  template set to the one evaluation used (what transformers, and so vLLM, load from the folder), and the GGUF's
  `tokenizer.chat_template` is read back and compared.
- An Ollama Modelfile: the same template as a Go template (rendered from the chat template itself), the
  student's prompt as SYSTEM, greedy, the turn-end tokens as stops; schema.json for Ollama's `format`.
- Parity: the GGUF scored by the llamacpp backend through toolkit/evaluate.run_eval (the same chats, scorer and,
  where the recipe decodes guided, schema) on a seeded sample of the recipe's test records (export.parity_records;
  all with --parity-full), beside the merged student's evaluation (reused when current, else run) on the same
  records: exact match and per-field accuracy of both, the paired difference with its interval and McNemar's
  exact test. A drop of exact match beyond export.max_drop fails where that test shows it (else it is said). How
  many records and about how long is said before scoring starts, from the time the first few take.

    <run>/export/<source>-<quant>/  <recipe>-<source>-<quant>.gguf  Modelfile  schema.json  export.json  convert.log
    <run>/eval/gguf-<source>-<quant>-<test>/  predictions.jsonl  metrics.json  (shown by the report)
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from toolkit.data.prepare import load_test
from toolkit.evaluate.evaluation import extract, run_eval
from toolkit.flow.pipeline import evaluate_model
from toolkit.infer.llamacpp import (CONVERTER_TYPES, LLAMA_CPP_PYTHON, LlamaCppBackend, convert, gguf_metadata,
                                    quantize)
from toolkit.io.errors import StageError
from toolkit.io.jsonl import own_folder, read_jsonl, write_json, write_text
from toolkit.io.keys import file_digest
from toolkit.maths.ranking import ALPHA, Evaluation, mcnemar, paired_difference
from toolkit.model.models import resolve_model
from toolkit.model.spm import write_spm
from toolkit.model.thinking import template_kwargs, thinking_off
from toolkit.run.identity import evaluations_current, gguf_current, gguf_identity, identity, merged_current, \
    read_metrics
from toolkit.run.manifest import slug
from toolkit.run.roles import ROLES, named_model, role
from toolkit.task.recipe import Recipe

console = Console(stderr=True)

# Records timed before the parity check says how long it will take (each ~3 s on one thread here); the
# evaluation answers them again, so the estimate costs their time once more.
TIMED_RECORDS = 3

# Marks where the system prompt and the user's text go when a chat template is rendered into an Ollama template.
_SYSTEM, _USER = "\u2063xtk-system\u2063", "\u2063xtk-user\u2063"


# --- the chat template and the Modelfile ---------------------------------------------------------------------

def go_template(render, bos: str) -> str:
    """An Ollama (Go) template that renders a one-turn chat, with or without a system prompt, to the very text
    `render(messages)` (the chat template with the generation prompt) gives; a leading BOS is left to the
    runtime, which adds it. StageError when the chat template does not place the texts verbatim."""
    def literal(text: str) -> str:
        return text.replace("{{", '{{ "{{" }}')

    def part(messages: list[dict], marks: dict[str, str]) -> str:
        text = render(messages)
        text = text[len(bos):] if bos and text.startswith(bos) else text
        for mark, go in marks.items():
            if text.count(mark) != 1:
                raise StageError("the chat template does not write each message's text once, as given: it cannot be "
                                 "written as an Ollama template (use the GGUF's own template, e.g. with llama.cpp)")
        out = literal(text)
        for mark, go in marks.items():
            out = out.replace(mark, go)
        return out

    with_system = part([{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _USER}],
                       {_SYSTEM: "{{ .System }}", _USER: "{{ .Prompt }}"})
    without = part([{"role": "user", "content": _USER}], {_USER: "{{ .Prompt }}"})
    return f"{{{{ if .System }}}}{with_system}{{{{ else }}}}{without}{{{{ end }}}}"


def modelfile(gguf_name: str, template: str, system: str, stops: list[str], max_new_tokens: int,
              context: int) -> str:
    """The Ollama Modelfile: `ollama create NAME -f Modelfile` in the export folder."""
    for what, text in (("template", template), ("prompt", system)):
        if '"""' in text:
            raise StageError(f'the student\'s {what} contains """, which a Modelfile cannot quote')
    lines = ["# xtk export: `ollama create NAME -f Modelfile` here, then ask with the student's schema as format",
             f"FROM ./{gguf_name}",
             f'TEMPLATE """{template}"""',
             f'SYSTEM """{system}"""',
             "PARAMETER temperature 0",
             f"PARAMETER num_predict {max_new_tokens}",
             f"PARAMETER num_ctx {context}",
             *(f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in stops)]
    return "\n".join(lines) + "\n"


def stop_tokens(tokenizer, model_dir: Path) -> list[str]:
    """The tokens that end the student's answer: its generation config's eos ids and the tokenizer's eos."""
    ids = []
    config = model_dir / "generation_config.json"
    if config.is_file():
        eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token_id")
        ids += eos if isinstance(eos, list) else [eos] if eos is not None else []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(tokenizer.convert_ids_to_tokens(ids)))


def staged(model_dir: Path, template: str, work: Path) -> Path:
    """The model folder as the converter should read it: its files linked, tokenizer_config.json carrying
    `template` (the converter prefers that key to chat_template.jinja, transformers the other way round)."""
    folder = work / "model"
    folder.mkdir()
    for p in model_dir.iterdir():
        if p.name not in ("tokenizer_config.json", "chat_template.jinja", "chat_template.json"):
            (folder / p.name).symlink_to(p.resolve())
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    config["chat_template"] = template
    write_text(folder / "tokenizer_config.json", json.dumps(config, ensure_ascii=False, indent=2) + "\n")
    write_spm(model_dir, folder)  # Gemma's tokenizer as the SentencePiece vocabulary it is (toolkit/model/spm.py)
    return folder


# --- parity ----------------------------------------------------------------------------------------------------

def _rates(recipe: Recipe, rows: list[dict]) -> dict:
    n = len(rows)
    return {"n": n, "exact_match": round(sum(r["exact"] for r in rows) / n, 4),
            "fields": {f: round(sum(r["correct"][f] for r in rows) / n, 4) for f in recipe.field_names}}


def paired(recipe: Recipe, student: list[dict], exported: list[dict]) -> dict:
    """The exported model's figures beside the student's on the same records (same ids, same order): exact match
    and per-field accuracy, the difference in exact match (exported minus student) with a paired bootstrap
    interval, and McNemar's exact test on the records only one of them gets right."""
    if [r["id"] for r in student] != [r["id"] for r in exported]:
        raise StageError("the student's and the exported model's predictions are not of the same records")
    if not student:
        raise StageError("no records to compare")
    only_student = sum(s["exact"] and not e["exact"] for s, e in zip(student, exported))
    only_exported = sum(e["exact"] and not s["exact"] for s, e in zip(student, exported))

    def mean(units: list) -> float:
        return sum(units) / len(units)

    diff = paired_difference(Evaluation([r["exact"] for r in exported], mean),
                             Evaluation([r["exact"] for r in student], mean))
    return {"student": _rates(recipe, student), "exported": _rates(recipe, exported),
            "exact_match_difference": diff,
            "fields_difference": {f: round(sum(e["correct"][f] - s["correct"][f] for s, e in zip(student, exported))
                                          / len(student), 4) for f in recipe.field_names},
            "only_student_right": only_student, "only_exported_right": only_exported,
            "mcnemar_p": round(mcnemar(only_student, only_exported), 4),
            "identical_answers": sum(s["raw"] == e["raw"] for s, e in zip(student, exported))}


def parity_sample(tests: dict[str, list[dict]], size: int | None, seed: int) -> dict[str, list[dict]]:
    """The test records parity scores: `size` drawn at random with `seed` from all test files together (each
    file's kept in its own order, a file none was drawn from left out), or all of them when size is None or not
    below their number."""
    pool = [(stem, i) for stem, rows in tests.items() for i in range(len(rows))]
    if size is None or size >= len(pool):
        return tests
    chosen = set(random.Random(seed).sample(pool, size))
    return {stem: kept for stem, rows in tests.items() if (kept := [row for i, row in enumerate(rows)
                                                                    if (stem, i) in chosen])}


def on_records(predictions: list[dict], rows: list[dict], where: Path) -> list[dict]:
    """The predictions of these test rows, in the rows' order (an evaluation may hold more records than the
    sample); StageError naming `where` when one is missing."""
    by_id = {json.dumps(p["id"]): p for p in predictions}
    missing = [row["id"] for row in rows if json.dumps(row["id"]) not in by_id]
    if missing:
        raise StageError(f"{where}: no prediction of {len(missing)} of the records parity compares (e.g. id "
                         f"{missing[0]!r}): evaluate it again")
    return [by_id[json.dumps(row["id"])] for row in rows]


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else \
        f"{seconds / 3600:.1f} h"


def estimate(records: int, seconds_per_record: float, timed: int, threads: str, total: int,
             sampled: bool) -> str:
    """What the parity check is about to cost: the records llama.cpp scores and about how long, at the speed
    the first `timed` took; for a sample, what the full set would take."""
    line = (f"export: llama.cpp scores {records} test record{'s' * (records != 1)} for parity, about "
            f"{_duration(records * seconds_per_record)} at {seconds_per_record:.1f} s a record (the first {timed} "
            f"timed; {threads})")
    if sampled:
        line += (f"; a seeded sample of the {total} (export.parity_records): --parity-full scores all, about "
                 f"{_duration(total * seconds_per_record)}")
    return line


def verdict(overall: dict, max_drop: float) -> dict:
    """Whether the exported model kept the student's exact match, all the compared records together: `within`
    max_drop (a fraction), `shown` worse by McNemar's test on the same records, and `ok` unless both. A drop beyond
    max_drop that the test does not show is what a few records give by chance (on 10, one answer is 10 points), so
    it is said, not failed. The drop is counted from the records only one of them gets right, not from the two
    rounded rates: 579 and 571 of 800 round to 0.7238 and 0.7137, a drop of 0.0101 where it is exactly one point."""
    lost = overall["only_student_right"] - overall["only_exported_right"]
    drop = lost / overall["exported"]["n"]
    within = drop <= max_drop + 1e-9
    shown = lost > 0 and overall["mcnemar_p"] < ALPHA
    return {"max_drop": max_drop, "drop": round(drop, 4), "within": within, "shown": shown,
            "ok": within or not shown}


# --- the command -------------------------------------------------------------------------------------------------

@dataclass
class ExportResult:
    folder: Path
    gguf: Path
    record: dict  # export.json


def _source(ctx, model: str):
    """The model to export, its name, the evaluation role its figures come from and its ms-swift model type: the
    run's merged student (the role predict and export take by default), or a folder."""
    recipe = ctx.recipe
    if (spec := ROLES.get(model)) and spec.deployed:
        r = role(ctx, model)
        merged = Path(r.model)
        if not (merged / "config.json").is_file():
            raise StageError(f"no merged student in {merged}: run `xtk run` (or `xtk merge`) first, or give "
                             "--model FOLDER")
        if (ctx.data_dir / "train.jsonl").is_file() and not merged_current(ctx):
            raise StageError(f"{merged} holds a student trained under other settings than the recipe's now: run "
                             "`xtk merge` (or `xtk run`) first")
        return merged, model, r, ctx.student().model_type
    resolved = resolve_model(model, trust_remote_code=recipe.student.trust_remote_code)
    name = slug(model)
    return Path(resolved.ref), name, named_model(ctx, resolved.ref, name=name), resolved.model_type


def write_gguf(model_dir: Path, quant: str, out: Path, log: Path) -> dict:
    """Convert (and quantise) `model_dir` into `out` with the chat template evaluation used; written under a
    temporary name and renamed whole. Returns what export.json records of it."""
    from transformers import AutoTokenizer

    template = AutoTokenizer.from_pretrained(model_dir).chat_template
    if not isinstance(template, str) or not template:
        raise StageError(f"{model_dir}: the model folder has no chat template (chat_template.jinja or "
                         "tokenizer_config.json): the student was not evaluated through one")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        work = Path(tmp)
        folder = staged(model_dir, template, work)
        first = work / ("f16.gguf" if quant not in CONVERTER_TYPES else out.name)
        argv = convert(folder, first, CONVERTER_TYPES.get(quant, "f16"), log)
        if quant not in CONVERTER_TYPES:
            console.print(f"export: quantising to {quant} with llama.cpp")
            quantize(first, work / out.name, quant)
        written = gguf_metadata(work / out.name, ("tokenizer.chat_template", "general.architecture",
                                                  "tokenizer.ggml.add_bos_token"))
        if written.get("tokenizer.chat_template") != template:
            raise StageError(f"the converter wrote another chat template than {model_dir}'s into the GGUF")
        os.replace(work / out.name, out)
    return {"path": str(out), "bytes": out.stat().st_size, "sha256": file_digest(out, 64), "quant": quant,
            "architecture": written.get("general.architecture"), "chat_template": template,
            "add_bos_token": bool(written.get("tokenizer.ggml.add_bos_token")),
            "converter": f"llama.cpp convert_hf_to_gguf.py from llama-cpp-python=={LLAMA_CPP_PYTHON}",
            "converter_argv": [str(model_dir) if a == str(folder) else a for a in argv]}


def prompt_check(backend, tokenizer, chats: list[list[dict]], thinking_off: bool) -> dict:
    """Whether llama.cpp is given the very tokens vLLM is for the same chats (the folder's template rendered by
    transformers, tokenised without added special tokens, as vLLM's LLM.chat does)."""
    kwargs = template_kwargs(thinking_off)
    differ = None
    same = 0
    for chat in chats:
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True, **kwargs)
        want = tokenizer(text, add_special_tokens=False)["input_ids"]
        got = backend.prompt_tokens(chat)
        if got == want:
            same += 1
        elif differ is None:
            differ = {"text": text, "transformers": want, "llama.cpp": got}
    return {"checked": len(chats), "identical": same, "first_difference": differ}


def _scored(folder: Path, evaluated: dict, rows: list[dict]) -> bool:
    """Whether llama.cpp's evaluation in `folder` is of this GGUF under the settings now and holds every row."""
    m = read_metrics(folder)
    if not m or m.get("identity") != evaluated:
        return False
    have = {json.dumps(p["id"]) for p in read_jsonl(folder / "predictions.jsonl")}
    return all(json.dumps(row["id"]) in have for row in rows)


def run_export(ctx, quant: str, model: str = "student", accept_drop: bool = False,
               parity_full: bool = False) -> ExportResult:
    """`xtk export RECIPE --format gguf`: convert, write the Modelfile, score for parity (a sample of the test
    records, or all with parity_full), write export.json."""
    recipe = ctx.recipe
    model_dir, name, source_role, model_type = _source(ctx, model)
    from transformers import AutoTokenizer  # after the checks above: a missing student is said at once

    source = identity(ctx, source_role)
    folder = own_folder(ctx.run_dir / "export" / f"{name}-{quant}")
    gguf = folder / f"{recipe.name}-{name}-{quant}.gguf"
    record_path = folder / "export.json"
    previous = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    made = previous.get("gguf") or {}
    if gguf_current(previous, gguf, source, LLAMA_CPP_PYTHON):
        console.print(f"export: {gguf.name} is current, kept")
    else:
        console.print(f"export: converting {model_dir} to {quant} with llama.cpp's converter")
        made = write_gguf(model_dir, quant, gguf, folder / "convert.log")
    record = {"recipe": recipe.name, "profile": recipe.profile, "model": str(model_dir), "source": source,
              "format": "gguf", "gguf": made}
    write_json(record_path, record)  # what exists so far: a re-run after an interruption keeps the GGUF

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    system = recipe.prompt(source_role.prompt)
    # A runtime that adds BOS itself (the GGUF says so) must not get it from the template too.
    bos = tokenizer.bos_token if made.get("add_bos_token") and tokenizer.bos_token else ""
    template = go_template(lambda m: tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                           bos)
    write_text(folder / "Modelfile", modelfile(gguf.name, template, system, stop_tokens(tokenizer, model_dir),
                                               recipe.eval.max_new_tokens, recipe.eval.vllm.max_model_len))
    write_text(folder / "schema.json", json.dumps(recipe.json_schema(), ensure_ascii=False, indent=2) + "\n")

    # The student's evaluation (reused when it is of the current student, settings and records).
    paths = {Path(t).stem: t for t in recipe.data.test}
    tests = {stem: load_test(recipe, recipe.path(t), recipe.eval.limit) for stem, t in paths.items()}
    if evaluations_current(ctx, source_role, recipe.data.test):
        console.print(f"export: evaluating {source_role.folder} for the comparison")
        evaluate_model(ctx, source_role)

    # The records both sides are compared on: the student's answers to them come from its whole evaluation.
    size = None if parity_full or recipe.export.parity_records == "all" else recipe.export.parity_records
    seed = recipe.export.parity_seed
    sample = parity_sample(tests, size, seed)
    total, compared = sum(map(len, tests.values())), sum(map(len, sample.values()))
    guided = recipe.eval.guided_json
    evaluated = gguf_identity(ctx, source_role, made["sha256"], quant, LLAMA_CPP_PYTHON, guided)
    evals = {stem: ctx.run_dir / "eval" / f"gguf-{name}-{quant}-{stem}" for stem in sample}
    todo = [stem for stem in sample if not _scored(evals[stem], evaluated, sample[stem])]
    if todo:
        backend = LlamaCppBackend(recipe, gguf, guided)
        try:
            texts = [row["text"] for stem in todo for row in sample[stem]]
            record["prompt_tokens"] = prompt_check(
                backend, tokenizer, [[{"role": "system", "content": system}, {"role": "user", "content": text}]
                                     for text in texts[:20]], thinking_off(model_type, None))
            start = time.perf_counter()
            timed = len(extract(recipe, backend, system, texts[:TIMED_RECORDS], recipe.eval.max_new_tokens))
            console.print(estimate(len(texts), (time.perf_counter() - start) / timed, timed, backend.threads.why,
                                   total, compared < total), highlight=False)
            for stem in todo:
                m = run_eval(recipe, backend, recipe.path(paths[stem]), source_role.prompt, evals[stem], str(gguf),
                             extra={"role": "gguf", "identity": evaluated,
                                    "sample": {"records": len(sample[stem]), "of": len(tests[stem])}},
                             rows=sample[stem])
                console.print(f"eval {evals[stem].name}: exact match {100 * m['exact_match']['value']:.1f}% "
                              f"(n={m['n']}, {m['records_per_s']} rec/s, llamacpp)")
        finally:
            backend.close()

    theirs = {stem: ctx.run_dir / "eval" / f"{source_role.folder}-{stem}" for stem in sample}
    student = {stem: on_records(read_jsonl(theirs[stem] / "predictions.jsonl"), rows, theirs[stem])
               for stem, rows in sample.items()}
    exported = {stem: on_records(read_jsonl(evals[stem] / "predictions.jsonl"), rows, evals[stem])
                for stem, rows in sample.items()}
    per_test = {stem: paired(recipe, student[stem], exported[stem]) for stem in sample}
    overall = paired(recipe, [r for stem in sample for r in student[stem]],
                     [r for stem in sample for r in exported[stem]])
    record["parity"] = {"backend": "llamacpp", "guided_json": guided,
                        "sample": {"records": compared, "of": total, "seed": seed if compared < total else None},
                        "tests": per_test, "all": overall,
                        "verdict": verdict(overall, recipe.export.max_drop), "accept_drop": accept_drop}
    record.setdefault("prompt_tokens", previous.get("prompt_tokens"))
    write_json(record_path, record)
    return ExportResult(folder, gguf, record)
