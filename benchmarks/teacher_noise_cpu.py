"""A real LLM teacher, offline: a logistics_zh student fine-tuned by xtk (the cpu profile, Gemma 3 270M, on
--teacher-records of the shipped pool's gold labels; trained by this script when absent), served by vLLM's OpenAI
server, is the teacher of a fresh student (long: ~2 h here).

    .venv/bin/python benchmarks/teacher_noise_cpu.py [--teacher-records 1500] [--pool 400] [--limit 150]

The teacher is trained on fewer records than `bash sft.sh`'s student (4,000) so that it finishes in ~25 min here
and makes mistakes enough to measure what they cost: a real LLM with real mistakes, not a scripted one.

On strings the teacher never saw (the recipe's generator under another seed; none equal to a shipped pool or test
text after normalisation), one run measures:
- the teacher gate (`xtk run --only teacher_gate`): its verdict on test.jsonl's first teacher.gate.records;
- `xtk label` of --pool strings: labels accepted and rejected by reason, and the teacher's exact match against the
  generator's gold over every answer, rejected ones too (an answer with no JSON counts as wrong);
- the same student (the cpu profile) trained on the pool's (a) gold labels, (b) every teacher answer that parses
  into the recipe's fields, the gate's rejects included (trained under a copy of the recipe without its closed
  sets, which prepare would enforce; scored like the others under the shipped one), (c) only the labels the gate
  accepts as answered (the gate without repair: a label the recipe's table repaired counts as rejected), (d)
  the same of `--votes 3` at temperature 0.8, (e) (b) drawn at random down to (c)'s row count, so that what the
  gate chose is told apart from how many rows it left, and (f) (b) with the table's repair applied as `xtk label`
  applies it (an answer the table cannot repair uniquely dropped); each scored on the first --limit records of
  every test file, compared in pairs on the same records (McNemar's exact test and a paired bootstrap:
  toolkit/maths/ranking.py);
- `xtk synth` against the same server: its smoke batch (64 inputs asked for, no --yes), written from 10 of the
  pool's strings.
The teacher is asked with the prompt it was trained on (the profile's prompts.student), greedy, as xtk evaluated it.
Resumable: everything lives under runs/logistics_zh/teacher_noise (labelling is journalled, finished training
stages are reused). Writes benchmarks/results/teacher_noise_cpu.json whole.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, git_state, provenance, trained_model  # noqa: E402

sys.path.insert(0, str(ROOT))

from toolkit.io.journal import load_journal  # noqa: E402
from toolkit.io.jsonl import read_jsonl, write_jsonl  # noqa: E402

RECIPE = ROOT / "recipes" / "logistics_zh.yaml"
WORK = ROOT / "runs" / "logistics_zh" / "teacher_noise"
OUT = ROOT / "benchmarks" / "results" / "teacher_noise_cpu.json"
SEED = 20261204  # not the shipped files' seed (20260101 and the two after it)
VOTE_TEMPERATURE = 0.8
SYNTH_N = 64
ALPHA = 0.05
SETS = {"a": "gold labels", "b": "every teacher answer that parses (the gate's rejects included; trained under the "
        "recipe without its closed sets)",
        "c": "the labels the gate accepts (as answered: one the table repaired counts as rejected)",
        "d": "the labels --votes 3 at temperature 0.8 accepts (as answered)",
        "e": "every teacher answer that parses, drawn at random down to (c)'s row count",
        "f": "every teacher answer that parses, repaired by the recipe's table (the unrepairable ones dropped)"}
OPEN_SETS = ("b", "e")  # may hold a place outside a closed set: trained under the recipe without them
# vLLM without torch.compile: minutes less a start here, and this file measures accuracy, not speed
EAGER = ["eval.vllm.enforce_eager=true"]
PAIRS = (("c", "b", "what the gate recovers"), ("a", "b", "what the teacher's noise costs"),
         ("a", "c", "what the gate leaves"), ("d", "c", "what voting adds to the gate"),
         ("e", "b", "what fewer rows cost"), ("e", "c", "chance against the gate's choice, as many rows"),
         ("f", "b", "what the table's repair does to every answer"), ("f", "c", "repairing against rejecting"))


def xtk(*args: str, env: dict | None = None, check: bool = True) -> int:
    return subprocess.run([sys.executable, "-m", "toolkit", *args], cwd=ROOT, check=check,
                          env={**os.environ, **(env or {})}).returncode


def fresh_pool(n: int) -> list[dict]:
    """n generated records ({id, text, label}) whose texts occur in no shipped logistics_zh file."""
    from toolkit.data.generators import draw_unique, normalise_text
    from toolkit.tasks.logistics_zh.generate import LogisticsGenerator

    data = ROOT / "datasets" / "logistics_zh"
    taken = {normalise_text(r["text"]) for f in ("pool.jsonl", "test.jsonl", "test_unseen.jsonl")
             for r in read_jsonl(data / f)}
    return draw_unique(LogisticsGenerator(SEED, "normal").record, n, "noise", taken)


def teacher_model(records: int) -> Path:
    """The teacher: the cpu profile's student trained on `records` of the shipped pool's gold labels (the data
    stage, prepare, train, merge, each resumed or reused); its merged folder."""
    run = WORK / "teacher"
    # gold labels even where the user's teacher key is set: the key is looked for under a name nobody sets
    common = [str(RECIPE), "--profile", "cpu", "--run", str(run), f"data.train_records={records}",
              "teacher.api_key_env=XTK_TEACHER_NOISE_GOLD_ONLY_API_KEY"]
    xtk("run", *common, "--only", "data")
    for stage in ("prepare", "train", "merge"):
        xtk(stage, *common)
    return run / "merged"


def serve(model: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """vLLM's OpenAI server (what `vllm serve` runs) with the teacher on loopback, as "teacher"; returns the process
    and its /v1 URL once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VLLM_PLUGINS": "lora_filesystem_resolver", "VLLM_CPU_KVCACHE_SPACE": "4",
           "OMP_NUM_THREADS": str(len(os.sched_getaffinity(0)))}
    # vLLM's OpenAI server module, not the `vllm` script: that one asks for the version of a distribution named
    # "vllm", and on a CPU machine the distribution is vllm-cpu (PackageNotFoundError before it serves)
    server = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                               "--served-model-name", "teacher", "--dtype", "float32", "--max-model-len", "1024",
                               "--enforce-eager", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)
    deadline = time.monotonic() + 1200  # a bound for a stuck server only
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return server, f"http://127.0.0.1:{port}/v1"
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the vLLM server did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(3)


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def every_answer(recipe, folder: Path) -> list[dict]:
    """Set (b): the accepted labels as the teacher answered them (the table's repair undone), and each rejected
    answer that parses into the recipe's fields with their types (what prepare takes), whatever the gate found
    wrong with it."""
    from toolkit.task.fields import type_problem
    from toolkit.task.scoring import extract_json

    rows = [{"id": r["id"], "text": r["text"], "label": answered(r)} for r in read_jsonl(folder / "labelled.jsonl")]
    for r in load_journal(folder / "rejects.jsonl"):
        parsed = extract_json(r["raw"]) if r.get("raw") else None
        if parsed is not None and set(parsed) == set(recipe.field_names) and \
                not any(type_problem(f, parsed[f.name]) for f in recipe.fields):
            rows.append({"id": r["id"], "text": r["text"], "label": {f: parsed[f] for f in recipe.field_names}})
    return sorted(rows, key=lambda r: r["id"])


