"""End to end with people in the loop: a lead agent's MCP client talks to `agent-manager lead` over
stdio while real `claude` sessions (scripted model) run the features it enqueues; questions,
permission requests, stop, nudge and resume go through the lead's tools or the CLI, and reach
sessions run by another supervisor process.

The scripted agents follow directives in their feature's description (supervisor.scripted_model
.agents): ``[ask: Q]`` asks a question, ``[bash: CMD]`` runs a command that may need a person's
permission, ``[turns: N]`` keeps a session busy long enough to stop or nudge it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from api.database import Database
from api.queue import FeatureQueue
from supervisor.scripted_model.agents import Agents
from tests.support.harness import REPO, Run

pytestmark = pytest.mark.slow

CALL_TIMEOUT_S = 120


def lead_params(run: Run, *extra: str) -> StdioServerParameters:
    command = run.command("lead", *extra)
    return StdioServerParameters(command=command[0], args=command[1:], env=run.env, cwd=str(REPO))


async def tool(client: Client, name: str, **arguments: Any) -> Any:
    result = await asyncio.wait_for(client.call_tool(name, arguments), CALL_TIMEOUT_S)
    text = "\n".join(getattr(block, "text", "") for block in result.content)
    assert not result.is_error, f"{name}: {text}"
    return result.structured_content if result.structured_content is not None else json.loads(text)


async def tool_error(client: Client, name: str, **arguments: Any) -> str:
    result = await asyncio.wait_for(client.call_tool(name, arguments), CALL_TIMEOUT_S)
    assert result.is_error, result
    return "\n".join(getattr(block, "text", "") for block in result.content)


def with_lead(run: Run, scenario: Callable[[Client], Awaitable[None]], *extra: str) -> None:
    async def main() -> None:
        async with Client(lead_params(run, *extra), mode="legacy", read_timeout_seconds=CALL_TIMEOUT_S) as client:
            await scenario(client)

    asyncio.run(main())


def lead_project(make_run: Callable[..., Run], brain: Agents, **config: Any) -> Run:
    run = make_run(brain, [], **config)
    (run.project / "features.json").unlink()  # the lead enqueues them
    return run


def test_a_lead_enqueues_a_dag_waits_answers_a_question_and_resumes_a_feature(
    make_run: Callable[..., Run],
) -> None:
    brain = Agents()
    run = lead_project(make_run, brain)
    dag = [
        {"name": "port", "category": "backend", "description": "Serve the API. [ask: Which port should it use?]"},
        {"name": "schema", "category": "database", "description": "tables"},
        {"name": "api", "category": "backend", "depends_on": ["schema"]},
    ]

    async def scenario(client: Client) -> None:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert tools == {
            "enqueue_features", "wait", "feature_result", "peek", "resume_feature", "answer",
            "approve_permission", "stop_feature", "nudge_feature", "queue_status",
        }  # fmt: skip
        assert "unknown" in await tool_error(client, "enqueue_features", features=[{"name": "x", "depends_on": ["y"]}])
        enqueued = await tool(client, "enqueue_features", features=dag)
        ids = dict(zip(enqueued["names"], enqueued["ids"], strict=True))
        assert set(ids) == {"port", "schema", "api"}
        assert "already in the queue" in await tool_error(client, "enqueue_features", features=[dag[1]])

        first = await tool(client, "wait", mode="first", timeout_s=90)
        assert not first["timed_out"]
        assert first["finished"] or first["needs_input"]

        everything = await tool(client, "wait", mode="all", timeout_s=90)
        assert not everything["timed_out"]
        assert {f["name"]: f["status"] for f in everything["finished"]} == {"schema": "passing", "api": "passing"}
        (question,) = everything["needs_input"]
        assert question["feature_id"] == ids["port"]
        assert question["question"] == "Which port should it use?"
        status = await tool(client, "queue_status")
        assert status["counts"] == {"passing": 2, "needs_input": 1}
        spent = sum(f["cost_usd"] for f in run.status()["features"])
        assert status["cost"] == {  # two finished: too few for a forecast
            "spent_usd": pytest.approx(spent), "forecast_usd": None, "unfinished": 1, "finished_samples": 2,
        }  # fmt: skip

        await tool(client, "answer", feature_id=ids["port"], text="8080")
        answered = await tool(client, "wait", feature_ids=[ids["port"]], mode="all", timeout_s=90)
        assert [f["status"] for f in answered["finished"]] == ["passing"]
        result = await tool(client, "feature_result", feature_id=ids["port"])
        assert result["files_written"] == ["port.txt"]
        assert [a["outcome"] for a in result["attempts"]] == ["needs_input", "passing"]
        assert result["attempts"][0]["session_id"] == result["attempts"][1]["session_id"]
        peeked = await tool(client, "peek", feature_id=ids["port"], lines=5)
        assert peeked["lines"] and not peeked["running"]

        before = answered["finished"][0]["cost_usd"]
        resumed = await tool(client, "resume_feature", feature_id=ids["schema"], prompt="Add an index on due dates.")
        assert resumed["resumes_session"] is not None
        again = await tool(client, "wait", feature_ids=[ids["schema"]], mode="all", timeout_s=90)
        assert [f["status"] for f in again["finished"]] == ["passing"]
        assert again["finished"][0]["session_id"] == resumed["resumes_session"]
        assert before > 0

    with_lead(run, scenario)

    # The answer and the follow-up each continued the same conversation at the model.
    assert len(brain.sessions_by_feature["port"]) == 1
    assert len(brain.sessions_by_feature["schema"]) == 1
    assert "Their answer: 8080" in (run.project / "port.txt").read_text()
    assert any("Add an index on due dates." in p for p in brain.prompts["schema"])
    # Each agent was briefed for its category's role.
    assert "Your role (database):" in brain.system_prompts["schema"]
    assert "Your role (backend):" in brain.system_prompts["api"]
    assert "Your role (database):" not in brain.system_prompts["api"]
    logs = subprocess.run(
        run.command("logs", str(1)), env=run.env, capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert "role (backend):" in logs.stdout
    assert "question: Which port should it use?" in logs.stdout and "answer: 8080" in logs.stdout
    # `agent-manager questions` agrees that nothing is open.
    listed = subprocess.run(
        run.command("questions", "--json"), env=run.env, capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert json.loads(listed.stdout) == {"questions": []}


def test_permission_requests_wait_for_a_person_who_approves_one_and_denies_others(
    make_run: Callable[..., Run],
) -> None:
    brain = Agents()
    run = lead_project(
        make_run,
        brain,
        ask_bash=["touch approved.flag", "touch denied.flag"],
        ask_tools=["WebFetch"],
        permission_timeout_seconds=120,
    )
    web = {"url": "https://example.com/spec", "prompt": "summarise"}
    features = [
        {"name": "yes", "description": "[bash: touch approved.flag]"},
        {"name": "no", "description": "[bash: touch denied.flag]"},
        {"name": "web", "description": f"[tool: WebFetch {json.dumps(web)}]"},
        {"name": "free", "description": "[bash: touch free.flag]"},
    ]

    async def scenario(client: Client) -> None:
        await tool(client, "enqueue_features", features=features)
        requests: dict[str, int] = {}
        deadline = time.monotonic() + 90
        while len(requests) < 3 and time.monotonic() < deadline:
            state = await tool(client, "wait", mode="first", timeout_s=30)
            requests |= {p["name"]: p["request_id"] for p in state["permission_requests"]}
        assert set(requests) == {"yes", "no", "web"}
        # The CLI shows the same requests to a person at a terminal.
        listed = await asyncio.to_thread(run.supervise, "permissions", "--json")
        shown = {r["feature"]: r["summary"] for r in json.loads(listed.stdout)["permission_requests"]}
        assert shown == {
            "yes": "Bash: touch approved.flag",
            "no": "Bash: touch denied.flag",
            "web": "WebFetch: https://example.com/spec",
        }

        await tool(client, "approve_permission", request_id=requests["yes"], allow=True)
        await tool(client, "approve_permission", request_id=requests["web"], allow=False, reason="we are offline")
        denied = await asyncio.to_thread(run.supervise, "deny", str(requests["no"]), "--reason", "no flags today")
        assert denied.returncode == 0, denied.stderr
        assert "already denied" in await tool_error(client, "approve_permission", request_id=requests["no"], allow=True)
        done = await tool(client, "wait", mode="all", timeout_s=90)
        assert {f["name"]: f["status"] for f in done["finished"]} == dict.fromkeys(
            ("yes", "no", "web", "free"), "passing"
        )

    with_lead(run, scenario)

    assert (run.project / "approved.flag").exists()
    assert not (run.project / "denied.flag").exists()
    assert (run.project / "free.flag").exists()  # not in ask_bash: no person needed
    assert "bash: allowed" in (run.project / "yes.txt").read_text()
    assert "bash: denied: A person denied this Bash call: no flags today" in (run.project / "no.txt").read_text()
    assert (
        "tool WebFetch: denied: A person denied this WebFetch call: we are offline"
        in (run.project / "web.txt").read_text()
    )


def test_stop_and_nudge_reach_sessions_run_by_another_supervisor_process(make_run: Callable[..., Run]) -> None:
    brain = Agents()
    long = "[turns: 400] [sleep: 0.2]"
    features = [{"name": name, "description": long} for name in ("nudged", "stopped-by-cli", "stopped-by-lead")]
    run = make_run(brain, features)
    serve = run.start("serve", "--max-agents", "3")  # runs every session; the lead server below runs none
    try:
        assert run.server.wait_until(lambda: len(brain.assigned_at) == 3, 90), "sessions did not start"
        ids = {f["name"]: f["id"] for f in run.status()["features"]}

        started = time.monotonic()
        stop = run.supervise("stop", str(ids["stopped-by-cli"]), "--reason", "wrong approach")
        assert stop.returncode == 0, stop.stderr
        assert "stopped (failed)" in stop.stdout
        assert time.monotonic() - started < 10

        async def scenario(client: Client) -> None:
            stopped = await tool(client, "stop_feature", feature_id=ids["stopped-by-lead"], reason="not needed")
            assert stopped == {"feature_id": ids["stopped-by-lead"], "stopped": True, "status": "failed"}
            told = await tool(client, "nudge_feature", feature_id=ids["nudged"], text="use the v2 endpoint")
            assert told["delivered"] == "queued for its next turn"
            done = await tool(client, "wait", feature_ids=list(ids.values()), mode="all", timeout_s=90)
            assert {f["name"]: f["status"] for f in done["finished"]} == {
                "nudged": "passing", "stopped-by-cli": "failed", "stopped-by-lead": "failed",
            }  # fmt: skip

        with_lead(run, scenario)
        report = run.status()["by_name"]
        assert report["stopped-by-cli"]["notes"] == "stopped: wrong approach"
        assert report["stopped-by-lead"]["notes"] == "stopped: not needed"
        assert "operator: use the v2 endpoint" in (run.project / "nudged.txt").read_text()
    finally:
        serve.send_signal(signal.SIGINT)
        serve.communicate(timeout=60)
    # The stopped sessions made no more requests once stopped: they never got to release.
    assert "stopped-by-cli" not in brain.released_at and "stopped-by-lead" not in brain.released_at


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_serve_mode_dispatches_a_feature_imported_while_it_idles_within_a_second(
    make_run: Callable[..., Run], backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    brain = Agents()
    run = make_run(brain, [{"name": "first"}], database_url=url)
    serve = run.start("serve")
    try:
        assert run.server.wait_until(lambda: "first" in brain.released_at, 90)
        queue = run.queue()
        try:
            deadline = time.monotonic() + 60
            while queue.status_report().counts != {"passing": 1} and time.monotonic() < deadline:
                time.sleep(0.05)  # polled: the supervisor's process records the release
            assert queue.status_report().counts == {"passing": 1}
            time.sleep(1.5)  # idle for longer than the SQLite poll interval and the claim loop's settle
            (run.project / "features.json").write_text(json.dumps([{"name": "later"}]), encoding="utf-8")
            imported = run.supervise("import")
            assert imported.returncode == 0, imported.stderr
            assert run.server.wait_until(lambda: "later" in brain.released_at, 90)
            events = {kind: ts for ts, kind in _event_times(queue, "later")}
        finally:
            queue.db.dispose()
        delay = events["claimed"] - events["import"]
        print(f"\n{backend}: import committed -> claimed in {delay.total_seconds() * 1000:.0f} ms")
        assert timedelta(0) <= delay < timedelta(seconds=1), delay
    finally:
        serve.send_signal(signal.SIGINT)
        _, err = serve.communicate(timeout=60)
    assert serve.returncode == 130, err


def _event_times(queue: FeatureQueue, name: str) -> list[tuple[Any, str]]:
    from sqlalchemy import select

    from api.models import Event, Feature

    def work(session: Any) -> list[tuple[Any, str]]:
        fid = session.scalar(select(Feature.id).where(Feature.name == name))
        rows = session.execute(select(Event.ts, Event.kind, Event.feature_id).order_by(Event.id)).all()
        return [(r.ts, r.kind) for r in rows if r.feature_id == fid or (r.kind == "import" and r.feature_id is None)]

    return queue.db.run(work, read_only=True)


def test_a_killed_lead_server_loses_no_question_answer_or_permission_request(make_run: Callable[..., Run]) -> None:
    brain = Agents()
    run = lead_project(make_run, brain, ask_bash=["touch ok.flag"], permission_timeout_seconds=300)
    features = [
        {"name": "asker", "description": "[ask: Tabs or spaces?]"},
        {"name": "toucher", "description": "[bash: touch ok.flag]"},
    ]
    lease = "3"
    ready: dict[str, int] = {}

    async def first_lead(client: Client) -> None:
        ids = await tool(client, "enqueue_features", features=features)
        ready.update(zip(ids["names"], ids["ids"], strict=True))
        seen: set[str] = set()
        deadline = time.monotonic() + 90
        while seen != {"asker", "toucher"} and time.monotonic() < deadline:
            state = await tool(client, "wait", mode="all", timeout_s=30)
            seen = {q["name"] for q in state["needs_input"]} | {p["name"] for p in state["permission_requests"]}
        assert seen == {"asker", "toucher"}
        # kill -9 the lead server (and so its supervisor) while a session waits for the permission.
        for pid in _lead_pids(run):
            os.kill(pid, signal.SIGKILL)

    try:
        with_lead(run, first_lead, "--lease-seconds", lease)
    except BaseException as exc:  # the client may or may not notice its server die
        if isinstance(exc, AssertionError):
            raise
    assert not _lead_pids(run)

    # Nothing the people or the agents said is lost: the CLI still lists both, and takes the answers.
    questions = json.loads(run.supervise("questions", "--json").stdout)["questions"]
    assert [q["question"] for q in questions] == ["Tabs or spaces?"]
    permissions = json.loads(run.supervise("permissions", "--json").stdout)["permission_requests"]
    assert [p["summary"] for p in permissions] == ["Bash: touch ok.flag"]
    assert run.supervise("answer", str(ready["asker"]), "spaces").returncode == 0
    assert run.supervise("approve", str(permissions[0]["id"])).returncode == 0

    # A new lead server picks the work up once the dead one's lease has expired.
    async def second_lead(client: Client) -> None:
        done = await tool(client, "wait", feature_ids=list(ready.values()), mode="all", timeout_s=120)
        assert {f["name"]: f["status"] for f in done["finished"]} == {"asker": "passing", "toucher": "passing"}

    with_lead(run, second_lead, "--lease-seconds", lease)
    assert (run.project / "ok.flag").exists()
    assert "Their answer: spaces" in (run.project / "asker.txt").read_text()
    assert len(brain.sessions_by_feature["asker"]) == 1  # the answer resumed the asking session


def _lead_pids(run: Run) -> list[int]:
    """Processes running `agent_manager.py lead` for this run's project."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
        except OSError:
            continue
        words = [w.decode(errors="replace") for w in cmdline]
        if "lead" in words and str(run.project) in words and any(w.endswith("agent_manager.py") for w in words):
            found.append(int(entry))
    return found


