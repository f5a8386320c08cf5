"""The scripted fake Anthropic API, on its own and driving the real bundled `claude` CLI."""

from __future__ import annotations

import asyncio
import http.client
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from claude_agent_sdk import ClaudeSDKClient, ResultError, ResultMessage

from supervisor.scripted_model import (
    Delay,
    DropMidStream,
    FakeModelServer,
    HttpError,
    Reply,
    Request,
    Usage,
    cli_options,
    run_query,
)
from supervisor.scripted_model.scripts import ScriptedBrain, mcp_call_brain, say, write_file, write_file_brain

# List prices the bundled CLI applies to claude-sonnet-4-5, in USD per token.
SONNET_45 = "claude-sonnet-4-5"
SONNET_45_INPUT, SONNET_45_OUTPUT = 3e-6, 15e-6

# -----------------------------------------------------------------------------------------------
# The server on its own (plain HTTP, no CLI)


def _post(url: str, body: dict, path: str = "/v1/messages?beta=true", headers: dict | None = None):
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", path, json.dumps(body), {"content-type": "application/json", **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def _agent_body(stream: bool, messages: list | None = None) -> dict:
    return {
        "model": "claude-test",
        "stream": stream,
        "max_tokens": 1000,
        "tools": [{"name": "Write", "input_schema": {"type": "object"}}],
        "system": [{"type": "text", "text": "You are a Claude agent."}],
        "messages": messages
        or [
            {"role": "user", "content": [{"type": "text", "text": "write it"}]},
            {"role": "system", "content": [{"type": "text", "text": " - Primary working directory: /w\n"}]},
        ],
    }


def _sse(data: bytes) -> list[tuple[str, dict]]:
    events = []
    for chunk in data.decode().split("\n\n"):
        if chunk.strip():
            lines = dict(line.split(": ", 1) for line in chunk.splitlines())
            events.append((lines["event"], json.loads(lines["data"])))
    return events


@pytest.mark.timeout(30)
def test_streams_anthropic_sse_and_answers_plain_json() -> None:
    brain = write_file_brain("out.txt", "hi")
    with FakeModelServer(brain, usage=Usage(7, 3)) as srv:
        response, data = _post(srv.base_url, _agent_body(True), headers={"x-claude-code-session-id": "s1"})
        assert response.status == 200
        assert response.getheader("content-type") == "text/event-stream"
        events = _sse(data)
        assert [e for e, _ in events] == [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        start = events[1][1]["content_block"]
        assert (start["type"], start["name"]) == ("tool_use", "Write")
        partial = "".join(d["delta"]["partial_json"] for e, d in events if e == "content_block_delta")
        assert json.loads(partial) == {"file_path": "/w/out.txt", "content": "hi"}
        assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
        assert events[-2][1]["usage"]["output_tokens"] == 3

        # The same conversation again (a retry) gets the same reply; stream=false gets JSON.
        response, data = _post(srv.base_url, _agent_body(False), headers={"x-claude-code-session-id": "s1"})
        message = json.loads(data)
        assert message["content"][0]["id"] == start["id"]
        assert message["usage"]["input_tokens"] == 7
        assert [r.kind for r in srv.requests] == ["tool_use:Write", "tool_use:Write"]
        assert [r.stream for r in srv.requests] == [True, False]
        assert srv.models_by_session == {"s1": ["claude-test"]}


@pytest.mark.timeout(30)
def test_request_helpers_map_tool_results_to_names() -> None:
    body = _agent_body(
        True,
        [
            {"role": "user", "content": "go"},
            {"role": "system", "content": " - Primary working directory: /proj\n"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "body"}]},
                    {"type": "tool_result", "tool_use_id": "t9", "content": "oops", "is_error": True},
                ],
            },
        ],
    )
    req = Request(body=body, headers={}, path="/v1/messages", session_key="s")
    assert req.first_user_text() == "go"
    assert req.working_dir() == "/proj"
    assert [(r.tool_name, r.content_text, r.is_error) for r in req.last_tool_results()] == [
        ("Read", "body", False),
        (None, "oops", True),
    ]


