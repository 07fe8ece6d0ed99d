"""The measured tables of README.md and docs/*.md, generated from benchmarks/results/*.json so that no figure is
typed by hand. A table stands between marker comments,

    <!-- table:NAME -->
    ... (written by this script)
    <!-- /table -->

and TABLES[NAME] renders it from its results file, with the file's provenance (commit, machine, date) above it
and, where the code it measured has changed since (benchmarks/provenance.py: stale), the word **stale**. Every
verdict of a paired test is computed here from its p-value (or interval) and the sign of the difference, never
read from the file.

    .venv/bin/python benchmarks/tables.py           # rewrite every table block in place
    .venv/bin/python benchmarks/tables.py --check   # exit 1 naming each block that differs from its file

After a benchmark writes a new results file, run the first and read the prose around each table again: the
words are not regenerated. tests/test_docs.py runs the check, and `python -m benchmarks.check` checks the files.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance as origin  # noqa: E402  (benchmarks/provenance.py; run as a script, this folder is not a package)
import teacher_noise_cpu as teacher_noise  # noqa: E402  (its arms and pairs: a file made before an arm lacks it)
from toolkit.deploy.export import verdict as export_verdict  # noqa: E402
from toolkit.model.models import EMBEDDED  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
BLOCK = re.compile(r"(<!-- table:([\w-]+) -->\n)(.*?)(<!-- /table -->)", re.S)
ALPHA = 0.05  # every verdict below is at the 5% level
STALE = "**Stale**: its script or the code it runs changed after that commit (`python -m benchmarks.check` lists how)."
STALE_KEY = "_stale"  # set by render(), from git: no results file has it
FLOW_MINUTES = 60  # `bash sft.sh` on the cpu profile within the hour (#43)
LEGACY = "Legacy: not known to be one run (written before results files said so)."


# --- formatting --------------------------------------------------------------------------------------------

def met(ok: bool) -> str:
    """A goal's verdict, as every goals line writes it."""
    return f"**{'met' if ok else 'not met'}**"


def pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}"


def ci(interval) -> str:
    lo, hi = interval
    return f"[{100 * lo:.0f}–{100 * hi:.0f}]"