def answered(row: dict) -> dict:
    """A labelled row's label as the teacher answered it: `xtk label` keeps, for each field the recipe's table
    repaired, [as answered, as repaired]."""
    return {**row["label"], **{f: was for f, (was, _) in row.get("repaired", {}).items()}}


def gated(folder: Path) -> list[dict]:
    """Sets (c) and (d): the labels the gate accepted as answered, the gate without repair (a label the table
    repaired counts as rejected), so that (f) against (c) measures repairing against rejecting."""
    return [{"id": r["id"], "text": r["text"], "label": r["label"]} for r in read_jsonl(folder / "labelled.jsonl")
            if not r.get("repaired")]


def size_matched(rows: list[dict], n: int, seed: int = SEED) -> list[dict]:
    """Set (e): n of `rows` drawn at random (seeded), in id order: as many rows as the gate kept, none chosen by it."""
    if n > len(rows):
        raise ValueError(f"cannot draw {n} rows from {len(rows)}")
    return sorted(random.Random(seed).sample(rows, n), key=lambda r: r["id"])


def repaired(recipe, rows: list[dict]) -> list[dict]:
    """Set (f): each row's label with the recipe's tables' repair applied, as `xtk label` applies it (a combination
    the table makes unique is completed, values normalised); a row the table cannot repair is dropped."""
    from toolkit.data.label import repair_label

    out = []
    for r in rows:
        label, _, _ = repair_label(recipe, r["text"], r["label"])
        if label is not None:
            out.append({**r, "label": label})
    return out


def label_sets(recipe, gold_rows: list[dict]) -> dict[str, list[dict]]:
    """The students' training sets, {"a": ..., "f": ...} as SETS names them, from the label folders under WORK."""
    answers, accepted = every_answer(recipe, WORK / "label-1"), gated(WORK / "label-1")
    return {"a": gold_rows, "b": answers, "c": accepted, "d": gated(WORK / "label-3"),
            "e": size_matched(answers, len(accepted)), "f": repaired(recipe, answers)}


