"""Thinking off: the one rule for how a model is told not to think, wherever xtk asks one.

xtk's students answer at once (the JSON and nothing before it), so a hybrid-thinking model (Qwen3) is trained
and asked with thinking off:
- A model loaded here (training, the vllm, transformers and likelihood backends, llama.cpp, export's prompt
  check): `thinking_off` decides from the template it is served with, and its chat template is rendered with
  `template_kwargs`.
- A model asked through an OpenAI-compatible endpoint (labelling, synth, the teacher gate, the teacher's
  evaluation, any model evaluated with --backend openai): its template is not known here, so every request
  carries the recipe's `teacher.enable_thinking` (`request_body`), the endpoint settings beside its URL, time-out
  and retries. One setting for every request, so that the gate scores the teacher as it will label.
"""

from __future__ import annotations

from toolkit.task.schema import TeacherSpec

# ms-swift's hybrid-thinking model types and templates (qwen3, qwen3_moe, ...) and llama.cpp's GGUF architectures
# (qwen3, qwen3moe) all start with it
HYBRID = "qwen3"


def thinking_off(model_type: str | None, template: str | None, name: str | None = None) -> bool:
    """Whether a model loaded here is served with thinking off. Decided by the template it is served with: its
    ms-swift model type or template, or a GGUF's architecture (as model_type); where neither is known, its name."""
    served = model_type or template
    return served.startswith(HYBRID) if served else HYBRID in (name or "").lower()


def template_kwargs(off: bool) -> dict:
    """What a chat template is rendered with (transformers' apply_chat_template, vLLM's chat, llama.cpp's)."""
    return {"enable_thinking": False} if off else {}


def request_body(teacher: TeacherSpec) -> dict:
    """What every request to an endpoint carries beside the chat: the recipe's teacher.enable_thinking, nothing
    where it is null (an endpoint that refuses unknown fields)."""
    return {} if teacher.enable_thinking is None else {"enable_thinking": teacher.enable_thinking}
