"""An OpenAI-compatible chat server on 127.0.0.1 that answers from gold labels and injects faults.

A test double: no real teacher can be made to answer 429, 500, hang, drop the connection or hallucinate on
cue. It speaks real HTTP (a threading stdlib server) to the real `openai` client, counts every request by
input text, and picks each text's behaviour from `modes` (text -> mode):

  ok, fenced, think, prose        the gold label as JSON: bare / in a ```json fence / after a <think> block /
                                  between sentences of prose
  429, 429_nan, 429_date          429 on the first attempt with Retry-After "1" / "nan" / an HTTP-date, then gold
  500, 503, slow, drop, hang      a transient fault on the first attempt(s), then the gold label; `slow` answers
                                  after slow_s, `hang` waits hang_s and closes the connection without answering,
                                  `drop` closes it without a status line. Both waits (and latency_s) end as soon as
                                  the client closes its end: a test sets them far past its client's time-out and
                                  waits for that event, not for a margin between two timers
  truncated                       a 200 whose message content is half a JSON object
  truncated_body                  a 200 whose BODY is half a JSON document (content-length matches the half)
  number                          a 200 whose message.content is the number 42, not a string
  hallucinated, madeup_province, madeup_city
                                  a made-up value: phone 19999999999, province 火星省, city 奥林帕斯市
  schema, missing_keys            keys missing (phone / phone and name)
  empty, always500                an empty answer / 500 on every attempt
  (a text without a gold label)   `script(text)` as the answer, where a script is given (xtk synth's requests)

Besides requests, it counts per text the answers it DELIVERED: 200 responses written in full to a client that
was still connected (a `hang` is never one). A delivered answer is one a real teacher would bill. `finished` counts per text the requests whose handling is over
(answered, refused, or found the client gone); `wait_until` lets a test wait for such counts instead of sleeping.

  GET  /stats     {text: {"mode": m, "requests": n, "delivered": d}} for every text with a mode or a request
  POST /hold      no response is written from now on (each waits); returns once none is being written
  POST /release   responses go out again

`python tests/teacher_server.py --faults N` serves the logistics_zh pool in a process of its own (see main()).
"""

from __future__ import annotations

import email.utils
import json
import random
import select
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TRANSIENT_TRIES = {"429": 1, "429_nan": 1, "429_date": 1, "500": 2, "503": 1, "slow": 1, "drop": 1, "hang": 1}
MADEUP = {"hallucinated": {"phone": "19999999999"}, "madeup_province": {"province": "火星省"},
          "madeup_city": {"city": "奥林帕斯市"}}
MISSING = {"schema": ("phone",), "missing_keys": ("phone", "name")}
# The benchmark's default mix (benchmarks/label_faults.py): every way a teacher fails that xtk must survive.
FAULT_MIX = ("429", "429_nan", "429_date", "500", "503", "hang", "drop", "truncated_body", "number", "prose",
             "fenced", "think", "madeup_province", "madeup_city", "missing_keys")
RETRY_AFTER_DATE_S = 2  # the HTTP-date of 429_date lies this many seconds ahead


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 refuses connections under concurrency 32+

    def handle_error(self, request, client_address):  # a client that went away (time-out, SIGKILL) is no error
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def assign_faults(texts: list[str], n: int, modes: tuple[str, ...] | list[str] = FAULT_MIX,
                  seed: int = 0) -> dict[str, str]:
    """Modes round-robin over n of the texts, drawn with a fixed seed (spread over the list, not bunched at its
    start): text -> mode."""
    picked = random.Random(seed).sample(range(len(texts)), min(n, len(texts)))
    return {texts[i]: modes[k % len(modes)] for k, i in enumerate(picked)}