def open_recipe() -> Path:
    """logistics_zh with no closed sets, in a project folder of its own (WORK/open: the recipe and copies of the
    two folders it names): set (b)'s students train under it, as a flow with no label gate would. Under the shipped
    recipe, prepare refuses a label outside a closed set, so those answers could not be trained on at all."""
    root = WORK / "open"
    for folder in ("datasets/logistics_zh", "prompts/logistics_zh"):
        shutil.copytree(ROOT / folder, root / folder, dirs_exist_ok=True)
    lines = RECIPE.read_text(encoding="utf-8").splitlines(keepends=True)
    path = root / "recipes" / RECIPE.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(x for x in lines if not x.lstrip().startswith("choices_file:")), encoding="utf-8")
    return path


def trained(name: str, labelled: Path, limit: int, recipe: Path = RECIPE) -> Path:
    """The cpu profile's student trained under `recipe` on `labelled`, and scored under the shipped recipe (its
    prompt, closed sets and guided decoding, as every other student) on the first `limit` records of each test
    file; the folder holding that evaluation (every step resumes or is reused)."""
    run = WORK / f"student-{name}"
    settings = ["--profile", "cpu", f"eval.limit={limit}", *EAGER]
    xtk("prepare", str(recipe), "--run", str(run), *settings, "--labelled", str(labelled))
    for stage in ("train", "merge"):
        xtk(stage, str(recipe), "--run", str(run), *settings)
    if recipe == RECIPE:
        xtk("eval", str(RECIPE), "--run", str(run), *settings, "--model", "student")
        return run
    scored_in = WORK / f"student-{name}-scored"
    xtk("eval", str(RECIPE), "--run", str(scored_in), *settings, "--model", str(run / "merged"), "--name", "student",
        "--prompt", "student")
    return scored_in


def scored(recipe, run: Path) -> dict[str, bool]:
    """{test file:id: exact} of a run's student evaluation over every test file."""
    out = {}
    for test in recipe.data.test:
        for r in read_jsonl(run / "eval" / f"student-{Path(test).stem}" / "predictions.jsonl"):
            out[f"{Path(test).stem}:{r['id']}"] = bool(r["exact"])
    return out


def paired(first: dict[str, bool], second: dict[str, bool]) -> dict:
    """first against second on the records both were scored on: McNemar's exact test and a paired bootstrap of
    the difference in exact match; "beats" ("below") only where McNemar shows first ahead (behind) at the 5% level."""
    from toolkit.maths.ranking import Evaluation, discordant, mcnemar, paired_difference, verdict

    both, b, c = discordant(first, second)

    def mean(units: list) -> float:
        return sum(units) / len(units)

    diff = paired_difference(Evaluation([first[k] for k in both], mean), Evaluation([second[k] for k in both], mean))
    p = mcnemar(b, c)
    return {"records": len(both), "difference": diff, "first_only_right": b, "second_only_right": c,
            "p_mcnemar": round(p, 4), "verdict": verdict(p < ALPHA and b > c, p < ALPHA and c > b)}


def earlier_parts() -> dict[str, str]:
    """{part of the results: when its folder was last written} for each part an earlier invocation left under
    WORK (this one reuses it); empty when everything is made by this invocation."""
    import datetime

    folders = {"teacher": "teacher", "gate": "gate", "labels, votes 1": "label-1", "labels, votes 3": "label-3",
               "synth": "synth", **{f"student {k}": f"student-{k}" for k in SETS},
               **{f"student {k} scored": f"student-{k}-scored" for k in OPEN_SETS}}
    return {part: datetime.datetime.fromtimestamp((WORK / f).stat().st_mtime).isoformat(timespec="seconds")
            for part, f in folders.items() if (WORK / f).exists()}


