"""An OpenAI-compatible chat server on 127.0.0.1 that answers from gold labels and injects faults.

A test double: no real teacher can be made to answer 429, 500, hang, drop the connection or hallucinate on
cue. It speaks real HTTP (a threading stdlib server) to the real `openai` client, counts every request by
input text, and picks each text's behaviour from `modes` (text -> mode):

  ok, fenced, think      the gold label as JSON, bare / in a ```json fence / after a <think> block
  429, 500, slow, drop   a transient fault on the first attempt(s), then the gold label
  truncated, hallucinated, schema, empty, always500   a permanent problem, to be rejected
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TRANSIENT_TRIES = {"429": 1, "500": 2, "slow": 1, "drop": 1}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 refuses connections under concurrency 32+


class TeacherServer:
    def __init__(self, gold: dict[str, dict], modes: dict[str, str] | None = None, latency_s: float = 0.0,
                 slow_s: float = 3.0):
        self.gold, self.modes, self.latency_s, self.slow_s = gold, modes or {}, latency_s, slow_s
        self.requests: Counter = Counter()  # text -> requests received
        self.lock = threading.Lock()
        self.auth_headers: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                text = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
                with server.lock:
                    server.requests[text] += 1
                    attempt = server.requests[text]
                    server.auth_headers.append(self.headers.get("authorization", ""))
                server.respond(self, text, attempt, body)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def respond(self, h: BaseHTTPRequestHandler, text: str, attempt: int, body: dict) -> None:
        mode = self.modes.get(text, "ok")
        if self.latency_s:
            time.sleep(self.latency_s)
        transient = attempt <= TRANSIENT_TRIES.get(mode, 0)
        if mode == "429" and transient:
            return self.send(h, 429, {"error": {"message": "rate limited"}}, {"Retry-After": "1"})
        if (mode == "500" and transient) or mode == "always500":
            return self.send(h, 500, {"error": {"message": "internal error"}})
        if mode == "slow" and transient:
            time.sleep(self.slow_s)
        if mode == "drop" and transient:
            h.close_connection = True
            h.connection.shutdown(2)  # no status line at all: the client sees a dropped connection
            return None
        label = dict(self.gold[text])
        content = json.dumps(label, ensure_ascii=False)
        if mode == "fenced":
            content = f"Here you go:\n```json\n{content}\n```"
        elif mode == "think":
            content = f"<think>\nLet me find the fields.\n</think>\n\n{content}"
        elif mode == "truncated":
            content = content[: len(content) // 2]
        elif mode == "hallucinated":
            content = json.dumps({**label, "phone": "19999999999"}, ensure_ascii=False)
        elif mode == "schema":
            content = json.dumps({k: v for k, v in label.items() if k != "phone"}, ensure_ascii=False)
        elif mode == "empty":
            content = ""
        completion = {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model", "teacher"),
                      "choices": [{"index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "content": content}}],
                      "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140}}
        return self.send(h, 200, completion)

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode()
        try:
            h.send_response(status)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (a time-out test)
            pass

    def __enter__(self) -> "TeacherServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main() -> None:
    """`python tests/teacher_server.py --latency 0.1`: serve the logistics_zh pool's gold labels in a process of
    its own (for benchmarks: no GIL shared with the client) and print the base URL."""
    import argparse
    import sys
    from pathlib import Path

    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.1)
    args = parser.parse_args()
    data = Path(__file__).resolve().parent.parent / "datasets" / "logistics_zh"
    texts = {r["id"]: r["text"] for r in map(json.loads, (data / "pool.jsonl").open(encoding="utf-8"))}
    gold = {texts[r["id"]]: r["label"] for r in map(json.loads, (data / "pool_gold.jsonl").open(encoding="utf-8"))}
    server = TeacherServer(gold, latency_s=args.latency)
    print(server.base_url, flush=True)
    sys.stdout.close()
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
