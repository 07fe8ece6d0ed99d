"""xtk advise: the memory arithmetic against figures worked by hand, the labelled-rows rule, fits or not against the
memory given, tokens per record on SmolLM2's real tokenizer, an unknown model, and the JSON the CLI prints."""

import json

import pytest

from conftest import RECIPE, write_recipe
from toolkit.choose.advise import (Candidate, Shape, assess, makes_bf16_output_copy, model_shape, rows_favour,
                                   rows_verdict, sample_rows, training_memory)
from toolkit.task.recipe import load_recipe
from toolkit.train.cpu import cpu_has_bf16

SMOLLM2 = "smollm2-135m-instruct"


def smollm2_shape() -> Shape:
    """SmolLM2-135M as its config.json gives it: 30 layers of hidden 576, 9 query heads and 3 key-value heads of
    64, MLP 1536, vocabulary 49152 (tied), and its 7 linears a layer."""
    layer = [("self_attn.q_proj", 576, 576), ("self_attn.k_proj", 576, 192), ("self_attn.v_proj", 576, 192),
             ("self_attn.o_proj", 576, 576), ("mlp.gate_proj", 576, 1536), ("mlp.up_proj", 576, 1536),
             ("mlp.down_proj", 1536, 576)]
    linears = tuple((f"model.layers.{n}.{name}", i, o) for n in range(30) for name, i, o in layer)
    return Shape(parameters=134_515_008, hidden=576, layers=30, intermediate=1536, vocab=49152, attention=576,
                 kv=192, linears=linears)


def test_the_shape_is_read_from_the_config_without_weights(smollm2):
    # parameters by hand: embeddings 49152 x 576 = 28,311,552; a layer: q 331,776 + k 110,592 + v 110,592 +
    # o 331,776 + gate, up, down 884,736 each + two norms 1,152 = 3,540,096, x 30 = 106,202,880; final norm 576.
    assert 28_311_552 + 106_202_880 + 576 == 134_515_008
    assert model_shape(smollm2) == smollm2_shape()


def test_lora_training_memory_of_the_cpu_profile_worked_by_hand():
    """logistics_zh's cpu profile: 2 processes, batch 2 x max_length 384 = 768 tokens, float32, LoRA r8 on every
    linear, dropout 0.05, no gradient checkpointing."""
    m = training_memory(smollm2_shape(), batch=2, max_length=384, dtype="float32", lora_rank=8, lora_dropout=0.05,
                        target_modules="all-linear", gradient_checkpointing=False, processes=2)
    # weights: 134,515,008 x 4 B = 538,060,032 B = 0.501 GiB
    assert m.weights == 0.50
    # adapter: a layer's in+out = 1152 + 768 + 768 + 1152 + 2112 x 3 = 10,176; x 30 x r 8 = 2,442,240 parameters,
    # x 16 B (fp32 weight, gradient, 2 AdamW moments) = 39,075,840 B = 0.036 GiB
    assert m.adapter == 0.04
    # activations per token and layer: (2 x 576 + 2 x 576 + 2 x 192 + 3 x 1536) x 4 B = 29,184 B, plus the LoRA
    # inputs (6 x 576 + 1536 = 4,992) twice x 4 B = 39,936 B: 69,120 B; x 30 layers x 768 tokens = 1,592,524,800 B
    # = 1.483 GiB
    assert m.activations == 1.48
    # logits: 768 x 49,152 x 4 B x 4 copies = 603,979,776 B = 0.5625 GiB
    assert m.logits == 0.56
    # one process: 0.501 + 0.036 + 1.483 + 0.5625 = 2.583 on the device, + 0.61 framework = 3.193
    assert (m.device, m.per_process) == (2.58, 3.19)
    # the command: 2 x 3.193 + the swift launcher 0.23 + torchrun 0.22 = 6.836
    assert (m.processes, m.launchers, m.total) == (2, 0.45, 6.84)


