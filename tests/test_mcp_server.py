"""The coordination MCP server, driven through the MCP SDK's client on a real queue and database.

In-process tests use the SDK's in-memory ``Client`` and run on SQLite and PostgreSQL
(fixture ``db_url``); one test drives the real ``python -m mcp_server`` over stdio.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from sqlalchemy import select

from api.database import Database
from api.features_file import FeatureSpec
from api.models import Feature
from api.queue import FeatureQueue
from api.records import HeartbeatResult
from mcp_server import Identity
from mcp_server.server import SERVER_NAME, build_server

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOL_NAMES = {
    "feature_get", "feature_release", "feature_claim_batch", "claim_file", "release_file", "list_file_locks",
    "ask_question",
}  # fmt: skip
CALL_TIMEOUT_S = 60


def spec(name: str, *deps: str, **kw: Any) -> FeatureSpec:
    return FeatureSpec(name=name, depends_on=tuple(deps), **kw)


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        with anyio.fail_after(CALL_TIMEOUT_S):
            await test()

    anyio.run(bounded)


@pytest.fixture(autouse=True)
def src_directory(project: Path) -> Path:
    """The project's src/, where the agents here lock their files."""
    src = project / "src"
    src.mkdir()
    return src


@asynccontextmanager
async def agent(queue: FeatureQueue, agent_id: str, feature_id: int | None = None) -> AsyncIterator[Client]:
    """An in-process client of a server whose identity is ``agent_id`` (and its assigned feature)."""
    identity = Identity(
        database_url=queue.db.display_url,
        project_dir=queue.project_dir,
        agent_id=agent_id,
        feature_id=feature_id,
        lease_seconds=queue.lease_seconds,
    )
    async with Client(build_server(lambda _identity: queue, identity=identity)) as client:
        yield client


async def call(client: Client, tool: str, **arguments: Any):
    return await client.call_tool(tool, arguments)


def text(result) -> str:
    return "\n".join(block.text for block in result.content)


class Renewing(FeatureQueue):
    """A queue whose lease renewals (the lease keeper's heartbeats) a test can wait for."""

    def __init__(self, db: Database, project: Path, lease_seconds: float) -> None:
        super().__init__(db, project_dir=project, lease_seconds=lease_seconds)
        self.beats = 0
        self._beat = threading.Condition()

    def heartbeat(self, owner: str, held: Mapping[int, int] | None = None) -> HeartbeatResult:
        result = super().heartbeat(owner, held)
        with self._beat:
            self.beats += 1
            self._beat.notify_all()
        return result

    def _wait_for_a_beat(self) -> None:
        with self._beat:
            seen = self.beats
            assert self._beat.wait_for(lambda: self.beats > seen, CALL_TIMEOUT_S), "the lease was not renewed"

    async def next_renewal(self) -> None:
        """Return after the next heartbeat has committed; fail if none comes within CALL_TIMEOUT_S."""
        await anyio.to_thread.run_sync(self._wait_for_a_beat)


def snapshot(queue: FeatureQueue) -> tuple:
    """Everything a tool call could change."""
    report = queue.status_report().to_json()
    runs = {f["id"]: [(r.reported_status, r.reported_notes) for r in queue.runs(f["id"])] for f in report["features"]}
    return report, runs, queue.file_locks(), queue.events()


# -- feature tools --------------------------------------------------------------------


def test_feature_get_returns_the_assignment_with_dependency_notes(queue: FeatureQueue) -> None:
    queue.import_specs(
        [
            spec("schema", category="database"),
            spec("api", "schema", description="REST API", category="backend", steps=("GET /items",), verify="pytest"),
        ]
    )
    schema = queue.claim(1, "sup")[0]
    queue.release(schema.id, "sup", schema.lease_token, "passing", "tables items and users exist")
    api = queue.claim(1, "sup")[0]

    async def scenario() -> None:
        async with agent(queue, api.agent_id, api.id) as client:
            result = await call(client, "feature_get")
        assert not result.is_error, text(result)
        got = result.structured_content
        assert got["id"] == api.id
        assert (got["name"], got["description"], got["category"]) == ("api", "REST API", "backend")
        assert got["steps"] == ["GET /items"]
        assert (got["verify"], got["status"], got["attempts"]) == ("pytest", "claimed", 0)
        assert got["dependencies"] == [
            {"id": schema.id, "name": "schema", "status": "passing", "notes": "tables items and users exist"}
        ]

    run(scenario)


