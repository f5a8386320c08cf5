"""Directives in a feature's description steer the scripted `Agents` brain (NOTES.md, "Directives")."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import ClaudeSDKClient, ResultMessage, create_sdk_mcp_server, tool

from supervisor.scripted_model import FakeModelServer, Reply, Request, cli_options
from supervisor.scripted_model.agents import ASK, TOOL, Agents, operator_messages, parse_directives

GET, RELEASE = TOOL + "feature_get", TOOL + "feature_release"
ALL_TOOLS = ["Bash", "Write", "WebFetch", GET, RELEASE, ASK]
ASKED = "Your question was sent to a person. End your turn now; the answer will come as your next prompt."

# -----------------------------------------------------------------------------------------------
# A stand-in for the CLI: keeps the conversation, answers tool calls, adds prompts and hook context


Result = tuple[str, bool]  # tool result text, is_error


class Chat:
    def __init__(self, brain: Agents, description: str, *, tools: list[str] = ALL_TOOLS, session: str = "s1") -> None:
        self.brain, self.tools, self.session = brain, tools, session
        self.feature = {"id": 7, "name": "widget", "description": description, "status": "in_progress"}
        self.messages: list[dict[str, Any]] = [
            {"role": "user", "content": [{"type": "text", "text": "Implement feature #7: widget"}]},
            {"role": "system", "content": " - Primary working directory: /w\n"},
        ]
        self.replies: list[Reply] = []
        self.results: dict[str, Callable[[dict], Result]] = {}

    def request(self) -> Request:
        body = {"messages": self.messages, "tools": [{"name": t, "input_schema": {}} for t in self.tools]}
        return Request(body=body, headers={}, path="/v1/messages", session_key=self.session)

    def result(self, name: str, args: dict) -> Result:
        if name in self.results:
            return self.results[name](args)
        defaults = {GET: json.dumps(self.feature), RELEASE: "released", ASK: ASKED, "Write": "File created"}
        return defaults.get(name, "ok"), False

    def turn(self, after_result: Callable[[Chat, str], None] | None = None, limit: int = 600) -> list[Reply]:
        """Run until the brain ends its turn; `after_result(chat, tool)` may add messages after a tool result."""
        start = len(self.replies)
        for _ in range(limit):
            reply = self.brain(self.request())
            self.replies.append(reply)
            self.messages.append({"role": "assistant", "content": reply.content})
            if not reply.tool_uses:
                return self.replies[start:]
            blocks = []
            for use in reply.tool_uses:
                text, is_error = self.result(use["name"], use["input"])
                blocks.append({"type": "tool_result", "tool_use_id": use["id"], "content": text, "is_error": is_error})
            self.messages.append({"role": "user", "content": blocks})
            if after_result is not None:
                after_result(self, reply.tool_uses[-1]["name"])
        raise AssertionError("the brain never ended its turn")

    def prompt(self, text: str) -> None:
        self.messages.append({"role": "user", "content": [{"type": "text", "text": text}]})

    def system(self, text: str) -> None:
        self.messages.append({"role": "system", "content": [{"type": "text", "text": text}]})


def kinds(replies: list[Reply]) -> list[str]:
    return [r.kind.removeprefix("tool_use:").removeprefix(TOOL) for r in replies]


def written(replies: list[Reply]) -> list[str]:
    """The lines of the file each Write call wrote."""
    writes = [u["input"] for r in replies for u in r.tool_uses if u["name"] == "Write"]
    assert len(writes) == 1, writes
    assert writes[0]["file_path"] == "/w/widget.txt"
    return writes[0]["content"].splitlines()


# -----------------------------------------------------------------------------------------------
# Parsing


def test_parse_directives() -> None:
    found = parse_directives(
        "Build it [see the docs] [ask: Which colour? [red] or blue] then [bash: git push origin main]\n"
        '[tool: WebFetch {"url": "https://example.com", "prompt": "summarise", "tags": ["a"]}] '
        "[tool: Broken {not json}] [TURNS: 900] [sleep: 0.1] [sleep: inf] [ask: a second question] [nope: x] "
        '[tool: Read] [tool: Grep\n{"pattern": "x"}]'
    )
    assert found.ask == "Which colour? [red] or blue"  # one level of brackets inside; the first ask counts
    assert found.calls == [
        ("Bash", {"command": "git push origin main", "description": "directive"}, "bash"),
        ("WebFetch", {"url": "https://example.com", "prompt": "summarise", "tags": ["a"]}, "tool WebFetch"),
        ("Read", {}, "tool Read"),
        ("Grep", {"pattern": "x"}, "tool Grep"),
    ]
    assert (found.turns, found.sleep_call()) == (500, {"command": "sleep 0.1", "description": "working"})
    assert parse_directives("no directives here [x]") == parse_directives("")


def test_operator_messages_in_hook_context_reminders_and_prompts() -> None:
    hook = "PostToolUse:Bash hook additional context: Message from your operator: hurry up\nplease"
    assert operator_messages(hook) == ["hurry up please"]
    reminder = "<system-reminder>\nMessage from your operator: a Message from your operator: b\n</system-reminder>"
    assert operator_messages(reminder) == ["a", "b"]
    # The CLI appends its own paragraphs to a hook's context after a blank line.
    appended = hook + "\n\nThe user hasn't heard from you in a while. As you continue, keep them updated."
    assert operator_messages(appended) == ["hurry up please"]
    assert operator_messages("nothing for you") == []


# -----------------------------------------------------------------------------------------------
# The brain, driven by hand-built requests


def test_without_directives_the_agent_is_unchanged() -> None:
    brain = Agents()
    chat = Chat(brain, "A plain feature [with a note in brackets].")
    replies = chat.turn()
    assert kinds(replies) == ["feature_get", "Write", "feature_release", "text"]
    assert written(replies) == ["widget"]
    assert replies[-1].content[0]["text"] == "widget is done."
    assert replies[2].tool_uses[0]["input"] == {"feature_id": 7, "status": "passing", "notes": "built widget"}
    assert brain.sessions_by_feature == {"widget": ["s1"]}


def test_ask_waits_for_the_answer_then_writes_it() -> None:
    brain = Agents()
    chat = Chat(brain, "Paint it. [ask: Which colour?]")
    first = chat.turn()
    assert kinds(first) == ["feature_get", "ask_question", "text"]
    assert first[1].tool_uses[0]["input"] == {"question": "Which colour?"}
    assert first[-1].content[0]["text"] == "Waiting for an answer."

    chat.prompt("Blue,\nplease.")
    second = chat.turn()
    assert kinds(second) == ["Write", "feature_release", "text"]
    assert written(second) == ["widget", "answer: Blue, please."]

    chat.prompt("You ended your turn without calling the `feature_release` tool.")
    assert kinds(chat.turn()) == ["feature_release", "text"]  # asks only once, writes only once
    assert brain.sessions_by_feature == {"widget": ["s1"]}


def test_a_refused_or_missing_question_is_written_down() -> None:
    chat = Chat(Agents(), "[ask: May I?]")
    chat.results[ASK] = lambda args: ("no questions in this run\nsecond line", True)
    replies = chat.turn()
    assert kinds(replies) == ["feature_get", "ask_question", "Write", "feature_release", "text"]
    assert written(replies) == ["widget", "question refused: no questions in this run second line"]

    chat = Chat(Agents(), "[ask: May I?]", tools=["Write", GET, RELEASE])
    replies = chat.turn()
    assert kinds(replies) == ["feature_get", "Write", "feature_release", "text"]  # not offered: never called
    assert written(replies) == ["widget", f"question refused: {ASK} is not offered"]


def test_directives_run_in_order_and_report_their_results() -> None:
    brain = Agents()
    description = (
        '[turns: 2] [tool: WebFetch {"url": "https://example.com", "prompt": "summarise"}] '
        "[bash: git push origin main] [ask: Ship it?] [bash: ls]"
    )
    chat = Chat(brain, description)
    chat.results["Bash"] = lambda args: (
        ("Permission to use Bash has been denied.\nAsk the operator.", True)
        if args["command"].startswith("git")
        else ("a.txt\nb.txt", False)
    )
    chat.results["WebFetch"] = lambda args: ("Example Domain\n...", False)
    assert kinds(chat.turn()) == ["feature_get", "ask_question", "text"]
    chat.prompt("Yes.")
    replies = chat.turn()
    assert kinds(replies) == ["WebFetch", "Bash", "Bash", "Bash", "Bash", "Write", "feature_release", "text"]
    assert [u["input"] for r in replies[1:5] for u in r.tool_uses] == [
        {"command": "git push origin main", "description": "directive"},
        {"command": "ls", "description": "directive"},
        {"command": "sleep 0.5", "description": "working"},
        {"command": "sleep 0.5", "description": "working"},
    ]
    assert written(replies) == [
        "widget",
        "answer: Yes.",
        "tool WebFetch: allowed: Example Domain",
        "bash: denied: Permission to use Bash has been denied.",
        "bash: allowed: a.txt",
    ]


@pytest.mark.parametrize(
    "cut_short",
    [
        "[Tool call interrupted: the session ended before this call's result was recorded, so its outcome is unknown.",
        "Tool permission request failed: AbortError: Tool permission stream closed before response received",
    ],
    ids=["filled-in-on-resume", "permission-stream-closed"],
)
def test_a_call_its_session_ended_under_is_made_again_but_a_denied_one_is_not(cut_short: str) -> None:
    chat = Chat(Agents(), "[bash: touch ok.flag] [bash: git push]")
    tries: list[str] = []

    def bash(args: dict) -> Result:
        tries.append(args["command"])
        if args["command"] == "git push":
            return "Permission to use Bash has been denied.", True
        return (cut_short, True) if tries.count("touch ok.flag") == 1 else ("", False)

    chat.results["Bash"] = bash
    replies = chat.turn()
    assert tries == ["touch ok.flag", "touch ok.flag", "git push"]  # the denied call is not made again
    assert written(replies)[1:] == ["bash: allowed: ", "bash: denied: Permission to use Bash has been denied."]


def test_a_tool_the_session_does_not_offer_is_not_called() -> None:
    chat = Chat(Agents(), "[tool: mcp__other__thing {}] [bash: ls] [turns: 3]", tools=["Write", GET, RELEASE])
    replies = chat.turn()
    assert kinds(replies) == ["feature_get", "Write", "feature_release", "text"]
    assert written(replies)[1:] == [
        "tool mcp__other__thing: denied: mcp__other__thing is not offered",
        "bash: denied: Bash is not offered",
    ]


def test_an_operator_message_cuts_the_turns_short() -> None:
    chat = Chat(Agents(), "Take your time. [turns: 50] [sleep: 0.1]")

    hooked = []

    def after(chat: Chat, tool_name: str) -> None:
        sleeps = [u for r in chat.replies for u in r.tool_uses if u["input"].get("description") == "working"]
        if len(sleeps) == 3 and not hooked:
            hooked.append(True)
            chat.system("PostToolUse:Bash hook additional context: Message from your operator: wrap up\nnow")

    replies = chat.turn(after)
    assert kinds(replies) == ["feature_get", "Bash", "Bash", "Bash", "Write", "feature_release", "text"]
    assert replies[1].tool_uses[0]["input"] == {"command": "sleep 0.1", "description": "working"}
    assert written(replies) == ["widget", "operator: wrap up now"]


def test_operator_messages_after_the_write_are_noted_not_released_again() -> None:
    brain = Agents()
    chat = Chat(brain, "[turns: 1]")

    def after(chat: Chat, tool_name: str) -> None:
        if tool_name == "Write":
            chat.system("PostToolUse:Write hook additional context: Message from your operator: late one")

    replies = chat.turn(after)
    assert kinds(replies) == ["feature_get", "Bash", "Write", "feature_release", "text"]
    assert written(replies) == ["widget"]
    assert replies[-1].content[0]["text"] == "noted: late one"

    # A follow-up prompt once the feature is released: acknowledged, not released again.
    chat.prompt("Message from your operator: and another\nthing")
    assert [r.content[0]["text"] for r in chat.turn()] == ["noted: and another thing"]
    # A prompt that is not the operator's (a retry) releases again, as without directives.
    chat.prompt("Your previous attempt did not pass.")
    assert kinds(chat.turn()) == ["feature_release", "text"]


def test_operator_messages_before_the_write_go_into_the_file_in_order() -> None:
    chat = Chat(Agents(), "[ask: Colour?]")
    assert kinds(chat.turn()) == ["feature_get", "ask_question", "text"]
    chat.system("Message from your operator: first")
    # A nudge sent as a prompt is not the answer: the agent goes on waiting.
    chat.prompt("Message from your operator: second\n\nMessage from your operator: third")
    assert [r.content[0]["text"] for r in chat.turn()] == ["Waiting for an answer."]
    chat.prompt("A person answered the question you asked.\n\nTheir answer: green")
    replies = chat.turn()
    assert written(replies) == [
        "widget",
        "answer: A person answered the question you asked.  Their answer: green",
        "operator: first",
        "operator: second",
        "operator: third",
    ]
    assert replies[-1].content[0]["text"] == "widget is done."


def test_sessions_are_recorded_per_feature_in_order() -> None:
    brain = Agents()
    chat = Chat(brain, "[ask: Colour?]")
    chat.turn()
    chat.session = "s2"  # e.g. the answer arrived in a fresh session that was given the history
    chat.prompt("Red.")
    chat.turn()
    chat.session = "s1"
    chat.prompt("Message from your operator: thanks")
    chat.turn()
    assert brain.sessions_by_feature == {"widget": ["s1", "s2"]}


# -----------------------------------------------------------------------------------------------
# The real CLI: ask, end the turn, resume the same session with the answer


def coordination_stand_in(feature: dict, calls: list[tuple[str, dict]]) -> Any:
    """agent-manager's MCP server as far as this session needs it, in process."""

    def text(value: str) -> dict:
        return {"content": [{"type": "text", "text": value}]}

    @tool("feature_get", "Claim the next feature.", {})
    async def feature_get(args: dict) -> dict:
        calls.append(("feature_get", args))
        return text(json.dumps(feature))

    @tool("feature_release", "Release the feature.", {"feature_id": int, "status": str, "notes": str})
    async def feature_release(args: dict) -> dict:
        calls.append(("feature_release", args))
        return text("released")

    @tool("ask_question", "Ask a person a question about the feature.", {"question": str})
    async def ask_question(args: dict) -> dict:
        calls.append(("ask_question", args))
        return text(ASKED)

    return create_sdk_mcp_server("agent-manager", tools=[feature_get, feature_release, ask_question])


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_cli_asks_ends_its_turn_and_resumes_with_the_answer(tmp_path: Path) -> None:
    feature = {"id": 3, "name": "paint", "description": "Paint the shed. [ask: Which colour?]"}
    calls: list[tuple[str, dict]] = []
    brain = Agents()

    def options(base_url: str, resume: str | None = None) -> Any:
        return cli_options(
            base_url,
            tmp_path,
            env={"ENABLE_TOOL_SEARCH": "false"},
            mcp_servers={"agent-manager": coordination_stand_in(feature, calls)},
            allowed_tools=[GET, RELEASE, ASK, "Write", "Bash"],
            resume=resume,
        )

    async def one_turn(opts: Any, prompt: str) -> ResultMessage:
        async with ClaudeSDKClient(opts) as client:
            await client.query(prompt)
            results = [m async for m in client.receive_response() if isinstance(m, ResultMessage)]
        assert len(results) == 1
        return results[-1]

    with FakeModelServer(brain) as srv:
        asked = asyncio.run(asyncio.wait_for(one_turn(options(srv.base_url), "Implement feature #3: paint"), 25))
        assert (asked.subtype, asked.is_error, asked.result) == ("success", False, "Waiting for an answer.")
        assert calls == [("feature_get", {}), ("ask_question", {"question": "Which colour?"})]
        assert [r.kind for r in srv.requests] == [f"tool_use:{GET}", f"tool_use:{ASK}", "text"]
        project = tmp_path / "project"
        assert not (project / "paint.txt").exists()

        resumed = asyncio.run(asyncio.wait_for(one_turn(options(srv.base_url, asked.session_id), "Blue, please."), 25))
        assert (resumed.subtype, resumed.is_error, resumed.result) == ("success", False, "paint is done.")
        assert resumed.session_id == asked.session_id
        assert (project / "paint.txt").read_text() == "paint\nanswer: Blue, please.\n"
        assert calls[2:] == [("feature_release", {"feature_id": 3, "status": "passing", "notes": "built paint"})]
        # The resumed CLI sent the whole conversation under the same session key.
        assert brain.sessions_by_feature == {"paint": [asked.session_id]}
        assert srv.sessions == [asked.session_id]
        assert [r.kind for r in srv.requests[3:]] == ["tool_use:Write", f"tool_use:{RELEASE}", "text"]
