"""Commands that put a run's student to work: `predict` (a file of texts), `serve` (HTTP) and `export` (a GGUF
file scored against the merged student)."""

from __future__ import annotations

import json
import time
from contextlib import suppress
from pathlib import Path

from toolkit.cli.resolve import console, open_to_use, run_recipe
from toolkit.deploy.export import run_export
from toolkit.deploy.predict import check_out, local_answerer, predict_role, ray_answerer, read_texts, run_predict, \
    student_backend
from toolkit.deploy.replicas import ray_serving
from toolkit.deploy.serve import Limits, make_app, server
from toolkit.io.errors import StageError
from toolkit.io.streams import stdout_for_results
from toolkit.run.identity import predict_key


def engine_log(args, run: Path, command: str) -> Path | None:
    """Where the engine's output (whatever reaches stdout: toolkit/io/streams.py) goes: RUN/COMMAND.log where
    the run folder exists, else (or with -v) stderr."""
    return None if args.verbose or not run.is_dir() else run / f"{command}.log"


def cmd_predict(args) -> None:
    if args.engine != "ray" and (args.address or args.replicas):
        raise StageError("--address and --replicas go with --engine ray")
    recipe, run = run_recipe(args)  # not its training data: predict_role checks what answering needs
    out = check_out(args.out)  # before the model loads: a wrong suffix is a usage error, not minutes lost
    rows = read_texts(args.input, args.text_column, args.id_column, max_chars=recipe.data.max_input_chars)
    r = predict_role(recipe, args.model, run)
    with stdout_for_results(engine_log(args, run, "predict")) as results:
        if args.engine == "ray":
            summary = run_predict(recipe, rows, args.out, predict_key(recipe, r),
                                  ray_answerer(recipe, r, args.address, args.replicas), results)
        else:
            backend = student_backend(recipe, r)
            try:
                summary = run_predict(recipe, rows, args.out, predict_key(recipe, r),
                                      local_answerer(recipe, backend, r), results)
            finally:
                backend.close()
        if out:
            print(json.dumps(summary, ensure_ascii=False, indent=2), file=results)
        else:  # stdout holds the rows only
            console.print_json(data=summary)


def cmd_serve(args) -> None:
    if args.engine != "ray" and (args.address or args.replicas):
        raise StageError("--address and --replicas go with --engine ray")
    recipe, run = run_recipe(args)  # not its training data: predict_role checks what answering needs
    r = predict_role(recipe, args.model, run)
    limits = Limits(max_records=args.max_records, read_seconds=args.read_timeout, queue_seconds=args.queue_timeout,
                    drain_seconds=args.drain_timeout)
    with stdout_for_results(engine_log(args, run, "serve")):
        if args.engine == "ray":
            with suppress(KeyboardInterrupt), \
                    ray_serving(recipe, r, limits, args.host, args.port, args.address, args.replicas) as n:
                console.print(f"serve: {r.model}, {n} replicas on Ray Serve, on http://{args.host}:{args.port} "
                              "(POST /extract, GET /health)")
                while True:  # until SIGTERM or Ctrl-C (toolkit.io.signals raises them here)
                    time.sleep(3600)
            return
        backend = student_backend(recipe, r, online=True)
        try:
            console.print(f"serve: {r.model} on http://{args.host}:{args.port} (POST /extract, GET /health)")
            # uvicorn, stopped by SIGTERM or Ctrl-C after draining, raises that signal again: the server stopped
            # as asked, so it ends here as uvicorn.run ends it, not as an interrupted command (exit 0, no resume)
            with suppress(KeyboardInterrupt):
                server(make_app(recipe, backend, r, limits), args.host, args.port, limits).run()
        finally:
            backend.close()


def cmd_export(args) -> int:
    with open_to_use(args) as ctx:
        result = run_export(ctx, args.quant or ctx.recipe.export.quant, args.model, args.accept_drop,
                            args.parity_full)
    parity = result.record["parity"]
    verdict, overall, sample = parity["verdict"], parity["all"], parity["sample"]
    diff = overall["exact_match_difference"]
    print(f"{result.gguf}\n{result.folder / 'Modelfile'}\n{result.folder / 'export.json'}")
    scope = (f"all {sample['of']}" if sample["records"] == sample["of"] else
             f"{sample['records']} of {sample['of']} (a sample, seed {sample['seed']}; --parity-full for all)")
    console.print(f"parity on {scope} test records: exact match "
                  f"{100 * overall['exported']['exact_match']:.1f}% exported vs "
                  f"{100 * overall['student']['exact_match']:.1f}% student, difference "
                  f"{100 * diff['value']:+.1f} points [{100 * diff['ci95'][0]:+.1f}, {100 * diff['ci95'][1]:+.1f}], "
                  f"McNemar p={overall['mcnemar_p']}", highlight=False)
    if verdict["within"]:
        return 0
    if verdict["ok"]:
        more = "--parity-full or more test records" if sample["records"] < sample["of"] else "more test records"
        console.print(f"the exported model loses {100 * verdict['drop']:.1f} points of exact match on these records, "
                      f"more than export.max_drop ({100 * verdict['max_drop']:.1f}), but McNemar's test does not show "
                      f"a drop (p={overall['mcnemar_p']}): too few records disagree to tell it from chance (judge it "
                      f"on {more}); kept", highlight=False)
        return 0
    console.print(f"[bold red]WARNING: the exported model loses {100 * verdict['drop']:.1f} points of exact match, "
                  f"more than export.max_drop ({100 * verdict['max_drop']:.1f}), a drop McNemar's test shows; see "
                  f"{result.folder / 'export.json'}[/]"
                  + ("" if args.accept_drop else " (exit 1; --accept-drop keeps it anyway)"), highlight=False)
    return 0 if args.accept_drop else 1
