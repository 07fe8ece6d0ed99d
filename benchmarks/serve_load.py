"""xtk serve under load, per engine: vLLM on the merged student and llama.cpp on its q8_0 GGUF (written by
`xtk export`'s own writer), each answering 1, 8 and 32 concurrent clients that send one text a request, beside an
offline `xtk predict` of the same records by the same engine, measured in the same run; every served answer is
compared with that engine's predict answer.

    .venv/bin/python benchmarks/serve_load.py [--model student|PATH] [--run DIR] [--records 64] [--engine E] [KEY=VALUE ...]

--model student is the run folder's merged student (--run, default runs/logistics_zh/cpu/<student>); recipe
overrides follow as key=value. For each engine the file has: its load seconds, start-to-first-answer (from
starting `xtk serve` to the first /extract answered), and, for llama.cpp, where a record's time goes (llama.cpp's
own counters: prompt evaluation and token decoding; xtk's grammar check timed around it; the rest is
templating, tokenising, parsing and Python), with the share of the weights read per generated token that is the
LM head (from the GGUF's tensor sizes: an estimate, as decoding on a CPU is bound by reading weights).
Writes benchmarks/results/serve_load.json, with provenance.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_cpu import arguments  # noqa: E402
from provenance import ROOT, provenance  # noqa: E402

sys.path.insert(0, str(ROOT))

RECIPE = ROOT / "recipes" / "logistics_zh.yaml"
TEST = ROOT / "datasets" / "logistics_zh" / "test.jsonl"
CLIENTS = (1, 8, 32)
ENGINES = ("vllm", "llamacpp")
QUANT = "q8_0"  # export's default quant (recipes' export.quant)


class Profile:
    """Where llama.cpp's offline records spend their time: llama.cpp's perf counters (reset after loading) and a
    clock around xtk's grammar check (GreedyGrammar.__call__, the logits processor every generated token runs)."""

    def __init__(self, backend):
        import llama_cpp

        from toolkit.infer import llamacpp

        self.llama_cpp, self.ctx, self.grammar_seconds = llama_cpp, backend.llm._ctx.ctx, 0.0
        check = llamacpp.GreedyGrammar.__call__
        self.restore = lambda: setattr(llamacpp.GreedyGrammar, "__call__", check)

        def timed(grammar, input_ids, scores):
            t0 = time.perf_counter()
            try:
                return check(grammar, input_ids, scores)
            finally:
                self.grammar_seconds += time.perf_counter() - t0

        llamacpp.GreedyGrammar.__call__ = timed
        llama_cpp.llama_perf_context_reset(self.ctx)

    def result(self, seconds: float, records: int, gguf: Path) -> dict:
        self.restore()
        perf = self.llama_cpp.llama_perf_context(self.ctx)
        prefill, decode, grammar = perf.t_p_eval_ms / 1000, perf.t_eval_ms / 1000, self.grammar_seconds

        def per_record(s: float) -> float:
            return round(1000 * s / records, 1)

        return {"records": records, "ms_per_record": per_record(seconds),
                "prompt_eval_ms_per_record": per_record(prefill), "prompt_tokens_per_record": round(perf.n_p_eval / records, 1),
                "decode_ms_per_record": per_record(decode), "decoded_tokens_per_record": round(perf.n_eval / records, 1),
                "decode_ms_per_token": round(1000 * decode / max(perf.n_eval, 1), 1),
                "grammar_check_ms_per_record": per_record(grammar),
                "rest_ms_per_record": per_record(seconds - prefill - decode - grammar),
                "prompt_tokens_reused": perf.n_reused,
                "lm_head_share_of_weights_read_per_token": lm_head_share(gguf)}


def lm_head_share(gguf: Path) -> float:
    """The output projection's bytes over all the bytes a decode step reads (every tensor but the token embedding,
    of which one row is read; where the output is tied to the embedding, the embedding is the output)."""
    from gguf import GGUFReader

    sizes = {t.name: int(t.n_bytes) for t in GGUFReader(gguf).tensors}
    head = sizes.get("output.weight", sizes["token_embd.weight"])
    read = sum(sizes.values()) - (sizes["token_embd.weight"] if "output.weight" in sizes else 0)
    return round(head / read, 3)


def offline(recipe, r, texts: list[dict], gguf: Path | None) -> tuple[dict, list[dict], float, dict | None]:
    """predict's summary and rows for `texts`, the engine's load seconds and (llama.cpp) its profile, in this
    process."""
    from toolkit.deploy.predict import local_answerer, run_predict, student_backend
    from toolkit.io.jsonl import read_jsonl
    from toolkit.run.identity import predict_key

    t0 = time.perf_counter()
    backend = student_backend(recipe, r)
    load = time.perf_counter() - t0
    try:
        profile = Profile(backend) if gguf else None
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "answers.jsonl"
            t0 = time.perf_counter()
            summary = run_predict(recipe, texts, out, predict_key(recipe, r), local_answerer(recipe, backend, r))
            seconds = time.perf_counter() - t0
            return summary, read_jsonl(out), load, profile and profile.result(seconds, len(texts), gguf)
    finally:
        backend.close()


