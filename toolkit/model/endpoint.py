"""One OpenAI-compatible endpoint (a teacher, `vllm serve`, `swift deploy`) as labelling and evaluation use it.

- One client per job, opened and closed once, on the event loop that uses it.
- Our own retry policy (the client's is off): 429 (honouring a sane Retry-After), 5xx, time-outs and dropped
  connections are retried with exponential back-off and full jitter.
- A response that arrived is an answer, usable or not: a truncated body or a non-string `content` comes back
  as an `Answer` with its problem, to be kept (it was paid for), never as an exception.
- Fail fast: an endpoint that refuses the key, does not exist, cannot be reached, or lets its first requests time
  out before it ever answered stops the job with one clear error instead of turning every record into "gave up".
  One that answered and then dies (DOWN_AFTER requests in a row with no response at all: time-outs, refused or
  dropped connections) stops it too, with Unanswered (exit 3): the job resumes once the endpoint is back.
- Every error text is redacted of the API key before anyone sees it.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from toolkit.io.errors import StageError, Unanswered
from toolkit.io.keys import digest
from toolkit.io.secrets import redact

# Before the endpoint has answered once, a refused connection is most likely a wrong URL or a server that is
# not up: two quick retries, then stop, rather than ~30 s of back-off for every record.
UNREACHED_TRIES = 3
# Before the endpoint has answered once, a request that times out is tried this often, then the endpoint is given
# up on: at the defaults (120 s, 6 retries) a hung server would otherwise hold a job ~14 minutes before its
# first record even gave up. Once it has answered, time-outs get the full retries (a busy server, not a dead one).
UNANSWERED_TIMEOUT_TRIES = 2
# Once it has answered, this many requests in a row without any response (each after its time-out, or refused):
# the endpoint is down. With 16 in flight that is one round of time-outs, not ~14 minutes of retries a record.
DOWN_AFTER = 8


class EndpointError(StageError):
    """The endpoint as a whole is unusable (wrong URL, key or model; unreachable): the job stops."""


class GaveUp(Exception):
    """One request that never got an answer after its retries (not paid): the record may be asked again."""


@dataclass
class Answer:
    content: str | None  # the model's text; None when the response was not a usable completion
    problem: str | None = None  # why it is unusable (e.g. a truncated body)
    raw: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Usage:
    requests: int = 0
    retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    answered: int = 0


def request_key(*parts) -> str:
    """A stable key of what was asked (model, prompt, input, settings): an answer is never paid for twice."""
    return digest(parts, 32)


def parse_completion(body: str) -> Answer:
    """A chat-completion response body -> Answer; a malformed one is an answer with a problem."""
    try:
        r = json.loads(body)
    except json.JSONDecodeError as exc:
        return Answer(None, f"the response body is not valid JSON ({exc.msg} at {exc.pos} of {len(body)} "
                      "characters: truncated?)", body[:2000])
    if not isinstance(r, dict):
        return Answer(None, f"the response is a JSON {type(r).__name__}, expected an object", body[:2000])
    usage = r.get("usage") if isinstance(r.get("usage"), dict) else {}
    tokens = (int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
    choices = r.get("choices")
    message = choices[0].get("message") if isinstance(choices, list) and choices and isinstance(
        choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        what = "no choices[0].message" if message is None else f"message.content is {json.dumps(content)[:40]}"
        return Answer(None, f"{what}, expected a string", body[:2000], *tokens)
    return Answer(content, None, "", *tokens)


def retry_after(headers) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date); None when absent or not a sane value."""
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


