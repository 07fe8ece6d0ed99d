"""An ms-swift plugin for benchmarks/train_speed.py: the trainer counts the tokens it feeds the model, real and
padded, summed over DDP processes, into logging.jsonl (`num_input_tokens_seen`, `padded_tokens_seen`).

    swift sft ... --external_plugins benchmarks/token_count_plugin.py --callbacks count_tokens

transformers' `include_num_input_tokens_seen="non_padding"` counts the real tokens (attention mask), but ms-swift's
command line only takes a boolean there (which counts padding): the callback sets it on the trainer's arguments.
It only counts; what is trained is unchanged. The sums go through the trainer's accelerator, over the DDP group
(a multi-process CPU launch is one only with `--use_cpu true`, which toolkit/train.py's sft_argv adds).
"""

import torch
from swift.callbacks import TrainerCallback, callbacks_map


class CountTokens(TrainerCallback):

    def __init__(self, args, trainer):
        super().__init__(args, trainer)
        args.include_num_input_tokens_seen = "non_padding"
        padded = [0]
        track, log = trainer._track_num_input_tokens, trainer.log

        def track_padded(inputs):
            track(inputs)
            n = torch.as_tensor(inputs["input_ids"].numel(), device=args.device, dtype=torch.int64)
            padded[0] += trainer.accelerator.gather(n).sum().item()

        def log_padded(logs, *rest, **kwargs):
            if "loss" in logs:  # a training step's log row
                logs["padded_tokens_seen"] = padded[0]
            return log(logs, *rest, **kwargs)

        trainer._track_num_input_tokens, trainer.log = track_padded, log_padded


callbacks_map["count_tokens"] = CountTokens