def test_people_commands_name_what_is_wrong_in_one_line(make_run: Callable[..., Run]) -> None:
    run = make_run(Agents(), [{"name": "only"}])
    assert run.supervise("import").returncode == 0
    for args, expected in [
        (("answer", "1", "x"), "has no open question"),
        (("answer", "99", "x"), "no feature with id 99"),
        (("approve", "7"), "no permission request with id 7"),
        (("stop", "1"), "is pending, not running"),
        (("nudge", "1", "hello"), "is pending, not running"),
    ]:
        done = run.supervise(*args)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1 and expected in lines[0], (args, done.stderr)
    database = Database(run.db_url)
    try:
        assert FeatureQueue(database).status_report().counts == {"pending": 1}
    finally:
        database.dispose()


def test_sigterm_stops_a_lead_server_at_once_and_gives_its_features_back(make_run: Callable[..., Run]) -> None:
    brain = Agents()
    run = make_run(brain, [{"name": "long", "description": "[turns: 400] [sleep: 0.2]"}])
    # As Claude Code runs it: stdin stays open (no MCP client is needed for the supervisor to start).
    log = run.project / "lead-stderr.txt"
    with open(log, "w") as err:
        lead = subprocess.Popen(
            run.command("lead"), env=run.env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO
        )
        try:
            assert run.server.wait_until(lambda: "long" in brain.assigned_at, 90), "the session did not start"
            lead.send_signal(signal.SIGTERM)
            lead.wait(timeout=30)  # not communicate(): that would close stdin, which stops the server anyway
        finally:
            if lead.poll() is None:
                lead.kill()
            assert lead.stdin is not None
            lead.stdin.close()
    assert lead.returncode == 130, log.read_text()
    assert run.status()["by_name"]["long"]["status"] == "pending"
    assert run.status()["by_name"]["long"]["attempts"] == 0


