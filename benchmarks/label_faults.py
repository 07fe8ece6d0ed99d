"""Fault tolerance of `xtk label`: 1,000 records against a fault-injecting teacher, SIGKILLed 3 times and resumed.

    .venv/bin/python benchmarks/label_faults.py [--records 1000] [--faults 300] [--kills 0.2,0.45,0.7]

The teacher is tests/teacher_server.py in a process of its own (a SIGKILL of the labeller leaves it and its
counts alone), serving the first --records pool texts from their gold labels; --faults of them, drawn with a
fixed seed, get a fault mode round-robin (429 with Retry-After 1 / nan / an HTTP-date, 500, 503, a hang past
the client's time-out, a dropped connection, a 200 whose body is half a JSON document, message.content a
number, an answer wrapped in prose / a ```json fence / after a <think> block, a made-up province 火星省 or
city 奥林帕斯市, missing keys). The labeller is the CLI, `python -m toolkit label ... --base-url`, with a fake
API key. It is SIGKILLed when labelled + rejected lines reach each --kills fraction, re-run after each kill,
and the last run goes to the end. Before each kill the server holds back every answer not yet written, and
the kill waits (at most --hold-wait s) until every answer the server delivered in that run is on disk: an
answer in a socket buffer at the instant of a SIGKILL is one no client can save, so a kill lands while
requests are in flight at the teacher, which is what a resume must handle.

Then, per record id: lost (no row in labelled.jsonl or rejects.jsonl), duplicated (more than one row),
paid twice (the server delivered >= 2 answers with a 200 for its text: an answer, even an unusable one, must
never be asked again), made-up value accepted (labelled with a value that differs from gold in a field where
the server injected a made-up value). All four must be 0, the last run must exit 0, and the key must occur in
no output file and no captured stdout/stderr; otherwise the exit status is 1. It reports what it observes,
per mode, and writes benchmarks/results/label_faults.json whole, with the commit, machine and settings.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from teacher_server import FAULT_MIX, MADEUP, TRANSIENT_TRIES  # noqa: E402
from provenance import AT_START, git_state, machine  # noqa: E402
from toolkit.io.jsonl import read_jsonl, write_json, write_jsonl  # noqa: E402
from toolkit.run.manifest import versions  # noqa: E402

RECIPE = ROOT / "recipes" / "logistics_zh.yaml"
WRAPPED = ("ok", "prose", "fenced", "think")
# What a correct labeller does with each mode; shown beside what happened, not assumed.
# A made-up place is rejected, or repaired by the recipe's table back to the text's own place (the county the text
# names decides its city and province): either way no false value is kept.
REPAIRED = "repaired to gold or rejected"
EXPECTED = {m: "accepted" for m in (*WRAPPED, *TRANSIENT_TRIES)} | {
    m: "rejected" for m in ("truncated", "truncated_body", "number", "empty", "schema", "missing_keys")} | {
    m: REPAIRED for m in MADEUP}


def as_expected(outcome: str, expected: str, gold_label: bool) -> bool:
    """A record that gave up was never judged: it is not the rejection a permanent fault expects. `gold_label`:
    the record was labelled with its gold values."""
    if "gave up" in outcome:
        return False
    if expected == REPAIRED:
        return outcome.startswith("rejected") or (outcome == "accepted" and gold_label)
    return outcome.startswith(expected)


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSONL file a killed writer may have left with a torn last line (skipped, not repaired)."""
    rows = []
    if path.is_file():
        for line in path.read_bytes().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def count_lines(out: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in (out / "labelled.jsonl", out / "rejects.jsonl") if p.is_file())


