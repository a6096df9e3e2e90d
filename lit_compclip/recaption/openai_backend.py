"""Recaption through any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, hosted APIs) with threads."""

from __future__ import annotations

import base64
import email.utils
import http.client
import json
import logging
import os
import random
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lit_compclip.recaption.base import Outcome, Request

log = logging.getLogger(__name__)

MIME = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp", "gif": "gif", "bmp": "bmp", "tif": "tiff",
        "tiff": "tiff"}
# 408/409 are transient on several servers; 429 is rate limiting; 5xx is an overloaded or restarting server.
RETRY_STATUS = frozenset({408, 409, 429})
# Auth, wrong path or unknown model: every request would fail the same way, so the run stops instead of writing
# shards full of failures that a resumed run would then skip.
FATAL_STATUS = {401: "the API key was rejected (check ${env})", 403: "access denied (check ${env})",
                404: "endpoint or model not found (check base_url and model)"}
REFUSAL = re.compile(r"^\W*(i'?m sorry|i am sorry|sorry,|i cannot|i can'?t|i can’t|i'?m unable|i am unable|"
                     r"i'?m not able|i am not able|i won'?t)(?![a-z])", re.IGNORECASE)


class _Retryable(Exception):
    """A try that may succeed if repeated; `wait` is the server's Retry-After in seconds, if it sent one."""

    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.reason, self.wait = reason, wait


class _Fatal(Exception):
    """A failure no retry and no other sample would avoid."""


def _retry_after(headers) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date), None when absent or unreadable."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _error_message(body: bytes) -> tuple[str, str]:
    """(message, code) from an OpenAI-style error body, shortened to one line."""
    try:
        err = json.loads(body).get("error", {})
        err = err if isinstance(err, dict) else {"message": str(err)}
        message, code = str(err.get("message") or ""), str(err.get("code") or "")
    except (ValueError, AttributeError):
        message, code = body.decode("utf-8", "replace"), ""
    return " ".join(message.split())[:200], code


def parse_answer(answer: dict[str, Any]) -> Outcome:
    """Turn one chat-completions response body into an Outcome (text, or why there is none)."""
    choices = answer.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return Outcome(None, "no choices in answer")
    usage = answer.get("usage") or {}
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    tokens = tokens if isinstance(tokens, int) else None
    message = choices[0].get("message") or {}
    content = message.get("content")
    if isinstance(content, list):  # some servers answer with content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    text = (content or "").strip()
    if choices[0].get("finish_reason") == "content_filter" or message.get("refusal") or REFUSAL.match(text):
        return Outcome(None, "refused", tokens)
    if not text:
        return Outcome(None, "empty answer", tokens)
    return Outcome(text, None, tokens)