@pytest.mark.timeout(30)
def test_faults_side_requests_and_other_paths() -> None:
    with FakeModelServer(lambda req: Reply.text("main")) as srv:
        srv.faults.append(HttpError(429, headers={"retry-after": "3"}))
        response, data = _post(srv.base_url, _agent_body(False))
        assert response.status == 429
        assert response.getheader("retry-after") == "3"
        assert json.loads(data)["error"]["type"] == "rate_limit_error"

        srv.fail_all(529)
        assert json.loads(_post(srv.base_url, _agent_body(False))[1])["error"]["type"] == "overloaded_error"
        srv.recover()
        assert json.loads(_post(srv.base_url, _agent_body(False))[1])["content"][0]["text"] == "main"

        # A title request: no tools, no environment block, structured output wanted.
        title = {
            "model": "m",
            "stream": False,
            "tools": [],
            "system": "You are a Claude agent. You are naming a coding session",
            "messages": [{"role": "user", "content": "<session>x</session>"}],
            "output_config": {
                "format": {
                    "type": "json_schema",
                    "schema": {"type": "object", "properties": {"title": {"type": "string"}}},
                }
            },
        }
        reply = json.loads(_post(srv.base_url, title)[1])
        assert json.loads(reply["content"][0]["text"]) == {"title": "Untitled"}
        assert len(srv.side_requests) == 1

        count = _post(srv.base_url, {"messages": []}, path="/v1/messages/count_tokens")[1]
        assert json.loads(count)["input_tokens"] > 0
        assert [r.kind for r in srv.requests] == ["http_error:429", "http_error:529", "text"]
        assert srv.peak_concurrency == 1 and srv.active_sessions == set()


@pytest.mark.timeout(30)
def test_delay_and_dropped_connections() -> None:
    with FakeModelServer(lambda req: Reply.text("hello there")) as srv:
        srv.faults.extend([Delay(0.3), DropMidStream(after_events=2), DropMidStream()])
        start = time.monotonic()
        assert json.loads(_post(srv.base_url, _agent_body(False))[1])["content"][0]["text"] == "hello there"
        assert time.monotonic() - start >= 0.3
        # Streaming: two events, then the connection is reset mid-body.
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            _post(srv.base_url, _agent_body(True))
        # Not streaming: reset before any response.
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            _post(srv.base_url, _agent_body(False))
        assert [r.kind for r in srv.requests] == ["text", "drop", "drop"]
        # A cut-short reply leaves its session active.
        assert srv.active_sessions == {"default"}


@pytest.mark.timeout(30)
def test_standalone_mode_prints_its_url() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.scripted_model", "--port", "0", "--script", "hello:hi there"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        message = json.loads(_post(url, _agent_body(False))[1])
        assert message["content"] == [{"type": "text", "text": "hi there"}]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -----------------------------------------------------------------------------------------------
# The real CLI through the real SDK


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_cli_writes_file_with_deterministic_cost(tmp_path: Path) -> None:
    costs = []
    for run_no in range(2):
        with FakeModelServer(write_file_brain("notes/hello.txt", "hello\n")) as srv:
            options = cli_options(srv.base_url, tmp_path / f"run{run_no}", model=SONNET_45)
            run = asyncio.run(run_query("Write the greeting file.", options))
            assert run.error is None, run.error
            result = run.result
            assert result is not None and result.subtype == "success" and not result.is_error
            assert (Path(options.cwd) / "notes" / "hello.txt").read_text() == "hello\n"
            assert result.num_turns == 2
            assert [r.kind for r in srv.requests] == ["tool_use:Write", "text"]
            assert [r.session for r in srv.requests] == [result.session_id] * 2
            assert srv.models_by_session == {result.session_id: [SONNET_45]}
            assert srv.side_requests == []
            assert srv.active_sessions == set()
            costs.append(result.total_cost_usd)
    usage = Usage()
    expected = 2 * (usage.input_tokens * SONNET_45_INPUT + usage.output_tokens * SONNET_45_OUTPUT)
    assert costs[0] > 0
    assert costs[0] == costs[1] == pytest.approx(expected, rel=1e-9)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["reset", "error_event"])