def test_a_session_waiting_for_a_person_is_neither_stalled_nor_timed_out(make_run: Callable[..., Run]) -> None:
    brain = Agents()
    # A 5 s stall limit and a 15 s time limit (room for a slow CLI start on a loaded machine); the
    # person takes 16 s to decide.
    run = make_run(
        brain,
        [{"name": "patient", "description": "[bash: touch slow.flag]"}],
        ask_bash=["touch slow.flag"],
        stall_seconds=5,
        timeouts={"sonnet": 15, "haiku": 15},
    )
    supervisor = run.start()
    try:
        request = None
        deadline = time.monotonic() + 90
        while request is None and time.monotonic() < deadline:
            shown = run.supervise("permissions", "--json")  # polled: the supervisor's process asks
            listed = json.loads(shown.stdout)["permission_requests"] if shown.returncode == 0 else []
            request = listed[0]["id"] if listed else None
        assert request is not None, "no permission request"
        time.sleep(16)  # deliberately longer than both limits: a person thinking it over
        assert run.supervise("approve", str(request)).returncode == 0
        out, err = supervisor.communicate(timeout=90)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    assert supervisor.returncode == 0, out + err
    assert (run.project / "slow.flag").exists()
    assert run.status()["by_name"]["patient"]["attempts"] == 1
