"""The classification head (toolkit/infer/head.py, recipe key classification_head): seq_cls rows from a prepared
split, their checks, the `swift sft --task_type seq_cls` argv, and for real on the embedded student: a short
training, its merge, and evaluation logits equal to the trained adapter's own forward."""

import json

import pytest

from conftest import write_recipe
from toolkit.io.jsonl import write_jsonl
from toolkit.io.errors import DataError
from toolkit.task.recipe import load_recipe
from toolkit.io.errors import RecipeError

MOOD = "fields:\n  - {name: mood, type: enum, description: 评价, choices: [good, bad, 一般]}\n"


def prepared(answer: str, text: str = "很好") -> dict:
    return {"id": "r", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": text},
                                    {"role": "assistant", "content": answer}]}


def test_head_rows_are_the_user_turn_and_the_choice_index(tmp_path):
    from toolkit.infer.head import head_rows

    recipe = load_recipe(write_recipe(tmp_path, MOOD, extra="classification_head: true\n"))
    path = tmp_path / "train.jsonl"
    write_jsonl(path, [prepared('{"mood": "bad"}', "不新鲜"), prepared('{"mood": "一般"}'), prepared('{"mood": " good"}')])
    assert head_rows(recipe, path) == [
        {"id": "r", "messages": [{"role": "user", "content": "不新鲜"}], "label": 1},
        {"id": "r", "messages": [{"role": "user", "content": "很好"}], "label": 2},
        {"id": "r", "messages": [{"role": "user", "content": "很好"}], "label": 0},  # normalised as labels are
    ]
    write_jsonl(path, [prepared('{"mood": "good"}'), prepared('{"mood": "great"}')])
    with pytest.raises(DataError, match=r"train.jsonl:2: mood is 'great', not one of \['good', 'bad', '一般'\]"):
        head_rows(recipe, path)


def test_head_file_check_names_the_line(tmp_path):
    from toolkit.infer.head import check_head_file

    recipe = load_recipe(write_recipe(tmp_path, MOOD, extra="classification_head: true\n"))
    path = tmp_path / "head.jsonl"
    good = {"messages": [{"role": "user", "content": "好"}], "label": 2}
    write_jsonl(path, [good, good])
    assert check_head_file(recipe, path) == 2
    for bad, why in (({**good, "label": 3}, "an integer from 0 to 2, got 3"), ({**good, "label": True}, "got True"),
                     ({"messages": [{"role": "system", "content": "x"}], "label": 0}, "one user turn")):
        write_jsonl(path, [good, bad])
        with pytest.raises(DataError, match=f"head.jsonl:2: .*{why}"):
            check_head_file(recipe, path)


def test_a_head_needs_exactly_one_enum_field(tmp_path):
    two = MOOD + "  - {name: note, description: 备注}\n"
    with pytest.raises(RecipeError, match="classification_head needs exactly one field, of type enum"):
        load_recipe(write_recipe(tmp_path, two, extra="classification_head: true\n"))
    assert load_recipe(write_recipe(tmp_path, two)).classification_head is False


def test_sft_argv_of_a_head(tmp_path):
    from pathlib import Path

    from toolkit.model.models import ResolvedModel
    from toolkit.train.swift import sft_argv, train_key

    recipe = load_recipe(write_recipe(tmp_path, MOOD, extra="classification_head: true\n"))
    model = ResolvedModel("/m", "llama", "chatml", True)
    argv = sft_argv(recipe, model, Path("t.jsonl"), None, Path("out"), num_labels=3)
    opts = dict(zip(argv[2::2], argv[3::2]))
    assert (opts["--task_type"], opts["--num_labels"], opts["--problem_type"]) == ("seq_cls", "3",
                                                                                    "single_label_classification")
    assert "--task_type" not in sft_argv(recipe, model, Path("t.jsonl"), None, Path("out"))
    data = tmp_path / "t.jsonl"
    data.write_text("{}\n")
    assert train_key(recipe, model, data, None, 3) != train_key(recipe, model, data, None)


@pytest.mark.slow
def test_a_trained_head_is_evaluated_as_it_was_trained(tmp_path, smollm2):
    """A few real `swift sft --task_type seq_cls` steps, merged by `swift export`. The evaluation's logits on
    right-padded batches equal the forward of the unmerged adapter on each row alone, loaded as ms-swift trains
    it: the merge kept the head, and the evaluation reads the position the head was trained on. Then eval_head
    answers the recipe's JSON for every test row and the report has the head's row."""
    import torch
    from peft import PeftModel
    from swift.model import get_model_processor

    from toolkit.flow.pipeline import open_run, run_stage
    from toolkit.infer.head import HeadBackend

    texts = {"good": ["很好吃", "新鲜又甜", "下次还买", "味道不错，包装好"],
             "bad": ["不新鲜", "烂了一半", "太差了，再也不买", "难吃"], "一般": ["还行吧", "一般般"]}
    rows = [{"id": f"r{i}", "text": t, "label": {"mood": m}}
            for i, (m, t) in enumerate((m, t) for m, ts in texts.items() for t in ts)]
    write_jsonl(tmp_path / "mine.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", rows[:4])
    recipe = load_recipe(write_recipe(tmp_path, MOOD, "{labelled: mine.jsonl, test: [test.jsonl], "
                                                      "train_records: 10, val_fraction: 0.2}",
                                      "classification_head: true\n"),
                         overrides=["train.max_steps=3", "train.per_device_train_batch_size=2"])
    with open_run(recipe, tmp_path / "run") as ctx:
        run_stage(ctx, "train_head")
        ckpt = ctx.manifest.data["stages"]["train_head"]["checkpoint"]
        marker = json.loads((ctx.head_dir / "merged" / "xtk-model.json").read_text())
        assert marker["labels"] == ["good", "bad", "一般"] and marker["template"] == "chatml"

        chats = [[{"role": "system", "content": "ignored"}, {"role": "user", "content": r["text"]}] for r in rows]
        head = HeadBackend(recipe, str(ctx.head_dir / "merged"), "llama", "chatml", batch_size=4)
        got = head.class_logits(chats)
        model, _ = get_model_processor(str(smollm2), model_type="llama", task_type="seq_cls", num_labels=3,
                                       torch_dtype=torch.float32)
        model = PeftModel.from_pretrained(model, ckpt).eval()
        with torch.inference_mode():
            want = torch.cat([model(input_ids=torch.tensor([head.encode(c)])).logits for c in chats])
        assert got.shape == (len(rows), 3)
        assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()

        run_stage(ctx, "eval_head")
        m = json.loads((ctx.run_dir / "eval" / "head-test" / "metrics.json").read_text())
        assert m["n"] == 4 and m["json_parse_rate"]["value"] == 1.0 and m["role"] == "head"
        predicted = [json.loads(line)["parsed"]["mood"]
                     for line in (ctx.run_dir / "eval" / "head-test" / "predictions.jsonl").open(encoding="utf-8")]
        assert predicted == [["good", "bad", "一般"][int(i)] for i in got[:4].argmax(-1)]