def num(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def rate(x: float) -> str:
    """Records a second, to about three figures."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def points(diff: dict) -> str:
    """A paired difference in points with its interval: "+1.5 [+0.2, +2.8]"."""
    lo, hi = diff["ci95"]
    return f"{100 * diff['value']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def provenance(name: str, data: dict) -> str:
    git, machine = data["git"], data["machine"]
    changed = git.get("dirty_files") or []
    tree = "clean tree" if not git["dirty"] else "with uncommitted changes" + (
        f": {', '.join(changed)}" if 0 < len(changed) <= 3 else "")  # a few named, so a stray log reads as one
    line = (f"From `benchmarks/results/{name}.json`: commit {git['commit'][:7]} ({tree}), {machine['cpu_model']}, "
            f"{machine['cpus_usable']} cores, {data['date'][:10]}.")
    start = (data.get("started") or {}).get("git")
    if start and (start["commit"], start["dirty"]) != (git["commit"], git["dirty"]):
        line += (f" The tree changed during the run: it started at {(start['commit'] or 'no commit')[:7]} "
                 f"({'with uncommitted changes' if start['dirty'] else 'clean tree'}).")
    if data[STALE_KEY]:
        line += " " + STALE
    if "one_run" not in data:
        return line + " " + LEGACY
    if "made_by" not in data:  # a file that does not say which run made each stage
        return line + (" Written by one run." if data["one_run"] else " Not known to be one run.")
    if data["one_run"]:
        return line + " Every stage was made by this one run."
    reused = [f"{stage} ({m['commit'] or 'commit unknown'}, {m['finished'][:10]})" for stage, m in data["made_by"].items()
              if not (m["this_invocation"] and m["commit"] and git["commit"].startswith(m["commit"]))]
    return line + f" Not one run: reused {', '.join(reused)}."


def verdict(p: float, difference: float) -> str:
    """A paired test's reading, from its p-value and the sign of the difference (first minus second)."""
    if p < ALPHA and difference:
        return f"shown {'better' if difference > 0 else 'worse'} at 5%"
    return "not shown at 5%"


def interval_verdict(ci95) -> str:
    """The same reading from a paired bootstrap's 95% interval of the difference: shown where it excludes 0."""
    lo, hi = ci95
    return "shown better at 5%" if lo > 0 else "shown worse at 5%" if hi < 0 else "not shown at 5%"


def p_value(p: float) -> str:
    """As the file rounds it (4 places): 0.0 is below 0.0001."""
    return "< 0.0001" if p == 0 else f"{p:g}"


def versus_baseline(d: dict) -> str:
    """recipe_cpu.py's `student_vs_baseline`, one line a test file: the goal's own test and McNemar's on whole
    answers, each with its verdict."""
    lines = []
    for test, v in d.get("student_vs_baseline", {}).items():
        em, diff = v["exact_match"], v["difference"]
        right = em["student_only_right"] - em["rules_only_right"]
        mcnemar = (f"McNemar's exact test on whole answers ({em['student_only_right']} right only for the student, "
                   f"{em['rules_only_right']} only for the baseline), p {p_value(em['p_mcnemar'])}: "
                   f"**{verdict(em['p_mcnemar'], right)}**")
        if v["metric"] == "whole-record exact match":  # McNemar is the headline's own test
            lines.append(f"- `{test}.jsonl`, {v['records']} records: exact match {points(diff)} points; {mcnemar}.")
        else:
            lines.append(f"- `{test}.jsonl`, {v['records']} records: {v['metric']} {points(diff)} points, paired "
                         f"bootstrap ({v['bootstrap']} resamples): **{interval_verdict(diff['ci95'])}**; {mcnemar}.")
        for field, f in d.get("student_vs_baseline_by_field", {}).get(test, {}).items():
            em = f["exact_match"]
            lines.append(f"  - {field} alone: {pct(f['student'])}% right against {pct(f['rules'])}%; McNemar's exact "
                         f"test ({em['student_only_right']} right only for the student, {em['rules_only_right']} only "
                         f"for the baseline), p {p_value(em['p_mcnemar'])}: **"
                         f"{verdict(em['p_mcnemar'], em['student_only_right'] - em['rules_only_right'])}**.")
    return ("\n\nThe student against the baseline, paired on the same records (the goal \"the student beats the "
            "baseline\" is the first test):\n" + "\n".join(lines)) if lines else ""


# --- one renderer a table ----------------------------------------------------------------------------------

def distill_cpu(d: dict) -> str:
    fields = list(d["evaluations"]["student-test"]["fields"])
    names = {"base": "base model, detailed prompt", "student": "**fine-tuned student**",
             "resolved": "student + resolver (not the student alone)", "rules": "rule baseline"}
    rows = []
    for test in ("test", "test_unseen"):
        for role, label in names.items():
            e = d["evaluations"].get(f"{role}-{test}")
            if e:
                rows.append([label, f"{test}.jsonl", e["n"], f"{pct(e['exact_match'])} {ci(e['exact_match_ci95'])}",
                             pct(e["json_parse_rate"]), *(pct(e["fields"][f]) for f in fields)])
    minutes = ", ".join(f"{k} {v}" for k, v in d["stage_minutes"].items() if v >= 1)
    return (f"{provenance('distill_cpu', d)} {d['recipe']} `--profile {d['profile']}`, {num(d['train_records'], 0)} "
            f"training rows; whole flow {d['total_minutes']} min ({minutes}); fit: \"{d['fit']}\".\n\n"
            + table(["model", "test file", "records", "exact match % [95% CI]", "JSON valid %", *fields], rows)
            + versus_baseline(d) + "\n\n" + goals(d))


def distill_cpu_by_place(d: dict) -> str:
    part = d["by_what_the_text_names"]
    kinds = [k for k in part["test"] if "training" not in k]
    rows = []
    for kind in kinds:
        cells = [kind]
        for test in ("test", "test_unseen"):
            for key in (kind, f"{kind}, county in training", f"{kind}, county not in training"):
                s = part[test].get(key)
                cells.append("—" if not s or not s["n"] else f"{s['n']}, {pct(s['value'])}")
        rows.append(cells)
    return (provenance("distill_cpu", d) + " Student exact match by what a test string names: records, exact %.\n\n"
            + table(["the string names", "test.jsonl", "county in training", "county not in training",
                     "test_unseen.jsonl", "county in training", "county not in training"], rows))


def distill_cpu_curve(d: dict) -> str:
    if "curve" not in d:  # the script was stopped after the flow's figures: they stand, the curve was not scored
        return f"{provenance('distill_cpu', d)} This run scored no earlier checkpoints: no learning curve.\n"
    c = d["curve"]
    rows = []
    for a, b in zip(c["points"]["test"], c["points"]["test_unseen"]):
        rows.append([num(a["rows"], 0), f"`{a['checkpoint']}`", f"{pct(a['exact_match'])} {ci(a['exact_match_ci95'])}",
                     f"{pct(b['exact_match'])} {ci(b['exact_match_ci95'])}",
                     *(f"{pct(a['fields'][f])} / {pct(b['fields'][f])}" for f in ("province", "city", "specific_location"))])
    fits = "\n".join(f"- `{t}.jsonl`: +{pct(f['per_doubling'])} points per doubling; {pct(f['goal'], 0)}% at "
                     f"~{num(f['rows_for_goal'], 0)} rows, ~{f['train_minutes_for_goal']} min of training here"
                     for t, f in c["fit"].items())
    return (f"{provenance('distill_cpu', d)} {c['minutes']} min on top of the flow, "
            f"{c['seconds_per_training_row']} s a training row.\n\n"
            + table(["rows seen", "checkpoint", "test.jsonl exact % [95% CI]", "test_unseen.jsonl exact % [95% CI]",
                     "province (test / unseen)", "city (test / unseen)", "specific_location (test / unseen)"], rows)
            + "\n\nA straight line through the points against log(rows), at this training's seconds a row (an extrapolation "
            "from mid-schedule checkpoints: read it as an order of magnitude):\n" + fits)


def levers_cpu(d: dict) -> str:
    rows = []
    for name, v in d["variants"].items():
        t, u = v["scores"]["test"], v["scores"]["test_unseen"]
        rows.append([name, v["what"], num(v["train_rows"], 0), v["train_minutes"], v["seconds_per_training_row"],
                     f"{pct(t['exact_match'])} {ci(t['exact_match_ci95'])}",
                     f"{pct(u['exact_match'])} {ci(u['exact_match_ci95'])}",
                     f"{t['county_alone']['k']}/{t['county_alone']['n']} / {u['county_alone']['k']}/{u['county_alone']['n']}",
                     f"{pct(t['fields']['city'])} / {pct(u['fields']['city'])}",
                     f"{pct(t['fields']['province'])} / {pct(u['fields']['province'])}",
                     f"{rate(t['records_per_s'])} / {rate(u['records_per_s'])}"])
    return (provenance("levers_cpu", d) + "\n\n"
            + table(["variant", "what changes", "training rows", "training min", "s a row", "test.jsonl exact % [95% CI]",
                     "test_unseen.jsonl exact % [95% CI]", "county alone (test / unseen)", "city (test / unseen)",
                     "province (test / unseen)", "records/s (test / unseen)"], rows))


def train_speed(d: dict) -> str:
    top, goals = d["ceiling"]["float32"], d["goals"]
    rows = [[name, r["seconds_per_step"], pct(r["padding_share"]), r["tokens_per_s"],
             f"{r['ratio_vs_swift_defaults']:.2f}", r["train_gflop_per_s"], r["executed_gflop_per_s"],
             " / ".join(r["matmul_dtypes"].values()), f"{r['executed_fraction_of_ceiling']:.2f}"]
            for name, r in d["results"].items() if "tokens_per_s" in r]
    at = top["at"]
    return (f"{provenance('train_speed', d)} {d['sequences_measured_per_variant']} sequences a variant, "
            f"~{d['tokens_per_sequence']['mean']:.0f} tokens a sequence. The ceiling, this CPU's best sustained fp32 "
            f"matmul at the model's shapes in the same run: **{top['gflop_per_s']} GFLOP/s** ({at['procs']} "
            f"process(es) × {at['threads_each']} thread(s), {at['rows']} rows); bf16: "
            f"{d['ceiling']['bfloat16']['gflop_per_s']} GFLOP/s. Every fraction at most 1: "
            f"{'yes' if d['fractions_at_most_1'] else '**no**'}. Goals: ≥ {goals['ratio_vs_swift_defaults']}× the "
            f"defaults, ≥ {goals['fraction_of_ceiling']:.0%} of the ceiling.\n\n"
            + table(["variant", "s/step", "padding %", "tokens/s", "vs defaults", "GFLOP/s by the rule",
                     "executed GFLOP/s", "matmuls in (body / output layer)", "of the ceiling"], rows))


def label_faults(d: dict) -> str:
    t, s = d["totals"], d["settings"]
    return (f"{provenance('label_faults', d)} {num(s['records'], 0)} records, {s['faults']} with a fault "
            f"({len(s['fault_modes'])} modes), {d['kills_done']} SIGKILLs, {d['wall_s']} s.\n\n"
            + table(["lost", "duplicated", "paid twice", "made-up value accepted", "last run's exit",
                     "API key found in outputs"],
                    [[t["lost"], t["duplicated"], t["paid_twice"], t["madeup_accepted"], d["last_exit_code"],
                      ", ".join(d["api_key_found_in"]) or "none"]]))


def label_throughput(d: dict) -> str:
    rows = [[c, rate(r["records_per_s"]), num(r["ideal_records_per_s"], 0), f"{r['fraction_of_ideal']:.2f}"]
            for c, r in d["results"].items()]
    return (f"{provenance('label_throughput', d)} Test teacher latency {d['latency_s'] * 1000:.0f} ms.\n\n"
            + table(["concurrency", "records/s", "ideal (concurrency / latency)", "fraction of ideal"], rows)
            + (f"\n\nGoal, 80% of ideal at concurrency 32: {met(at32['fraction_of_ideal'] >= 0.8)}."
               if (at32 := d["results"].get("32")) else ""))


EVAL_SPEEDUP = 5  # vLLM, as `xtk eval` runs it, against a one-record-at-a-time loop


def eval_speed(d: dict) -> str:
    same = any("outputs_identical_to_xtk_eval" in r for r in d["results"].values())  # files before it have none
    rows = [[name, rate(r["records_per_s"]), f"{r['ratio_vs_naive_loop']}x", f"{r['ratio_vs_transformers_engine']}x",
             f"{r['load_s']} s", f"{r['generate_s']} s", f"{r['outputs_identical_to_naive']} of {d['records']}",
             *([f"{r['outputs_identical_to_xtk_eval']} of {d['records']}"] if same else [])]
            for name, r in d["results"].items()]
    model = d["model"][d["model"].index("runs/"):] if "runs/" in d["model"] else d["model"]  # not this machine's path
    return (f"{provenance('eval_speed', d)} {d['records']} records, greedy, at most {d['max_new_tokens']} new tokens, "
            f"batch {d['batch_size']}. `{model}` with `{d['prompt']}`, {d['threads']} threads for "
            "every engine.\n\n"
            + table(["backend", "records/s", "vs naive loop", "vs batched transformers", "model load", "generation",
                     "greedy outputs identical to the naive loop's",
                     *(["identical to xtk eval's"] if same else [])], rows)
            + "".join(f"\n\nGoal: {name} ≥ {EVAL_SPEEDUP:g}x the naive loop: "
                      f"{met(r['ratio_vs_naive_loop'] >= EVAL_SPEEDUP)} ({r['ratio_vs_naive_loop']}x)."
                      for name, r in d["results"].items() if "as xtk eval runs it" in name))


ROLE_NAMES = {"base": "base, zero-shot, detailed prompt (generated)", "likelihood": "base, zero-shot, option likelihood",
              "student": "**fine-tuned student, short prompt**", "head": "fine-tuned classification head",
              "rules": "the recipe's baseline (`rules`)"}


def recipe_cpu(name: str) -> Callable[[dict], str]:
    """A recipe_cpu.py results file: its headline metric per evaluation, and entity P/R/F1 or macro-F1."""

    def render(d: dict) -> str:
        rows = []
        order = list(ROLE_NAMES)
        tests = list(dict.fromkeys(key.rsplit("-", 1)[1] for key in d["evaluations"]))
        for key, e in sorted(d["evaluations"].items(), key=lambda kv: order.index(kv[0].rsplit("-", 1)[0])):
            role, test = key.rsplit("-", 1)
            # a recipe with several test files: which one each row scored
            cells = [ROLE_NAMES.get(role, role), *([f"`{test}.jsonl`"] if len(tests) > 1 else []), e["n"]]
            if "entities" in e:
                ent = e["entities"]
                cells += [f"{pct(ent['overall']['f1'][0])} {ci(ent['overall']['f1'][1])}",
                          pct(ent["overall"]["precision"][0]), pct(ent["overall"]["recall"][0]),
                          *(pct(ent[f]["f1"][0]) for f in ent if f != "overall")]
            elif "macro_f1" in e:
                (field, (f1, interval)), = e["macro_f1"].items()
                cells += [f"{pct(f1)} {ci(interval)}", pct(e["exact_match"])]
            else:
                cells += [f"{pct(e['exact_match'])} {ci(e['exact_match_ci95'])}", *map(pct, e["fields"].values())]
            rows.append(cells + [pct(e["json_parse_rate"]), rate(e["records_per_s"])])
        first = next(iter(d["evaluations"].values()))
        if "entities" in first:
            header = ["entity F1 % [95% CI]", "precision %", "recall %",
                      *(f"{f} F1" for f in first["entities"] if f != "overall")]
        elif "macro_f1" in first:
            header = ["macro-F1 % [95% CI]", "accuracy %"]
        else:
            header = ["exact match % [95% CI]", *(f"{f} %" for f in first["fields"])]
        minutes = ", ".join(f"{k} {v}" for k, v in d["stage_minutes"].items() if v >= 1)
        return (f"{provenance(name, d)} {d['recipe']} `--profile {d['profile']}`, {num(d['train_records'], 0)} "
                f"training rows; whole run {d['total_minutes']} min ({minutes}); fit: \"{d['fit']}\".\n\n"
                + table(["approach", *(["test file"] if len(tests) > 1 else []), "records", *header, "JSON valid %",
                         "records/s"], rows) + versus_baseline(d))

    return render


def bakeoff_cpu(d: dict) -> str:
    b = d["bakeoff"]
    rows = []
    for task in b["tasks"]:
        for s in b["students"]:
            sc, pair = b["scores"][task["name"]][s["name"]], d["pairs"][task["name"]][s["name"]]
            rows.append([task["name"], s["name"], f"{pct(sc['fine_tuned'])} ({b['ranks']['fine-tuned'][task['name']][s['name']]:g})",
                         pct(sc["base_plain"]), pct(sc["base_guided"]),
                         f"{pct(sc['tunability'])} ({b['ranks']['tunability'][task['name']][s['name']]:g})",
                         pair["train_rows"], pair["stages"]["train"], pair["total"]])
    means = "; ".join(f"{ranking}: " + ", ".join(f"{s} {m['value']:.2f} [{m['ci95'][0]:.2f}–{m['ci95'][1]:.2f}]"
                                                 for s, m in students.items())
                      for ranking, students in b["mean_rank"].items())
    metrics = "; ".join(f"{t['name']}: {t['metric']}" for t in b["tasks"])
    return (f"{provenance('bakeoff_cpu', d)} `{d['spec']}`, {d['total_minutes']} min of stages "
            f"({d['wall_minutes_this_invocation']} min wall). Metrics: {metrics}. Ranks in brackets.\n\n"
            + table(["task", "student", "fine-tuned %", "base, free %", "base, guided %", "tunability", "training rows",
                     "training min", "pair min"], rows)
            + f"\n\nMean rank over the tasks, 95% interval: {means}.")


def advise_memory(d: dict) -> str:
    # A fork shares its worker's pages; advise_memory.py leaves forks out of the sum, and so does the table.
    rows = [[p["role"], f"{p['peak_rss_gib']:.2f}", "no" if p["role"] == "fork of a worker" else "yes"]
            for p in d["processes"]]
    return (f"{provenance('advise_memory', d)} {d['what']}.\n\n"
            + table(["process", "peak RSS GiB", "in the sum"], rows)
            + f"\n\nSum of peaks **{d['measured_peak_gib']} GiB** (summed RSS at one moment peaked at "
            f"{d['measured_peak_of_summed_rss_gib']}), against advise's estimate **{d['estimate_gib']} GiB**: "
            f"{d['ratio_estimate_to_measured']} of it.")


def predict_cpu(d: dict) -> str:
    rows = [[label, rate(r["records_per_s"]), f"{r['seconds']:.0f} s", f"{r['wall_seconds']:.0f} s",
             f"{r['valid_pct']}"]
            for label, r in (("one process (`xtk predict`)", d["single_process"]),
                             ("local Ray cluster (`--engine ray`)", d["ray_local"]))]
    same = "identical" if d["outputs_identical"] else f"identical on {d['identical_rows']} of {d['records']} rows"
    return (f"{provenance('predict_cpu', d)} {d['recipe']} `--profile {d['profile']}` student, {d['records']} "
            f"records, batch {d['batch_size']}; outputs of the two runs: **{same}**.\n\n"
            + table(["engine", "records/s", "job seconds", "command wall seconds", "valid %"], rows))


ENGINE_NAMES = {"vllm": "vLLM, merged student", "llamacpp": "llama.cpp, GGUF"}
SERVE_P50_S, SERVE_P95_S = 1.5, 15.0  # at 1 and at 32 clients (#44)


def serve_load(d: dict) -> str:
    rows = []
    for name, e in d["engines"].items():
        off = e["offline_predict"]["records_per_s"]
        label = " ".join(filter(None, (ENGINE_NAMES[name], e["quant"])))
        for r in e["serve"].values():
            rows.append([label, str(r["clients"]),
                         rate(r["records_per_s"]), f"{r['records_per_s'] / off:.2f}×", f"{r['latency_p50_s']:.1f} s",
                         f"{r['latency_p95_s']:.1f} s", f"{r['answers_equal_predict']} of {r['records']}"])
    starts = "; ".join(f"{ENGINE_NAMES[n]}: load {e['offline_predict']['load_seconds']:.0f} s in predict, "
                       f"{e['start_to_first_answer_s']:.0f} s from `xtk serve`'s start to its first answer, offline "
                       f"predict **{rate(e['offline_predict']['records_per_s'])} records/s**"
                       for n, e in d["engines"].items())
    out = (f"{provenance('serve_load', d)} {d['recipe']} `--profile {d['profile']}` student, {d['records']} "
           f"records, one text a request to `POST /extract`, beside each engine's offline `xtk predict` of the same "
           f"records in the same run ({starts}).\n\n"
           + table(["engine", "concurrent clients", "records/s", "× offline predict", "latency p50", "latency p95",
                    "answers equal to predict's"], rows))
    for name, e in d["engines"].items():
        if p := e.get("profile"):
            out += (f"\n\nWhere a record's {p['ms_per_record']:.0f} ms go on {ENGINE_NAMES[name]} (offline, its "
                    f"own counters): prompt evaluation {p['prompt_eval_ms_per_record']:.0f} ms "
                    f"({p['prompt_tokens_per_record']:.0f} tokens; the system prompt's are reused from the record "
                    f"before), decoding {p['decode_ms_per_record']:.0f} ms ({p['decoded_tokens_per_record']:.0f} tokens "
                    f"at {p['decode_ms_per_token']} ms; the LM head is {pct(p['lm_head_share_of_weights_read_per_token'])}% "
                    f"of the weights each token reads), xtk's grammar check {p['grammar_check_ms_per_record']:.0f} ms, "
                    f"the rest (template, tokenising, parsing, Python) {p['rest_ms_per_record']:.0f} ms.")
    return out + "\n\n" + serve_goals(d)


def serve_goals(d: dict) -> str:
    """#44's goals, each verdict computed here from the figures."""
    said = []
    one = {n: e["serve"]["1"]["latency_p50_s"] for n, e in d["engines"].items() if "1" in e["serve"]}
    if one:
        best = min(one, key=one.get)
        said.append(f"p50 ≤ {SERVE_P50_S:g} s at 1 client ({ENGINE_NAMES[best]}, the faster there: {one[best]:.2f} s): "
                    f"{met(one[best] <= SERVE_P50_S)}")
    for n, e in d["engines"].items():
        if r := e["serve"].get("32"):
            ratio = r["records_per_s"] / e["offline_predict"]["records_per_s"]
            said.append(f"{ENGINE_NAMES[n]} at 32 clients, ≥ 1.0× its offline predict: {met(ratio >= 1)} "
                        f"({ratio:.2f}×), p95 ≤ {SERVE_P95_S:g} s: {met(r['latency_p95_s'] <= SERVE_P95_S)}"
                        f" ({r['latency_p95_s']:.1f} s)")
    differ = sum(r["records"] - r["answers_equal_predict"] for e in d["engines"].values() for r in e["serve"].values())
    said.append(f"every served answer equal to predict's: {met(not differ)} ({differ} differ)")
    return "Goals: " + "; ".join(said) + "."


def export_parity(d: dict) -> str:
    student = d["student"]["all"]
    rows = [["merged student (vLLM)", pct(student["exact_match"]), "—", "—", "—", "—", "—"]]
    for quant, e in d["exports"].items():
        a = e["all"]
        v = export_verdict(a, e["verdict"]["max_drop"])  # recounted from the file's figures, not its "ok"
        rows.append([f"GGUF {quant} (llama.cpp)", pct(a["exported"]["exact_match"]), points(a["exact_match_difference"]),
                     p_value(a["mcnemar_p"]), verdict(a["mcnemar_p"], a["only_exported_right"] - a["only_student_right"]),
                     f"{a['identical_answers']} of {a['exported']['n']}",
                     f"{'yes' if v['within'] else 'no'} (drop {100 * v['drop']:.1f}, allowed {100 * v['max_drop']:g})"])
    return (f"{provenance('export_parity', d)} logistics_zh `--profile {d['profile']}` student, "
            f"{student['n']} test records (both test files), each scored by the same scorer.\n\n"
            + table(["model", "exact match %", "difference, points [95% paired CI]", "McNemar p", "export vs student",
                     "answers identical to the student's", "within export.max_drop"], rows))



EXPORT_MINUTES = 15  # `xtk export` with its default parity check, start to verdict (#44)


def export_default(d: dict) -> str:
    sample, v = d["sample"], d["verdict"]
    return (f"{provenance('export_default', d)} `xtk export recipes/{d['recipe']}.yaml --profile {d['profile']} --format gguf` with "
            f"the recipe's defaults, after the flow: {d['quant']}, llama.cpp scoring a seeded sample of "
            f"{sample['records']} of the {sample['of']} test records beside the merged student: **{d['minutes']} min** "
            f"from start to verdict (exit {d['exit_code']}); exact match {pct(d['exact_match']['student'])} merged vs "
            f"{pct(d['exact_match']['exported'])} GGUF, {points(d['exact_match_difference'])} points, McNemar p "
            f"{p_value(d['mcnemar_p'])}: {'within' if v['within'] else 'over'} the allowed drop of "
            f"{100 * v['max_drop']:g} point{'' if v['max_drop'] == 0.01 else 's'}. Goal: the default check within {EXPORT_MINUTES} minutes: "
            f"{met(d['minutes'] <= EXPORT_MINUTES)}.")


def guided_llamacpp(d: dict) -> str:
    rows = []
    for model, m in d["models"].items():
        rate = {k: f"{m[k]['seconds_per_record']:.2f} s ({m[k]['ms_per_token']:.0f} ms)"
                for k in ("llama_cpp_python_grammar_sampler", "xtk_grammar_check", "free")}
        rows.append([f"{model} ({m['vocabulary']:,} tokens)", rate["llama_cpp_python_grammar_sampler"],
                     rate["xtk_grammar_check"], f"**{m['speedup_over_grammar_sampler']}×**", rate["free"],
                     f"{m['identical_guided_answers']} of {m['records']}", f"{100 * m['searched_share']:.1f}%"])
    return (f"{provenance('guided_llamacpp', d)} {d['recipe']} `--profile {d['profile']}`'s chats and JSON schema, "
            f"greedy to {d['max_new_tokens']} tokens, GGUF {d['quant']}, {m['threads']} threads, zero-shot models; "
            "a record's seconds (a token's milliseconds).\n\n"
            + table(["model (vocabulary)", "llama-cpp-python's grammar sampler", "xtk's grammar check", "speed-up",
                     "free decoding", "guided answers identical", "tokens whose best the grammar rejected"], rows))

def written_table(d: dict) -> str:
    """written_table.py: one student under the whole table and under each text's own schema, paired."""
    rows = []
    for test, t in d["tests"].items():
        v = t["written_vs_whole"]
        em = v["exact_match"]
        rows.append([f"`{test}.jsonl`", v["records"], f"{pct(t['whole']['exact_match'])} {ci(t['whole']['ci95'])}",
                     f"{pct(t['written']['exact_match'])} {ci(t['written']['ci95'])}", points(v["difference"]),
                     f"{em['written_only_right']} / {em['whole_only_right']}", p_value(em["p_mcnemar"]),
                     f"**{verdict(em['p_mcnemar'], em['written_only_right'] - em['whole_only_right'])}**"])
    student = d["models_scored"]["student"]
    return (f"{provenance('written_table', d)} The cpu student trained at commit {(student['train_commit'] or '?')[:7]}"
            f" (training key {(student['train_key'] or '?')[:8]}), not retrained, scored twice by `xtk eval` in this "
            "run.\n\n" + table(["test file", "records", "whole table: exact % [95% CI]",
                                 "each text's own: exact % [95% CI]", "difference, points", "right only per text / "
                                 "only whole", "McNemar p", "verdict"], rows))


def labels(journal: dict) -> str:
    """A label folder's counts: accepted, and the rejected by reason."""
    rejected = ", ".join(f"{n} {reason}" for reason, n in sorted(journal["rejected"].items(), key=lambda kv: -kv[1]))
    return f"{journal['accepted']} accepted, {sum(journal['rejected'].values())} rejected ({rejected or 'none'})"


NOT_MEASURED = "not yet measured"


def teacher_noise_pairs(d: dict, wanted: tuple[str, ...] | None = None) -> list[tuple[str, str, dict | None]]:
    """(pair, question, the file's test or None) for the file's pairs, then those teacher_noise_cpu.py makes
    that the file predates; only the `wanted` pairs where given."""
    pairs = [(pair, p["question"], p) for pair, p in d["paired"].items()]
    pairs += [(f"{x} vs {y}", q, None) for x, y, q in teacher_noise.PAIRS if f"{x} vs {y}" not in d["paired"]]
    return [p for p in pairs if wanted is None or p[0] in wanted]


def teacher_noise_cpu(d: dict) -> str:
    t, gate, vs = d["teacher"], d["gate"], d["teacher_vs_gold"]
    students = [[f"({k}) {s['trained_on']}", s["rows"], s["rows_equal_to_gold"], pct(s["exact_match"])]
                for k, s in d["students"].items()]
    students += [[f"({k}) {what}", "—", "—", NOT_MEASURED] for k, what in teacher_noise.SETS.items()
                 if k not in d["students"]]
    paired = [[pair, q, points(p["difference"]), f"{p['first_only_right']} / {p['second_only_right']}",
               p_value(p["p_mcnemar"]), verdict(p["p_mcnemar"], p["difference"]["value"])] if p else
              [pair, q, NOT_MEASURED, "—", "—", "—"] for pair, q, p in teacher_noise_pairs(d)]
    return (f"{provenance('teacher_noise_cpu', d)} Teacher: logistics_zh's cpu-profile student trained on "
            f"{t['trained_on_gold_records']:,} gold records, served by `{t['served_by']}`; exact match against the "
            f"generator's gold on the {d['pool']} fresh pool strings: {pct(vs['exact_match']['value'])}% (JSON parsed "
            f"{pct(vs['json_parse_rate']['value'])}%). Teacher gate on {gate['n']} test records: **{gate['verdict']}** "
            f"({pct(gate['exact_match']['value'])}% exact match). Labels of the pool (`xtk label`'s journal): "
            f"{labels(d['labelling']['votes_1'])}; with `--votes 3` at temperature 0.8: "
            f"{labels(d['labelling']['votes_3'])}. Students: the cpu profile, scored on "
            f"{d['limit_per_test_file']} records of each test file.\n\n"
            + table(["student trained on", "rows", "rows equal to gold", "exact match %"], students) + "\n\n"
            + table(["pair", "question", "difference, points [95% paired CI]", "only first / only second right",
                     "McNemar p", "first vs second"], paired)
            + f"\n\n`xtk synth` against the same server (its smoke batch, no `--yes`): {d['synth']['kept']} inputs kept, "
            f"{d['synth']['removed']} removed, exit {d['synth']['exit']}.")


def teacher_noise_headline(d: dict) -> str:
    """README's two figures of it: what the teacher's noise costs the student, and what the gate buys back."""
    pairs = teacher_noise_pairs(d, ("c vs b", "a vs b", "e vs c", "f vs c"))
    rows = [[q, f"({pair[0]}) vs ({pair[-1]})", *([points(p["difference"]), p_value(p["p_mcnemar"]),
             verdict(p["p_mcnemar"], p["difference"]["value"])] if p else [NOT_MEASURED, "—", "—"])]
            for pair, q, p in pairs]
    later = (f" A pair the file predates is {NOT_MEASURED}: `benchmarks/teacher_noise_cpu.py` measures it when "
             "re-run." if any(p is None for *_, p in pairs) else "")
    teacher, gate = pct(d["teacher_vs_gold"]["exact_match"]["value"]), d["gate"]
    return (f"{provenance('teacher_noise_cpu', d)} A student taught by a real LLM teacher ({teacher}% exact on its "
            f"{d['pool']} pool strings), scored on {d['students']['a']['records']} test records. The teacher gate, "
            f"before any pool was paid for: **{gate['verdict']}** ({pct(gate['exact_match']['value'])}% exact match on "
            f"{gate['n']} test records). (a) gold labels, (b) every teacher answer that parses, (c) the labels the "
            "gate accepts, (e) (b) drawn at random down to (c)'s rows, (f) (b) repaired by the recipe's table."
            f"{later}\n\n"
            + table(["", "students", "difference, points [95% paired CI]", "McNemar p", "first vs second"], rows))


def headline(d: dict) -> str:
    """README's one figure set: distill_cpu.json's whole-record exact match per model."""
    roles = (("base", "base model (Gemma 3 270M), zero-shot"), ("rules", "rule baseline"),
             ("student", "**fine-tuned student**"), ("resolved", "student + resolver"))
    rows = [[label, *(pct(d["headline"].get(f"{role}-{t}")) for t in ("test", "test_unseen"))]
            for role, label in roles if f"{role}-test" in d["headline"]]  # a file before tables had a resolver
    return (f"{provenance('distill_cpu', d)} `xtk run recipes/logistics_zh.yaml --profile cpu`, "
            f"{d['total_minutes']} min. Gemma 3 270M: {EMBEDDED['gemma3-270m'].weights}.\n\n"
            + table(["whole-record exact match %", "test.jsonl", "test_unseen.jsonl"], rows) + "\n\n" + goals(d))


def goals(d: dict) -> str:
    """The tutorial's goals, each verdict computed here from the figure: the student's exact match against each
    threshold the script set (its `goals` keys, "student >= 95% exact match on test"), and the flow's minutes
    against the hour (#43)."""
    said = []
    for key in d["goals"]:
        m = re.fullmatch(r"student >= (\d+)% exact match on (\w+)", key)
        got = d["headline"].get(f"student-{m.group(2)}") if m else None
        if got is not None:
            said.append(f"the student ≥ {m.group(1)}% exact match on `{m.group(2)}.jsonl`: "
                        f"{met(got >= int(m.group(1)) / 100)}")
    hour = d["total_minutes"] <= FLOW_MINUTES
    return (f"Goals: {'; '.join(said)}; the flow within {FLOW_MINUTES} minutes on this machine (set-up not counted): "
            f"{met(hour)} ({d['total_minutes']} min).")


TABLES: dict[str, tuple[str, Callable[[dict], str]]] = {
    "headline": ("distill_cpu", headline),
    "distill_cpu": ("distill_cpu", distill_cpu),
    "distill_cpu_by_place": ("distill_cpu", distill_cpu_by_place),
    "distill_cpu_curve": ("distill_cpu", distill_cpu_curve),
    "levers_cpu": ("levers_cpu", levers_cpu),
    "train_speed": ("train_speed", train_speed),
    "label_faults": ("label_faults", label_faults),
    "label_throughput": ("label_throughput", label_throughput),
    "eval_speed": ("eval_speed", eval_speed),
    "review_sentiment_zh_cpu": ("review_sentiment_zh_cpu", recipe_cpu("review_sentiment_zh_cpu")),
    "msra_ner_cpu": ("msra_ner_cpu", recipe_cpu("msra_ner_cpu")),
    "invoice_zh_cpu": ("invoice_zh_cpu", recipe_cpu("invoice_zh_cpu")),
    "bakeoff_cpu": ("bakeoff_cpu", bakeoff_cpu),
    "advise_memory": ("advise_memory", advise_memory),
    "predict_cpu": ("predict_cpu", predict_cpu),
    "serve_load": ("serve_load", serve_load),
    "export_parity": ("export_parity", export_parity),
    "guided_llamacpp": ("guided_llamacpp", guided_llamacpp),
    "export_default": ("export_default", export_default),
    "teacher_noise_cpu": ("teacher_noise_cpu", teacher_noise_cpu),
    "written_table": ("written_table", written_table),
    "teacher_noise_headline": ("teacher_noise_cpu", teacher_noise_headline),
}


def render(name: str, results: Path = RESULTS, stale: bool | None = None) -> str:
    """The block's text; `stale` None: ask git (benchmarks/provenance.py), where git cannot tell, not stale."""
    file, fn = TABLES[name]
    data = json.loads((results / f"{file}.json").read_text(encoding="utf-8"))
    if stale is None:
        stale = bool(origin.stale(file, data))
    return fn({**data, STALE_KEY: stale}) + "\n"


def update(path: Path, results: Path = RESULTS) -> tuple[str, list[str]]:
    """The file's text with every table block rendered afresh, and the names of the blocks that changed. Where git
    cannot tell whether a block's file is stale (a copy without history), the block keeps the word it has."""
    text, changed = path.read_text(encoding="utf-8"), []

    def block(m: re.Match) -> str:
        if m.group(2) not in TABLES:
            raise SystemExit(f"{path}: <!-- table:{m.group(2)} --> names no table; tables: {', '.join(TABLES)}")
        file = TABLES[m.group(2)][0]
        since = origin.stale(file, json.loads((results / f"{file}.json").read_text(encoding="utf-8")))
        body = render(m.group(2), results, STALE in m.group(3) if since is None else bool(since))
        if body != m.group(3):
            changed.append(m.group(2))
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(block, text), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs from its file")
    args = parser.parse_args(argv)
    stale = []
    for path in DOCS:
        text, changed = update(path)
        stale += [f"{path.relative_to(ROOT)}: table {name}" for name in changed]
        if changed and not args.check:
            path.write_text(text, encoding="utf-8")
    for line in stale:
        print(("differs from its results file: " if args.check else "rewrote ") + line)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
