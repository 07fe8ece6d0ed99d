"""xtk serve's HTTP contract, fast: /extract answers as predict does, and a bad request gets a 4xx with a JSON
error while the server goes on answering. The engine is the recipe's rule baseline (a real backend answering
in milliseconds); a model longer than its context needs vLLM, in test_serve_e2e.py."""

import signal

import pytest
from fastapi.testclient import TestClient

from conftest import RECIPE, ROOT, start_server
from toolkit.io.jsonl import read_jsonl
from toolkit.deploy.predict import local_answerer, predict_role, student_backend
from toolkit.task.recipe import load_recipe
from toolkit.deploy.serve import make_app

TEST = ROOT / "datasets" / "logistics_zh" / "test.jsonl"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    recipe = load_recipe(RECIPE, "cpu")
    r = predict_role(recipe, "rules", tmp_path_factory.mktemp("run"))
    backend = student_backend(recipe, r)
    with TestClient(make_app(recipe, backend, r)) as client:
        yield recipe, backend, r, client


def test_extract_answers_as_predict_does(served):
    recipe, backend, r, client = served
    texts = [{"id": row["id"], "text": row["text"]} for row in read_jsonl(TEST)[:5]]
    expected = [row for batch in local_answerer(recipe, backend, r)(texts) for row in batch]
    one = client.post("/extract", json={"text": texts[0]["text"]})
    assert one.status_code == 200
    many = client.post("/extract", json={"text": [t["text"] for t in texts]}).json()
    assert [one.json(), *many[1:]] == many
    for got, want in zip(many, expected):
        assert got["fields"] == {f: want[f] for f in recipe.field_names}
        assert got["problems"] == want["problems"] and got["raw"] == want["raw"]
        assert got["valid"] == (not want["problems"])
    assert client.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("body, status, says", [
    (b"{not json", 400, "not JSON"),
    (b'["a"]', 422, "expected a JSON object"),
    (b'{"texts": "a"}', 422, "expected a JSON object"),
    (b'{"text": 5}', 422, "text must be a string, got int"),
    (b'{"text": ["ok", null]}', 422, "text[1] must be a string"),
    (b'{"text": "  "}', 422, "text is empty"),
    (b'{"text": []}', 422, "empty list"),
    ('{"text": "' + "x" * 4001 + '"}', 413, "over data.max_input_chars=4000"),
])
def test_a_bad_request_gets_a_4xx_json_error_and_the_server_goes_on(served, body, status, says):
    client = served[3]
    res = client.post("/extract", content=body, headers={"content-type": "application/json"})
    assert res.status_code == status and says in res.json()["error"], res.text
    assert client.post("/extract", json={"text": "北京市朝阳区建国路1号 张三 13800000000"}).status_code == 200


def test_the_openai_chat_route_answers_what_extract_answers_raw(served):
    """/v1/chat/completions runs a chat through the same engine: the recipe's prompt and a text give /extract's
    raw answer; /v1/models names what is served."""
    recipe, backend, r, client = served
    text = read_jsonl(TEST)[0]["text"]
    raw = client.post("/extract", json={"text": text}).json()["raw"]
    res = client.post("/v1/chat/completions", json={"model": "rules", "temperature": 0, "messages": [
        {"role": "system", "content": recipe.prompt(r.prompt)}, {"role": "user", "content": text}]})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["object"] == "chat.completion" and body["model"] == "rules"
    assert [(c["message"], c["finish_reason"]) for c in body["choices"]] == [
        ({"role": "assistant", "content": raw}, "stop")]
    assert client.get("/v1/models").json()["data"][0]["id"] == "rules"


@pytest.mark.parametrize("body, status, says", [
    (b"[1]", 422, '"messages"'),
    (b'{"messages": []}', 422, '"messages"'),
    (b'{"messages": [{"role": "robot", "content": "a"}]}', 422, "messages[0] must be"),
    (b'{"messages": [{"role": "user", "content": 5}]}', 422, "messages[0] must be"),
    (b'{"messages": [{"role": "user", "content": "a"}], "stream": true}', 400, "stream is not served"),
    (b'{"messages": [{"role": "user", "content": "a"}], "n": 2}', 400, "n must be 1"),
    (b'{"messages": [{"role": "user", "content": "a"}], "temperature": 0.7}', 400, "temperature must be 0"),
    (b'{"messages": [{"role": "user", "content": "a"}], "max_tokens": 0}', 400, "max_tokens must be an integer"),
    (b'{"messages": [{"role": "user", "content": "a"}], "max_tokens": 100000}', 400, "from 1 to 160 (eval.max_new_tokens)"),
    (b'{"messages": [{"role": "user", "content": "a"}], "model": "gpt-4"}', 404, "'gpt-4' is not served here"),
    ('{"messages": [{"role": "user", "content": "' + "x" * 4001 + '"}]}', 413, "over data.max_input_chars=4000"),
])
def test_a_chat_the_student_cannot_answer_as_asked_gets_a_4xx_and_the_server_goes_on(served, body, status, says):
    client = served[3]
    res = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert res.status_code == status and says in res.json()["error"], res.text
    ok = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "北京市朝阳区建国路1号"}]})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]


def test_sigterm_stops_the_server_gracefully(tmp_path):
    """`kill` (a scheduler, systemd) stops `xtk serve` gracefully: uvicorn shuts down and returns, the engine is
    closed, exit 0, and nothing tells the user to resume (the exit 143 of other commands is for work left)."""
    server, _ = start_server(RECIPE, "--profile", "cpu", "--model", "rules", "--run", tmp_path, seconds=300)
    try:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=120)
    finally:
        server.kill()
    assert server.returncode == 0, out[-3000:]
    assert "terminated" not in out and "resume" not in out
