"""An ms-swift plugin for benchmarks/train_speed.py: the trainer counts the tokens it feeds the model, real and
padded, and the rows its output layer computes, summed over DDP processes, into logging.jsonl
(`num_input_tokens_seen`, `padded_tokens_seen`, `logit_rows_seen`).

    swift sft ... --external_plugins benchmarks/token_count_plugin.py --callbacks count_tokens

transformers' `include_num_input_tokens_seen="non_padding"` counts the real tokens (attention mask), but ms-swift's
command line only takes a boolean there (which counts padding): the callback sets it on the trainer's arguments.
The output layer's rows: with `use_logits_to_keep` (ms-swift's default where the model takes `logits_to_keep`) the
trainer computes logits only from the first answer token on (mixin.py `prepare_logits_to_keep`); the callback
counts them as that function cuts them. It only counts; what is trained is unchanged. The sums go through the
trainer's accelerator, over the DDP group (a multi-process CPU launch is one only with `--use_cpu true`, which
toolkit/train/swift.py's sft_argv adds).
"""

import torch
from swift.callbacks import TrainerCallback, callbacks_map


class CountTokens(TrainerCallback):

    def __init__(self, args, trainer):
        super().__init__(args, trainer)
        args.include_num_input_tokens_seen = "non_padding"
        padded, logit_rows = [0], [0]
        track, log = trainer._track_num_input_tokens, trainer.log

        def kept_rows(labels: torch.Tensor) -> int:
            if args.use_logits_to_keep is False:
                return labels.numel()
            answer = labels != -100
            if labels.shape[0] == 1:  # a mask: every answer position, the first one's predecessor for it
                return int(answer[0, 1:].sum()) + 1
            return (labels.shape[-1] - int(answer.int().argmax(-1).min()) + 1) * labels.shape[0]  # a suffix

        def track_padded(inputs):
            track(inputs)
            n = torch.as_tensor([inputs["input_ids"].numel(), kept_rows(inputs["labels"])], device=args.device,
                                dtype=torch.int64)
            total = trainer.accelerator.gather(n).view(-1, 2).sum(0)
            padded[0] += total[0].item()
            logit_rows[0] += total[1].item()

        def log_padded(logs, *rest, **kwargs):
            if "loss" in logs:  # a training step's log row
                logs["padded_tokens_seen"] = padded[0]
                logs["logit_rows_seen"] = logit_rows[0]
                logs["use_logits_to_keep"] = args.use_logits_to_keep
            return log(logs, *rest, **kwargs)

        trainer._track_num_input_tokens, trainer.log = track_padded, log_padded


callbacks_map["count_tokens"] = CountTokens
