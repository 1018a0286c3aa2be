"""An OpenAI-compatible chat-completions client (vLLM, TGI, ...) as a query generator.

Requests go to `{endpoint}/chat/completions` with a single user turn, at most `concurrency` in
flight. Given several endpoints (one server per host is the usual deployment), process i of a
multi-process run sends everything to endpoint i % count, so every host mines against its own
server. Thinking is switched off through `chat_template_kwargs` (vLLM's and SGLang's extension;
Qwen3's `enable_thinking`) unless `enable_thinking` is set, and any `<think>` block left in an
answer is removed before the queries are parsed. Timeouts, connection errors and retryable statuses
(408, 409, 425, 429, 5xx) are retried with exponential backoff up to `max_retries` times; then a
`GenerationError` says which URL failed, how and after how many attempts. The API key is read from
an environment variable, sent only in the Authorization header, and never logged, printed or written
anywhere (not even in error messages).
"""

import http.client
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from querit_jax.errors import GenerationError
from querit_jax.mining.generators import SamplingConfig, strip_thinking

RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}
log = logging.getLogger("querit_jax")


class OpenAIChatGenerator:
    name = "openai"

    def __init__(
        self,
        endpoint: str | Sequence[str],
        model: str,
        sampling: SamplingConfig = SamplingConfig(),
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 4,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        process_index: int = 0,
        enable_thinking: bool | None = False,
    ):
        """`endpoint`: one base URL or several (this process uses entry process_index % count).
        `enable_thinking`: None sends no chat-template switch (servers that reject the field)."""
        if concurrency < 1 or max_retries < 0:
            raise ValueError("concurrency must be >= 1 and max_retries >= 0.")
        endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        if not endpoints:
            raise ValueError("Give at least one endpoint.")
        self.endpoints = endpoints
        self.enable_thinking = enable_thinking
        self.url = endpoints[process_index % len(endpoints)].rstrip("/") + "/chat/completions"
        self.model, self.sampling = model, sampling
        self.concurrency, self.timeout_s, self.max_retries, self.backoff_s = (
            concurrency,
            timeout_s,
            max_retries,
            backoff_s,
        )
        self._key = (
            os.environ.get(api_key_env) or None
        )  # kept private: never in repr, logs or errors

    def __repr__(self) -> str:
        key = "set" if self._key else "unset"
        return f"OpenAIChatGenerator(url={self.url!r}, model={self.model!r}, key={key})"

    def _body(self, prompt: str, seed: int) -> bytes:
        s = self.sampling
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": int(seed),
        }
        if s.stop:
            body["stop"] = list(s.stop)
        if s.top_k:
            body["top_k"] = s.top_k
        if self.enable_thinking is not None:
            body["chat_template_kwargs"] = {"enable_thinking": self.enable_thinking}
        return json.dumps(body).encode()

    def _request(self, prompt: str, seed: int) -> str:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        problem, retry_after = "", None
        for attempt in range(self.max_retries + 1):
            if attempt:  # the server's Retry-After when it sent one, else backoff with jitter
                delay = self.backoff_s * 2 ** (attempt - 1) * (1 + random.random())
                time.sleep(min(retry_after if retry_after is not None else delay, 120.0))
            retry_after = None
            request = urllib.request.Request(
                self.url, data=self._body(prompt, seed), headers=headers, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                return payload["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:200].replace(self._key or "\0", "***")
                problem = f"HTTP {e.code} ({detail.strip()})"
                if e.code not in RETRYABLE:
                    break
                retry_after = _seconds(e.headers.get("Retry-After") if e.headers else None)
            except (
                urllib.error.URLError,
                TimeoutError,
                ConnectionError,
                http.client.HTTPException,  # IncompleteRead, RemoteDisconnected, ...
            ) as e:
                problem = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except (KeyError, IndexError, TypeError, UnicodeDecodeError, ValueError) as e:
                raise GenerationError(
                    f"{self.url}: the response is not a chat completion ({e})."
                ) from None
            log.warning(
                f"generation request to {self.url} failed (attempt {attempt + 1}): {problem}"
            )
        raise GenerationError(
            f"{self.url}: giving up after {attempt + 1} attempt(s); last error: {problem}."
        )

    def generate(self, prompts, documents, seeds) -> list[str]:
        del documents  # the prompt already holds the document
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            futures = [pool.submit(self._request, p, s) for p, s in zip(prompts, seeds)]
            wait(futures, return_when=FIRST_EXCEPTION)
            return [strip_thinking(f.result()) for f in futures]  # raises the first failure
        finally:
            # On a failure, queued requests are dropped instead of each retrying a dead server.
            pool.shutdown(wait=True, cancel_futures=True)


def _seconds(value) -> float | None:
    """A Retry-After header in seconds (the HTTP-date form is ignored), or None."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
