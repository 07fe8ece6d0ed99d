"""xtk serve's HTTP contract, fast, on a real uvicorn server on loopback: /extract answers as predict does, and
a bad request gets a 4xx with a JSON error while the server goes on answering; a body too large, too many texts,
a client too slow or gone, a request that waits too long and SIGTERM each end as the server's Limits say. The
engine is the recipe's rule baseline (a real backend answering in milliseconds); a model longer than its context
needs vLLM, in test_predict_e2e.py."""

import asyncio
import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from conftest import RECIPE, ROOT, start_server
from toolkit.io.jsonl import read_jsonl
from toolkit.deploy.predict import local_answerer, predict_role, student_backend
from toolkit.task.recipe import load_recipe
from toolkit.deploy.serve import Limits, make_app, server

TEST = ROOT / "datasets" / "logistics_zh" / "test.jsonl"
GOOD = "北京市朝阳区建国路1号 张三 13800000000"
LIMITS = Limits(max_records=8, read_seconds=5)  # a body that is sent at once arrives in milliseconds


@contextmanager
def serving(app, limits: Limits):
    """`app` under the uvicorn server `xtk serve` runs (toolkit.deploy.serve.server), in a thread, on a loopback
    port: an httpx client on its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = server(app, "127.0.0.1", sock.getsockname()[1], limits)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=120) as client:
            yield client
    finally:
        srv.should_exit = True
        thread.join(60)
        sock.close()


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    recipe = load_recipe(RECIPE, "cpu")
    r = predict_role(recipe, "rules", tmp_path_factory.mktemp("run"))
    return recipe, student_backend(recipe, r), r


@pytest.fixture(scope="module")
def served(rules):
    recipe, backend, r = rules
    with serving(make_app(recipe, backend, r, LIMITS), LIMITS) as client:
        yield recipe, backend, r, client


class HeldEngine:
    """A test double, where a real engine cannot make the case: the rule baseline, answering a batch only once
    the test releases it, so that a request stays in the queue behind it for as long as a test needs (the real
    rules answer in milliseconds). It records the texts it was asked."""

    def __init__(self, backend):
        self.backend, self.asked = backend, []
        self.started, self.release = threading.Event(), threading.Event()

    def generate(self, batch, max_tokens):
        self.asked += [chat[-1]["content"] for chat in batch]
        self.started.set()
        assert self.release.wait(300), "the test never released the engine"
        return self.backend.generate(batch, max_tokens)

    def __getattr__(self, name):
        return getattr(self.backend, name)


class HeldAsyncEngine(HeldEngine):
    """The same double as an engine that takes requests as they come (`agenerate`, as vLLM's AsyncLLM): it runs one
    request at a time and holds it until the test releases it, so the next one waits in its queue, not started
    (a real AsyncLLM on 2 cores starts every request within a step)."""

    def __init__(self, backend):
        super().__init__(backend)
        self.running = threading.Lock()

    async def agenerate(self, batch, max_tokens, started):
        while not self.running.acquire(blocking=False):  # polled: a cancelled waiter leaves the loop at once
            await asyncio.sleep(0.05)
        try:
            self.asked += [chat[-1]["content"] for chat in batch]
            started.set()
            self.started.set()
            while not self.release.is_set():
                await asyncio.sleep(0.05)
            return self.backend.generate(batch, max_tokens)
        finally:
            self.running.release()


def raw_request(client: httpx.Client, head: str, body: bytes = b"") -> socket.socket:
    """A socket to the server that has sent `head` (a request line and headers) and `body`, nothing more."""
    s = socket.create_connection((client.base_url.host, client.base_url.port), timeout=120)
    s.sendall(head.encode() + b"\r\n\r\n" + body)
    return s


def response_of(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def wait_until(condition, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


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
    (b"[" * 100_000, 400, "not JSON"),  # nested past Python's recursion limit
    (b'["a"]', 422, "expected a JSON object"),
    (b'{"texts": "a"}', 422, "expected a JSON object"),
    (b'{"text": 5}', 422, "text must be a string, got int"),
    (b'{"text": ["ok", null]}', 422, "text[1] must be a string"),
    (b'{"text": "  "}', 422, "text is empty"),
    (b'{"text": []}', 422, "empty list"),
    (b'{"text": "\\ud800 a"}', 422, "text is not valid Unicode"),  # JSON can carry a lone surrogate, UTF-8 cannot
    ('{"text": "' + "x" * 4001 + '"}', 413, "over data.max_input_chars=4000"),
])
def test_a_bad_request_gets_a_4xx_json_error_and_the_server_goes_on(served, body, status, says):
    client = served[3]
    res = client.post("/extract", content=body, headers={"content-type": "application/json"})
    assert res.status_code == status and says in res.json()["error"], res.text
    assert client.post("/extract", json={"text": GOOD}).status_code == 200


def test_more_texts_than_max_records_get_a_413(served):
    client = served[3]
    res = client.post("/extract", json={"text": [GOOD] * 9})
    assert res.status_code == 413 and "9 texts, over this server's --max-records=8" in res.json()["error"], res.text
    assert client.post("/extract", json={"text": [GOOD] * 8}).status_code == 200


def test_a_body_over_the_size_limit_gets_a_413_without_being_read(served):
    """The Content-Length says too much: refused at once, the connection closed, nothing of the body awaited."""
    recipe, client = served[0], served[3]
    size = LIMITS.max_body_bytes(recipe.data.max_input_chars) + 1
    with raw_request(client, f"POST /extract HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {size}") as s:
        got = response_of(s)
    assert got.startswith(b"HTTP/1.1 413 ") and b"over this server's limit" in got, got
    assert client.post("/extract", json={"text": GOOD}).status_code == 200


def test_a_client_sending_its_body_too_slowly_gets_a_408_and_is_dropped(served):
    """A tenth of the body, then nothing: after read_seconds the server answers 408 and closes the connection
    (response_of returns only once it is closed)."""
    client = served[3]
    with raw_request(client, "POST /extract HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                             "Content-Length: 100", b'{"text": "') as s:
        got = response_of(s)
    assert got.startswith(b"HTTP/1.1 408 ") and b"did not arrive within 5 s" in got, got
    assert client.post("/extract", json={"text": GOOD}).status_code == 200


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
    (b'{"messages": [{"role": "user", "content": "\\udc00"}]}', 422, "messages[0].content is not valid Unicode"),
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


@pytest.fixture(params=[HeldEngine, HeldAsyncEngine], ids=["worker", "async"])
def held(rules, request):
    recipe, backend, r = rules
    engine = request.param(backend)
    yield recipe, engine, r
    engine.release.set()


def test_a_request_that_waits_too_long_for_the_engine_gets_a_503_with_retry_after(held):
    """While the engine holds one request, the next waits queue_seconds, gets 503 with Retry-After and leaves the
    queue (the engine never runs it); the one the engine took is answered, however long it takes."""
    recipe, engine, r = held
    limits = Limits(queue_seconds=10)
    late = "上海市浦东新区世纪大道100号 李四"
    with serving(make_app(recipe, engine, r, limits), limits) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/extract", json={"text": GOOD})
        assert engine.started.wait(120), first.result().text
        res = client.post("/extract", json={"text": late})
        assert res.status_code == 503 and res.headers["retry-after"] == "10" and "busy" in res.json()["error"]
        engine.release.set()
        assert first.result().status_code == 200
        assert client.post("/extract", json={"text": GOOD}).status_code == 200
    assert late not in engine.asked


def test_a_client_that_leaves_takes_its_request_out_of_the_queue(held):
    """A client sends its request while the engine is busy and disconnects: the request leaves the queue (the
    server's /health counts it out; the engine never runs it) and the server goes on."""
    recipe, engine, r = held
    limits = Limits(queue_seconds=600)  # only the client's leaving can take its request out of the queue
    leaver = "广州市天河区体育西路1号 王五"
    body = json.dumps({"text": leaver}).encode()
    with serving(make_app(recipe, engine, r, limits), limits) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/extract", json={"text": GOOD})
        assert engine.started.wait(120), first.result().text
        s = raw_request(client, "POST /extract HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                                f"Content-Length: {len(body)}", body)
        wait_until(lambda: client.get("/health").json()["queued"] == 1, "the request was never queued")
        s.close()
        wait_until(lambda: client.get("/health").json()["queued"] == 0, "the request stayed queued after its client left")
        engine.release.set()
        assert first.result().status_code == 200
        assert client.post("/extract", json={"text": GOOD}).status_code == 200
    assert leaver not in engine.asked


def in_flight(url: str, body: bytes) -> socket.socket:
    """A request to `url` that the server has begun reading (it answered the header's `Expect: 100-continue`),
    with `body` not sent yet."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=120)
    s.sendall(f"POST /extract HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: "
              f"{len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(1024)
    assert got.startswith(b"HTTP/1.1 100 "), got
    return s


def refusing(url: str) -> bool:
    """Whether the server no longer accepts connections (it began shutting down)."""
    host, port = url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_answers_the_requests_in_flight_and_exits_within_the_drain_deadline(tmp_path, rules):
    """SIGTERM while two clients are sending their bodies: the server stops accepting, answers the one that
    finishes its body, drops the one that never does once --drain-timeout has passed, and exits 0 (exit 0 and no
    "resume": the exit 143 of other commands is for work left)."""
    recipe, backend, r = rules
    [want] = next(local_answerer(recipe, backend, r)([{"id": 0, "text": GOOD}]))
    proc, url = start_server(RECIPE, "--profile", "cpu", "--model", "rules", "--run", tmp_path, seconds=300)
    try:
        body = json.dumps({"text": GOOD}).encode()
        finishing, stalled = in_flight(url, body), in_flight(url, body)
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        wait_until(lambda: refusing(url), "the server went on accepting connections after SIGTERM")
        finishing.sendall(body)
        with finishing:
            got = response_of(finishing)
        out, _ = proc.communicate(timeout=60)
        seconds = time.monotonic() - start
    finally:
        proc.kill()
    stalled.close()
    assert got.startswith(b"HTTP/1.1 200 ") and json.loads(got.split(b"\r\n\r\n", 1)[1])["raw"] == want["raw"], got
    assert proc.returncode == 0 and seconds < 10, (proc.returncode, seconds, out[-3000:])
    assert "terminated" not in out and "resume" not in out


def test_two_hundred_bad_requests_leave_the_server_answering_and_sigterm_ends_it(tmp_path, rules):
    """A bounded fault test: 225 bad requests of every kind above, from 8 clients at once, some of them leaving
    mid-body or stalling; then a good request is answered as predict answers it, and SIGTERM (with three
    clients still stalled mid-body) ends the server within 10 s."""
    recipe, backend, r = rules
    [want] = next(local_answerer(recipe, backend, r)([{"id": 0, "text": GOOD}]))
    proc, url = start_server(RECIPE, "--profile", "cpu", "--model", "rules", "--run", tmp_path, seconds=300)
    host, port = url.removeprefix("http://").split(":")
    limit = Limits().max_body_bytes(recipe.data.max_input_chars)
    head = "POST /extract HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n"

    def raw(data: bytes, close_early: bool) -> int | None:
        """Send raw bytes; the status the server answers, or None where this client leaves without reading."""
        with socket.create_connection((host, int(port)), timeout=120) as s:
            s.sendall(data)
            if close_early:
                return None
            got = response_of(s)
            return int(got.split(b" ", 2)[1])

    def post(path: str, body) -> int:
        return httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=120).status_code

    kinds = [
        lambda: post("/extract", b"{not json"),
        lambda: post("/extract", b"[" * 100_000),
        lambda: post("/extract", b'{"text": 5}'),
        lambda: post("/extract", b'{"text": " "}'),
        lambda: post("/extract", b'{"text": "\\ud800"}'),
        lambda: post("/extract", json.dumps({"text": ["a"] * 65})),
        lambda: post("/v1/chat/completions", b'{"messages": [{"role": "robot", "content": "a"}]}'),
        lambda: raw(head.format(limit + 1).encode(), close_early=False),  # too large, said up front
        lambda: raw(head.format(100).encode() + b'{"text": "', close_early=True),  # leaves mid-body
    ]
    stalled = []
    try:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda i: kinds[i % len(kinds)](), range(225)))
        for _ in range(3):
            stalled.append(socket.create_connection((host, int(port)), timeout=120))
            stalled[-1].sendall(head.format(100).encode() + b'{"text": "')
        refused = [s for s in statuses if s is not None]
        assert len(statuses) >= 200 and all(400 <= s < 500 for s in refused), sorted(set(refused))
        good = httpx.post(f"{url}/extract", json={"text": GOOD}, timeout=120)
        assert good.status_code == 200 and good.json()["raw"] == want["raw"], good.text
        assert httpx.get(f"{url}/health", timeout=120).json()["queued"] == 0
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        out, _ = proc.communicate(timeout=60)
        seconds = time.monotonic() - start
    finally:
        proc.kill()
        for s in stalled:
            s.close()
    assert proc.returncode == 0 and seconds < 10, (proc.returncode, seconds, out[-3000:])