class Teacher:
    """The fault-injecting server in its own process, and its HTTP control endpoints."""

    def __init__(self, args: argparse.Namespace):
        cmd = [sys.executable, str(ROOT / "tests" / "teacher_server.py"), "--latency", str(args.latency),
               "--faults", str(args.faults), "--fault-span", str(args.records), "--modes", ",".join(args.modes),
               "--seed", str(args.seed), "--timeout-hang", str(args.hang)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.base_url = self.proc.stdout.readline().strip()
        self.root = self.base_url.removesuffix("/v1")

    def call(self, path: str, post: bool = False):
        req = urllib.request.Request(self.root + path, b"" if post else None, method="POST" if post else "GET")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--faults", type=int, default=300, help="records given a fault mode (round-robin)")
    parser.add_argument("--modes", type=lambda s: [m for m in s.split(",") if m], default=list(FAULT_MIX))
    parser.add_argument("--kills", type=lambda s: [float(x) for x in s.split(",") if x], default=[0.2, 0.45, 0.7],
                        help="SIGKILL when labelled + rejected lines reach these fractions of --records")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=2.0, help="teacher.timeout_s of the labeller")
    parser.add_argument("--max-retries", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.1, help="the server's answer latency (s)")
    parser.add_argument("--hang", type=float, default=3.0, help="a hang lasts this long (past --timeout), then closes")
    parser.add_argument("--hold-wait", type=float, default=1.5, help="at most this long for delivered answers to "
                        "reach disk before a kill (below --timeout, so held requests do not time out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-timeout", type=float, default=900, help="give up on one labelling run after this")
    parser.add_argument("--keep", help="keep the labeller's folder and logs here (default: a temporary folder)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "label_faults.json"))
    args = parser.parse_args()
    if args.hang <= args.timeout:
        parser.error("--hang must last longer than the client's --timeout")

    started = datetime.datetime.now().astimezone()
    pool = read_jsonl(ROOT / "datasets" / "logistics_zh" / "pool.jsonl")[: args.records]
    gold = {r["id"]: r["label"] for r in read_jsonl(ROOT / "datasets" / "logistics_zh" / "pool_gold.jsonl")}
    text_of = {r["id"]: r["text"] for r in pool}
    key = "sk-xtkfault-" + secrets.token_hex(12)  # fake; must show up nowhere
    env = {**os.environ, "DASHSCOPE_API_KEY": key, "OMP_NUM_THREADS": "1"}
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="label_faults-")
    work = Path(args.keep or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    out, logs = work / "out", work / "logs"
    logs.mkdir(exist_ok=True)
    raw = write_jsonl(work / "raw.jsonl", [{"id": r["id"], "text": r["text"]} for r in pool])
    # --yes: the list-price estimate of 1,000 records passes teacher.confirm_above, and this teacher is local
    cli = [sys.executable, "-m", "toolkit", "label", str(RECIPE), "--input", str(raw), "--out", str(out), "--yes"]
    overrides = [f"teacher.timeout_s={args.timeout:g}", f"teacher.max_retries={args.max_retries}",
                 f"teacher.concurrency={args.concurrency}", "teacher.gate.records=0"]  # labelling alone, no gate

    teacher = Teacher(args)
    runs, t0 = [], time.monotonic()
    try:
        modes = {t: s["mode"] for t, s in teacher.call("/stats").items()}
        for n, frac in enumerate([*args.kills, None], 1):
            before = {t: s["delivered"] for t, s in teacher.call("/stats").items()}
            so, se = (logs / f"run{n}.stdout").open("wb"), (logs / f"run{n}.stderr").open("wb")
            start, lines0 = time.monotonic(), count_lines(out)
            proc = subprocess.Popen([*cli, "--base-url", teacher.base_url, *overrides], cwd=ROOT, env=env,
                                    stdout=so, stderr=se)
            run = {"run": n, "lines_before": lines0}
            if frac is not None:
                target = round(frac * args.records)
                run["kill_at_lines"] = target
                while proc.poll() is None and count_lines(out) < target and time.monotonic() - start < args.run_timeout:
                    time.sleep(0.02)
                if proc.poll() is None:
                    teacher.call("/hold", post=True)
                    held = time.monotonic()
                    while True:  # every answer delivered in this run should reach disk before the kill
                        delivered = {t for t, s in teacher.call("/stats").items() if s["delivered"] > before.get(t, 0)}
                        written = {text_of.get(r.get("id")) for f in ("labelled.jsonl", "rejects.jsonl")
                                   for r in read_rows(out / f)}
                        unwritten = delivered - written
                        if not unwritten or time.monotonic() - held > args.hold_wait:
                            break
                        time.sleep(0.02)
                    lines = count_lines(out)
                    killed = proc.poll() is None  # it may have ended by itself while held
                    if killed:
                        proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    teacher.call("/release", post=True)
                    run |= {"killed": killed, "lines_at_kill": lines, "held_s": round(time.monotonic() - held, 3),
                            "delivered_not_on_disk_at_kill": len(unwritten)}
                else:
                    run["killed"] = False  # it ended (or crashed) before reaching the kill point
            try:
                proc.wait(timeout=max(1.0, args.run_timeout - (time.monotonic() - start)))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                run["timed_out"] = True
            so.close()
            se.close()
            run |= {"exit_code": proc.returncode, "seconds": round(time.monotonic() - start, 2),
                    "lines_after": count_lines(out)}
            if proc.returncode not in (0, -signal.SIGKILL):
                run["stderr_tail"] = (logs / f"run{n}.stderr").read_text(errors="replace")[-1500:]
            runs.append(run)
            print(f"run {n}: {json.dumps({k: v for k, v in run.items() if k != 'stderr_tail'})}", flush=True)
        wall = time.monotonic() - t0
        stats = teacher.call("/stats")
    finally:
        teacher.stop()

    # --- count, per record id -----------------------------------------------------------------------------
    labelled, rejects = read_rows(out / "labelled.jsonl"), read_rows(out / "rejects.jsonl")
    rows_per_id = Counter(r.get("id") for r in labelled + rejects)
    outcome = {r["id"]: "accepted" for r in labelled} | {r["id"]: f"rejected: {r.get('reason')}" for r in rejects}
    mode_of = {i: modes.get(text_of[i], "ok") for i in text_of}
    st = {i: stats.get(text_of[i], {"requests": 0, "delivered": 0}) for i in text_of}
    lost = sorted(i for i in text_of if rows_per_id[i] == 0)
    duplicated = sorted(i for i in text_of if rows_per_id[i] > 1)
    paid_twice = sorted(i for i in text_of if st[i]["delivered"] >= 2)
    madeup = sorted(r["id"] for r in labelled if r.get("id") in mode_of and mode_of[r["id"]] in MADEUP
                    and any((r.get("label") or {}).get(f) != gold[r["id"]][f] for f in MADEUP[mode_of[r["id"]]]))
    wrong = sorted(r["id"] for r in labelled if r.get("id") in gold and r.get("label") != gold[r["id"]])

    per_mode = {}
    for m in ["ok", *dict.fromkeys(args.modes)]:
        ids = [i for i in text_of if mode_of[i] == m]
        if not ids:
            continue
        got = Counter(outcome.get(i, "lost") for i in ids)
        per_mode[m] = {
            "records": len(ids), "expected": EXPECTED.get(m, "?"), "accepted": got.pop("accepted", 0),
            "rejected": {k.removeprefix("rejected: "): v for k, v in sorted(got.items()) if k != "lost"},
            "as_expected": sum(as_expected(outcome.get(i, "lost"), EXPECTED.get(m, "?"), i not in wrong) for i in ids),
            "lost": sum(i in lost for i in ids), "duplicated": sum(i in duplicated for i in ids),
            "paid_twice": sum(i in paid_twice for i in ids), "madeup_accepted": sum(i in madeup for i in ids),
            "accepted_not_gold": sum(i in wrong for i in ids),
            "requests": sum(st[i]["requests"] for i in ids), "delivered": sum(st[i]["delivered"] for i in ids)}

    leaks = [str(p.relative_to(work)) for p in sorted(work.rglob("*"))  # out/ and the captured stdout/stderr
             if p.is_file() and key.encode() in p.read_bytes()]
    requests = sum(s["requests"] for s in stats.values())
    summary_path = out / "label_summary.json"  # written by the run that finished, if one did
    client = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    totals = {"lost": len(lost), "duplicated": len(duplicated), "paid_twice": len(paid_twice),
              "madeup_accepted": len(madeup)}
    final = runs[-1]
    failures = [f"{k} = {v}" for k, v in totals.items() if v] + \
        ([f"last run exited {final['exit_code']}"] if final["exit_code"] != 0 else []) + \
        ([f"API key found in {leaks}"] if leaks else [])
    result = {
        "benchmark": "label_faults", "date": started.isoformat(timespec="seconds"), "git": git_state(),
        "started": AT_START, "machine": machine(), "one_run": True, "versions": versions(),
        "settings": {"records": args.records, "faults": args.faults, "fault_modes": args.modes, "seed": args.seed,
                     "kills_at_fraction": args.kills, "concurrency": args.concurrency,
                     "timeout_s": args.timeout, "max_retries": args.max_retries, "server_latency_s": args.latency,
                     "hang_s": args.hang, "hold_wait_s": args.hold_wait,
                     "command": " ".join(["python -m toolkit label", RECIPE.relative_to(ROOT).as_posix(),
                                          "--input RAW --out DIR --base-url URL", *overrides])},
        "totals": totals,
        "ok": not failures, "failures": failures,
        "kills_done": sum(bool(r.get("killed")) for r in runs), "runs": runs, "last_exit_code": final["exit_code"],
        "api_key_found_in": leaks,
        "accepted": len(labelled), "rejected": dict(Counter(r.get("reason") for r in rejects)),
        "accepted_not_gold": len(wrong),
        # at the server, over all runs: retries within a run and re-asks after a kill both count beyond the first
        "requests": {"server_requests": requests, "server_delivered": sum(s["delivered"] for s in stats.values()),
                     "requests_beyond_first": requests - sum(1 for s in stats.values() if s["requests"]),
                     "client_retries_last_run": client.get("retries"),
                     "client_requests_last_run": client.get("requests")},
        "last_run_client_summary": client or None,
        "wall_s": round(wall, 1),
        "per_mode": per_mode,
        "examples": {"lost": lost[:10], "duplicated": duplicated[:10], "paid_twice": [
            {"id": i, "mode": mode_of[i], **st[i], "outcome": outcome.get(i, "lost")} for i in paid_twice[:10]],
            "madeup_accepted": madeup[:10]},
    }
    write_json(args.out, result)

    cols = ("records", "expected", "accepted", "as_expected", "lost", "duplicated", "paid_twice", "madeup_accepted",
            "requests", "delivered")
    print(f"\n{'mode':<16}" + "".join(f"{c[:11]:>12}" for c in cols) + "  rejected")
    for m, row in per_mode.items():
        print(f"{m:<16}" + "".join(f"{row[c]!s:>12}" for c in cols) + f"  {row['rejected']}")
    print(f"\ntotals {totals}; server requests {requests}; kills {result['kills_done']}; last exit {final['exit_code']}; "
          f"wall {wall:.1f} s; key leaks {leaks}")
    print(f"wrote {args.out}")
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
    if tmp is not None:
        tmp.cleanup()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
