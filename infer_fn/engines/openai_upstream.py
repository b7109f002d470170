"""Any OpenAI-compatible server as the engine; in production the vLLM container of the same pod.

Metering: a whole (non-streamed) request is forwarded whole, and every OpenAI-compatible server
answers it with exact usage. A streamed one asks for `stream_options.include_usage` and vLLM's
`continuous_usage_stats`, so usage rides on every chunk and is exact even when the stream is cut.
A server that ignores those options (llama.cpp's) is metered from its tokenize endpoint — vLLM's
`/tokenize` or llama.cpp's `/extras/tokenize/count` — on the produced text, or failing that by
counting streamed deltas. Caveat of that fallback for chat: without vLLM's chat-aware `/tokenize`
the prompt is counted without its chat-template tokens (a lower bound)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families
from requests.adapters import HTTPAdapter

from infer_fn.engines.base import (
    EngineError,
    Generation,
    InvalidRequest,
    LoadSignals,
    Message,
    SamplingParams,
)

CONNECT_TIMEOUT = 5.0
# /metrics is scraped at most this often however often our own /metrics is read.
SIGNALS_TTL = 1.0
# vLLM puts usage on every chunk only when both are set (include_usage gates the other).
STREAM_OPTIONS = {"include_usage": True, "continuous_usage_stats": True}
# vLLM's load gauges, one sample per engine (label `engine`; several with data parallelism).
# The KV-cache gauge was `vllm:gpu_cache_usage_perc` until vLLM PR #18354 added
# `vllm:kv_cache_usage_perc`; both were exported for a while and current releases (0.33) export
# only the new one. The new name is read first, the old one for older images.
WAITING = ("vllm:num_requests_waiting",)
RUNNING = ("vllm:num_requests_running",)
KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


@dataclass(frozen=True)
class _Upstream:
    session: requests.Session
    model: str


class OpenAIUpstreamEngine:
    def __init__(
        self,
        base_url: str,
        model_name: str,
        *,
        upstream_model: str | None,
        load_timeout: float,
        request_timeout: float,
        connections: int,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._model_name = model_name
        self._wanted_model = upstream_model
        self._context_window: int | None = None
        self._load_timeout = load_timeout
        self._request_timeout = request_timeout
        self._connections = connections
        self._upstream: _Upstream | None = None
        self._signals_lock = threading.Lock()
        self._signals: tuple[float, LoadSignals] = (0.0, LoadSignals())
        self._tokenize_path: str | None = None

    @property
    def loaded(self) -> bool:
        return self._upstream is not None

    @property
    def context_window(self) -> int | None:
        return self._context_window

    def models(self) -> list[str]:
        return [self._model_name]

    def load(self) -> None:
        """Wait for the upstream server to come up (a vLLM cold start loads weights to the GPU)."""
        session = requests.Session()
        # One pooled connection per concurrent request (+ tokenize/metrics), none discarded.
        session.mount("http://", HTTPAdapter(pool_maxsize=self._connections + 2))
        session.mount("https://", HTTPAdapter(pool_maxsize=self._connections + 2))
        deadline = time.monotonic() + self._load_timeout
        while True:
            try:
                reply = session.get(f"{self._base}/v1/models", timeout=CONNECT_TIMEOUT)
                if reply.status_code == 200:
                    break
                problem = f"HTTP {reply.status_code}"
            except requests.RequestException as exc:
                problem = str(exc)
            if time.monotonic() >= deadline:
                session.close()
                raise EngineError(f"upstream {self._base} did not come up: {problem}")
            time.sleep(0.25)
        try:
            listed = reply.json()["data"]
            ids = [entry["id"] for entry in listed]
        except (ValueError, KeyError, TypeError) as exc:
            session.close()
            raise EngineError(f"upstream {self._base} lists models unreadably: {exc}") from exc
        model = self._wanted_model or (ids[0] if ids else None)
        if model is None or model not in ids:
            session.close()
            raise EngineError(f"upstream {self._base} does not serve {model!r} (it has {ids})")
        # vLLM states the context window it was started with; other servers may not.
        for entry in listed:
            if entry["id"] == model and isinstance(entry.get("max_model_len"), int):
                self._context_window = entry["max_model_len"]
        self._upstream = _Upstream(session, model)

    def unload(self) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.session.close()

    def count_tokens(self, text: str) -> int:
        count = self._tokenize({"prompt": text, "add_special_tokens": False}, text)
        if count is None:
            raise EngineError(f"upstream {self._base} has no tokenize endpoint")
        return count

    def load_signals(self) -> LoadSignals:
        with self._signals_lock:
            fetched, signals = self._signals
            if time.monotonic() - fetched < SIGNALS_TTL:
                return signals
            signals = self._scrape_signals()
            self._signals = (time.monotonic(), signals)
            return signals

    def chat(
        self, messages: Sequence[Message], params: SamplingParams, *, stream: bool = True
    ) -> Generation:
        body: dict[str, Any] = {"messages": [dict(m) for m in messages]}
        return self._start("/v1/chat/completions", body, params, chat=True, stream=stream)

    def complete(self, prompt: str, params: SamplingParams, *, stream: bool = True) -> Generation:
        body: dict[str, Any] = {"prompt": prompt}
        return self._start("/v1/completions", body, params, chat=False, stream=stream)

    def _require(self) -> _Upstream:
        upstream = self._upstream
        if upstream is None:
            raise EngineError("engine is not loaded")
        return upstream

    def _start(
        self, path: str, body: dict[str, Any], params: SamplingParams, *, chat: bool, stream: bool
    ) -> Generation:
        upstream = self._require()
        body.update(
            model=upstream.model,
            temperature=params.temperature,
            top_p=params.top_p,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
        )
        if stream:
            body.update(stream=True, stream_options=STREAM_OPTIONS)
        if params.max_tokens is not None:
            body["max_tokens"] = params.max_tokens
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        try:
            reply = upstream.session.post(
                f"{self._base}{path}",
                json=body,
                stream=stream,
                timeout=(CONNECT_TIMEOUT, self._request_timeout),
            )
        except requests.RequestException as exc:
            raise EngineError(f"upstream unreachable: {exc}") from exc
        if reply.status_code >= 400:
            _raise_for_upstream(reply)
        generation = Generation(prompt_tokens=0)
        if stream:
            generation.pieces = self._stream(generation, reply, body, chat=chat)
        else:
            # A whole response carries usage on every OpenAI-compatible server: exact for all.
            text = self._whole(generation, reply, body, chat=chat)
            generation.pieces = iter([text] if text else [])
        return generation

    def _whole(
        self, gen: Generation, reply: requests.Response, body: dict[str, Any], *, chat: bool
    ) -> str:
        try:
            payload = reply.json()
            choice = payload["choices"][0]
            text = str(
                (choice.get("message") or {}).get("content") or "" if chat else choice["text"]
            )
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise EngineError(f"upstream answered an unreadable completion: {exc}") from exc
        if choice.get("finish_reason") in ("stop", "length"):
            gen.finish_reason = choice["finish_reason"]
        usage = payload.get("usage")
        if usage:
            gen.prompt_tokens = int(usage.get("prompt_tokens", 0))
            gen.completion_tokens = int(usage.get("completion_tokens", 0))
        else:
            self._meter_without_usage(gen, body, text, 1 if text else 0, chat=chat)
        return text

    def _stream(
        self, gen: Generation, reply: requests.Response, body: dict[str, Any], *, chat: bool
    ) -> Iterator[str]:
        produced: list[str] = []
        usage_seen = False
        deltas = 0
        done = False
        try:
            for line in _lines(reply):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise EngineError(f"upstream failed mid-stream: {_message(chunk)}")
                usage = chunk.get("usage")
                if usage:
                    usage_seen = True
                    gen.prompt_tokens = int(usage.get("prompt_tokens", 0))
                    gen.completion_tokens = int(usage.get("completion_tokens", 0))
                for choice in chunk.get("choices") or ():
                    text = (
                        (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                    )
                    if choice.get("finish_reason") in ("stop", "length"):
                        gen.finish_reason = choice["finish_reason"]
                    if text:
                        produced.append(text)
                        deltas += 1
                        if not usage_seen:
                            gen.completion_tokens = deltas
                        yield text
            if not done:
                raise EngineError("upstream stream ended before [DONE]")
        except (requests.RequestException, ValueError) as exc:
            raise EngineError(f"upstream stream broke: {exc}") from exc
        finally:
            # Closing the connection is how vLLM learns to abort the request.
            reply.close()
            if not usage_seen:
                self._meter_without_usage(gen, body, "".join(produced), deltas, chat=chat)

    def _meter_without_usage(
        self, gen: Generation, body: dict[str, Any], text: str, deltas: int, *, chat: bool
    ) -> None:
        if chat:
            messages = body["messages"]
            joined = "".join(_content_text(m.get("content")) for m in messages)
            prompt = self._tokenize({"messages": messages, "add_generation_prompt": True}, joined)
        else:
            prompt = self._tokenize({"prompt": body["prompt"]}, body["prompt"])
        gen.prompt_tokens = prompt or 0
        if text:
            counted = self._tokenize({"prompt": text, "add_special_tokens": False}, text)
            gen.completion_tokens = counted if counted is not None else deltas

    def _tokenize(self, vllm_body: dict[str, Any], text: str) -> int | None:
        """Count tokens with whichever tokenize endpoint the upstream has (remembered)."""
        upstream = self._upstream
        if upstream is None:
            return None
        candidates = {
            "/tokenize": {"model": upstream.model, **vllm_body},
            "/extras/tokenize/count": {"input": text},
        }
        paths = [self._tokenize_path] if self._tokenize_path else list(candidates)
        for path in paths:
            try:
                reply = upstream.session.post(
                    f"{self._base}{path}", json=candidates[path], timeout=CONNECT_TIMEOUT
                )
            except requests.RequestException:
                continue
            if reply.status_code != 200:
                continue
            try:
                count = int(reply.json()["count"])
            except (ValueError, KeyError, TypeError):
                continue
            self._tokenize_path = path
            return count
        return None

    def _scrape_signals(self) -> LoadSignals:
        upstream = self._upstream
        if upstream is None:
            return LoadSignals()
        try:
            reply = upstream.session.get(f"{self._base}/metrics", timeout=CONNECT_TIMEOUT)
        except requests.RequestException:
            return LoadSignals()
        if reply.status_code != 200:
            return LoadSignals()
        samples: dict[str, list[float]] = {}
        try:
            for family in text_string_to_metric_families(reply.text):
                for sample in family.samples:
                    samples.setdefault(sample.name, []).append(sample.value)
        except ValueError:  # an unreadable exposition means no signal, never a failed scrape
            return LoadSignals()
        # Requests add up across engines; a usage ratio does not: the fullest engine's stands.
        waiting, running = (_first(samples, names, sum) for names in (WAITING, RUNNING))
        return LoadSignals(
            waiting=None if waiting is None else int(waiting),
            running=None if running is None else int(running),
            kv_cache_usage=_first(samples, KV_CACHE, max),
        )


def _lines(reply: requests.Response) -> Iterator[bytes]:
    """The body's lines as soon as each arrives.

    `iter_lines(chunk_size=None)` only streams chunked bodies: a close-delimited one is read to
    its end first. `read1` returns whatever one socket read brings, in either framing."""
    pending = b""
    while chunk := reply.raw.read1(65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line.rstrip(b"\r") for line in lines)
    if pending:
        yield pending


def _first(
    samples: Mapping[str, list[float]],
    names: Sequence[str],
    combine: Callable[[list[float]], float],
) -> float | None:
    """The first of `names` the exposition has, its samples combined."""
    return next((combine(samples[n]) for n in names if n in samples), None)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _message(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", error))
    if error is not None:
        return str(error)
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)


def _raise_for_upstream(reply: requests.Response) -> None:
    try:
        body: Any = reply.json()
    except ValueError:
        body = reply.text
    finally:
        reply.close()
    message = _message(body)
    # The upstream judged the request itself (context window, bad parameter): the client's fault.
    if reply.status_code in (400, 422):
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        code = error.get("code") or "invalid_request"
        raise InvalidRequest(message, code=str(code), param=error.get("param"))
    raise EngineError(f"upstream answered HTTP {reply.status_code}: {message}")