def test_cli_recovers_from_a_cut_stream(tmp_path: Path, how: str) -> None:
    with FakeModelServer(write_file_brain("a.txt", "A\n")) as srv:
        srv.faults.append(DropMidStream(how=how))
        options = cli_options(srv.base_url, tmp_path)
        run = asyncio.run(run_query("Write a.txt", options))
        assert run.error is None and run.result is not None and run.result.subtype == "success"
        assert (Path(options.cwd) / "a.txt").read_text() == "A\n"
        kinds = [(r.kind, r.stream) for r in srv.requests]
        if how == "error_event":
            # An SSE error event once content has started: the CLI repeats the request at once
            # with "stream": false (the non-streaming fallback).
            assert kinds == [("drop", True), ("tool_use:Write", False), ("text", True)]
        else:
            # A broken connection is retried (after a short backoff) as a streaming request.
            assert kinds == [("drop", True), ("tool_use:Write", True), ("text", True)]


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("status", [401, 529])
def test_cli_reports_api_errors(tmp_path: Path, status: int) -> None:
    with FakeModelServer(write_file_brain("a.txt", "A\n")) as srv:
        srv.fail_all(status)
        options = cli_options(srv.base_url, tmp_path, env={"CLAUDE_CODE_MAX_RETRIES": "1"})
        start = time.monotonic()
        run = asyncio.run(run_query("Write a.txt", options))
        assert time.monotonic() - start < 20
    # The SDK yields the error result, then raises ResultError carrying the same fields.
    result = run.result
    assert result is not None and result.is_error
    assert (result.subtype, result.api_error_status, result.terminal_reason) == ("success", status, "api_error")
    assert result.total_cost_usd == 0
    assert isinstance(run.error, ResultError)
    assert run.error.api_error_status == status
    assert run.error.terminal_reason == "api_error"
    assert run.error.session_id == result.session_id
    assert run.error.exit_code == 1
    expected_text = "Invalid API key" if status == 401 else "API Error: 529 Overloaded"
    assert expected_text in result.result and expected_text in str(run.error)
    # MAX_RETRIES=1: the first attempt and one retry.
    assert [r.kind for r in srv.requests] == [f"http_error:{status}"] * 2


