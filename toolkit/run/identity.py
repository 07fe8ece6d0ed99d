"""Whether what a run made is still current, decided here alone. Each artefact keeps the identity it was made
under, and is current while that equals the identity it would be made under now:

- a stage: the digest of the recipe sections it depends on (`config_digest`), kept in manifest.json beside the
  digests of its outputs (toolkit/run/manifest.py)
- the trained adapter: the training key (toolkit/train/swift.py:train_key) of the run's prepared split now
  (`current_train_key`, `current_head_key`)
- a merged model: the training key in its marker (toolkit/io/markers.py) is the one now (`merged_current`)
- an evaluation: what it evaluated, by its role's traits, under the evaluation settings (`identity`, `not_current`)
- a GGUF: the evaluation identity of what it was converted from, its bytes and converter (`gguf_identity`)
- a predict journal: the model and the training that made it, its prompt, schema and decoding (`predict_key`)

Every digest is toolkit/io/keys.py's.
"""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.infer.head import head_labels, write_head_data
from toolkit.io.keys import digest, file_digest
from toolkit.io.markers import trained_key
from toolkit.run.context import Context
from toolkit.run.roles import ROLES, Role, RoleSpec, role
from toolkit.task.recipe import Recipe, load_ref
from toolkit.train.swift import train_key

EVAL_CONFIG = ("eval", "prompts", "fields", "tables", "data.test")  # the recipe sections every evaluation depends on
PROMPT_ROLES = ("teacher", "base", "student")


# --- stages ----------------------------------------------------------------------------------------------------

def config_digest(recipe: Recipe, sections: tuple[str, ...]) -> str:
    """The digest of the recipe sections a stage depends on, keys at their defaults left out: a key that a newer
    xtk adds with a default does not make every finished stage stale. A prompts section counts by the texts its
    prompts render to, not only their file names: an edited prompt file re-runs what was made with the old one."""
    data = recipe.model_dump(mode="json", exclude={"root"}, exclude_defaults=True)
    picked = {}
    for dotted in sections:
        node = data
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        picked[dotted] = node
        if dotted.split(".")[0] == "prompts":
            roles = PROMPT_ROLES if dotted == "prompts" else (dotted.split(".")[1],)
            picked[f"{dotted} text"] = {r: digest(recipe.prompt(r).encode()) for r in roles if r in PROMPT_ROLES}
        if dotted == "tables" and recipe.tables:  # by their files' bytes too (rows and aliases), as prompts
            picked["tables content"] = [t.digest for t in recipe.loaded_tables()]
    return digest(picked)


# --- trainings and the models merged from them -----------------------------------------------------------------

def training_key(ctx: Context, data: Path, num_labels: int | None = None) -> str | None:
    """The training key of a split in `data` under the run's settings now, or None where it is not prepared."""
    train, val = data / "train.jsonl", data / "val.jsonl"
    if not train.is_file():
        return None
    return train_key(ctx.recipe, ctx.student(), train, val if val.is_file() and val.stat().st_size > 0 else None,
                     num_labels)


def current_train_key(ctx: Context) -> str | None:
    return training_key(ctx, ctx.data_dir)


def current_head_key(ctx: Context) -> str | None:
    if not (ctx.data_dir / "train.jsonl").is_file():
        return None
    write_head_data(ctx.recipe, ctx.data_dir, ctx.head_dir / "data")  # the head's rows of the prepared split
    return training_key(ctx, ctx.head_dir / "data", len(head_labels(ctx.recipe)[1]))


def merged_current(ctx: Context) -> bool:
    """merged/ holds the student of the training the run's settings and data make now."""
    key = current_train_key(ctx)
    return key is not None and (ctx.merged_dir / "config.json").is_file() and trained_key(ctx.merged_dir) == key


def head_current(ctx: Context) -> bool:
    key = trained_key(ctx.head_dir / "merged")
    return key is not None and key == current_head_key(ctx)


# --- evaluations -----------------------------------------------------------------------------------------------

def _rules(ctx: Context) -> dict:
    """The baseline, and for one that learns, the training split it learnt from."""
    ref, train = ctx.recipe.baseline, ctx.data_dir / "train.jsonl"
    if ref and getattr(load_ref(ref, "baseline"), "trained", False) and train.is_file():
        return {"rules": ref, "train_data": file_digest(train)}
    return {"rules": ref}


