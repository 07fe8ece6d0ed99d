"""An ms-swift plugin that `toolkit/train/swift.py` hands `swift sft` (`--external_plugins`) when a recipe sets
`train.bf16_output_layer`: the frozen output layer computes its logits from contiguous rows, in bfloat16 where
the CPU multiplies bfloat16 natively, and returns them in the model's dtype for the loss.

Why: with a batch of several sequences ms-swift keeps the logits of a suffix of each (`use_logits_to_keep`), a
strided slice that torch multiplies by the vocabulary matrix as a batched matmul with a broadcast weight, in
float32; Gemma 3's output layer (262,144 tokens) holds 63% of the student's matmul weights. As one bfloat16 matmul
(avx512_bf16 / AMX) the whole training ran 26% faster (benchmarks/results/train_speed.json, variant "float32
output layer"). The layer is frozen under LoRA, so only the input gradient flows through it: rounding its input
and weight to bfloat16 is the mixed precision GPUs train in.
"""

from __future__ import annotations

import logging

import torch
from swift.callbacks import TrainerCallback, callbacks_map

from toolkit.train.cpu import cpu_has_bf16

CALLBACK = "bf16_output_layer"
logger = logging.getLogger("xtk")


def bf16_output_layer(model: torch.nn.Module, bf16: bool) -> str:
    """Replace the frozen output layer's forward as the module docstring says; returns what it did, for the log."""
    head = model.get_output_embeddings()
    if head is None or not isinstance(head, torch.nn.Linear):
        return "left as it is: the model has no linear output layer"
    if head.weight.requires_grad:
        return "left as it is: the output layer is trained"
    if head.weight.dtype != torch.float32:
        return f"left as it is: it is already {head.weight.dtype}"
    # A frozen copy: the tied embedding it shares its weight with keeps float32 for the input lookup.
    weight = head.weight.detach().to(torch.bfloat16) if bf16 else head.weight.detach()
    bias = None if head.bias is None else head.bias.detach().to(weight.dtype)

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, hidden.shape[-1])  # a strided suffix becomes contiguous rows: one plain matmul
        logits = torch.nn.functional.linear(rows.to(weight.dtype), weight, bias)
        return logits.to(hidden.dtype).view(*hidden.shape[:-1], -1)

    head.forward = forward
    return "bfloat16 matmul on contiguous rows" if bf16 else "float32 matmul on contiguous rows (no bf16 on this CPU)"


class BF16OutputLayer(TrainerCallback):

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model = getattr(model, "module", model)  # under DDP, the model it wraps
        on_cpu = next(model.parameters()).device.type == "cpu"
        what = bf16_output_layer(model, bf16=on_cpu and cpu_has_bf16()) if on_cpu else "left as it is: not on CPU"
        logger.warning("xtk: output layer %s", what)


callbacks_map[CALLBACK] = BF16OutputLayer
