"""The student at work, for real: the embedded SmolLM2 stands in a run folder as its merged student (what
`--model student` resolves). Predict, eval and Ray run on ms-swift's transformers engine (quick to load; they share
one extraction path whatever the engine); serve runs on vLLM, guided by the recipe's schema, against a predict
run on vLLM too, since a text longer than the model's context is refused by vLLM's engine. `xtk predict` answers, record
for record, what `xtk eval` scored; the same job on a local Ray cluster answers the same; `xtk serve` answers
the same over HTTP and turns a text longer than the model's context into a 413, serving on."""

import json
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import RECIPE, ROOT, SMOLLM2_STUDENT, start_server
from toolkit.io.jsonl import read_jsonl, write_jsonl
from toolkit.task.recipe import load_recipe

pytestmark = pytest.mark.slow
N = 6
SMALL = [*SMOLLM2_STUDENT, f"eval.limit={N}", f"eval.batch_size={N}", "eval.max_new_tokens=64",
         "eval.backend=transformers", "eval.guided_json=false"]
# later values win; eager: two engine starts, minutes shorter each without torch.compile (tests/test_eval_e2e.py
# runs the compiled one)
VLLM = [*SMALL, "eval.backend=vllm", "eval.guided_json=true", "eval.vllm.enforce_eager=true"]
TEST = ROOT / "datasets" / "logistics_zh" / "test.jsonl"
FIELDS = load_recipe(RECIPE, "cpu").field_names


def xtk(*argv, overrides=SMALL):
    res = subprocess.run([sys.executable, "-m", "toolkit", *map(str, argv), "--profile", "cpu", *overrides], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def run(tmp_path_factory, smollm2):
    root = tmp_path_factory.mktemp("predict")
    (root / "run").mkdir()
    (root / "run" / "merged").symlink_to(smollm2, target_is_directory=True)
    write_jsonl(root / "texts.jsonl", [{"id": r["id"], "text": r["text"]} for r in read_jsonl(TEST)[:N]])
    return root


@pytest.fixture(scope="module")
def answers(run):
    res = xtk("predict", RECIPE, "--run", run / "run", "--input", run / "texts.jsonl", "--out",
              run / "answers.jsonl")
    return read_jsonl(run / "answers.jsonl"), json.loads(res.stdout[res.stdout.index("{\n"):])


def test_predict_answers_what_eval_scored(run, answers):
    xtk("eval", RECIPE, "--run", run / "run", "--model", "student", "--test", TEST)
    scored = read_jsonl(run / "run" / "eval" / "student-test" / "predictions.jsonl")
    rows, summary = answers
    assert [a["id"] for a in rows] == [s["id"] for s in scored] and len(rows) == N
    for a, s in zip(rows, scored):
        assert a["raw"] == s["raw"] and a["problems"] == s["problems"], a["id"]
        assert {f: a[f] for f in FIELDS} == {f: (s["parsed"] or {}).get(f) for f in FIELDS}, a["id"]
    assert summary["records"] == N and summary["valid"] == sum(not s["problems"] for s in scored)


def test_ray_on_a_local_cluster_answers_as_the_single_process_run(run, answers):
    res = xtk("predict", RECIPE, "--run", run / "run", "--input", run / "texts.jsonl", "--out",
              run / "ray.parquet", "--engine", "ray")
    import pyarrow.parquet as pq

    assert pq.read_table(run / "ray.parquet").to_pylist() == answers[0]
    assert json.loads(res.stdout[res.stdout.index("{\n"):])["valid"] == answers[1]["valid"]


def test_serve_answers_as_predict_and_refuses_too_long_texts_with_a_413(run):
    xtk("predict", RECIPE, "--run", run / "run", "--input", run / "texts.jsonl", "--out", run / "vllm.jsonl",
        overrides=VLLM)
    answers = (read_jsonl(run / "vllm.jsonl"),)
    # The queue's 503 deadline (60 s by default) is test_serve's subject; here N clients share CPU batches that,
    # beside another test's training on 2 cores, took longer than that (CI): the deadline is the clients' own.
    server, url = start_server(RECIPE, "--profile", "cpu", "--run", run / "run", *VLLM, "--queue-timeout", "600",
                               seconds=900)
    try:
        texts = [r["text"] for r in read_jsonl(run / "texts.jsonl")]
        with ThreadPoolExecutor(N) as pool:  # concurrent clients, answered in shared batches
            got = list(pool.map(lambda t: httpx.post(f"{url}/extract", json={"text": t}, timeout=600), texts))
        for res, want in zip(got, answers[0]):
            assert res.status_code == 200, res.text
            assert res.json() == {"fields": {f: want[f] for f in FIELDS}, "valid": not want["problems"],
                                  "problems": want["problems"], "raw": want["raw"]}
        # 1,500 characters, under data.max_input_chars: what refuses it is the model's 1,024-token context
        long = httpx.post(f"{url}/extract", json={"text": ["短", "北京市朝阳区" * 250]}, timeout=600)
        assert long.status_code == 413 and "text[1] is longer than the model's context" in long.json()["error"]
        again = httpx.post(f"{url}/extract", json={"text": texts[:2]}, timeout=600)
        assert again.status_code == 200 and [a["raw"] for a in again.json()] == [w["raw"] for w in answers[0][:2]]
        # the OpenAI SDK against the same engine: the recipe's prompt and a text give /extract's raw answer
        import openai

        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=600)
        assert [m.id for m in client.models.list().data] == ["student"]
        system = load_recipe(RECIPE, "cpu", VLLM).prompt("student")
        done = client.chat.completions.create(model="student", temperature=0, messages=[
            {"role": "system", "content": system}, {"role": "user", "content": texts[0]}])
        assert done.choices[0].message.content == answers[0][0]["raw"]
        with pytest.raises(openai.APIStatusError) as too_long:
            client.chat.completions.create(model="student", messages=[{"role": "user", "content": "北京市朝阳区" * 250}])
        assert too_long.value.status_code == 413
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_the_transformers_engine_refuses_a_text_over_the_context_as_vllm_does(smollm2):
    """Where vLLM is absent, ms-swift's transformers engine is given vLLM's context (eval.vllm.max_model_len): a
    longer prompt is refused (serve answers it with a 413) instead of being cut or run; the others in its batch
    are answered."""
    from toolkit.infer.backends import make_backend
    from toolkit.evaluate.evaluation import extract

    recipe = load_recipe(RECIPE, "cpu", [*SMALL, "eval.max_new_tokens=8"])
    backend = make_backend(recipe, "transformers", recipe.student.model)
    short, long, other = extract(recipe, backend, recipe.prompt("student"),
                                 ["短", "北京市朝阳区" * 250, "北京市朝阳区建国路1号"], 8)
    assert long.refused and "larger than the max_length(1024)" in long.refused and long.raw == ""
    assert long.problems == [f"refused: {long.refused}"]
    assert not short.refused and not other.refused and short.raw and other.raw