def test_feature_get_without_an_assignment_points_to_feature_claim_batch(queue: FeatureQueue) -> None:
    async def scenario() -> None:
        async with agent(queue, "lead-1") as client:
            result = await call(client, "feature_get")
        assert result.is_error
        assert "feature_claim_batch" in text(result)

    run(scenario)


def test_feature_release_records_the_verdict_on_the_running_attempt(queue: FeatureQueue, project: Path) -> None:
    queue.import_specs([spec("login", verify="touch verify-ran; exit 1")])
    claim = queue.claim(1, "sup")[0]
    queue.start_run(claim, "sonnet")

    async def scenario() -> None:
        async with agent(queue, claim.agent_id, claim.id) as client:
            result = await call(client, "feature_release", feature_id=claim.id, status="passing", notes="form works")
        assert not result.is_error, text(result)
        assert result.structured_content["success"] is True
        assert result.structured_content["status"] == "reported"
        assert "verify" in result.structured_content["message"]

    run(scenario)
    last = queue.runs(claim.id)[-1]
    assert (last.reported_status, last.reported_notes) == ("passing", "form works")
    # The supervisor, not the agent, turns the verdict into the outcome, and runs verify itself.
    assert queue.status_report().features[0].status == "claimed"
    assert not (project / "verify-ran").exists()


def test_feature_release_refuses_what_the_agent_may_not_do_and_changes_nothing(queue: FeatureQueue) -> None:
    queue.import_specs([spec("mine"), spec("theirs")])
    mine, theirs = queue.claim(2, "sup")
    queue.start_run(mine, "sonnet")
    queue.start_run(theirs, "sonnet")
    before = snapshot(queue)
    attempts: list[tuple[dict[str, Any], str]] = [
        ({"feature_id": theirs.id, "status": "passing", "notes": "done"}, "not assigned to you"),
        ({"feature_id": 987654, "status": "passing", "notes": "done"}, "no feature with id 987654"),
        ({"feature_id": mine.id, "status": "done", "notes": ""}, "'passing', 'failed' or 'pending'"),
        ({"feature_id": mine.id, "status": "x" * 100_000, "notes": ""}, "'passing', 'failed' or 'pending'"),
        ({"feature_id": "first", "status": "passing", "notes": ""}, "feature_id"),
        ({"feature_id": True, "status": "passing", "notes": ""}, "feature_id"),
        ({"feature_id": 10**30, "status": "passing", "notes": ""}, "feature_id"),
        ({"feature_id": -1, "status": "passing", "notes": ""}, "feature_id"),
        ({"feature_id": mine.id, "status": ["passing"], "notes": ""}, "status"),
        ({"feature_id": mine.id, "status": "passing", "notes": {"text": "done"}}, "notes"),
        ({"feature_id": mine.id, "status": "passing", "notes": "n" * 20_001}, "20000"),
    ]

    async def scenario() -> None:
        async with agent(queue, mine.agent_id, mine.id) as client:
            for arguments, expected in attempts:
                result = await client.call_tool("feature_release", arguments)
                assert result.is_error, arguments
                assert expected in text(result), (arguments, text(result)[:500])
                assert len(text(result)) < 5_000  # an echoed 100k argument is not a readable message

    run(scenario)
    assert snapshot(queue) == before


def test_notes_up_to_the_limit_are_kept_whole(queue: FeatureQueue) -> None:
    queue.import_specs([spec("long")])
    claim = queue.claim(1, "sup")[0]
    queue.start_run(claim, "sonnet")
    notes = "é" * 20_000

    async def scenario() -> None:
        async with agent(queue, claim.agent_id, claim.id) as client:
            result = await call(client, "feature_release", feature_id=claim.id, status="failed", notes=notes)
        assert not result.is_error, text(result)[:500]

    run(scenario)
    assert queue.runs(claim.id)[-1].reported_notes == notes


