"""predict: the student on new, unlabelled texts, through evaluation's own code path
(toolkit.evaluate.evaluation.extract).

Input: JSONL ({id, text}), CSV, TSV or Parquet (columns named by --text-column / --id-column; without an id
column a row's id is its line, or for Parquet its row number). Output: one row per input, in input order, as
JSONL or Parquet (by the --out suffix): the id, each field (null where the answer has none), `problems` (what is
wrong with the answer; [] when it is valid) and `raw` (what the model said). Every answer is appended to
OUT.journal as it comes, so a killed run resumes where it stopped and never answers a record twice; the output
file is written whole at the end, and the journal removed. `--out -` writes the rows to stdout as JSON lines,
in input order as they are answered, with no journal (there is no file to resume).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import TextIO

from toolkit.data.prepare import text_problem
from toolkit.deploy.cluster import ray_cluster
from toolkit.evaluate.evaluation import extract
from toolkit.flow.check import check_backend
from toolkit.io.errors import DataError, StageError
from toolkit.io.journal import load_journal
from toolkit.io.jsonl import append_jsonl, dumps, file_problem, iter_jsonl, iter_lines, open_append, write_bytes, \
    write_jsonl
from toolkit.io.progress import Bar
from toolkit.run.context import Context
from toolkit.run.manifest import Manifest, slug
from toolkit.run.roles import ROLES, engine, named_model, role
from toolkit.task.recipe import Recipe

INPUT_SUFFIXES = {".jsonl": "JSONL", ".csv": "CSV", ".tsv": "TSV", ".parquet": "Parquet"}
OUTPUT_SUFFIXES = (".jsonl", ".parquet")
STDOUT = "-"  # --out -: JSON lines on stdout
RESERVED = ("id", "problems", "raw")  # output columns beside the recipe's fields


# --- reading -----------------------------------------------------------------------------------------------

def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, dict]]:
    """(line, {column: value}) for each data row of a CSV/TSV file with a header line."""
    lines = iter_lines(path, f"a {'TSV' if delimiter == chr(9) else 'CSV'} file")
    reader = csv.reader((line for _, line in lines), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return
        while True:
            start = reader.line_num + 1  # a quoted field may span lines: a record is named by its first
            row = next(reader, None)
            if row is None:
                return
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(path, start, f"expected {len(header)} fields as in the header line "
                                f"({', '.join(header)}), got {len(row)}")
            yield start, dict(zip(header, row))
    except csv.Error as exc:
        raise DataError(path, reader.line_num, f"not valid CSV ({exc})") from None


def _parquet_rows(path: Path, columns: list[str]) -> Iterator[tuple[int, dict]]:
    """(row number, {column: value}) for the columns of a Parquet file that it has."""
    import pyarrow.parquet as pq

    problem = file_problem(path, "a Parquet file")
    if problem:
        raise DataError(path, None, problem)
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow's ArrowInvalid / OSError: not a Parquet file at all
        raise DataError(path, None, f"not a Parquet file ({exc})") from None
    have = [c for c in columns if c in pf.schema_arrow.names]
    n = 0
    for batch in pf.iter_batches(columns=have):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def read_texts(path: str | Path, text_column: str = "text", id_column: str = "id", *, max_chars: int) -> list[dict]:
    """Texts to answer: [{id, text, line}]. A row without a non-empty string text, one over `max_chars` (the
    recipe's data.max_input_chars), an id that is not a string or an integer, or an id seen before is a DataError
    naming the file and line (row, for Parquet)."""
    path = Path(path)
    kind = INPUT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(path, None, f"expected a {', '.join(INPUT_SUFFIXES)} file (by its suffix)")
    if kind == "JSONL":
        rows = iter_jsonl(path)
    elif kind == "Parquet":
        rows = _parquet_rows(path, [text_column, id_column])
    else:
        rows = _csv_rows(path, "\t" if kind == "TSV" else ",")
    out, first = [], {}
    for line, row in rows:
        if text_column not in row:
            raise DataError(path, line, f"no {text_column!r} column (this row has: {', '.join(map(str, row))}); "
                            "name the text's column with --text-column")
        text = row[text_column]
        if not isinstance(text, str) or not text.strip():
            raise DataError(path, line, f"expected {text_column!r} to be a non-empty string, got {dumps(text)[:80]}")
        if problem := text_problem(text, max_chars):
            raise DataError(path, line, problem)
        rid = row.get(id_column, line)
        if isinstance(rid, bool) or not isinstance(rid, str | int) or rid == "":
            raise DataError(path, line, f"expected {id_column!r} to be a non-empty string or an integer, "
                            f"got {dumps(rid)[:80]}")
        if rid in first:
            raise DataError(path, line, f"duplicate id {rid!r} (first on line {first[rid]})")
        first[rid] = line
        out.append({"id": rid, "text": text, "line": line})
    if not out:
        raise DataError(path, None, "no texts: the file is empty or has only blank lines")
    return out


# --- the model ---------------------------------------------------------------------------------------------

def predict_role(recipe: Recipe, model: str, run_dir: str | Path):
    """What `--model` names, resolved as `xtk eval --model` resolves it: a role of the run folder (student: its
    merged model; head: its classification head) or any model folder, embedded name or hub id. Of the recipe, it
    checks only what answering needs (its prompt, schema and tables are read where it loads): not the data files."""
    check_backend(recipe)
    ctx = Context(recipe, Path(run_dir), Manifest(run_dir))
    if model not in ROLES:
        return named_model(ctx, model, name=slug(model))
    r = role(ctx, model)
    if ROLES[model].training and not Path(r.model, "config.json").is_file():
        raise StageError(f"no {model} model in {r.model} (no config.json): train and merge it first with "
                         f"`xtk run {recipe.name} ...`, or pass --run, or a model folder as --model")
    return r


def student_backend(recipe: Recipe, r, online: bool = False):
    """The engine for role `r`, built as its evaluation builds it (toolkit/run/roles.py:engine); `online`: for
    xtk serve (vLLM's AsyncLLM where the role runs on vLLM)."""
    return engine(recipe, r, online=online)


def output_row(recipe: Recipe, rid, x) -> dict:
    """One output row: the id, each field's value (None when the answer has none), problems, raw."""
    parsed = x.parsed or {}
    return {"id": rid, **{f: parsed.get(f) for f in recipe.field_names}, "problems": x.problems, "raw": x.raw}


# --- the job -----------------------------------------------------------------------------------------------

def check_out(out: str | Path) -> Path | None:
    """The output file, or None for `--out -` (stdout)."""
    if str(out) == STDOUT:
        return None
    out = Path(out)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise StageError(f"--out {out}: name a .jsonl or a .parquet file (the suffix decides the format), or - "
                         "for JSON lines on stdout")
    if out.is_dir():
        raise StageError(f"--out {out} is a directory: name a .jsonl or .parquet file")
    return out


def journal_path(out: Path) -> Path:
    return out.with_name(out.name + ".journal")


def open_journal(recipe: Recipe, out: Path, key: str) -> dict:
    """The answers already in OUT.journal by id (a torn last line dropped), after checking that they were made
    by the same model and settings (toolkit/run/identity.py:predict_key); a fresh journal gets its header line."""
    path = journal_path(out)
    rows = load_journal(path)
    if rows and rows[0].get("xtk_predict") != key:
        raise StageError(f"{path} holds answers from another model or other settings (key "
                         f"{rows[0].get('xtk_predict')}, now {key}): delete it to start afresh, or use another --out")
    if not rows:
        write_jsonl(path, [{"xtk_predict": key, "recipe": recipe.name}])
    return {r["id"]: r for r in rows[1:]}


def write_output(recipe: Recipe, out: Path, rows: list[dict]) -> None:
    """The whole output, replacing OUT only once complete."""
    if out.suffix.lower() == ".jsonl":
        write_jsonl(out, rows)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    write_bytes(out, buf.getvalue().to_pybytes())


def summary(recipe: Recipe, rows: list[dict]) -> dict:
    """Records, the share with no problem, and per field the share of rows that have a value."""
    n = len(rows)

    def filled(v) -> bool:
        return v is not None and v != [] and not (isinstance(v, str) and not v.strip())

    valid = sum(not row["problems"] for row in rows)
    return {"records": n, "valid": valid, "valid_pct": round(100 * valid / n, 2) if n else 0.0,
            "fill_rate": {f: round(sum(filled(r[f]) for r in rows) / n, 4) if n else 0.0
                          for f in recipe.field_names}}


Answerer = Callable[[list[dict]], Iterator[list[dict]]]  # todo rows -> batches of output rows, as they finish


def run_predict(recipe: Recipe, rows: list[dict], out: str | Path, key: str, answer: Answerer,
                results: TextIO | None = None) -> dict:
    """Answer every row not yet in the journal (`answer` yields output rows batch by batch), journal each batch
    as it comes, then write the output in input order and remove the journal. For `out` "-", the rows go to
    `results` (stdout) as JSON lines, in input order as soon as each is answered, and nothing is journalled.
    Returns the summary."""
    out = check_out(out)
    clash = [f for f in RESERVED if f in recipe.field_names]
    if clash:
        raise StageError(f"recipe {recipe.name!r} has a field named {clash[0]!r}, which predict's output uses")
    done = open_journal(recipe, out, key) if out else {}
    ids = {r["id"] for r in rows}
    todo = [r for r in rows if r["id"] not in done]
    start = time.perf_counter()
    note = f"{len(rows) - len(todo)} done before" if len(todo) < len(rows) else ""
    shown = 0  # with --out -: the rows written, a prefix of `rows`
    with open_append(journal_path(out)) if out else nullcontext() as journal, \
            Bar("predict", total=len(todo), note=note) as bar:
        for batch in answer(todo):
            for row in batch:
                if row["id"] in ids and row["id"] not in done:
                    if out:
                        append_jsonl(journal, row)
                    done[row["id"]] = row
            if not out:
                while shown < len(rows) and rows[shown]["id"] in done:
                    results.write(dumps(done[rows[shown]["id"]]) + "\n")
                    shown += 1
                results.flush()
            bar.update(advance=len(batch))
    seconds = time.perf_counter() - start
    missing = [r["id"] for r in rows if r["id"] not in done]
    if missing:
        raise StageError(f"{len(missing)} records got no answer (e.g. id {missing[0]!r}): re-run to answer them")
    result = [done[r["id"]] for r in rows]
    if out:
        write_output(recipe, out, result)
        journal_path(out).unlink()
    s = summary(recipe, result)
    s.update(out=str(out or STDOUT), answered_now=len(todo), seconds=round(seconds, 2),
             records_per_s=round(len(todo) / seconds, 3) if seconds and todo else None)
    return s


def local_answerer(recipe: Recipe, backend, r) -> Answerer:
    """Batches of eval.batch_size rows through this process's engine."""
    system, size = recipe.prompt(r.prompt), recipe.eval.batch_size

    def answer(todo: list[dict]) -> Iterator[list[dict]]:
        for i in range(0, len(todo), size):
            batch = todo[i:i + size]
            xs = extract(recipe, backend, system, [t["text"] for t in batch], recipe.eval.max_new_tokens)
            yield [output_row(recipe, t["id"], x) for t, x in zip(batch, xs)]

    return answer


# --- Ray: the same job as Ray Data over a cluster ----------------------------------------------------------

class _Replica:
    """A Ray actor holding one engine: answers a batch of rows through the same extract() as the local job.
    Rows go back as JSON text, so ids and values keep their JSON types through Arrow."""

    def __init__(self, recipe: Recipe, r):
        self.recipe, self.system = recipe, recipe.prompt(r.prompt)
        self.backend = student_backend(recipe, r)

    def __call__(self, batch: dict) -> dict:
        ids, texts = [json.loads(i) for i in batch["id"]], [str(t) for t in batch["text"]]
        xs = extract(self.recipe, self.backend, self.system, texts, self.recipe.eval.max_new_tokens)
        return {"row": [dumps(output_row(self.recipe, i, x)) for i, x in zip(ids, xs)]}


def ray_answerer(recipe: Recipe, r, address: str | None, replicas: int | None) -> Answerer:
    """Batches of eval.batch_size rows as Ray Data's map_batches over a pool of engine actors: one per GPU of
    the cluster (each holding its GPU), or `replicas` of them; without GPUs, one unless told. `address` joins a
    running cluster (`ray start --head` / its address); none starts a local one for this job."""

    def answer(todo: list[dict]) -> Iterator[list[dict]]:
        import ray

        if not todo:
            return
        with ray_cluster(address):
            ray.data.DataContext.get_current().enable_progress_bars = False  # xtk's own bar counts the answers
            gpus = int(ray.cluster_resources().get("GPU", 0))
            n = replicas or gpus or 1
            ds = ray.data.from_items([{"id": dumps(t["id"]), "text": t["text"]} for t in todo])
            ds = ds.map_batches(_Replica, fn_constructor_args=(recipe, r), batch_size=recipe.eval.batch_size,
                                compute=ray.data.ActorPoolStrategy(size=n), num_gpus=1 if gpus else 0,
                                num_cpus=0 if gpus else 1)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                yield [json.loads(row) for row in batch["row"]]

    return answer
