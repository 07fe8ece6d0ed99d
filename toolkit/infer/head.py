"""A linear classification head trained by ms-swift itself (`swift sft --task_type seq_cls`): the encoder-style
way to classify, beside the generative student. The student reads the user's text alone (no instruction: the
head, not a prompt, says what to decide) and a linear layer on one position's hidden state picks the class;
ms-swift trains LoRA on the body and the whole head (`score`, kept in full as a module to save).

Which position the head reads is decided by the model class ms-swift trains (transformers' own
*ForSequenceClassification reads the last token that is not padding; ms-swift's patch for architectures without
one reads the token before the first pad), so evaluation loads the merged model with ms-swift's loader, encodes
with the training template and right-pads like its collator: the head reads what it was trained to read."""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.infer.backends import Backend, Generation, Messages, Served
from toolkit.io.jsonl import iter_jsonl, write_jsonl
from toolkit.io.errors import DataError
from toolkit.task.fields import normalise
from toolkit.task.recipe import Recipe


def head_labels(recipe: Recipe) -> tuple[str, list[str]]:
    """The one enum field and its choices, whose positions are the head's label indices."""
    field = recipe.fields[0]
    return field.name, recipe.choices(field.name)


def head_rows(recipe: Recipe, prepared: Path) -> list[dict]:
    """A prepared split (system, user, assistant rows) as seq_cls rows: the user turn and the label's index."""
    name, choices = head_labels(recipe)
    steps = recipe.field(name).normalise
    index = {normalise(c, steps): i for i, c in enumerate(choices)}
    rows = []
    for line, row in iter_jsonl(prepared):
        turns = {m.get("role"): m.get("content") for m in row.get("messages", []) if isinstance(m, dict)}
        try:
            value = json.loads(turns.get("assistant") or "")[name]
        except (json.JSONDecodeError, TypeError, KeyError):
            raise DataError(prepared, line, f"expected an assistant turn with a JSON answer holding {name!r}")
        if normalise(str(value), steps) not in index:
            raise DataError(prepared, line, f"{name} is {value!r}, not one of {choices}")
        rows.append({"id": row.get("id"), "messages": [{"role": "user", "content": turns.get("user")}],
                     "label": index[normalise(str(value), steps)]})
    return rows


def write_head_data(recipe: Recipe, data_dir: Path, head_dir: Path) -> None:
    """head_dir/train.jsonl and val.jsonl from the run's prepared split (the same records the student sees)."""
    for split in ("train.jsonl", "val.jsonl"):
        src = data_dir / split
        if src.is_file():
            write_jsonl(head_dir / split, head_rows(recipe, src))


def check_head_file(recipe: Recipe, path: str | Path) -> int:
    """Validate a seq_cls file just before ms-swift reads it; returns its row count."""
    path = Path(path)
    k = len(head_labels(recipe)[1])
    n = 0
    for line, row in iter_jsonl(path):
        messages = row.get("messages")
        if not (isinstance(messages, list) and len(messages) == 1 and isinstance(messages[0], dict)
                and messages[0].get("role") == "user" and isinstance(messages[0].get("content"), str)):
            raise DataError(path, line, "expected messages holding one user turn")
        label = row.get("label")
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < k:
            raise DataError(path, line, f"expected label: an integer from 0 to {k - 1}, got {label!r}")
        n += 1
    if n == 0:
        raise DataError(path, None, "no rows")
    return n


class HeadBackend(Backend):
    """A merged seq_cls student: each chat's user turn is encoded with the training template and the likeliest
    class is answered as the recipe's JSON."""

    name = "head"

    def __init__(self, recipe: Recipe, model: str, model_type: str | None, template: str | None,
                 batch_size: int = 16):
        import torch
        from swift.model import get_model_processor
        from swift.template import get_template

        self.field, self.choices = head_labels(recipe)
        # float32: no native bf16 on the CPUs this runs on (as vllm_kwargs)
        self.model, processor = get_model_processor(model, torch_dtype=torch.float32, model_type=model_type,
                                                    task_type="seq_cls", num_labels=len(self.choices))
        self.model.eval()
        self.template = get_template(processor, template_type=template)
        self.template.set_mode("train")  # the encoding the head was trained on
        self.pad = self.model.config.pad_token_id
        self.batch_size = batch_size

    def encode(self, messages: Messages) -> list[int]:
        user = [m for m in messages if m["role"] == "user"]  # the head was trained on the text alone
        return self.template.encode({"messages": user})["input_ids"]

    def class_logits(self, batch: list[Messages]):
        """(len(batch), classes) logits, rows right-padded as ms-swift's collator pads them in training."""
        import torch

        rows = [self.encode(m) for m in batch]
        out = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), self.pad if self.pad is not None else 0, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, r in enumerate(chunk):
                ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
            with torch.inference_mode():
                out.append(self.model(input_ids=ids, attention_mask=mask).logits.float())
        return torch.cat(out)

    def generate(self, batch: list[Messages], max_tokens: int) -> list[Generation]:
        best = self.class_logits(batch).argmax(-1).tolist()
        return [Generation(json.dumps({self.field: self.choices[i]}, ensure_ascii=False)) for i in best]


def build(s: Served) -> HeadBackend:
    return HeadBackend(s.recipe, s.model, s.model_type, s.template, s.recipe.eval.batch_size)