def made_by(earlier: dict[str, str], here: dict) -> dict:
    """Which invocation made each part of the file, in recipe_cpu's form: "one_run" only when this invocation
    made every part, from a clean tree."""
    made = {part: {"commit": None, "finished": at, "this_invocation": False} for part, at in earlier.items()}
    return {"made_by": made, "one_run": not made and here["git"]["dirty"] is False}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher-records", type=int, default=1500,
                    help="gold records of the shipped pool the teacher is trained on")
    ap.add_argument("--pool", type=int, default=400, help="strings the teacher labels and the students train on")
    ap.add_argument("--limit", type=int, default=150, help="records of each test file the students are scored on")
    args = ap.parse_args()

    from toolkit.task.recipe import load_recipe
    from toolkit.task.scoring import compute_metrics

    recipe = load_recipe(RECIPE, "cpu")
    earlier = earlier_parts()
    WORK.mkdir(parents=True, exist_ok=True)
    model = teacher_model(args.teacher_records)
    gold_rows = fresh_pool(args.pool)
    write_jsonl(WORK / "gold.jsonl", gold_rows)
    write_jsonl(WORK / "pool.jsonl", [{"id": r["id"], "text": r["text"]} for r in gold_rows])
    gold = {r["id"]: r["label"] for r in gold_rows}

    key = {"DASHSCOPE_API_KEY": "local"}  # a local server takes any key
    server, url = serve(model, WORK / "vllm-serve.log")
    try:
        teacher = [f"teacher.base_url={url}", "teacher.model=teacher", "teacher.enable_thinking=null",
                   f"teacher.api_key_env={next(iter(key))}", f"prompts.teacher={recipe.prompts.student}",
                   "teacher.concurrency=8", f"teacher.max_tokens={recipe.eval.max_new_tokens}"]
        gate_run = WORK / "gate"
        gate_exit = xtk("run", str(RECIPE), "--profile", "cpu", "--run", str(gate_run), "--only", "teacher_gate",
                        *teacher, env=key, check=False)
        # the pool is labelled whatever the gate said (what it would have stopped is measured): no second gate
        labels = ("label", str(RECIPE), "--profile", "cpu", "--input", str(WORK / "pool.jsonl"), *teacher,
                  "teacher.gate.records=0")
        xtk(*labels, "--out", str(WORK / "label-1"), env=key)
        xtk(*labels, "--out", str(WORK / "label-3"), "--votes", "3", f"teacher.temperature={VOTE_TEMPERATURE}", env=key)
        examples = WORK / "synth-examples.jsonl"
        write_jsonl(examples, [{"text": r["text"]} for r in gold_rows[:10]])
        synth_exit = xtk("synth", str(RECIPE), "--profile", "cpu", "--examples", str(examples), "--n", str(SYNTH_N),
                         "--out", str(WORK / "synth"), *teacher, env=key, check=False)
    finally:
        stop(server)

    gate = json.loads((gate_run / "manifest.json").read_text(encoding="utf-8"))["stages"]["teacher_gate"]
    sets = label_sets(recipe, gold_rows)
    by_answer = {r["id"]: r["label"] for r in sets["b"]}
    teacher_vs_gold = compute_metrics(recipe, [{"parsed": by_answer.get(i), "gold": g} for i, g in gold.items()])
    students, exact = {}, {}
    for name, rows in sets.items():
        path = write_jsonl(WORK / f"set-{name}.jsonl", [{"id": r["id"], "text": r["text"], "label": r["label"]}
                                                         for r in rows])
        run = trained(name, path, args.limit, open_recipe() if name in OPEN_SETS else RECIPE)
        exact[name] = scored(recipe, run)
        labels_right = sum(r["label"] == gold[r["id"]] for r in rows)
        students[name] = {"trained_on": SETS[name], "rows": len(rows), "rows_equal_to_gold": labels_right,
                          "exact_match": round(sum(exact[name].values()) / len(exact[name]), 4),
                          "records": len(exact[name])}
    # the folder's labels by reason (the journal), not only those this invocation's `xtk label` asked for
    summaries = {k: json.loads((WORK / k / "label_summary.json").read_text(encoding="utf-8"))["journal"]
                 for k in ("label-1", "label-3")}
    made = made_by(earlier, {"git": git_state()})
    synth = WORK / "synth"
    result = {
        **provenance(made["one_run"]), "made_by": made["made_by"],
        "recipe": "logistics_zh", "profile": "cpu", "pool": args.pool, "limit_per_test_file": args.limit,
        "seed": SEED, "teacher": {"model": str(model.relative_to(ROOT)), "trained": trained_model(model),
                                  "served_by": "python -m vllm.entrypoints.openai.api_server",
                                  "trained_on_gold_records": args.teacher_records,
                                  "prompt": str(recipe.prompts.student)},
        "gate": {"exit": gate_exit, **{k: gate.get(k) for k in ("verdict", "n", "test_file", "exact_match",
                                                                "fields", "reasons")}},
        "labelling": {"votes_1": summaries["label-1"], "votes_3": summaries["label-3"]},
        "teacher_vs_gold": {"exact_match": teacher_vs_gold["exact_match"],
                            "fields": {f: m["value"] for f, m in teacher_vs_gold["fields"].items()},
                            "json_parse_rate": teacher_vs_gold["json_parse_rate"]},
        "students": students,
        "paired": {f"{x} vs {y}": {"question": q, **paired(exact[x], exact[y])} for x, y, q in PAIRS},
        "synth": {"exit": synth_exit,
                  "diversity": json.loads((synth / "diversity.json").read_text(encoding="utf-8"))
                  if (synth / "diversity.json").is_file() else None,
                  "kept": len(load_journal(synth / "smoke.jsonl")),
                  "removed": len(load_journal(synth / "removed.jsonl"))},
    }
    result["goal"] = {"(c) beats (b) by McNemar at the 5% level": result["paired"]["c vs b"]["verdict"] == "beats"}
    OUT.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(OUT)


if __name__ == "__main__":
    main()
