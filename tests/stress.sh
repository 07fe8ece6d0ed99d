#!/usr/bin/env bash
# Run the quick suite N times while a CPU load runs in the background, then say which tests failed how often.
#
#   bash tests/stress.sh [N] [LOAD] [-- PYTEST ARGS...]
#
# N (default 10) runs of `pytest -m "not slow"` (or of the pytest arguments after --, e.g.
# `-- -m slow tests/test_teacher_server.py`), each with its own junit XML; LOAD (default 2) busy processes,
# `stress-ng --cpu LOAD` where Debian's stress-ng is installed (apt-get install stress-ng), else Python busy
# loops. The load stops when the script exits, however it exits. Python: $PYTHON, else .venv/bin/python of this
# checkout or of /work/main. Exit status 0 only when every run passed.
set -u
set -m  # each pytest run in a process group of its own: an interruption stops it and what it started
cd "$(dirname "$0")/.."
N=${1:-10}
LOAD=${2:-2}
shift $(( $# < 2 ? $# : 2 ))
[ "${1:-}" = "--" ] && shift
PYTEST_ARGS=("$@")
[ ${#PYTEST_ARGS[@]} -eq 0 ] && PYTEST_ARGS=(-m "not slow")
case "$N$LOAD" in *[!0-9]*) echo "usage: bash tests/stress.sh [N] [LOAD] [-- PYTEST ARGS...]" >&2; exit 2;; esac

PYTHON=${PYTHON:-}
for p in .venv/bin/python /work/main/.venv/bin/python; do
  [ -z "$PYTHON" ] && [ -x "$p" ] && PYTHON=$p
done
[ -z "$PYTHON" ] && { echo "stress.sh: no .venv python found; set PYTHON" >&2; exit 2; }

OUT=$(mktemp -d /tmp/xtk-stress.XXXXXX)
LOAD_PIDS=()
stop_load() {
  for pid in "${LOAD_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  wait "${LOAD_PIDS[@]}" 2>/dev/null
  LOAD_PIDS=()
}
trap stop_load EXIT
# Interrupted (Ctrl-C, kill): stop the run in progress and report over the runs that finished.
interrupted=0
PYTEST_PID=
trap 'interrupted=1; [ -n "$PYTEST_PID" ] && kill -TERM -- -"$PYTEST_PID" 2>/dev/null' INT TERM

if [ "$LOAD" -gt 0 ]; then
  if command -v stress-ng >/dev/null; then
    stress-ng --cpu "$LOAD" --quiet &
    LOAD_PIDS+=($!)
    how="stress-ng --cpu $LOAD"
  else
    for _ in $(seq "$LOAD"); do
      "$PYTHON" -c 'while True: pass' &
      LOAD_PIDS+=($!)
    done
    how="$LOAD Python busy loops"
  fi
else
  how="no extra load"
fi
echo "stress: $N runs of pytest ${PYTEST_ARGS[*]} under $how; logs and junit XML in $OUT"

passed_runs=0
done_runs=0
for i in $(seq "$N"); do
  start=$(date +%s)
  "$PYTHON" -m pytest -q -p no:cacheprovider "${PYTEST_ARGS[@]}" --junitxml="$OUT/run$i.xml" >"$OUT/run$i.log" 2>&1 &
  PYTEST_PID=$!
  wait "$PYTEST_PID"
  rc=$?
  while kill -0 "$PYTEST_PID" 2>/dev/null; do wait "$PYTEST_PID"; rc=$?; done  # a trapped signal ends `wait` early
  PYTEST_PID=
  if [ $interrupted -eq 1 ]; then
    echo "run $i/$N: interrupted after $(( $(date +%s) - start )) s; not counted"
    break
  fi
  done_runs=$i
  [ $rc -eq 0 ] && passed_runs=$((passed_runs + 1))
  echo "run $i/$N: exit $rc in $(( $(date +%s) - start )) s: $(tail -n 1 "$OUT/run$i.log")"
done
stop_load

# Failures per test, from the junit XML of every run (a run that wrote no XML counts as a failed run).
"$PYTHON" - "$OUT" "$done_runs" "$passed_runs" "$how" "$N" <<'EOF'
import collections, pathlib, sys
import xml.etree.ElementTree as ET

out, n, passed, how, asked = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
failed = collections.Counter()
tests = collections.Counter()
missing = []
for i in range(1, n + 1):
    xml = out / f"run{i}.xml"
    if not xml.is_file():
        missing.append(i)
        continue
    for case in ET.parse(xml).iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        tests[name] += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed[name] += 1
for name, k in failed.most_common():
    print(f"FAILED {k}/{n} runs: {name}")
for i in missing:
    print(f"run {i}: no junit XML (pytest did not finish); see {out}/run{i}.log")
print(f"stress summary: {passed}/{n} runs passed ({asked} asked for), {len(failed)} tests failed at least once, "
      f"{len(tests)} tests seen, under {how}")
EOF
[ "$passed_runs" -eq "$N" ] && [ $interrupted -eq 0 ]