def test_the_bf16_output_layers_copy_is_counted_where_the_plugin_makes_it():
    plain, copied = (training_memory(smollm2_shape(), batch=2, max_length=384, dtype="float32", lora_rank=8,
                                     lora_dropout=0, target_modules="all-linear", gradient_checkpointing=False,
                                     processes=2, bf16_output_copy=copy) for copy in (False, True))
    # 49,152 x 576 x 2 B = 56,623,104 B = 0.053 GiB a process: weights 0.501 -> 0.554, 2 processes 5.98 -> 6.08
    assert (plain.weights, copied.weights) == (0.50, 0.55)
    assert (plain.total, copied.total) == (5.98, 6.08)
    cpu = load_recipe(RECIPE, "cpu")  # float32 with train.bf16_output_layer: the copy exactly where bf16 is native
    assert makes_bf16_output_copy(cpu) == cpu_has_bf16()
    assert not makes_bf16_output_copy(load_recipe(RECIPE, "cpu", ["train.bf16_output_layer=false"]))
    assert not makes_bf16_output_copy(load_recipe(RECIPE, "cpu", ["train.torch_dtype=bfloat16"]))


def test_gradient_checkpointing_keeps_one_layer_and_every_layers_input():
    m = training_memory(smollm2_shape(), batch=2, max_length=384, dtype="bfloat16", lora_rank=8, lora_dropout=0,
                        target_modules="q_proj,v_proj", gradient_checkpointing=True, processes=1)
    # bf16: weights 134,515,008 x 2 B = 0.251 GiB; adapter r8 x (1152 + 768) x 30 x 16 B = 7,372,800 B = 0.007 GiB
    assert (m.weights, m.adapter) == (0.25, 0.01)
    # per token: 30 layer inputs x 576 x 2 B = 34,560 B + one layer: (2 x 576 + 2 x 576 + 2 x 192 + 3 x 1536) x 2 B
    # = 14,592 B and its LoRA inputs once (no dropout), 2 x 576 x 2 B = 2,304 B: 51,456 B x 768 tokens
    # = 39,518,208 B = 0.037 GiB
    assert m.activations == 0.04
    # 0.251 + 0.007 + 0.037 + logits 0.5625 + framework 0.61 + the swift launcher 0.23 (no torchrun) = 1.697
    assert (m.launchers, m.total) == (0.23, 1.70)


def test_the_rows_rule_instruct_below_300_base_fine_from_1000():
    assert rows_favour(200) == "instruct"
    assert rows_favour(500) == "instruct (base only with care)"
    assert rows_favour(2000) == "either"
    assert [rows_verdict(k, 200) for k in ("instruct", "base")] == ["good", "too few rows"]
    assert [rows_verdict(k, 500) for k in ("instruct", "base")] == ["good", "risky"]
    assert [rows_verdict(k, 2000) for k in ("instruct", "base")] == ["good", "good"]
    assert rows_verdict("unknown", 2000) == "kind unknown"


@pytest.mark.parametrize("ram, gpu, training_fits, inference_fits", [
    # training 5.98 GiB (no LoRA dropout: lora_A keeps its input once; 6.08 with the bf16 output layer's copy
    # where the CPU has bf16) does not fit 5.5; inference 0.50 + 4 KV + 0.61 = 5.11 does
    (5.5, None, False, True),
    (6.5, None, True, True),
    # on a GPU: one training process needs 2.58; vLLM 0.25 (bf16) + a KV cache of 2 x 30 x 192 x 2 B x 64 records
    # x 1024 tokens = 1.41 GiB: 1.66, against 90% of the GPU
    (64, 1.5, False, False),
    (64, 2.0, False, True),
    (64, 3.0, True, True),
])
def test_fits_or_not_against_the_memory_given(smollm2, ram, gpu, training_fits, inference_fits):
    recipe = load_recipe(RECIPE, "cpu")
    sample, _ = sample_rows(recipe, 4)
    c = assess(SMOLLM2, recipe, 1600, ram, gpu, sample)
    assert (c.training_fits, c.inference_fits) == (training_fits, inference_fits)
    assert c.inference.total == (5.11 if gpu is None else 1.66)
    if gpu is None:
        assert c.training.total == (6.08 if cpu_has_bf16() else 5.98)


