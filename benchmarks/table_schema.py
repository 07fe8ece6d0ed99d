"""Guided decoding by a knowledge table: logistics_zh's MCA table (datasets/logistics_zh/admin.csv, 2,849 places)
as one JSON schema (toolkit/task/tables.answer_schema: an anyOf of one branch per province + city, each with its
districts and "", the other fields by reference), compiled by the two grammar engines xtk decodes with, over each
embedded student's vocabulary:

- xgrammar (vLLM's structured outputs), GrammarCompiler.compile_json_schema without free whitespace, as the vllm
  backend asks (toolkit/infer/engines.py);
- llama.cpp: llama-cpp-python's LlamaGrammar.from_json_schema (the Python JSON schema -> GBNF converter), then
  llama.cpp's grammar parser over the GGUF's vocabulary (llama_sampler_init_grammar, what the llamacpp backend's
  GreedyGrammar makes).

Three schemas: the recipe's own (no table: districts left out, cities and provinces as separate enums), the table's
in the recipe's field order (district first) and the table's with province first. Each engine is checked token by
token on the model's own tokenisation of each answer: it should accept every combination the table allows
(xgrammar: all; llama.cpp: every 10th, it is slower) and refuse a city under another province; the recipe's own
schema refuses none of those (not_taken and let_through quote the first answers an engine got wrong).

The time one decoding step costs the grammar, on the steps of 5 answers spread over the table: xgrammar's bitmask
of allowed tokens (ms_per_bitmask, what vLLM computes before every token); llama.cpp's check of one token
(ms_per_token_check, what GreedyGrammar does first) and its pass over the whole vocabulary (ms_per_vocabulary_pass,
when the model's best token is refused). Times are CPU seconds of this process (the
machine may be shared), one thread.

    .venv/bin/python benchmarks/table_schema.py [--model NAME|FOLDER ...]

Writes benchmarks/results/table_schema.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance  # noqa: E402

sys.path.insert(0, str(ROOT))

RECIPE = ROOT / "recipes" / "logistics_zh.yaml"
TABLE = ROOT / "datasets" / "logistics_zh" / "admin.csv"
FREE = {"specific_location": "文三路 1号", "name": "王五", "phone": "13800000000"}


def answers(table, names: list[str]) -> tuple[list[str], list[str]]:
    """The answers the schema must accept (every combination) and refuse (each city under the next province, no
    district), as JSON in the field order `names`."""
    def text(combination) -> str:
        values = {**FREE, **dict(zip(table.columns, combination))}
        return json.dumps({n: values[n] for n in names}, ensure_ascii=False)

    provinces = sorted({c[0] for c in table.combinations})
    cities = dict.fromkeys(c[1:2] + c[:1] for c in table.combinations)
    outside = [(provinces[(provinces.index(p) + 1) % len(provinces)], city, "") for city, p in cities]
    return [text(c) for c in table.combinations], [text(c) for c in outside if c not in table.combinations]


TIMED = 5  # answers (spread over the table) walked with the whole vocabulary checked at every step, and timed


def timed(i: int, n: int) -> bool:
    return i % max(1, n // TIMED) == 0 and i // max(1, n // TIMED) < TIMED


def checked(accept: list[str], refuse: list[str], not_taken: list[str], let_through: list[str]) -> dict:
    """How many answers the engine took and refused, with the first few it got wrong."""
    return {"accepted": f"{len(accept) - len(not_taken)} of {len(accept)}",
            "refused": f"{len(refuse) - len(let_through)} of {len(refuse)}",
            **({"not_taken": not_taken[:3]} if not_taken else {}),
            **({"let_through": let_through[:3]} if let_through else {})}


def xgrammar_run(folder: Path, schema: str, accept: list[str], refuse: list[str]) -> dict:
    import xgrammar as xgr
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=AutoConfig.from_pretrained(folder).vocab_size)
    t0 = time.process_time()
    compiled = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False).compile_json_schema(
        schema, any_whitespace=False)
    seconds = time.process_time() - t0
    matcher = xgr.GrammarMatcher(compiled)
    bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
    steps, mask_seconds = 0, 0.0

    def walk(text: str, timing: bool = False) -> bool:
        """Whether the grammar takes the answer's tokens one by one, then the end; `timing`: each step's bitmask
        of allowed tokens (what vLLM computes before every token) is computed and timed."""
        nonlocal steps, mask_seconds
        matcher.reset()
        for token in [*tokenizer.encode(text, add_special_tokens=False), *info.stop_token_ids[:1]]:
            if timing:
                t = time.process_time()
                matcher.fill_next_token_bitmask(bitmask)
                mask_seconds += time.process_time() - t
                steps += 1
            if not matcher.accept_token(token):
                return False
        return matcher.is_terminated()

    not_taken = [a for i, a in enumerate(accept) if not walk(a, timed(i, len(accept)))]
    let_through = [r for r in refuse if walk(r)]
    return {"vocabulary": info.vocab_size, "compile_seconds": round(seconds, 2),
            **checked(accept, refuse, not_taken, let_through), "ms_per_bitmask": round(1000 * mask_seconds / steps, 3)}


def llama_run(gguf: Path, schema: dict, names: list[str], accept: list[str], refuse: list[str]) -> dict:
    import ctypes

    import llama_cpp
    import numpy as np
    from llama_cpp import Llama, LlamaGrammar
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    from toolkit.infer.llamacpp import SPACE_RULE

    text = json.dumps(schema, ensure_ascii=False)
    t0 = time.process_time()
    LlamaGrammar.from_json_schema(text, verbose=False)
    from_json_schema = time.process_time() - t0
    # As the llamacpp backend writes it: the recipe's property order, llama.cpp's own whitespace rule.
    gbnf = "\n".join(SPACE_RULE if line.startswith("space ::=") else line
                     for line in json_schema_to_gbnf(text, prop_order=names).splitlines())
    llm = Llama(str(gguf), vocab_only=True, verbose=False)
    t0 = time.process_time()
    sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, gbnf.encode(), b"root")
    parse = time.process_time() - t0
    one = (llama_cpp.llama_token_data * 1)()
    every = np.zeros(llm.n_vocab(), dtype=np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)],
                                                   align=True))
    timings = {"one": [0, 0.0], "every": [0, 0.0]}

    def apply(data, size: int, which: str) -> None:
        cur = llama_cpp.llama_token_data_array(data=data, size=size, selected=-1, sorted=False)
        t = time.process_time()
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(cur))
        timings[which][0] += 1
        timings[which][1] += time.process_time() - t

    def walk(answer: str, timing: bool = False) -> bool:
        """Whether the grammar lets each of the answer's tokens through, then the end, as GreedyGrammar checks
        the model's best token; `timing`: also the grammar over the whole vocabulary at each step."""
        llama_cpp.llama_sampler_reset(sampler)
        for token in [*llm.tokenize(answer.encode(), add_bos=False, special=False), llm.token_eos()]:
            if timing:
                every["id"], every["logit"] = np.arange(len(every)), 0.0
                apply(every.ctypes.data_as(llama_cpp.llama_token_data_p), len(every), "every")
            one[0].id, one[0].logit, one[0].p = token, 0.0, 0.0
            apply(one, 1, "one")
            if one[0].logit == float("-inf"):
                return False
            if token != llm.token_eos():
                llama_cpp.llama_sampler_accept(sampler, token)
        return True

    sample = accept[::10]
    not_taken = [a for i, a in enumerate(sample) if not walk(a, timed(i, len(sample)))]
    let_through = [r for r in refuse if walk(r)]
    llama_cpp.llama_sampler_free(sampler)
    (n_one, one_s), (n_every, every_s) = timings["one"], timings["every"]
    return {"vocabulary": llm.n_vocab(), "gbnf_bytes": len(gbnf.encode()),
            "from_json_schema_seconds": round(from_json_schema, 2), "grammar_parse_seconds": round(parse, 2),
            **checked(sample, refuse, not_taken, let_through),
            "ms_per_token_check": round(1000 * one_s / n_one, 3),
            "ms_per_vocabulary_pass": round(1000 * every_s / n_every, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", help="embedded name or model folder (repeatable)")
    args = parser.parse_args()

    from toolkit.deploy.export import write_gguf
    from toolkit.model.models import resolve_model
    from toolkit.task.recipe import load_recipe
    from toolkit.task.tables import TableSpec, answer_schema, load_table

    # the recipe's fields without its tables: the schema the table variants are compared against
    plain = load_recipe(RECIPE, "cpu", ["tables=[]"]).json_schema()
    properties = plain["properties"]
    t0 = time.process_time()
    table = load_table(TABLE, TableSpec(file=TABLE.name, fields=["province", "city", "district"],
                                        may_be_empty=["district"]))
    built = answer_schema(properties, [table])
    build = time.process_time() - t0
    general_first = {n: properties[n] for n in ["province", "city", "district"] + list(properties)[3:]}
    variants = {"plain (the recipe's schema, no table)": (plain, list(properties)),
                "table, the recipe's order (district first)": (built, list(properties)),
                "table, province first": (answer_schema(general_first, [table]), list(general_first))}
    cases = {name: answers(table, names) for name, (_, names) in variants.items()}
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ref in args.model or ["gemma3-270m", "smollm2-135m-instruct"]:
            folder = Path(resolve_model(ref).ref)
            gguf = Path(tmp) / f"{folder.name}-q8_0.gguf"
            write_gguf(folder, "q8_0", gguf, Path(tmp) / "convert.log")
            models[ref] = {}
            for name, (schema, names) in variants.items():
                print(f"{ref}: {name}", file=sys.stderr)
                accept, refuse = cases[name]
                models[ref][name] = {
                    "xgrammar": xgrammar_run(folder, json.dumps(schema, ensure_ascii=False), accept, refuse),
                    "llama_cpp": llama_run(gguf, schema, names, accept, refuse)}
            gguf.unlink()
    out = {**provenance(one_run=True), "table": str(TABLE.relative_to(ROOT)), "rows": len(table.rows),
           "combinations": len(table.combinations), "branches": len(built["anyOf"]),
           "schema_bytes": len(json.dumps(built, ensure_ascii=False).encode()),
           "load_and_build_seconds": round(build, 3), "models": models}
    path = ROOT / "benchmarks" / "results" / "table_schema.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
