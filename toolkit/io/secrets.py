"""Secrets stay out of every log, manifest, error text and args.json: values are redacted wherever xtk writes
or prints text that could carry them, and a child process gets only the secrets it has a use for."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from toolkit.io.jsonl import write_text

SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
# Credentials a child (swift sft / export / deploy) needs for gated or private hub models; other secrets (a
# teacher's API key) have no use there.
CHILD_SECRETS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN")
MASK = "***"
_SECRET_FLAG = re.compile(r"^--?[\w-]*(token|key|secret|password)[\w-]*$", re.I)


def looks_secret(name: str) -> bool:
    """HF_TOKEN, DASHSCOPE_API_KEY, PGPASSWORD: yes; TOKENIZERS_PARALLELISM: no."""
    return any(part.endswith(w) for part in name.upper().split("_") for w in SECRET_WORDS)


def secret_values(extra: Iterable[str] = ()) -> list[str]:
    """Values to hide: those of secret-looking environment variables, plus `extra`; short ones (a "1", a
    "local") would mask ordinary text and protect nothing. Longest first, so no value is half-replaced."""
    values = {v for k, v in os.environ.items() if looks_secret(k)} | set(extra)
    return sorted((v for v in values if v and len(v) >= 6), key=len, reverse=True)


def redact(text: str, extra: Iterable[str] = ()) -> str:
    for value in secret_values(extra):
        text = text.replace(value, MASK)
    return text


def redact_argv(argv: Iterable[str]) -> list[str]:
    """An argv as it may be recorded: the value after a secret-looking flag (`--hub_token X`, `--api-key=X`)
    is masked, and any known secret value wherever it appears."""
    out, hide_next = [], False
    for word in map(str, argv):
        flag, eq, _ = word.partition("=")
        if hide_next:
            out.append(MASK)
        elif eq and _SECRET_FLAG.match(flag):
            out.append(f"{flag}={MASK}")
        else:
            out.append(redact(word))
        hide_next = not eq and bool(_SECRET_FLAG.match(word))
    return out


def secret_arg_values(argv: Iterable[str]) -> list[str]:
    """The values secret-looking flags carry in an argv (to redact them from a child's own output too)."""
    words, found = list(map(str, argv)), []
    for i, word in enumerate(words):
        flag, eq, value = word.partition("=")
        if _SECRET_FLAG.match(flag):
            if eq:
                found.append(value)
            elif i + 1 < len(words):
                found.append(words[i + 1])
    return found


def scrub_files(paths: Iterable, extra: Iterable[str] = ()) -> None:
    """Redact secrets from files a child wrote (ms-swift's args.json records every argument it was given)."""
    extra = list(extra)
    for path in map(Path, paths):
        text = path.read_text(encoding="utf-8", errors="replace")
        clean = redact(text, extra)
        if clean != text:
            write_text(path, clean)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment an external command gets: ours, minus the secrets it has no use for, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not looks_secret(k) or k in CHILD_SECRETS}
    env.update(extra or {})
    return env