def test_feature_claim_batch_claims_ready_features_that_feature_release_finalises(queue: FeatureQueue) -> None:
    queue.import_specs([spec("base"), spec("top", "base"), spec("side")])

    async def scenario() -> None:
        async with agent(queue, "lead-1") as client:
            first = await call(client, "feature_claim_batch", count=5)
            assert not first.is_error, text(first)
            claimed = {f["name"]: f for f in first.structured_content["result"]}
            assert set(claimed) == {"base", "side"}
            assert set(claimed["base"]) == {"id", "name", "description", "category", "steps", "verify"}
            owners = {f.name: f.owner for f in queue.status_report().features}
            assert owners == {"base": "lead-1", "side": "lead-1", "top": None}

            done = await call(client, "feature_release", feature_id=claimed["base"]["id"], status="passing", notes="ok")
            assert not done.is_error, text(done)
            assert done.structured_content["status"] == "passing"
            side = claimed["side"]["id"]
            given_back = await call(client, "feature_release", feature_id=side, status="pending", notes="")
            assert given_back.structured_content["status"] == "pending"

            second = await call(client, "feature_claim_batch", count=1)
            assert [f["name"] for f in second.structured_content["result"]] == ["top"]  # longest chain first, then id

    run(scenario)
    statuses = {f.name: f.status for f in queue.status_report().features}
    # "top" was still held when the lead went away: given back, not left claimed.
    assert statuses == {"base": "passing", "top": "pending", "side": "pending"}


def test_a_lead_agents_passing_counts_only_once_the_features_verify_command_passes(
    queue: FeatureQueue, project: Path
) -> None:
    check = "test -f proof.txt || { echo proof.txt is missing >&2; exit 3; }"
    queue.import_specs(
        [spec("checked", verify=check, max_attempts=2), spec("last-try", verify="exit 1", max_attempts=1), spec("free")]
    )

    def feature(name: str) -> Any:
        return next(f for f in queue.status_report().features if f.name == name)

    async def scenario() -> None:
        async with agent(queue, "lead-1") as client:
            first = await call(client, "feature_claim_batch", count=3)
            claimed = {f["name"]: f["id"] for f in first.structured_content["result"]}
            verify = {f["name"]: f["verify"] for f in first.structured_content["result"]}
            assert verify == {"checked": check, "last-try": "exit 1", "free": None}

            refused = await call(
                client, "feature_release", feature_id=claimed["checked"], status="passing", notes="done"
            )
            assert not refused.is_error, text(refused)
            answer = refused.structured_content
            assert (answer["success"], answer["status"]) == (False, "pending")
            assert f"verify command `{check}` exited 3" in answer["message"]
            assert "proof.txt is missing" in answer["message"] and "retried" in answer["message"]
            checked = feature("checked")
            assert (checked.status, checked.attempts) == ("pending", 1)
            assert checked.notes == (
                f"verify command `{check}` exited 3; output tail:\nproof.txt is missing\n\nThe agent's notes: done"
            )

            last = await call(client, "feature_release", feature_id=claimed["last-try"], status="passing")
            assert (last.structured_content["success"], last.structured_content["status"]) == (False, "failed")
            free = await call(client, "feature_release", feature_id=claimed["free"], status="passing")
            assert free.structured_content["status"] == "passing"

            again = await call(client, "feature_claim_batch", count=3)
            assert [f["name"] for f in again.structured_content["result"]] == ["checked"]
            (project / "proof.txt").write_text("built\n")
            passed = await call(client, "feature_release", feature_id=claimed["checked"], status="passing")
            assert (passed.structured_content["success"], passed.structured_content["status"]) == (True, "passing")
            assert f"`{check}` passed" in passed.structured_content["message"]

    run(scenario)
    assert {f.name: (f.status, f.attempts) for f in queue.status_report().features} == {
        "checked": ("passing", 2),
        "last-try": ("failed", 1),
        "free": ("passing", 1),
    }