async def load_test(url: str, texts: list[str], clients: int) -> tuple[list[float], list[dict], float]:
    """(latencies, answers in text order, wall seconds): `clients` workers, one text a request."""
    import httpx

    todo = list(enumerate(texts))
    answers: list = [None] * len(texts)
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient) -> None:
        while todo:
            i, text = todo.pop(0)
            t0 = time.perf_counter()
            res = await http.post(f"{url}/extract", json={"text": text})
            latencies.append(time.perf_counter() - t0)
            res.raise_for_status()
            answers[i] = res.json()

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=3600) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return latencies, answers, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def serve(argv: list[str], texts: list[str], expected: list[dict]) -> tuple[float, dict]:
    """Start `xtk serve` with argv; the seconds from its start to the first /extract answered, and the load at
    each number of clients."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url, results = f"http://127.0.0.1:{port}", {}
    t0 = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "toolkit", "serve", *argv, "--port", str(port)], cwd=ROOT)
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"xtk serve exited with {server.returncode}")
            with suppress(httpx.TransportError):  # not listening yet
                if httpx.post(f"{url}/extract", json={"text": texts[0]}, timeout=3600).status_code == 200:
                    break
            time.sleep(1)
        first = time.perf_counter() - t0
        for clients in CLIENTS:
            latencies, answers, wall = asyncio.run(load_test(url, texts, clients))
            results[str(clients)] = {
                "clients": clients, "records": len(texts), "seconds": round(wall, 2),
                "records_per_s": round(len(texts) / wall, 3),
                "latency_p50_s": round(percentile(latencies, 50), 3),
                "latency_p95_s": round(percentile(latencies, 95), 3),
                "answers_equal_predict": sum(a == e for a, e in zip(answers, expected))}
            print(json.dumps(results[str(clients)]), flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    return first, results


def main() -> None:
    parser = arguments(__doc__, 64)
    parser.add_argument("--run", type=Path, help="the run folder (default: the profile's)")
    parser.add_argument("--engine", action="append", choices=ENGINES, help="one engine only (default: both)")
    args, overrides = parser.parse_known_args()

    from toolkit.deploy.export import write_gguf
    from toolkit.deploy.predict import predict_role
    from toolkit.io.jsonl import read_jsonl
    from toolkit.run.manifest import default_run_dir
    from toolkit.task.recipe import load_recipe

    run_dir = args.run or ROOT / default_run_dir(load_recipe(RECIPE, args.profile, overrides))
    texts = [{"id": row["id"], "text": row["text"]} for row in read_jsonl(TEST)[:args.records]]
    engines = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engine or ENGINES:
            chosen = [*overrides, f"eval.backend={engine}"]
            recipe = load_recipe(RECIPE, args.profile, chosen)
            r = predict_role(recipe, args.model, run_dir)
            gguf = None
            if engine == "llamacpp":  # the merged student as export writes it, answered by the same recipe
                gguf = Path(tmp) / f"student-{QUANT}.gguf"
                write_gguf(Path(r.model), QUANT, gguf, Path(tmp) / "convert.log")
                r = predict_role(recipe, str(gguf), run_dir)
            print(f"{engine}: offline predict of {len(texts)} records", file=sys.stderr, flush=True)
            summary, rows, load, profile = offline(recipe, r, texts, gguf)
            expected = [{"fields": {f: row[f] for f in recipe.field_names}, "valid": not row["problems"],
                         "problems": row["problems"], "raw": row["raw"]} for row in rows]
            first, results = serve([str(RECIPE), "--profile", args.profile, "--run", str(run_dir),
                                    "--model", str(gguf or args.model), *chosen], [t["text"] for t in texts], expected)
            engines[engine] = {
                "model": str(gguf.name) if gguf else r.model, "quant": QUANT if gguf else None,
                "offline_predict": {"records_per_s": summary["records_per_s"], "seconds": summary["seconds"],
                                    "load_seconds": round(load, 2), "valid_pct": summary["valid_pct"]},
                "start_to_first_answer_s": round(first, 1), "profile": profile, "serve": results}
    out = {**provenance(one_run=True), "recipe": recipe.name, "profile": args.profile, "model": args.model,
           "run": str(run_dir), "overrides": overrides, "records": len(texts), "batch_size": recipe.eval.batch_size,
           "max_new_tokens": recipe.eval.max_new_tokens, "guided_json": recipe.eval.guided_json, "engines": engines}
    path = ROOT / "benchmarks" / "results" / "serve_load.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(path)


if __name__ == "__main__":
    main()
