"""A fake OpenAI-compatible upstream, as a real process, for tests and benchmarks.

Run::

    python benchmarks/fake_upstream.py --host 127.0.0.1 --port 0 --port-file /tmp/port

It serves ``POST /v1/chat/completions`` (SSE when ``"stream": true``, else one
JSON completion), ``GET /health`` and ``GET /stats`` (requests seen per
scenario, JSON). Stack: plain trio sockets + h11 (no ASGI framework), the
lowest per-chunk overhead that stays a correct HTTP/1.1 server (keep-alive,
chunked encoding). Exits 0 on SIGTERM/SIGINT.

Behaviour = CLI defaults, overridden per request by (later wins):

1. header ``X-Fake-Upstream: {"tokens": 5, "stall_first": 3}`` (JSON object);
2. a magic prefix at the start of the last user message:
   ``[[fake:{"tokens":5,"stall_first":3}]] hello`` — this is the one that works
   through the Parley server, which forwards message text but not headers.

Keys: ``tokens`` (answer length, capped by the request's max_tokens, then
finish_reason "length"), ``tps`` (tokens per second, 0 = as fast as possible),
``stall_first`` (seconds before the first token), ``stall_after`` +
``stall_seconds`` (pause after N tokens), ``status`` (answer this HTTP status
before streaming) with ``status_times`` (only for the first K requests of the
scenario; absent = always) and ``retry_after``, ``error_after`` (an
``{"error": ...}`` chunk after N tokens), ``drop_after`` (close the connection
mid-body after N tokens), ``scenario`` (the key for ``status_times`` counting;
also header ``X-Fake-Scenario``), ``bench`` (a request id for benchmarks: the
fake then records, in memory, the request's arrival time and the write time of
every token, both ``time.perf_counter_ns()``; ``GET /traces`` returns them as
``{"traces": {id: {"arrival_ns": int, "first_ns": int, "t_ns": [per token]}}}``
and ``GET /traces?clear=1`` also forgets them — the side channel relay-latency
measurements use, since the Parley server does not forward ``t_ns``).

Each SSE chunk object carries a top-level ``"t_ns"``: ``time.perf_counter_ns()``
(CLOCK_MONOTONIC on Linux, comparable across processes) taken just before the
chunk is written, for relay-latency measurements. Token i's text is
``token_text(i)``; ``expected_text(n)`` is the whole answer of n tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import h11
import trio

_WORD_TEXT = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima "
    "mike november oscar papa quebec romeo sierra tango uniform victor whiskey "
    "xray yankee zulu"
)
WORDS = _WORD_TEXT.split()

_MAX_BODY = 8 * 1024 * 1024
_MAGIC_START = "[[fake:"
_MAGIC_END = "}]]"


def token_text(i: int) -> str:
    return ("" if i == 0 else " ") + WORDS[i % len(WORDS)]


def _choice(text: str) -> str:
    return f'{{"index":0,"delta":{{"content":{json.dumps(text)}}},"finish_reason":null}}'


def expected_text(n: int) -> str:
    return "".join(token_text(i) for i in range(n))


_FIRST_CHOICE = _choice(token_text(0))
_TOKEN_CHOICES = [_choice(" " + w) for w in WORDS]


@dataclass(frozen=True)
class Behaviour:
    tokens: int = 20
    tps: float = 50.0
    stall_first: float = 0.0
    stall_after: int | None = None
    stall_seconds: float = 0.0
    status: int | None = None
    status_times: int | None = None
    retry_after: float | None = None
    error_after: int | None = None
    drop_after: int | None = None
    scenario: str = ""
    bench: str = ""

    def merged(self, overrides: dict[str, Any]) -> Behaviour:
        known = {f.name for f in fields(self)}
        bad = set(overrides) - known
        if bad:
            raise ValueError(f"unknown fake-upstream keys: {sorted(bad)}")
        return replace(self, **overrides)


def magic_overrides(text: str) -> dict[str, Any]:
    text = text.lstrip()
    if not text.startswith(_MAGIC_START):
        return {}
    end = text.find(_MAGIC_END)
    if end < 0:
        return {}
    obj = json.loads(text[len(_MAGIC_START) : end + 1])
    if not isinstance(obj, dict):
        raise ValueError("magic prefix must hold a JSON object")
    return obj


class FakeUpstream:
    def __init__(self, defaults: Behaviour) -> None:
        self.defaults = defaults
        self.counts: dict[str, int] = {}
        self.traces: dict[str, dict[str, Any]] = {}
        self.started = time.time()

    # -- HTTP plumbing ---------------------------------------------------------
    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                request, body = await self._read_request(stream, conn)
                if request is None:
                    return
                keep = await self._dispatch(stream, conn, request, body)
                if not keep or conn.our_state is not h11.DONE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def _read_request(
        self, stream: trio.SocketStream, conn: h11.Connection
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)  # b"" means EOF
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > _MAX_BODY:
                    raise h11.RemoteProtocolError("body too large")
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None, b""

    async def _send(self, stream: trio.SocketStream, conn: h11.Connection, *events: Any) -> None:
        out = b"".join(conn.send(e) or b"" for e in events)
        await stream.send_all(out)

    async def _json(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        status: int,
        obj: Any,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        data = json.dumps(obj).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
        headers += extra or []
        await self._send(
            stream,
            conn,
            h11.Response(status_code=status, headers=headers),
            h11.Data(data=data),
            h11.EndOfMessage(),
        )

    async def _dispatch(
        self, stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, body: bytes
    ) -> bool:
        path = req.target.decode().split("?", 1)[0]
        method = req.method.decode()
        if method == "GET" and path in ("/health", "/v1/health"):
            await self._json(stream, conn, 200, {"status": "ok"})
        elif method == "GET" and path == "/stats":
            await self._json(stream, conn, 200, {"requests": self.counts})
        elif method == "GET" and path == "/traces":
            traces = self.traces
            if "clear=1" in req.target.decode():
                self.traces = {}
            await self._json(stream, conn, 200, {"traces": traces})
        elif method == "GET" and path == "/v1/models":
            await self._json(stream, conn, 200, {"object": "list", "data": [{"id": "fake"}]})
        elif method == "POST" and path == "/v1/chat/completions":
            return await self._chat(stream, conn, req, body)
        else:
            await self._json(stream, conn, 404, {"error": {"message": "not found"}})
        return True

    # -- chat completions ----------------------------------------------------------
    async def _chat(
        self, stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, body: bytes
    ) -> bool:
        arrival_ns = time.perf_counter_ns()
        headers = {k.decode().lower(): v.decode() for k, v in req.headers}
        try:
            payload = json.loads(body)
            messages = payload.get("messages") or []
            last_user = next(
                (m.get("content", "") for m in reversed(messages) if m.get("role") == "user"),
                "",
            )
            overrides: dict[str, Any] = {}
            if "x-fake-upstream" in headers:
                overrides.update(json.loads(headers["x-fake-upstream"]))
            if "x-fake-scenario" in headers:
                overrides["scenario"] = headers["x-fake-scenario"]
            if isinstance(last_user, str):
                overrides.update(magic_overrides(last_user))
            b = self.defaults.merged(overrides)
        except (ValueError, TypeError, AttributeError) as exc:
            await self._json(
                stream, conn, 400, {"error": {"message": f"bad request: {exc}", "code": 400}}
            )
            return True

        trace: list[int] | None = None
        if b.bench:
            trace = []
            self.traces[b.bench] = {"arrival_ns": arrival_ns, "first_ns": 0, "t_ns": trace}
        seen = self.counts.get(b.scenario, 0)
        self.counts[b.scenario] = seen + 1
        if b.status is not None and (b.status_times is None or seen < b.status_times):
            extra = [("retry-after", f"{b.retry_after:g}")] if b.retry_after is not None else []
            await self._json(
                stream,
                conn,
                b.status,
                {"error": {"message": f"fake status {b.status}", "code": b.status}},
                extra,
            )
            return True

        model = str(payload.get("model") or "fake")
        max_tokens = payload.get("max_tokens")
        n = b.tokens
        finish = "stop"
        if isinstance(max_tokens, int) and max_tokens < n:
            n, finish = max(0, max_tokens), "length"
        usage = {"prompt_tokens": len(json.dumps(messages)) // 4, "completion_tokens": n}
        usage["total_tokens"] = usage["prompt_tokens"] + n

        if not payload.get("stream"):
            if b.stall_first:
                await trio.sleep(b.stall_first)
            await self._json(
                stream,
                conn,
                200,
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": expected_text(n)},
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                },
            )
            return True

        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        return await self._stream(
            stream, conn, b, model, n, finish, usage if include_usage else None, trace
        )

    async def _stream(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        b: Behaviour,
        model: str,
        n: int,
        finish: str,
        usage: dict[str, int] | None,
        trace: list[int] | None = None,
    ) -> bool:
        await self._send(
            stream,
            conn,
            h11.Response(
                status_code=200,
                headers=[("content-type", "text/event-stream"), ("cache-control", "no-cache")],
            ),
        )
        head = (
            '{"id":"chatcmpl-fake","object":"chat.completion.chunk",'
            f'"created":{int(time.time())},"model":{json.dumps(model)},'
        )
        perf = time.perf_counter_ns

        async def chunk(choices: str, tail: str = "") -> int:
            # Hot path: chunked framing by hand (h11 is told only the end of the body).
            t_ns = perf()
            data = f'data: {head}{tail}"choices":[{choices}],"t_ns":{t_ns}}}\n\n'.encode()
            await stream.send_all(b"%x\r\n%b\r\n" % (len(data), data))
            return t_ns

        if b.stall_first:
            await trio.sleep(b.stall_first)
        first_ns = await chunk(
            '{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}'
        )
        if trace is not None and b.bench in self.traces:
            self.traces[b.bench]["first_ns"] = first_ns
        start = trio.current_time()
        for i in range(n):
            if i == b.error_after:
                return await self._mid_error(stream, conn)
            if i == b.drop_after:
                return False  # handle() closes the socket mid-body
            if i == b.stall_after and b.stall_seconds:
                await trio.sleep(b.stall_seconds)
                start = trio.current_time() - (i / b.tps if b.tps > 0 else 0.0)
            if b.tps > 0:
                await trio.sleep_until(start + (i + 1) / b.tps)
            t_ns = await chunk(_TOKEN_CHOICES[i % len(WORDS)] if i else _FIRST_CHOICE)
            if trace is not None:
                trace.append(t_ns)
        if n == b.error_after:
            return await self._mid_error(stream, conn)
        if n == b.drop_after:
            return False
        await chunk(f'{{"index":0,"delta":{{}},"finish_reason":"{finish}"}}')
        if usage is not None:
            await chunk("", f'"usage":{json.dumps(usage)},')
        await self._send(stream, conn, h11.Data(data=b"data: [DONE]\n\n"), h11.EndOfMessage())
        return True

    async def _mid_error(self, stream: trio.SocketStream, conn: h11.Connection) -> bool:
        err = {"error": {"message": "fake mid-stream error", "type": "server_error", "code": 500}}
        data = f"data: {json.dumps(err)}\n\n".encode()
        await self._send(stream, conn, h11.Data(data=data), h11.EndOfMessage())
        return True


def _raise_fd_limit() -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    except (ImportError, ValueError, OSError):
        pass


def _write_port_file(path: str, port: int) -> None:
    tmp = path + ".tmp"
    Path(tmp).write_text(str(port))
    os.replace(tmp, path)  # atomic: readers never see a partial number


async def serve(host: str, port: int, port_file: str | None, defaults: Behaviour) -> None:
    app = FakeUpstream(defaults)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, host=host), app.handle, port
            )
            bound = listeners[0].socket.getsockname()[1]
            if port_file:
                _write_port_file(port_file, bound)
            print(f"fake upstream listening on http://{host}:{bound}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


_FLAG_TYPES: dict[str, type] = {
    "tokens": int,
    "tps": float,
    "stall_first": float,
    "stall_after": int,
    "stall_seconds": float,
    "status": int,
    "status_times": int,
    "retry_after": float,
    "error_after": int,
    "drop_after": int,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file")
    for name, typ in _FLAG_TYPES.items():
        parser.add_argument("--" + name.replace("_", "-"), type=typ, dest=name)
    args = parser.parse_args(argv)
    overrides = {k: getattr(args, k) for k in _FLAG_TYPES if getattr(args, k) is not None}
    defaults = Behaviour().merged(overrides)
    _raise_fd_limit()
    trio.run(serve, args.host, args.port, args.port_file, defaults)
    return 0


# -- helpers for tests and benchmarks (run the server as a real process) ---------------


def start_fake_upstream_process(
    host: str = "127.0.0.1", startup_timeout: float = 10.0, **flags: Any
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the fake upstream on a free port; returns (process, base_url ending in /v1).
    `flags` are the CLI defaults (see `Behaviour`), e.g. ``tokens=10, tps=100``."""
    bad = set(flags) - set(_FLAG_TYPES)
    if bad:
        raise TypeError(f"unknown fake-upstream flags: {sorted(bad)}")
    fd, port_file = tempfile.mkstemp(prefix="fake-upstream-", suffix=".port")
    os.close(fd)
    os.unlink(port_file)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--host", host, "--port", "0"]
    cmd += ["--port-file", port_file]
    for name, value in flags.items():
        cmd += ["--" + name.replace("_", "-"), str(value)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + startup_timeout
    try:
        while True:
            try:
                port = int(Path(port_file).read_text())
                break
            except (FileNotFoundError, ValueError):
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"fake upstream exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("fake upstream did not start in time")
            time.sleep(0.02)
    except BaseException:
        stop_fake_upstream_process(proc)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(port_file)
    return proc, f"http://{host}:{port}/v1"


def stop_fake_upstream_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


@contextlib.contextmanager
def running_fake_upstream(**flags: Any) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``with running_fake_upstream(tokens=10) as (proc, base_url): ...``"""
    proc, base_url = start_fake_upstream_process(**flags)
    try:
        yield proc, base_url
    finally:
        stop_fake_upstream_process(proc)


__all__ = [
    "Behaviour",
    "expected_text",
    "main",
    "running_fake_upstream",
    "start_fake_upstream_process",
    "stop_fake_upstream_process",
    "token_text",
]

if __name__ == "__main__":
    sys.exit(main())