def test_a_lead_agent_keeps_its_claim_while_verify_runs(db_url: str, project: Path) -> None:
    db = Database(db_url)
    db.migrate()
    queue = Renewing(db, project, lease_seconds=0.6)  # a heartbeat every 0.2 s
    # Two FIFOs: the command says when it runs, and runs until the test writes a line.
    for fifo in ("started", "go"):
        os.mkfifo(project / fifo)
    started = os.open(project / "started", os.O_RDONLY | os.O_NONBLOCK)
    go = os.open(project / "go", os.O_RDWR)  # a writer from the start: the command's read waits for data
    queue.import_specs([spec("slow-check", verify="echo > started; read line < go")])

    def expiry() -> Any:
        return db.run(lambda s: s.scalar(select(Feature.lease_expires_at)), read_only=True)

    async def scenario() -> None:
        async with agent(queue, "lead-1") as client:
            claimed = await call(client, "feature_claim_batch", count=1)
            feature_id = claimed.structured_content["result"][0]["id"]
            answers = []

            async def release() -> None:
                answers.append(await call(client, "feature_release", feature_id=feature_id, status="passing"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(release)
                await anyio.wait_readable(started)
                seen = {expiry()}
                while len(seen) < 5:  # renewed 4 times while verify runs: longer than a whole lease
                    await queue.next_renewal()
                    seen.add(expiry())
                assert queue.reap_expired() == []
                os.write(go, b"go\n")
            assert answers[0].structured_content["status"] == "passing", answers[0].structured_content

    try:
        run(scenario)
    finally:
        os.close(started)
        os.close(go)
        db.dispose()


def test_an_agent_written_against_the_seed_contract_calls_the_tools_its_way(queue: FeatureQueue) -> None:
    """feature_release(feature_id, status, notes="") and claim_file(file_path, agent_id): notes may
    be left out, and an agent_id argument is ignored (the session says who the caller is)."""
    queue.import_specs([spec("app"), spec("assigned")])
    assigned = queue.claim(1, "sup")[0]
    queue.start_run(assigned, "sonnet")

    async def scenario() -> None:
        async with agent(queue, "lead-1") as lead, agent(queue, assigned.agent_id, assigned.id) as worker:
            claimed = await call(lead, "feature_claim_batch", count=1)
            app = claimed.structured_content["result"][0]["id"]
            locked = await call(lead, "claim_file", file_path="src/App.tsx", agent_id="agent-7")
            assert locked.structured_content == {"success": True, "message": "locked src/App.tsx"}
            assert queue.file_locks() == [("src/App.tsx", "lead-1", None)]
            forged = await call(worker, "release_file", file_path="src/App.tsx", agent_id="lead-1")
            assert forged.structured_content["success"] is False
            unlocked = await call(lead, "release_file", file_path="src/App.tsx", agent_id="agent-7")
            assert unlocked.structured_content["success"] is True

            done = await call(lead, "feature_release", feature_id=app, status="passing")
            assert not done.is_error, text(done)
            assert done.structured_content["status"] == "passing"
            reported = await call(worker, "feature_release", feature_id=assigned.id, status="failed")
            assert not reported.is_error, text(reported)

    run(scenario)
    assert queue.runs(assigned.id)[-1].reported_status == "failed"
    assert queue.runs(assigned.id)[-1].reported_notes == ""


def test_feature_claim_batch_is_refused_to_an_agent_with_an_assignment(queue: FeatureQueue) -> None:
    queue.import_specs([spec("assigned"), spec("other")])
    claim = queue.claim(1, "sup")[0]
    before = snapshot(queue)

    async def scenario() -> None:
        async with agent(queue, claim.agent_id, claim.id) as client:
            result = await call(client, "feature_claim_batch", count=1)
            assert result.is_error
            assert f"#{claim.id}" in text(result)
            for count in (0, 51, "2"):
                bad = await call(client, "feature_claim_batch", count=count)
                assert bad.is_error and "count" in text(bad)

    run(scenario)
    assert snapshot(queue) == before


def test_batch_leases_are_renewed_while_the_server_runs_and_no_longer_after(db_url: str, project: Path) -> None:
    db = Database(db_url)
    db.migrate()
    queue = Renewing(db, project, lease_seconds=0.6)  # a heartbeat every 0.2 s
    queue.import_specs([spec("long-job")])

    def expiry() -> Any:
        return db.run(lambda s: s.scalar(select(Feature.lease_expires_at)), read_only=True)

    def keepers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "lease-keeper lead-1"]

    async def scenario() -> None:
        async with agent(queue, "lead-1") as client:
            claimed = await call(client, "feature_claim_batch", count=1)
            assert len(claimed.structured_content["result"]) == 1
            first = expiry()
            while expiry() <= first:
                await queue.next_renewal()
            assert [t.daemon for t in keepers()] == [True]
        assert keepers() == []

    try:
        run(scenario)
    finally:
        db.dispose()


def test_a_lead_agent_that_goes_away_gives_back_its_claims_and_file_locks(queue: FeatureQueue) -> None:
    queue.import_specs([spec("one"), spec("two"), spec("three")])

    async def scenario() -> None:
        async with agent(queue, "lead-9") as client:
            claimed = await call(client, "feature_claim_batch", count=2)
            assert len(claimed.structured_content["result"]) == 2
            locked = await call(client, "claim_file", file_path="src/shared.py")
            assert locked.structured_content["success"] is True

    run(scenario)
    assert queue.file_locks() == []
    assert queue.status_report().counts == {"pending": 3}
    assert len(queue.claim(3, "next")) == 3  # claimable at once, not after a lease expiry


def test_a_verdict_after_the_attempt_ended_is_refused(queue: FeatureQueue) -> None:
    queue.import_specs([spec("login")])
    claim = queue.claim(1, "sup")[0]
    record = queue.start_run(claim, "sonnet")
    queue.finish_run(record.id, outcome="timeout")

    async def scenario() -> None:
        async with agent(queue, claim.agent_id, claim.id) as client:
            result = await call(client, "feature_release", feature_id=claim.id, status="passing", notes="late")
        assert result.is_error
        assert "no running attempt" in text(result)

    run(scenario)
    assert queue.runs(claim.id)[-1].reported_status is None


# -- file locks -----------------------------------------------------------------------


def test_a_file_held_by_another_agent_is_a_normal_answer_naming_the_feature(queue: FeatureQueue) -> None:
    queue.import_specs([spec("header"), spec("footer")])
    one, two = queue.claim(2, "sup")

    async def scenario() -> None:
        async with agent(queue, one.agent_id, one.id) as first, agent(queue, two.agent_id, two.id) as second:
            got = await call(first, "claim_file", file_path="src/layout.py")
            assert got.structured_content == {"success": True, "message": "locked src/layout.py"}
            again = await call(first, "claim_file", file_path="src/layout.py")
            assert again.structured_content["success"] is True

            refused = await call(second, "claim_file", file_path="./src/../src/layout.py")
            assert not refused.is_error
            assert refused.structured_content["success"] is False
            assert f"feature #{one.id} ({one.name})" in refused.structured_content["message"]

            listed = await call(second, "list_file_locks")
            assert listed.structured_content["result"] == [
                {"path": "src/layout.py", "owner": one.agent_id, "feature_id": one.id}
            ]
            not_theirs = await call(second, "release_file", file_path="src/layout.py")
            assert not_theirs.structured_content["success"] is False
            released = await call(first, "release_file", file_path=str(queue.project_dir / "src" / "layout.py"))
            assert released.structured_content == {"success": True, "message": "released src/layout.py"}
            now_theirs = await call(second, "claim_file", file_path="src/layout.py")
            assert now_theirs.structured_content["success"] is True

    run(scenario)
    assert queue.file_locks() == [("src/layout.py", two.agent_id, two.id)]


def test_concurrent_claims_of_one_file_have_exactly_one_winner(queue: FeatureQueue) -> None:
    queue.import_specs([spec(f"f{i}") for i in range(4)])
    claims = queue.claim(4, "sup")
    answers: list[tuple[str, bool]] = []

    async def scenario() -> None:
        async with (
            agent(queue, claims[0].agent_id, claims[0].id) as a,
            agent(queue, claims[1].agent_id, claims[1].id) as b,
            agent(queue, claims[2].agent_id, claims[2].id) as c,
            agent(queue, claims[3].agent_id, claims[3].id) as d,
        ):

            async def contend(name: str, client: Client) -> None:
                result = await call(client, "claim_file", file_path="src/shared.py")
                answers.append((name, result.structured_content["success"]))

            async with anyio.create_task_group() as tg:
                for name, client in zip("abcd", (a, b, c, d), strict=True):
                    tg.start_soon(contend, name, client)

    run(scenario)
    winners = [name for name, success in answers if success]
    assert len(answers) == 4 and len(winners) == 1
    assert [owner for _path, owner, _fid in queue.file_locks()] == [claims["abcd".index(winners[0])].agent_id]


@pytest.mark.parametrize(
    "path_of",
    [
        pytest.param(lambda project: "../outside.py", id="dot-dot"),
        pytest.param(lambda project: "src/../../outside.py", id="dot-dot-inside"),
        pytest.param(lambda project: "/etc/passwd", id="absolute"),
        pytest.param(lambda project: str(project.parent / "sibling" / "x.py"), id="absolute-sibling"),
        pytest.param(lambda project: str(project), id="the-root-itself"),
        pytest.param(lambda project: "escape/secret.py", id="symlink"),
        pytest.param(lambda project: "src/a\x00b.py", id="nul-byte"),
        pytest.param(lambda project: "", id="empty"),
        pytest.param(lambda project: "a/" * 600, id="too-long"),
    ],
)
def test_paths_outside_the_project_are_errors_and_lock_nothing(
    queue: FeatureQueue, project: Path, tmp_path: Path, path_of: Callable[[Path], str]
) -> None:
    (tmp_path / "outside").mkdir()
    (project / "escape").symlink_to(tmp_path / "outside", target_is_directory=True)
    queue.import_specs([spec("f")])
    claim = queue.claim(1, "sup")[0]
    before = snapshot(queue)

    async def scenario() -> None:
        async with agent(queue, claim.agent_id, claim.id) as client:
            for tool in ("claim_file", "release_file"):
                result = await call(client, tool, file_path=path_of(project))
                assert result.is_error, (tool, result.structured_content)
                assert "file_path" in text(result) or "outside the project" in text(result), text(result)

    run(scenario)
    assert snapshot(queue) == before


def test_a_project_rooted_path_is_refused_with_a_hint_to_use_a_path_relative_to_the_project(
    queue: FeatureQueue,
) -> None:
    queue.import_specs([spec("ui")])
    claim = queue.claim(1, "sup")[0]
    before = snapshot(queue)

    async def scenario() -> None:
        async with agent(queue, claim.agent_id, claim.id) as client:
            for tool in ("claim_file", "release_file"):
                result = await call(client, tool, file_path="/src/App.tsx")
                assert result.is_error, (tool, result.structured_content)
                assert "'/src/App.tsx' is outside the project" in text(result)
                assert text(result).endswith("use a path relative to the project, e.g. src/App.tsx"), text(result)

    run(scenario)
    assert snapshot(queue) == before


def test_an_unavailable_database_is_a_readable_tool_error(project: Path) -> None:
    db = Database(f"postgresql+psycopg://nobody@127.0.0.1:{unused_port()}/none")
    queue = FeatureQueue(db, project_dir=project)

    async def scenario() -> None:
        async with agent(queue, "lead-1") as client:
            for tool, arguments in (("claim_file", {"file_path": "a.py"}), ("list_file_locks", {})):
                result = await client.call_tool(tool, arguments)
                assert result.is_error
                assert "coordination database is unavailable" in text(result)

    try:
        run(scenario)
    finally:
        db.dispose()


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the real stdio server ------------------------------------------------------------


def server_env(db_url: str, project: Path, **extra: str) -> dict[str, str]:
    return {
        "AGENT_MANAGER_DATABASE_URL": db_url,
        "AGENT_MANAGER_PROJECT_DIR": str(project),
        "PYTHONPATH": str(REPO_ROOT),
        **extra,
    }


def test_stdio_server_serves_the_tools_and_locks_files_in_the_database(sqlite_url: str, project: Path) -> None:
    db = Database(sqlite_url)
    db.migrate()
    queue = FeatureQueue(db, project_dir=project)
    queue.import_specs([spec("checkout")])
    claim = queue.claim(1, "sup")[0]
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_server"],
        env=server_env(
            sqlite_url, project, AGENT_MANAGER_AGENT_ID=claim.agent_id, AGENT_MANAGER_FEATURE_ID=str(claim.id)
        ),
        cwd=str(project),
    )
    latencies: list[float] = []

    async def scenario() -> None:
        # mode="legacy": the initialize handshake, as the Claude CLI speaks it.
        async with Client(params, mode="legacy") as client:
            assert client.server_info is not None and client.server_info.name == SERVER_NAME
            tools = await client.list_tools()
            assert {t.name for t in tools.tools} == TOOL_NAMES
            assert len(tools.tools) == len(TOOL_NAMES)

            locked = await call(client, "claim_file", file_path="src/cart.py")
            assert locked.structured_content == {"success": True, "message": "locked src/cart.py"}
            assert queue.file_locks() == [("src/cart.py", claim.agent_id, claim.id)]
            released = await call(client, "release_file", file_path="src/cart.py")
            assert released.structured_content["success"] is True
            assert queue.file_locks() == []

            for _ in range(200):
                start = time.perf_counter()
                await call(client, "claim_file", file_path="src/cart.py")
                await call(client, "release_file", file_path="src/cart.py")
                latencies.append(time.perf_counter() - start)

    try:
        run(scenario)
    finally:
        db.dispose()
    p50 = statistics.median(latencies) * 1000
    p95 = statistics.quantiles(latencies, n=20)[-1] * 1000
    print(f"\nstdio claim_file+release_file round trip over {len(latencies)}: p50 {p50:.2f} ms, p95 {p95:.2f} ms")