def _model(ctx: Context, spec: RoleSpec | None, r: Role) -> dict:
    """What an evaluation's model is: for a role, by its traits; for a model a user named, the name and where
    it is served, and for a folder xtk merged, which training made it."""
    if spec is None:
        model = {"model": r.model, "base_url": r.base_url}
        if (key := trained_key(r.model)) is not None:
            model["train_key"] = key
        return model
    if spec.training:
        return {"train_key": trained_key(spec.model(ctx))}
    if spec.endpoint:
        return {"base_url": r.base_url, "model": r.model}
    if spec.baseline:
        return _rules(ctx)
    s = ctx.recipe.student  # the recipe's student as it is
    return {"student": s.model, "model_type": s.model_type, "template": s.template}


def identity(ctx: Context, r: Role) -> dict:
    """What an evaluation evaluated, under which evaluation settings: kept in its metrics.json."""
    spec = ROLES.get(r.who)
    return {**_model(ctx, spec, r), "prompt": r.prompt, "backend": None if spec else r.backend,
            "eval_config": config_digest(ctx.recipe, EVAL_CONFIG)}


def read_metrics(folder: Path) -> dict | None:
    path = folder / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def not_current(ctx: Context, metrics: dict | None, r: Role | None = None) -> str | None:
    """Whether an evaluation (its metrics.json) still describes what its name says in this run: None, or why not.
    `r` is the evaluation it should be; by default the role its metrics name, or for a model a user named, that
    model (and for a folder xtk merged, its training now) under the run's evaluation settings now."""
    if metrics is None:
        return "not made yet"
    was = metrics.get("identity") or {}
    if r is not None:
        now = identity(ctx, r)
    elif metrics.get("role") in ROLES:
        now = identity(ctx, role(ctx, metrics["role"]))
    else:
        now = _as_now(ctx, was)
    if was != now:
        changed = sorted(k for k in {*was, *now} if was.get(k) != now.get(k))
        return f"made with other settings ({', '.join(changed)} changed since)"
    return None


def _deployed(ctx: Context) -> Role:
    return role(ctx, next(name for name, spec in ROLES.items() if spec.deployed))


def _as_now(ctx: Context, was: dict) -> dict:
    """The identity an evaluation of a model a user named would have now: the same model under the run's
    evaluation settings now, for a folder xtk merged its training now, and for a file exported from a model
    (xtk export) that model as it is now: the run's student (no "model" in its identity) or a named one."""
    now = {**was, "eval_config": config_digest(ctx.recipe, EVAL_CONFIG)}
    if "train_key" in was:
        now["train_key"] = trained_key(was.get("model") or "")
    if isinstance(source := was.get("source"), dict):
        now["source"] = _as_now(ctx, source) if "model" in source else identity(ctx, _deployed(ctx))
    return now


def evaluations_current(ctx: Context, r: Role, tests: list[str]) -> str | None:
    """None when the evaluation `r` of every test file is in the run folder and current, else why not."""
    for test in tests:
        folder = ctx.run_dir / "eval" / f"{r.folder}-{Path(test).stem}"
        metrics = read_metrics(folder)
        if metrics is None:
            return f"no {folder.name}"
        why = not_current(ctx, metrics, r)
        if why:
            return f"{folder.name}: {why}"
    return None


# --- what is made from a model: an exported file, a journal of answers -----------------------------------------

def gguf_current(record: dict, gguf: Path, source: dict, converter: str) -> bool:
    """Whether export.json's GGUF is the file there, converted from `source` (an evaluation identity) by this
    converter."""
    made = record.get("gguf") or {}
    return (record.get("source") == source and gguf.is_file() and made.get("sha256") == file_digest(gguf, 64)
            and made.get("converter", "").endswith(converter))


def gguf_identity(ctx: Context, source: Role, sha256: str, quant: str, converter: str, guided: bool) -> dict:
    """What an evaluation of an exported GGUF evaluated: the model it was converted from as that model's
    evaluation identity, the file's bytes, quantisation and converter, under the evaluation settings."""
    return {"source": identity(ctx, source), "gguf_sha256": sha256, "quant": quant,
            "llama_cpp_python": converter, "guided_json": guided, "prompt": source.prompt,
            "eval_config": config_digest(ctx.recipe, EVAL_CONFIG)}


def predict_key(recipe: Recipe, r: Role) -> str:
    """What a predict journal's answers depend on: the model and, for a folder xtk merged, the training that made
    it (a student retrained into the same folder is another model), the prompt, schema and decoding settings. A
    journal written under another key is not resumed."""
    e = recipe.eval
    guided = e.guided_json if r.guided_json is None else r.guided_json
    return digest([r.model, r.backend, recipe.prompt(r.prompt), recipe.json_schema(),
                   [t.digest for t in recipe.loaded_tables()], guided, e.max_new_tokens,
                   e.vllm.model_dump(), trained_key(r.model)])