class TeacherServer:
    def __init__(self, gold: dict[str, dict], modes: dict[str, str] | None = None, latency_s: float = 0.0,
                 slow_s: float = 3.0, hang_s: float = 3.0, hold_after: int | None = None, script=None):
        """hold_after: the server holds itself (as POST /hold) once that many answers were delivered, and stays
        held until released. script: user text -> the answer's content, for a text without a gold label."""
        self.gold, self.modes, self.latency_s, self.slow_s, self.hang_s = gold, modes or {}, latency_s, slow_s, hang_s
        self.script = script
        self.hold_after = hold_after
        self.requests: Counter = Counter()  # text -> requests received
        self.delivered: Counter = Counter()  # text -> 200 responses written in full to a connected client
        self.finished: Counter = Counter()  # text -> requests whose handling is over
        self.lock = threading.Condition()  # notified whenever a count changes (wait_until)
        self.auth_headers: list[str] = []
        self.bodies: list[dict] = []  # every chat request's JSON body, in the order received
        self._gate = threading.Condition()  # /hold and /release
        self._held = False
        self._sending = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/stats"):
                    return server.send(self, 200, server.stats(), gate=False)
                return server.send(self, 404, {"error": {"message": f"no route {self.path}"}}, gate=False)

            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("content-length", 0)))
                route = self.path.rstrip("/")
                if route.endswith("/hold"):
                    server.hold()
                    return server.send(self, 200, {"held": True}, gate=False)
                if route.endswith("/release"):
                    server.release()
                    return server.send(self, 200, {"held": False}, gate=False)
                try:
                    body = json.loads(data)
                except ValueError:  # the client died mid-request (a SIGKILL): no request to count
                    self.close_connection = True
                    return None
                text = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
                with server.lock:
                    server.requests[text] += 1
                    attempt = server.requests[text]
                    server.auth_headers.append(self.headers.get("authorization", ""))
                    server.bodies.append(body)
                    server.lock.notify_all()
                try:
                    server.respond(self, text, attempt, body)
                finally:
                    with server.lock:
                        server.finished[text] += 1
                        server.lock.notify_all()

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def stats(self) -> dict[str, dict]:
        with self.lock:
            texts = set(self.modes) | set(self.requests)
            return {t: {"mode": self.modes.get(t, "ok"), "requests": self.requests[t],
                        "delivered": self.delivered[t]} for t in texts}

    def wait_until(self, condition, timeout_s: float = 120.0) -> None:
        """Wait until condition() (reading the counts) holds; fails after timeout_s, a bound for a stuck test only."""
        with self.lock:
            if not self.lock.wait_for(condition, timeout_s):
                raise AssertionError(f"the test teacher's counts did not get there within {timeout_s:g} s")

    def settled(self, timeout_s: float = 120.0) -> None:
        """Wait until the server's side of every request is over: a client can read an answer before the thread
        that wrote it has counted it delivered, so counts are read after this, never straight after the client."""
        self.wait_until(lambda: sum(self.finished.values()) == sum(self.requests.values()), timeout_s)

    def hold(self) -> None:
        with self._gate:
            self._held = True
            self._gate.wait_for(lambda: self._sending == 0)

    def release(self) -> None:
        with self._gate:
            self._held = False
            self._gate.notify_all()

    def respond(self, h: BaseHTTPRequestHandler, text: str, attempt: int, body: dict) -> None:
        mode = self.modes.get(text, "ok")
        if self.latency_s:
            self._wait_while_connected(h, self.latency_s)
        transient = attempt <= TRANSIENT_TRIES.get(mode, 0)
        if mode.startswith("429") and transient:
            retry_after = {"429": "1", "429_nan": "nan",
                           "429_date": email.utils.formatdate(time.time() + RETRY_AFTER_DATE_S, usegmt=True)}[mode]
            return self.send(h, 429, {"error": {"message": "rate limited"}}, {"Retry-After": retry_after})
        if (mode == "500" and transient) or mode == "always500":
            return self.send(h, 500, {"error": {"message": "internal error"}})
        if mode == "503" and transient:
            return self.send(h, 503, {"error": {"message": "service unavailable"}})
        if mode == "slow" and transient:
            self._wait_while_connected(h, self.slow_s)
        if mode in ("drop", "hang") and transient:
            if mode == "hang":
                self._wait_while_connected(h, self.hang_s)  # then no answer at all
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)  # no status line: the client sees a dropped connection
            except OSError:
                pass
            return None
        if text not in self.gold and self.script is not None:  # a scripted answer (xtk synth's requests)
            return self.send(h, 200, self.completion(body, self.script(text)), text=text)
        label = dict(self.gold[text])
        content = json.dumps(label, ensure_ascii=False)
        if mode == "fenced":
            content = f"Here you go:\n```json\n{content}\n```"
        elif mode == "think":
            content = f"<think>\nLet me find the fields.\n</think>\n\n{content}"
        elif mode == "prose":
            content = f"好的，这是从收件信息中提取的字段：{content}\n如有疑问请告诉我。"
        elif mode == "truncated":
            content = content[: len(content) // 2]
        elif mode in MADEUP:
            content = json.dumps({**label, **MADEUP[mode]}, ensure_ascii=False)
        elif mode in MISSING:
            content = json.dumps({k: v for k, v in label.items() if k not in MISSING[mode]}, ensure_ascii=False)
        elif mode == "empty":
            content = ""
        completion = self.completion(body, 42 if mode == "number" else content)
        if mode == "truncated_body":
            whole = json.dumps(completion, ensure_ascii=False)  # cut between characters: valid UTF-8, bad JSON
            return self.send(h, 200, whole[: len(whole) // 2].encode(), text=text)
        return self.send(h, 200, completion, text=text)

    @staticmethod
    def completion(body: dict, content) -> dict:
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model", "teacher"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140}}

    @staticmethod
    def _client_gone(h: BaseHTTPRequestHandler) -> bool:
        """The client closed its end (timed out, or its process died): nothing written now would be read."""
        try:
            readable, _, _ = select.select([h.connection], [], [], 0)
            return bool(readable) and h.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    @classmethod
    def _wait_while_connected(cls, h: BaseHTTPRequestHandler, seconds: float) -> None:
        """Sleep up to `seconds`, returning as soon as the client closes its end (its time-out fired)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                readable, _, _ = select.select([h.connection], [], [], left)
            except (OSError, ValueError):
                return
            if readable:
                if cls._client_gone(h):
                    return
                time.sleep(max(0.0, deadline - time.monotonic()))  # the client sent more (it never does)
                return

    def send(self, h: BaseHTTPRequestHandler, status: int, obj: dict | bytes, headers: dict | None = None,
             text: str | None = None, gate: bool = True) -> None:
        """Write one response; obj as JSON, or bytes as they are. With text, a 200 written in full to a client
        still there counts as delivered for that text. Waits while the server is held (gate)."""
        data = obj if isinstance(obj, bytes) else json.dumps(obj, ensure_ascii=False).encode()
        if gate:
            with self._gate:
                self._gate.wait_for(lambda: not self._held)
                self._sending += 1
        try:
            if self._client_gone(h):
                h.close_connection = True
                return
            h.send_response(status)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
            h.wfile.flush()
            if text is not None and status == 200:
                with self.lock:
                    self.delivered[text] += 1
                    self.lock.notify_all()
                    if self.hold_after is not None and sum(self.delivered.values()) >= self.hold_after:
                        self.hold_after = None  # once: after a release, answers flow again
                        with self._gate:
                            self._held = True
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (a time-out test)
            h.close_connection = True
        finally:
            if gate:
                with self._gate:
                    self._sending -= 1
                    self._gate.notify_all()

    def __enter__(self) -> "TeacherServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()


def main() -> None:
    """`python tests/teacher_server.py --latency 0.1 [--faults N --fault-span M --seed S --timeout-hang H]`:
    serve the logistics_zh pool's gold labels in a process of its own (for benchmarks: no GIL shared with the
    client, and it outlives a SIGKILLed client) and print the base URL. --faults gives N of the first M pool
    records a fault mode, round-robin over --modes, the records drawn with the fixed --seed."""
    import argparse
    import sys
    from pathlib import Path

    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--faults", type=int, default=0, help="how many records get a fault mode")
    parser.add_argument("--fault-span", type=int, default=1000, help="drawn from the first M pool records")
    parser.add_argument("--modes", default=",".join(FAULT_MIX), help="comma-separated fault modes, round-robin")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-hang", type=float, default=3.0, help="seconds a `hang` sleeps before closing")
    parser.add_argument("--slow", type=float, default=3.0, help="seconds a `slow` sleeps before answering")
    args = parser.parse_args()
    data = Path(__file__).resolve().parent.parent / "datasets" / "logistics_zh"
    pool = [json.loads(line) for line in (data / "pool.jsonl").open(encoding="utf-8")]
    texts = {r["id"]: r["text"] for r in pool}
    gold = {texts[r["id"]]: r["label"] for r in map(json.loads, (data / "pool_gold.jsonl").open(encoding="utf-8"))}
    modes = assign_faults([r["text"] for r in pool[: args.fault_span]], args.faults,
                          [m for m in args.modes.split(",") if m], args.seed)
    server = TeacherServer(gold, modes, latency_s=args.latency, slow_s=args.slow, hang_s=args.timeout_hang)
    print(server.base_url, flush=True)
    sys.stdout.close()
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
