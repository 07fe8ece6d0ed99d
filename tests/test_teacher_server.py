"""The fault modes of tests/teacher_server.py speak the protocol they claim, checked with urllib alone.

The server is a test double: no real teacher can be made to answer 429 with a `Retry-After: nan`, truncate a
200's body, hang past a time-out or make up a province on cue, yet that is what xtk label must survive and
what benchmarks/label_faults.py counts. If a mode did not really do what it says (a "truncated" body that
still parses, a "hang" that answers after all, a delivered-count that counts what the client never got),
the label tests and the benchmark would pass for the wrong reason. These tests pin the double itself.
"""

import email.utils
import http.client
import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from teacher_server import FAULT_MIX, TeacherServer, assign_faults

GOLD = {"province": "天津市", "city": "天津市", "district": "和平区", "specific_location": "南京路1号",
        "name": "张三", "phone": "13812345678"}
MODES = ["ok", "429_nan", "429_date", "500", "503", "hang", "slow", "truncated_body", "number", "prose",
         "madeup_province", "madeup_city", "missing_keys"]
TEXTS = {m: f"text for {m}" for m in MODES}


# Client time-outs are generous (a loaded 2-core box stalls for seconds); where a test needs the client to give
# up, the server's wait is far longer and ends on that event (the client closing), not on a timer of its own.
WAIT_S = 60
HANG_S = 0.4


@pytest.fixture(scope="module")
def server():
    with TeacherServer({t: GOLD for t in TEXTS.values()}, {t: m for m, t in TEXTS.items()},
                       slow_s=600, hang_s=HANG_S) as s:
        yield s


def ask(server, mode, timeout=WAIT_S):
    """(status, headers, raw body bytes) of one chat request for the mode's text."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": TEXTS[mode]}]}).encode()
    req = urllib.request.Request(server.base_url + "/chat/completions", body,
                                 {"content-type": "application/json", "authorization": "Bearer k"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def content(raw: bytes):
    return json.loads(raw)["choices"][0]["message"]["content"]


def stats(server):
    with urllib.request.urlopen(server.base_url.removesuffix("/v1") + "/stats", timeout=WAIT_S) as r:
        return json.loads(r.read())


def test_truncated_body_is_a_200_whose_body_does_not_parse(server):
    status, headers, raw = ask(server, "truncated_body")
    assert status == 200 and int(headers["content-length"]) == len(raw) > 0
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw.decode("utf-8"))  # whole characters, half a document


def test_429_retry_after_nan_and_http_date_then_the_answer(server):
    status, headers, _ = ask(server, "429_nan")
    assert status == 429 and headers["Retry-After"] == "nan"
    status, headers, _ = ask(server, "429_date")
    when = email.utils.parsedate_to_datetime(headers["Retry-After"]).timestamp()
    assert status == 429 and time.time() < when < time.time() + 5
    for mode in ("429_nan", "429_date"):
        status, _, raw = ask(server, mode)
        assert status == 200 and json.loads(content(raw)) == GOLD


def test_500_twice_and_503_once_then_the_answer_and_stats_count_only_the_200(server):
    assert [ask(server, "500")[0] for _ in range(3)] == [500, 500, 200]
    assert [ask(server, "503")[0] for _ in range(2)] == [503, 200]
    server.settled()  # a busy machine let the client read the last answer before the server had counted it
    s = stats(server)
    assert s[TEXTS["500"]] == {"mode": "500", "requests": 3, "delivered": 1}
    assert s[TEXTS["503"]] == {"mode": "503", "requests": 2, "delivered": 1}


def test_hang_closes_without_a_status_line_and_is_not_delivered(server):
    start = time.monotonic()
    with pytest.raises((http.client.RemoteDisconnected, urllib.error.URLError, ConnectionError)):
        ask(server, "hang")
    assert time.monotonic() - start >= HANG_S  # the server closed it after hang_s, the client still waiting
    server.settled()
    assert stats(server)[TEXTS["hang"]] == {"mode": "hang", "requests": 1, "delivered": 0}
    assert ask(server, "hang")[0] == 200
    server.settled()  # the client may read the answer before the server has counted it (failed once, loaded)
    assert stats(server)[TEXTS["hang"]]["delivered"] == 1


def test_an_answer_the_client_stopped_waiting_for_is_not_delivered(server):
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        ask(server, "slow", timeout=0.2)  # the answer would come after 600 s
    server.wait_until(lambda: server.finished[TEXTS["slow"]] == 1)  # the server found the client gone
    assert stats(server)[TEXTS["slow"]] == {"mode": "slow", "requests": 1, "delivered": 0}


def test_content_shapes(server):
    status, _, raw = ask(server, "number")
    assert status == 200 and content(raw) == 42
    prose = content(ask(server, "prose")[2])
    assert not prose.lstrip().startswith("{") and json.dumps(GOLD, ensure_ascii=False) in prose
    assert json.loads(content(ask(server, "madeup_province")[2])) == {**GOLD, "province": "火星省"}
    assert json.loads(content(ask(server, "madeup_city")[2])) == {**GOLD, "city": "奥林帕斯市"}
    assert set(json.loads(content(ask(server, "missing_keys")[2]))) == set(GOLD) - {"phone", "name"}


def test_hold_keeps_answers_back_until_release(server):
    base = server.base_url.removesuffix("/v1")
    urllib.request.urlopen(urllib.request.Request(base + "/hold", b"", method="POST"), timeout=WAIT_S).read()
    got = []
    t = threading.Thread(target=lambda: got.append(ask(server, "ok")[0]))
    t.start()
    server.wait_until(lambda: server.requests[TEXTS["ok"]] == 1)  # the request is in, its answer held
    assert got == [] and stats(server)[TEXTS["ok"]] == {"mode": "ok", "requests": 1, "delivered": 0}
    urllib.request.urlopen(urllib.request.Request(base + "/release", b"", method="POST"), timeout=WAIT_S).read()
    t.join(WAIT_S)
    server.settled()
    assert got == [200] and stats(server)[TEXTS["ok"]]["delivered"] == 1


def test_assign_faults_is_seeded_and_round_robin():
    texts = [f"t{i}" for i in range(1000)]
    a = assign_faults(texts, 300)
    assert a == assign_faults(texts, 300) and a != assign_faults(texts, 300, seed=1)
    counts = {m: list(a.values()).count(m) for m in FAULT_MIX}
    assert set(counts.values()) == {300 // len(FAULT_MIX)}
    assert max(texts.index(t) for t in a) > 800  # spread over the span, not the first 300
