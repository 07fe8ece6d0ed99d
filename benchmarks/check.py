"""Whether every results file says where it comes from and whether the docs say which are stale.

    .venv/bin/python -m benchmarks.check

Exit 1, naming the file and what is wrong, where a results file in benchmarks/results/ lacks its provenance (git
commit, dirty flag, date, CPU model and count, `one_run`: benchmarks/provenance.py REQUIRED; the files written
before `one_run` was required are listed there as legacy), or where a table in README.md or docs/*.md shows a
stale file without saying so. Stale: the file's script, or a file of this checkout that it imports or runs, changed
in a commit after the file's own; those are listed with the commits (exit 0 when the docs say so). Where git cannot
tell (no history here), that is said, and nothing fails on it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance as origin  # noqa: E402  (the scripts' own import of it)
import tables  # noqa: E402

RESULTS, DOCS = origin.ROOT / "benchmarks" / "results", tables.DOCS


def check(results: Path, docs: tuple[Path, ...], root: Path = origin.ROOT) -> tuple[list[str], list[str]]:
    """(what fails, what is stale), one line each."""
    failures, notes, stale = [], [], set()
    for path in sorted(results.glob("*.json")):
        name, shown = path.stem, path.relative_to(root) if path.is_relative_to(root) else path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            failures.append(f"{shown}: not a readable JSON file: {exc}")
            continue
        lacking = origin.missing(data)
        if name in origin.LEGACY_WITHOUT_ONE_RUN:
            if "one_run" not in lacking:  # a note, not a failure: editing provenance.py stales every file
                notes.append(f"{shown}: says `one_run` now: take {name} off LEGACY_WITHOUT_ONE_RUN in "
                             "benchmarks/provenance.py when it next changes")
            lacking = [k for k in lacking if k != "one_run"]
        if lacking:
            failures.append(f"{shown}: no provenance: lacks {', '.join(lacking)}")
        since = origin.stale(name, data, root)
        commit = str((data.get("git") or {}).get("commit"))[:7]
        if since is None:
            notes.append(f"{shown}: git cannot tell whether it is stale (commit {commit} or its script "
                         f"{origin.script_of(name, data).relative_to(origin.ROOT)} not in this checkout)")
        elif since:
            stale.add(name)
            notes.append(f"{shown}: stale: {len(since)} commit(s) since {commit} changed "
                         f"{origin.script_of(name, data).relative_to(origin.ROOT)} or the code it runs: "
                         f"{' '.join(since[:8])}{' …' if len(since) > 8 else ''}")
    for doc in docs:
        for m in tables.BLOCK.finditer(doc.read_text(encoding="utf-8")):
            file = tables.TABLES[m.group(2)][0] if m.group(2) in tables.TABLES else None
            if file in stale and tables.STALE not in m.group(3):
                failures.append(f"{doc.relative_to(root) if doc.is_relative_to(root) else doc}: table {m.group(2)} "
                                f"shows {file}.json, which is stale, without saying so: run benchmarks/tables.py")
    return failures, notes


def main() -> int:
    failures, notes = check(RESULTS, DOCS)
    for line in notes:
        print(line)
    for line in failures:
        print(f"FAIL {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
