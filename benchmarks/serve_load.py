"""xtk serve under load: p50 / p95 latency and records/s at 1, 8 and 32 concurrent clients, each sending one
text a request, beside an offline `xtk predict` of the same records measured in the same run; every served
answer is compared with predict's.

    .venv/bin/python benchmarks/serve_load.py [--model student|PATH] [--records 64] [KEY=VALUE ...]

--model student is the cpu profile run's merged student (runs/logistics_zh/cpu/<student>/merged); recipe
overrides follow as key=value. Writes benchmarks/results/serve_load.json, with provenance.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_cpu import arguments  # noqa: E402
from provenance import ROOT, provenance  # noqa: E402

sys.path.insert(0, str(ROOT))

RECIPE = ROOT / "recipes" / "logistics_zh.yaml"
TEST = ROOT / "datasets" / "logistics_zh" / "test.jsonl"
CLIENTS = (1, 8, 32)


def offline(recipe, r, texts: list[dict]) -> tuple[dict, list[dict], float]:
    """predict's summary and rows for `texts`, and the engine's load seconds, in this process."""
    import tempfile

    from toolkit.deploy.predict import local_answerer, run_predict, student_backend
    from toolkit.run.identity import predict_key

    t0 = time.perf_counter()
    backend = student_backend(recipe, r)
    load = time.perf_counter() - t0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "answers.jsonl"
            summary = run_predict(recipe, texts, out, predict_key(recipe, r), local_answerer(recipe, backend, r))
            from toolkit.io.jsonl import read_jsonl

            return summary, read_jsonl(out), load
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


def main() -> None:
    args, overrides = arguments(__doc__, 64)

    import httpx

    from toolkit.io.jsonl import read_jsonl
    from toolkit.run.manifest import default_run_dir
    from toolkit.deploy.predict import predict_role
    from toolkit.task.recipe import load_recipe

    recipe = load_recipe(RECIPE, args.profile, overrides)
    run_dir = ROOT / default_run_dir(recipe)
    r = predict_role(recipe, args.model, run_dir)
    texts = [{"id": row["id"], "text": row["text"]} for row in read_jsonl(TEST)[:args.records]]
    summary, rows, load = offline(recipe, r, texts)
    fields = recipe.field_names
    expected = [{"fields": {f: row[f] for f in fields}, "valid": not row["problems"], "problems": row["problems"],
                 "raw": row["raw"]} for row in rows]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "toolkit", "serve", str(RECIPE), "--profile", args.profile,
                               "--run", str(run_dir), "--model", args.model, "--port", str(port), *overrides],
                              cwd=ROOT)
    url, results = f"http://127.0.0.1:{port}", {}
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"xtk serve exited with {server.returncode}")
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(2)
        for clients in CLIENTS:
            latencies, answers, wall = asyncio.run(load_test(url, [t["text"] for t in texts], clients))
            results[str(clients)] = {
                "clients": clients, "records": len(texts), "seconds": round(wall, 2),
                "records_per_s": round(len(texts) / wall, 3),
                "latency_p50_s": round(percentile(latencies, 50), 3),
                "latency_p95_s": round(percentile(latencies, 95), 3),
                "answers_equal_predict": sum(a == e for a, e in zip(answers, expected))}
            print(json.dumps(results[str(clients)]), flush=True)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=120)

    out = {**provenance(one_run=True), "recipe": recipe.name, "profile": args.profile, "model": r.model,
           "overrides": overrides, "records": len(texts), "batch_size": recipe.eval.batch_size,
           "max_new_tokens": recipe.eval.max_new_tokens, "guided_json": recipe.eval.guided_json,
           "offline_predict": {"records_per_s": summary["records_per_s"], "seconds": summary["seconds"],
                               "load_seconds": round(load, 2), "valid_pct": summary["valid_pct"]},
           "serve": results}
    path = ROOT / "benchmarks" / "results" / "serve_load.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(path)


if __name__ == "__main__":
    main()
