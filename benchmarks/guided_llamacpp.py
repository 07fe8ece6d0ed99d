"""Guided decoding through llama.cpp, as `xtk export` scores a GGUF and the llamacpp backend answers: xtk's grammar
check (the model's best token checked against the grammar first, the whole vocabulary only when it is rejected)
against llama-cpp-python's own grammar sampler (every token of the vocabulary checked at every step) and against
free decoding, on the same records, the same GGUF and the same threads, in one run.

    .venv/bin/python benchmarks/guided_llamacpp.py [--model NAME|FOLDER ...] [--records 16] [--quant q8_0]

Each model (default: the two embedded students, zero-shot; a merged student's folder, e.g.
runs/logistics_zh/cpu/gemma3-270m/merged, to measure a fine-tuned one) is written as a GGUF by `xtk export`'s own
writer, with its chat template. The chats are logistics_zh's cpu profile's (its student prompt and the first
test texts), decoded greedy to eval.max_new_tokens under the recipe's JSON schema (2,914 districts among its
closed sets). Seconds per record and milliseconds per generated token exclude loading (free answers differ in
length, so compare free decoding by the token); the speed-up is llama-cpp-python's grammar sampler's seconds per
record over xtk's check's, both measured here. "identical" compares the two guided answers of each record (they must be equal);
"searched" is the share of generated tokens whose best token the grammar rejected, so that the vocabulary was
searched. Writes benchmarks/results/guided_llamacpp.json.
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
TEST = ROOT / "datasets" / "logistics_zh" / "test.jsonl"


def timed(answer, chats: list) -> tuple[dict, list[str]]:
    """Seconds per record and milliseconds per generated token of `answer` (a chat -> text and its token count)
    over the chats, one at a time; and the answers."""
    t0 = time.perf_counter()
    answers = [answer(c) for c in chats]
    seconds = time.perf_counter() - t0
    tokens = sum(n for _, n in answers)
    return {"seconds_per_record": round(seconds / len(chats), 2), "ms_per_token": round(1000 * seconds / tokens, 1),
            "tokens": tokens}, [text for text, _ in answers]


def measure(recipe, gguf: Path, chats: list) -> dict:
    from llama_cpp import LlamaGrammar

    from toolkit.infer.backends import user_text
    from toolkit.infer.llamacpp import LlamaCppBackend, json_grammar

    max_tokens = recipe.eval.max_new_tokens
    t0 = time.perf_counter()
    backend = LlamaCppBackend(recipe, gguf, guided_json=True)
    load = time.perf_counter() - t0
    counts = {"checked": 0, "searched": 0}

    def completion(c: list, **kwargs) -> tuple[str, int]:
        kwargs = {"max_tokens": max_tokens, **kwargs}
        done = backend.llm.create_completion(backend.prompt_tokens(c), temperature=0.0, repeat_penalty=1.0, **kwargs)
        return done["choices"][0]["text"], done["usage"]["completion_tokens"]

    def xtk_check(c: list) -> tuple[str, int]:
        [g] = backend.generate([c], max_tokens)
        used = next(reversed(backend.grammars.values()))  # the grammar that answered, counting this answer alone
        counts["checked"] += used.checked
        counts["searched"] += used.searched
        return g.text, g.completion_tokens

    # each chat's schema (its text's), as llama-cpp-python's own sampler takes it, made before the clock starts
    sampler_grammars = {id(c): LlamaGrammar.from_string(json_grammar(recipe.json_schema(user_text(c))), verbose=False)
                        for c in chats}

    try:
        completion(chats[0], max_tokens=8)  # warm-up, so that no variant pays for the first decode
        xtk, xtk_answers = timed(xtk_check, chats)
        sampler, sampler_answers = timed(lambda c: completion(c, grammar=sampler_grammars[id(c)]), chats)
        free, free_answers = timed(completion, chats)
        searched, checked = counts["searched"], counts["checked"]
        vocabulary = backend.llm.n_vocab()
    finally:
        backend.close()
    return {"gguf_bytes": gguf.stat().st_size, "vocabulary": vocabulary, "threads": backend.threads.count,
            "load_seconds": round(load, 1),
            "xtk_grammar_check": xtk, "llama_cpp_python_grammar_sampler": sampler, "free": free,
            "speedup_over_grammar_sampler": round(sampler["seconds_per_record"] / xtk["seconds_per_record"], 2),
            "identical_guided_answers": sum(a == b for a, b in zip(xtk_answers, sampler_answers)),
            "records": len(chats), "searched_share": round(searched / checked, 4),
            "answers_valid_json": sum(_is_object(t) for t in xtk_answers),
            "free_answers_valid_json": sum(_is_object(t) for t in free_answers)}


def _is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", help="embedded name or model folder (repeatable)")
    parser.add_argument("--records", type=int, default=16)
    parser.add_argument("--quant", default="q8_0", choices=["f16", "q8_0", "q4_k_m"])
    args = parser.parse_args()

    from toolkit.evaluate.evaluation import chat
    from toolkit.deploy.export import write_gguf
    from toolkit.io.jsonl import read_jsonl
    from toolkit.model.models import resolve_model
    from toolkit.task.recipe import load_recipe

    recipe = load_recipe(RECIPE, "cpu")
    chats = [chat(recipe.prompt("student"), r["text"]) for r in read_jsonl(TEST)[:args.records]]
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ref in args.model or ["gemma3-270m", "smollm2-135m-instruct"]:
            folder = Path(resolve_model(ref).ref)
            gguf = Path(tmp) / f"{folder.name}-{args.quant}.gguf"
            write_gguf(folder, args.quant, gguf, Path(tmp) / "convert.log")
            print(f"{ref}: measuring {len(chats)} records", file=sys.stderr)
            models[ref] = measure(recipe, gguf, chats)
            gguf.unlink()
    out = {**provenance(one_run=True), "recipe": recipe.name, "profile": recipe.profile, "quant": args.quant,
           "max_new_tokens": recipe.eval.max_new_tokens, "models": models}
    path = ROOT / "benchmarks" / "results" / "guided_llamacpp.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
