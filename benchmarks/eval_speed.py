"""Inference throughput of `xtk eval` as the cpu profile ships it: vLLM (with the profile's guided decoding, and
without it), ms-swift's TransformersEngine in batches, and a naive one-record-at-a-time transformers `generate`
loop, on the same model, the same records and the same threads, in one run.

    .venv/bin/python benchmarks/eval_speed.py [--model PATH] [--records 64] [--max-new-tokens N] [--batch-size N]

The model is the cpu profile's fine-tuned student (runs/logistics_zh/cpu/<student>/merged: `bash sft.sh` trains
it) unless --model names another; the prompt is the profile's student prompt; new tokens and batch default to
the profile's eval.max_new_tokens and eval.batch_size. Every engine gets every core of the machine (vLLM takes
them itself; torch is told). Records per second exclude model loading (reported apart). Ratios are against the
naive loop and against batched transformers of this run; "identical" compares each engine's free greedy answers
with the naive loop's (guided decoding may answer otherwise by design), and with `xtk eval`'s. vLLM guided runs
twice: compiled (the default) and eager (`eval.vllm.enforce_eager`), whose model load is its whole start. Goal on
this CPU: vLLM at least 5x the naive loop.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance  # noqa: E402

sys.path.insert(0, str(ROOT))

RECIPE = ROOT / "recipes" / "logistics_zh.yaml"
AS_SHIPPED = "vllm, guided (as xtk eval runs it)"


def naive_loop(model_dir: str, chats: list, max_new_tokens: int) -> tuple[float, float, list[str]]:
    """(load seconds, generate seconds, texts): plain transformers, batch of one, greedy."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    t1 = time.perf_counter()
    texts = []
    with torch.inference_mode():
        for chat in chats:
            ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
            texts.append(tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return t1 - t0, time.perf_counter() - t1, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the cpu profile's merged student)")
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, help="default: the profile's eval.max_new_tokens")
    parser.add_argument("--batch-size", type=int, help="default: the profile's eval.batch_size")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_speed.json"))
    args = parser.parse_args()
    threads = len(os.sched_getaffinity(0))
    os.environ["OMP_NUM_THREADS"] = str(threads)  # before torch loads: the loop and the engine get every core

    import torch

    from toolkit.infer.engines import TransformersBackend, VllmBackend
    from toolkit.io.jsonl import read_jsonl, write_json
    from toolkit.run.manifest import default_run_dir
    from toolkit.model.models import resolve_model
    from toolkit.task.recipe import load_recipe

    torch.set_num_threads(threads)
    shipped = load_recipe(RECIPE, "cpu")
    args.max_new_tokens = args.max_new_tokens or shipped.eval.max_new_tokens
    args.batch_size = args.batch_size or shipped.eval.batch_size
    recipe = load_recipe(RECIPE, "cpu", [f"eval.max_new_tokens={args.max_new_tokens}",
                                         f"eval.batch_size={args.batch_size}"])
    student = ROOT / default_run_dir(recipe) / "merged"
    if not args.model and not (student / "config.json").is_file():
        raise SystemExit(f"no fine-tuned student at {student}: run `bash sft.sh` first, or give --model")
    model = resolve_model(args.model or str(student), recipe.student.model_type, recipe.student.template)
    rows = read_jsonl(recipe.path(recipe.data.test[0]))[:args.records]
    system = recipe.prompt("student")
    chats = [[{"role": "system", "content": system}, {"role": "user", "content": r["text"]}] for r in rows]
    results: dict[str, dict] = {}
    outputs: dict[str, list[str]] = {}

    def timed(name: str, make, generate) -> None:
        t0 = time.perf_counter()
        engine = make()
        t1 = time.perf_counter()
        texts = []
        for i in range(0, len(chats), args.batch_size):
            texts += [g.text for g in generate(engine, chats[i:i + args.batch_size])]
        t2 = time.perf_counter()
        outputs[name] = texts
        results[name] = {"load_s": round(t1 - t0, 1), "generate_s": round(t2 - t1, 1),
                         "records_per_s": round(len(chats) / (t2 - t1), 3)}
        print(name, results[name], flush=True)
        engine.close()  # vLLM's worker would otherwise poll on a core during the next measurement

    if recipe.eval.guided_json:
        timed(AS_SHIPPED, lambda: VllmBackend(recipe, model.ref, guided_json=True),
              lambda e, batch: e.generate(batch, args.max_new_tokens))
        # The same without torch.compile: on this CPU inductor is off and the compile cache does not load, so
        # compiling may cost each start a minute for nothing (issue 44)
        eager = load_recipe(RECIPE, "cpu", [f"eval.max_new_tokens={args.max_new_tokens}",
                                            f"eval.batch_size={args.batch_size}", "eval.vllm.enforce_eager=true"])
        timed("vllm, guided, eager (eval.vllm.enforce_eager=true)",
              lambda: VllmBackend(eager, model.ref, guided_json=True),
              lambda e, batch: e.generate(batch, args.max_new_tokens))
    timed("vllm", lambda: VllmBackend(recipe, model.ref),
          lambda e, batch: e.generate(batch, args.max_new_tokens))
    timed("transformers engine", lambda: TransformersBackend(model.ref, model.model_type, model.template,
                                                             args.batch_size),
          lambda e, batch: e.generate(batch, args.max_new_tokens))
    load, gen, texts = naive_loop(model.ref, chats, args.max_new_tokens)
    outputs["naive loop"] = texts
    results["naive loop"] = {"load_s": round(load, 1), "generate_s": round(gen, 1),
                             "records_per_s": round(len(chats) / gen, 3)}
    naive, batched = results["naive loop"]["records_per_s"], results["transformers engine"]["records_per_s"]
    for name, r in results.items():
        r["ratio_vs_naive_loop"] = round(r["records_per_s"] / naive, 2)
        r["ratio_vs_transformers_engine"] = round(r["records_per_s"] / batched, 2)
        r["outputs_identical_to_naive"] = sum(a.strip() == b.strip() for a, b in zip(outputs[name],
                                                                                    outputs["naive loop"]))
        if AS_SHIPPED in outputs:
            r["outputs_identical_to_xtk_eval"] = sum(a.strip() == b.strip() for a, b in zip(outputs[name],
                                                                                           outputs[AS_SHIPPED]))
    write_json(args.out, {**provenance(one_run=True), "model": model.ref, "prompt": str(recipe.prompts.student),
                          "guided_json": recipe.eval.guided_json, "threads": threads, "records": len(chats),
                          "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "results": results})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