@dataclass
class Endpoint:
    base_url: str
    model: str
    api_key: str
    api_key_env: str | None = None
    timeout_s: float = 120
    max_retries: int = 6
    extra_body: dict = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)

    def __post_init__(self) -> None:
        import openai

        self.fatal: StageError | None = None  # once the endpoint is known unusable, no request is sent
        self.silent = 0  # requests in a row that got no response at all (no status line)

        self.openai = openai
        self.client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key or "EMPTY",
                                         timeout=self.timeout_s, max_retries=0)
        self.rng = random.Random()

    def redact(self, text: str) -> str:
        return redact(text, [self.api_key])

    def describe(self, exc: Exception) -> str:
        o = self.openai
        if isinstance(exc, o.APITimeoutError):
            return f"no answer within {self.timeout_s:g} s (the time-out; raise it if the endpoint is just slow)"
        if isinstance(exc, o.APIStatusError):
            return self.redact(f"HTTP {exc.status_code}: {exc.message}")[:300]
        return self.redact(f"{type(exc).__name__}: {str(exc).rstrip('.')}")[:300]

    def _delay(self, attempt: int, exc: Exception) -> float:
        told = retry_after(getattr(getattr(exc, "response", None), "headers", None))
        if told is not None:
            return min(told, 120.0)
        return self.rng.uniform(0, min(30.0, 0.5 * 2 ** attempt))  # full jitter

    def _transient(self, exc: Exception) -> bool:
        o = self.openai
        if isinstance(exc, (o.APITimeoutError, o.APIConnectionError)):
            return True
        return isinstance(exc, o.APIStatusError) and (exc.status_code in (408, 409, 429) or exc.status_code >= 500)

    def _fatal(self, exc: Exception) -> EndpointError | None:
        """The error that makes the whole endpoint unusable, if this is one."""
        o = self.openai
        if isinstance(exc, (o.AuthenticationError, o.PermissionDeniedError)):
            env = f" in ${self.api_key_env}" if self.api_key_env else ""
            return EndpointError(f"{self.base_url} refused the API key{env}: {self.describe(exc)}")
        if not self.usage.answered and not self._transient(exc):
            return EndpointError(f"{self.base_url} (model {self.model!r}) answered the first request with "
                                 f"{self.describe(exc)}: check the base URL and the model name")
        return None

    async def ask(self, messages: list[dict], max_tokens: int, temperature: float = 0.0) -> Answer:
        """The answer to one chat; GaveUp when retries are spent, EndpointError when the endpoint is unusable."""
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
                **self.extra_body}
        for attempt in range(self.max_retries + 1):
            if self.fatal:
                raise self.fatal
            self.usage.requests += 1
            try:
                # The client's raw post (its documented way to custom requests: same auth, errors, time-outs):
                # the typed create() spent ~2 ms of CPU per call on params and pydantic models, which capped
                # one core at ~200 records/s.
                text = await self.client.post("/chat/completions", cast_to=str, body=body)
            except Exception as exc:
                if not isinstance(exc, self.openai.APIError):
                    raise
                self.fatal = self._fatal(exc)
                # APITimeoutError is an APIConnectionError: neither has a response; any status line resets the count
                self.silent = self.silent + 1 if isinstance(exc, self.openai.APIConnectionError) else 0
                if self.usage.answered and self.silent >= DOWN_AFTER:
                    self.fatal = Unanswered(
                        f"{self.base_url} stopped answering: after {self.usage.answered} answers, {self.silent} "
                        f"requests in a row got no response (the last: {self.describe(exc)})")
                unreached = not self.usage.answered and isinstance(exc, self.openai.APIConnectionError) \
                    and not isinstance(exc, self.openai.APITimeoutError)
                if unreached and attempt + 1 >= UNREACHED_TRIES:
                    self.fatal = EndpointError(f"cannot reach {self.base_url}: {self.describe(exc)}. Is the "
                                               "server running, and is the URL right?")
                silent = not self.usage.answered and isinstance(exc, self.openai.APITimeoutError)
                if silent and attempt + 1 >= min(UNANSWERED_TIMEOUT_TRIES, self.max_retries + 1):
                    self.fatal = EndpointError(
                        f"{self.base_url} (model {self.model!r}) has never answered: {self.usage.requests} requests "
                        f"sent, each of the first tried {attempt + 1} times, all with {self.describe(exc)}. Is the "
                        "server stuck, or still loading the model?")
                if self.fatal:
                    raise self.fatal from None
                if not self._transient(exc) or attempt == self.max_retries:
                    raise GaveUp(self.describe(exc)) from None
                self.usage.retries += 1
                await asyncio.sleep(0.2 * (attempt + 1) if unreached else self._delay(attempt, exc))
                continue
            self.usage.answered += 1
            self.silent = 0
            answer = parse_completion(text)
            self.usage.tokens_in += answer.prompt_tokens
            self.usage.tokens_out += answer.completion_tokens
            return answer
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self.client.close()
