"""toolkit/train/swift_plugin.py: the output layer `swift sft` gets with `train.bf16_output_layer`, on the real SmolLM2
weights (its output layer is its tied embedding, as Gemma 3's is)."""

import os

import pytest
import torch

from toolkit.train.cpu import cpu_has_bf16
from toolkit.train.swift import CALLBACK as PASSED
from toolkit.train.swift_plugin import CALLBACK, bf16_output_layer


TEXT = ["The parcel goes to Li Wei, 138 0013 8000, No. 25 Renmin Road, Dali, Yunnan, building 3, room 402.",
        "Send the invoice to Zhang Min at 5 Binhai Avenue, Nanshan District, Shenzhen, Guangdong, 518000 China."]


def tokens(folder, length):
    from transformers import AutoTokenizer

    return torch.tensor([ids[:length] for ids in AutoTokenizer.from_pretrained(folder)(TEXT)["input_ids"]])


def lora_student(folder):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))


def logits_and_grads(model, ids, keep):
    """Logits of a suffix of each sequence (as ms-swift's use_logits_to_keep asks: a strided slice) and the
    gradient of their loss on the LoRA weights."""
    model.zero_grad()
    logits = model(input_ids=ids, logits_to_keep=keep).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             ids[:, -keep + 1:].reshape(-1))
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    return logits.detach(), loss.item(), grads


def test_the_bf16_output_layer_keeps_the_float32_logits_and_gradients(smollm2):
    model = lora_student(smollm2)
    ids = tokens(smollm2, 24)
    want_logits, want_loss, want_grads = logits_and_grads(model, ids, keep=15)
    head = model.get_output_embeddings()
    assert bf16_output_layer(model, bf16=True) == "bfloat16 matmul on contiguous rows"
    logits, loss, grads = logits_and_grads(model, ids, keep=15)
    assert logits.dtype == torch.float32 and logits.shape == want_logits.shape
    assert not torch.equal(logits, want_logits)  # it did compute in bfloat16
    assert (logits - want_logits).abs().max() < 0.02 * want_logits.abs().max()
    assert (logits.argmax(-1) == want_logits.argmax(-1)).float().mean() > 0.9  # bf16 rounding flips near-ties
    assert loss == pytest.approx(want_loss, rel=0.01)
    assert torch.nn.functional.cosine_similarity(grads, want_grads, dim=0) > 0.99
    # the tied embedding the input lookup reads is untouched, frozen float32
    assert head.weight.dtype == torch.float32 and not head.weight.requires_grad
    assert model.get_input_embeddings().weight is head.weight


def test_float32_on_contiguous_rows_changes_no_logit(smollm2):
    model = lora_student(smollm2)
    ids = tokens(smollm2, 20)
    want_logits, _, want_grads = logits_and_grads(model, ids, keep=9)
    assert bf16_output_layer(model, bf16=False).startswith("float32 matmul on contiguous rows")
    logits, _, grads = logits_and_grads(model, ids, keep=9)
    assert torch.allclose(logits, want_logits, atol=1e-4) and torch.allclose(grads, want_grads, atol=1e-5)


def test_a_trained_or_low_precision_output_layer_is_left_alone(smollm2):
    model = lora_student(smollm2)
    head = model.get_output_embeddings()
    head.weight.requires_grad_(True)
    assert bf16_output_layer(model, bf16=True) == "left as it is: the output layer is trained"
    head.weight.requires_grad_(False)
    model.to(torch.bfloat16)
    assert bf16_output_layer(model, bf16=True) == "left as it is: it is already torch.bfloat16"
    assert "forward" not in vars(head)  # the module's own forward, not a replacement


def test_bf16_is_used_only_where_the_cpu_has_it(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert cpu_has_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert not cpu_has_bf16(info)
    assert not cpu_has_bf16(tmp_path / "absent")


def test_the_callback_train_passes_is_the_one_the_plugin_registers():
    from swift.callbacks import callbacks_map

    assert PASSED == CALLBACK and callbacks_map[CALLBACK].__name__ == "BF16OutputLayer"


def test_the_tests_commands_start_from_the_shells_environment():
    """Collecting this file imports ms-swift, and with it TRL, which writes VLLM_LOGGING_LEVEL=ERROR and more into
    os.environ; tests/conftest.py undoes it after collection, so the commands tests start see what a user's shell
    gives them (before, vLLM logged no INFO line in any of them)."""
    from conftest import ENVIRON

    assert "VLLM_LOGGING_LEVEL" in ENVIRON or "VLLM_LOGGING_LEVEL" not in os.environ
    assert {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"} == ENVIRON  # pytest's own, per test