class OpenAIBackend:
    """POSTs each sample's image and prompt to {base_url}/chat/completions, `concurrency` requests at a time."""

    name = "openai"
    backoff_s = 0.5  # first retry waits about this long, doubling each time (instances may lower it, e.g. in tests)
    max_wait_s = 30.0  # cap on any one wait, the server's Retry-After included

    def __init__(self, model: str, base_url: str = "https://api.openai.com/v1", api_key_env: str = "OPENAI_API_KEY",
                 max_tokens: int = 300, temperature: float = 0.2, top_p: float = 1.0, timeout: float = 60.0,
                 retries: int = 4, concurrency: int = 8, seed: int | None = None):
        url = urllib.parse.urlsplit(str(base_url))
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValueError(f"openai backend: base_url must be an http:// or https:// URL, got {base_url!r}")
        checks = {"model": bool(model) and isinstance(model, str), "max_tokens": max_tokens >= 1,
                  "temperature": temperature >= 0, "top_p": 0 < top_p <= 1, "timeout": timeout > 0,
                  "retries": retries >= 0, "concurrency": concurrency >= 1}
        for option, ok in checks.items():
            if not ok:
                raise ValueError(f"openai backend: invalid {option}={locals()[option]!r}")
        base = str(base_url).rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model, self.api_key_env = model, api_key_env
        self.max_tokens, self.temperature, self.top_p, self.seed = max_tokens, temperature, top_p, seed
        self.timeout, self.retries, self.concurrency = float(timeout), retries, concurrency
        self._pool: ThreadPoolExecutor | None = None
        # The key is read from the environment for each request and never stored, so no repr/vars can show it.

    def __repr__(self) -> str:
        return (f"OpenAIBackend(model={self.model!r}, url={self.url!r}, api_key_env={self.api_key_env!r}, "
                f"concurrency={self.concurrency}, retries={self.retries}, timeout={self.timeout})")

    def body(self, request: Request) -> dict[str, Any]:
        """The chat-completions JSON for one request: one user message holding the image and the prompt."""
        ext = request.image_ext.lower().lstrip(".")
        data_url = f"data:image/{MIME.get(ext, ext)};base64,{base64.b64encode(request.image).decode('ascii')}"
        body = {"model": self.model,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}},
                                                          {"type": "text", "text": request.prompt}]}],
                "max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p}
        if self.seed is not None:
            body["seed"] = self.seed
        return body

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _scrub(self, text: str) -> str:
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        return text.replace(key, "***") if key else text

    def _try(self, payload: bytes) -> Outcome:
        """One HTTP attempt: an Outcome, or _Retryable / _Fatal."""
        req = urllib.request.Request(self.url, data=payload, headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            try:
                message, code = _error_message(e.read())
            except (OSError, ValueError):
                message, code = "", ""
            if e.code in FATAL_STATUS:
                raise _Fatal(f"HTTP {e.code}: " + FATAL_STATUS[e.code].replace("${env}", f"${self.api_key_env}"))
            if e.code in RETRY_STATUS or e.code >= 500:
                raise _Retryable(f"HTTP {e.code}", _retry_after(e.headers))
            if code == "content_policy_violation":
                return Outcome(None, "refused")
            # Never echo auth-related text; other 4xx messages are useful ("image too large") but scrubbed anyway.
            return Outcome(None, f"HTTP {e.code}" + (f": {self._scrub(message)}" if message else ""))
        except urllib.error.URLError as e:
            if isinstance(e.reason, (socket.timeout, TimeoutError)):
                raise _Retryable("timeout")
            raise _Retryable(f"connection error ({self._scrub(str(e.reason))})")
        except (socket.timeout, TimeoutError):
            raise _Retryable("timeout")
        except (OSError, http.client.HTTPException) as e:  # resets, half-read bodies, protocol errors
            raise _Retryable(f"connection error ({type(e).__name__})")
        try:
            answer = json.loads(raw)
        except ValueError:
            return Outcome(None, "answer is not JSON")
        return parse_answer(answer) if isinstance(answer, dict) else Outcome(None, "answer is not a JSON object")

    def _one(self, request: Request) -> Outcome:
        """Try up to retries + 1 times with exponential backoff and jitter; failures become an Outcome's error."""
        payload = json.dumps(self.body(request)).encode()
        tries = self.retries + 1
        for attempt in range(tries):
            try:
                return self._try(payload)
            except _Retryable as e:
                if attempt + 1 == tries:
                    return Outcome(None, f"{e.reason} after {tries} {'try' if tries == 1 else 'tries'}")
                backoff = self.backoff_s * 2 ** attempt
                wait = e.wait if e.wait is not None else backoff * random.uniform(0.5, 1.0)
                wait = min(wait, self.max_wait_s)
                # debug: a dead server would print every retry of every request in flight
                log.debug("recaption %s: %s, retry %d/%d in %.2f s", request.key, e.reason, attempt + 1,
                          self.retries, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")

    def caption(self, requests: list[Request]) -> list[Outcome]:
        """One Outcome per request, same order; raises ValueError when the server rejects the key/model/URL."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="recaption-openai")
        futures = [self._pool.submit(self._one, r) for r in requests]
        try:
            return [f.result() for f in futures]
        except _Fatal as e:
            for f in futures:
                f.cancel()  # stop the queued ones; those in flight end by themselves
            raise ValueError(f"openai backend at {self.url}: {e}") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