PING_SERVER = textwrap.dedent(
    """
    from mcp.server.mcpserver import MCPServer

    app = MCPServer("agent-manager")

    @app.tool()
    def ping() -> str:
        return "pong"

    app.run()
    """
)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("tool_search", ["deferred", "listed"])
def test_cli_calls_an_mcp_tool(tmp_path: Path, tool_search: str) -> None:
    # The file must not be called mcp.py: it would shadow the mcp package.
    script = tmp_path / "ping_server.py"
    script.write_text(PING_SERVER)
    tool = "mcp__agent-manager__ping"
    brain = mcp_call_brain(tool)
    deferred: list[list[str]] = []

    def spy(req: Request) -> Reply:
        deferred.append(req.deferred_tools())
        return brain(req)

    env = {"ENABLE_TOOL_SEARCH": "false"} if tool_search == "listed" else {}
    with FakeModelServer(spy) as srv:
        options = cli_options(
            srv.base_url,
            tmp_path,
            env=env,
            mcp_servers={"agent-manager": {"type": "stdio", "command": sys.executable, "args": [str(script)]}},
            allowed_tools=[tool],
        )
        run = asyncio.run(run_query("ping the coordination server", options))
        assert run.error is None and run.result is not None and run.result.subtype == "success"
        results = brain.tool_results(tool)
        assert len(results) == 1 and not results[0].is_error
        assert "pong" in results[0].content_text
        assert "pong" in run.result.result
        kinds = [r.kind for r in srv.requests]
        if tool_search == "deferred":
            assert kinds == ["tool_use:ToolSearch", f"tool_use:{tool}", "text"]
            assert tool not in srv.requests[0].tools and tool in deferred[0]
            assert tool in srv.requests[1].tools and tool not in deferred[1]
        else:
            assert kinds == [f"tool_use:{tool}", "text"]
            assert tool in srv.requests[0].tools and deferred[0] == []


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_peak_concurrency_counts_sessions_in_flight(tmp_path: Path) -> None:
    barrier = threading.Barrier(3, timeout=60)

    def wait_for_all(req: Request, state) -> None:
        barrier.wait()  # every session's first request holds its turn until all three arrive
        return

    brain = ScriptedBrain([wait_for_all, write_file("out.txt", "x"), say("finished")])

    async def three_sessions(base_url: str):
        runs = [run_query("go", cli_options(base_url, tmp_path / f"s{i}")) for i in range(3)]
        return await asyncio.gather(*runs)

    with FakeModelServer(brain) as srv:
        runs = asyncio.run(three_sessions(srv.base_url))
        for run in runs:
            assert run.error is None and run.result is not None and run.result.subtype == "success"
        assert srv.peak_concurrency == 3
        assert len(srv.sessions) == 3 and srv.active_sessions == set()
        assert {r.result.session_id for r in runs} == set(srv.sessions)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_client_session_goes_idle_between_turns(tmp_path: Path) -> None:
    seen: list[str] = []

    def brain(req: Request) -> Reply:
        seen.append(req.last_user_text())
        return Reply.text(f"answer {len(seen)}")

    async def two_turns(options):
        results = []
        async with ClaudeSDKClient(options) as client:
            for prompt in ("first question", "second question"):
                await client.query(prompt)
                results.extend([m async for m in client.receive_response() if isinstance(m, ResultMessage)])
                active_after_turn.append(set(srv.active_sessions))
        return results

    active_after_turn: list[set[str]] = []
    with FakeModelServer(brain) as srv:
        results = asyncio.run(asyncio.wait_for(two_turns(cli_options(srv.base_url, tmp_path)), 90))
        assert [r.subtype for r in results] == ["success", "success"]
        assert seen == ["first question", "second question"]
        assert srv.sessions == [results[0].session_id] == [results[1].session_id]
        assert active_after_turn == [set(), set()]
        assert srv.peak_concurrency == 1


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_title_request_is_a_side_request(tmp_path: Path) -> None:
    # With nonessential traffic allowed (the variable empty: "0" or "false" still disable it)
    # the CLI asks the model for a session title alongside the first turn.
    srv = FakeModelServer()

    def brain(req: Request) -> Reply:
        title_seen = srv.wait_until(lambda: srv.side_requests, timeout=30)
        return Reply.text(f"title request seen: {title_seen}")

    srv.brain = brain
    env = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": ""}

    async def one_turn(options):
        async with ClaudeSDKClient(options) as client:
            await client.query("fix the flaky login test")
            return [m async for m in client.receive_response() if isinstance(m, ResultMessage)]

    with srv:
        results = asyncio.run(asyncio.wait_for(one_turn(cli_options(srv.base_url, tmp_path, env=env)), 90))
        assert results[0].result == "title request seen: True"
        title = srv.side_requests[0].body
        assert title["tools"] == [] and "title" in json.dumps(title["output_config"])
        assert title["metadata"]["user_id"].endswith(f'"session_id":"{results[0].session_id}"}}')
        assert [r.kind for r in srv.requests] == ["text"]
        assert srv.sessions == [results[0].session_id] and srv.peak_concurrency == 1
        assert ("HEAD", "/api/hello") in [(r.method, r.path) for r in srv.raw_requests]