def test_tokens_per_record_on_smollm2_chinese_costs_more_than_english(tmp_path, smollm2):
    """SmolLM2's byte-level vocabulary, counted by hand from its tokens: 上海市浦东新区 (7 characters, 21 UTF-8
    bytes) is 12 tokens (上 and 新 one each, the other five two each); 'Shanghai Pudong New Area' is 8 (Sh an ghai
    ĠP ud ong ĠNew ĠArea). The chatml frame around them is 24: <|im_start|> system \\n Answer ĠJSON . <|im_end|> \\n
    <|im_start|> user \\n, then <|im_end|> \\n <|im_start|> ass istant \\n, the answer {" place ": Ġ"" }, and
    <|im_end|> \\n. So 32 and 36 tokens."""
    rows = [{"id": "en", "text": "Shanghai Pudong New Area", "label": {"place": ""}},
            {"id": "zh", "text": "上海市浦东新区", "label": {"place": ""}}]
    (tmp_path / "labelled.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                             encoding="utf-8")
    path = write_recipe(tmp_path, "fields:\n  - {name: place, description: p}\n",
                        data="{labelled: labelled.jsonl, test: [t.jsonl], train_records: 10, val_fraction: 0}")
    recipe = load_recipe(path)
    sample, described = sample_rows(recipe)
    assert described == "2 records of labelled.jsonl"
    c = assess(SMOLLM2, recipe, 2, 64, None, sample)
    assert (c.tokens_mean, c.tokens_max, c.chat_template) == (34.0, 36, True)


def test_a_folder_that_is_not_there_is_unknown_not_a_crash():
    recipe = load_recipe(RECIPE, "cpu")
    c = assess("./no-such-model", recipe, 1600, 64, None, [])
    assert (c.licence, c.kind, c.parameters, c.training, c.tokens_mean) == ("unknown", "unknown", None, None, None)
    assert c.notes == ["./no-such-model: unknown: no-such-model: not a model folder (no config.json)"]
    assert not c.shortlisted


@pytest.mark.slow
def test_a_hub_id_that_cannot_be_fetched_here_is_unknown_with_the_reason():
    """No model hub is reachable from the test machines (and no such model exists where one is): ~25 s of the hub
    client's retries."""
    recipe = load_recipe(RECIPE, "cpu")
    c = assess("nobody-xtk/no-such-model", recipe, 1600, 64, None, [])
    assert (c.source, c.licence, c.commercial_use, c.parameters, c.training_fits) == \
        ("hub", "unknown", "unknown", None, None)
    assert c.notes[0].startswith("nobody-xtk/no-such-model: unknown: the model hub is not reachable from here or has "
                                 "no such model (")
    assert c.shortlisted  # it may exist where the bake-off runs


def test_the_cli_prints_json_for_every_candidate_and_the_bakeoff(smollm2, tmp_path, capsys):
    from toolkit.cli import main

    # short.md, the 57-token prompt these figures were measured with (the profile's is 5 tokens); a folder that is
    # no model, beside it
    assert main(["advise", str(RECIPE), "--profile", "cpu", "train.max_length=360",
                 "prompts.student=prompts/logistics_zh/short.md", "--candidates", f"{SMOLLM2},{tmp_path}",
                 "--rows", "200", "--ram", "7", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"recipe", "profile", "rows", "rows_favour", "ram_gib", "gpu_gib", "data", "candidates",
                        "shortlist", "bakeoff_spec", "bakeoff_command"}
    assert (out["recipe"], out["profile"], out["rows"], out["rows_favour"], out["ram_gib"], out["gpu_gib"]) == \
        ("logistics_zh", "cpu", 200, "instruct", 7.0, None)
    assert out["data"] == "200 records of datasets/logistics_zh/pool.jsonl (gold labels)"
    smol, missing = out["candidates"]
    assert (smol["licence"], smol["commercial_use"], smol["kind"], smol["rows"], smol["parameters"]) == \
        ("Apache-2.0", "yes", "instruct", "good", 134_515_008)
    assert (smol["training"]["total"], smol["training_fits"], smol["inference"]["total"], smol["inference_fits"]) == \
        (5.88 if cpu_has_bf16() else 5.78, True, 5.11, True)
    # SmolLM2's byte-level tokens (~3 a Chinese character): the longest strings pass a max_length of 360 (the
    # profile's 384 is set for Gemma's tokenizer), and advise says so
    assert smol["chat_template"] is True and 250 < smol["tokens_mean"] <= 360 < smol["tokens_max"]
    assert any("train.max_length 360 and would be dropped" in note for note in smol["notes"])
    assert missing["training"] is None and missing["notes"]
    assert out["shortlist"] == [SMOLLM2]
    assert out["bakeoff_spec"] == {"students": [SMOLLM2],
                                   "recipes": [{"recipe": str(RECIPE), "profile": "cpu"}]}
    assert out["bakeoff_command"] == "xtk bakeoff bakeoffs/logistics_zh-cpu.yaml"


def test_the_table_names_every_candidate_and_ends_with_the_bakeoff(smollm2, capsys):
    from toolkit.cli import main

    assert main(["advise", str(RECIPE), "--profile", "cpu", "--candidates", SMOLLM2, "--ram", "5.5"]) == 0
    out = capsys.readouterr().out
    assert f"{6.1 if cpu_has_bf16() else 6.0} does not fit" in out and "5.1 fits" in out and "Apache-2.0" in out
    assert out.rstrip().endswith("and run: xtk bakeoff bakeoffs/logistics_zh-cpu.yaml")
    assert "no candidate passed every check" in out
    # an embedded student is named with what its weights are (toolkit/model/models.py: EmbeddedModel.weights)
    assert "- smollm2-135m-instruct: dequantised from a Q4_1 GGUF (not the publisher's original weights)" in \
        " ".join(out.split())


def test_the_activation_count_is_what_autograd_saves_for_smollm2_with_lora(smollm2):
    """The activation term against the tensors autograd really keeps for the backward pass: one training forward
    of SmolLM2 (float32) with peft's LoRA r8 on every linear, dropout 0.05, 64 tokens. Everything saved that is
    not a weight, counted once per storage: the activations, plus one logits-sized tensor (cross-entropy's input)
    and small ones (RoPE tables, attention's log-sum-exp, lora_A's r-wide outputs, the labels)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"))
    model.train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(0, 49152, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(input_ids=ids, labels=ids)
    # 64 tokens x 30 layers x 69,120 B (worked out in the test above) = 132,710,400 B; one logits tensor
    # 64 x 49,152 x 4 B = 12,582,912 B
    m = training_memory(smollm2_shape(), batch=1, max_length=64, dtype="float32", lora_rank=8, lora_dropout=0.05,
                        target_modules="all-linear", gradient_checkpointing=False, processes=1)
    assert m.activations == round(132_710_400 / 2 ** 30, 2)
    small = sum(saved.values()) - 132_710_400 - 12_582_912
    assert 0 <= small < 0.01 * 132_710_400


def test_advise_keeps_the_default_student_xtk_init_writes(tmp_path, gemma):
    """`xtk init` and `xtk advise` read one default per profile (toolkit/model/models.py: DEFAULT_STUDENTS): the
    cpu profile's Gemma 3 270M, a base model, stays on the short-list at 8 labelled rows where the rows rule of
    thumb says "too few rows" (the bake-off chose it at 95); another profile's advice drops it by that rule."""
    from test_init import FIELDS, write_examples
    from toolkit.cli import main
    from toolkit.model.models import default_student

    assert main(["init", "invoice", "--fields", FIELDS, "--from", str(write_examples(tmp_path / "ex.jsonl", 10)),
                 "--out", str(tmp_path)]) == 0
    path = tmp_path / "recipes" / "invoice.yaml"
    for profile in (None, "gpu", "cpu"):
        assert load_recipe(path, profile).student.model == default_student(profile).model
    recipe = load_recipe(path, "cpu")
    sample, _ = sample_rows(recipe)
    kept = assess("gemma3-270m", recipe, 8, 64, None, sample)
    assert (kept.kind, kept.rows, kept.default, kept.shortlisted) == ("base", "too few rows", True, True)
    assert any("xtk's default student for the cpu profile (xtk init writes it)" in n for n in kept.notes)
    # what the rule does to a base model that is not the profile's default (the gpu profile's is Qwen3-0.6B)
    assert not Candidate("gemma3-270m", "embedded", kind="base", rows="too few rows", found=True).shortlisted