def test_stdio_server_runs_a_lead_agents_verify_with_the_timeout_from_its_environment(
    sqlite_url: str, project: Path
) -> None:
    db = Database(sqlite_url)
    db.migrate()
    queue = FeatureQueue(db, project_dir=project)
    queue.import_specs(
        [
            # A verify's output never reaches the server's stdout, the protocol's channel.
            spec("noisy", verify="seq 1 20000; echo broken >&2; exit 4"),
            spec("slow", verify="sleep 30"),
            spec("serves", verify="sleep 60 & echo up"),  # what it leaves running does not hold it up
        ]
    )
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_server"],
        env=server_env(sqlite_url, project, AGENT_MANAGER_AGENT_ID="lead-1", AGENT_MANAGER_VERIFY_TIMEOUT_SECONDS="1"),
        cwd=str(project),
    )

    async def scenario() -> None:
        async with Client(params, mode="legacy") as client:
            claimed = await call(client, "feature_claim_batch", count=3)
            ids = {f["name"]: f["id"] for f in claimed.structured_content["result"]}
            answers = {}
            for name in ("noisy", "slow", "serves"):
                answer = await call(client, "feature_release", feature_id=ids[name], status="passing")
                assert not answer.is_error, text(answer)
                answers[name] = answer.structured_content
            assert answers["noisy"]["success"] is False
            assert "exited 4" in answers["noisy"]["message"] and "20000\nbroken" in answers["noisy"]["message"]
            assert answers["slow"]["success"] is False and "timed out" in answers["slow"]["message"]
            assert (answers["serves"]["success"], answers["serves"]["status"]) == (True, "passing")

    try:
        run(scenario)
        assert {f.name: (f.status, f.attempts) for f in queue.status_report().features} == {
            "noisy": ("pending", 1),
            "slow": ("pending", 1),
            "serves": ("passing", 1),
        }
    finally:
        db.dispose()


@pytest.mark.parametrize(
    ("drop", "extra", "named"),
    [
        ("AGENT_MANAGER_DATABASE_URL", {}, "AGENT_MANAGER_DATABASE_URL"),
        ("AGENT_MANAGER_PROJECT_DIR", {}, "AGENT_MANAGER_PROJECT_DIR"),
        (None, {"AGENT_MANAGER_FEATURE_ID": "seven"}, "AGENT_MANAGER_FEATURE_ID"),
        (None, {"AGENT_MANAGER_VERIFY_TIMEOUT_SECONDS": "0"}, "AGENT_MANAGER_VERIFY_TIMEOUT_SECONDS"),
    ],
)
def test_stdio_server_without_its_environment_exits_2_with_one_line(
    sqlite_url: str, project: Path, drop: str | None, extra: dict[str, str], named: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_MANAGER_")}
    env.update(server_env(sqlite_url, project, **extra))
    env.pop(drop or "", None)
    done = subprocess.run(
        [sys.executable, "-m", "mcp_server"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and named in lines[0], done.stderr
