"""End to end: `python agent_manager.py` as a subprocess, real `claude` CLI sessions, a scripted model.

The scripted model (supervisor/scripted_model) plays the agents: it reads its assignment with feature_get,
writes files with the CLI's own Write tool and reports with feature_release, deciding every
reply from the conversation so far. The supervisor, the SDK, the CLI, the stdio MCP server and
the SQLite queue are all real.
"""

from __future__ import annotations

import http.server
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor.scripted_model import Reply, Request
from supervisor.scripted_model.agents import TOOL, Agents, Convo, release, write
from tests.support.harness import REPO, RUN_TIMEOUT_S, Run, assert_all_exit, descendants
from tests.support.projects import write_features

pytestmark = pytest.mark.slow


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


# -- the happy path ----------------------------------------------------------------------------

APP = [
    {"name": "schema", "category": "database", "description": "tables for todos"},
    {"name": "styles", "category": "frontend", "description": "the stylesheet"},
    {"name": "cli", "category": "backend", "description": "a command line client"},
    {"name": "api", "category": "backend", "depends_on": ["schema"]},
    {"name": "ui", "category": "frontend", "depends_on": ["api", "styles"]},
    {"name": "api-tests", "category": "testing", "depends_on": ["api"]},
    {"name": "guide", "category": "documentation", "depends_on": ["ui", "cli"]},
]
ROOTS = ("schema", "styles", "cli")


@pytest.mark.parametrize("agents", [3, 1], ids=["max-agents-3", "parallel-1"])
def test_agents_build_a_feature_dag_in_dependency_order(make_run: Callable[..., Run], agents: int) -> None:
    # With three agents the three roots meet at a barrier before writing: proof that three
    # sessions really run at once (and the supervisor never starts a fourth).
    barrier = threading.Barrier(agents, timeout=120)

    def meet(req: Request, convo: Convo, feature: dict) -> Reply | None:
        if agents > 1 and not any(c.name == "Write" for c in convo.calls):
            barrier.wait()
        return None

    brain = Agents(dict.fromkeys(ROOTS, meet))
    run = make_run(brain, APP)
    subprocess.run(["git", "init", "-q", str(run.project)], check=True)
    flag = "--max-agents" if agents > 1 else "--parallel"
    done = run.supervise(flag, str(agents))

    assert done.returncode == 0, done.stdout + done.stderr
    report = run.status()
    assert report["counts"] == {"passing": len(APP)}
    assert {f["name"]: f["attempts"] for f in report["features"]} == {f["name"]: 1 for f in APP}
    for feature in APP:  # written by the CLI's Write tool, in the project directory
        assert (run.project / f"{feature['name']}.txt").read_text() == f"{feature['name']}\n"
    for feature in APP:
        for dep in feature.get("depends_on", []):
            assert brain.released_at[dep] < brain.assigned_at[feature["name"]], (dep, feature["name"])
    assert run.server.peak_concurrency == agents

    served = {brain.session_feature[s]: set(models) for s, models in run.server.models_by_session.items()}
    cheap = {"api-tests", "guide"}
    assert {n for n, models in served.items() if models == {"claude-haiku-5-5"}} == cheap
    assert {n for n, models in served.items() if models == {"claude-sonnet-5-5"}} == {f["name"] for f in APP} - cheap
    by_name = report["by_name"]
    assert by_name["guide"]["model"] == "claude-haiku-5-5" and by_name["api"]["model"] == "claude-sonnet-5-5"
    assert all(f["cost_usd"] > 0 for f in report["features"])
    assert sorted(by_name["ui"]["depends_on"]) == ["api", "styles"]
    assert "passing: 7, failed: 0, blocked: 0" in done.stdout
    queue = run.queue()
    assert queue.file_locks() == []

    # A repository without a commit runs in shared mode: each passing feature is committed with the
    # files its agent wrote; the queue, logs and CLI state stay out of the user's git status.
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(run.project), *args], capture_output=True, text=True, check=True).stdout

    assert git("status", "--porcelain", "--untracked-files=all").splitlines() == ["?? features.json"]
    subjects = git("log", "--format=%s").split()
    assert sorted(subjects) == sorted(f["name"] for f in APP)
    for feature in report["features"]:
        sha = git("log", "--format=%H", f"--grep=^Agent-Manager-Feature-Id: {feature['id']}$").split()
        assert len(sha) == 1, feature
        assert git("show", "--format=", "--name-only", sha[0]).split() == [f"{feature['name']}.txt"]
    assert "committed 7 feature(s) in the shared tree" in done.stdout
    # A transcript per attempt, with the stream of messages.
    for feature in report["features"]:
        transcript = run.project / ".agent-manager" / "logs" / f"feature-{feature['id']}-attempt-1.jsonl"
        kinds = [json.loads(line)["type"] for line in transcript.read_text().splitlines()]
        assert kinds[0] == "prompt" and "ResultMessage" in kinds and kinds[-1] == "end"


def test_a_second_writer_is_denied_by_the_lock_and_finishes_after_the_first_releases(
    make_run: Callable[..., Run],
) -> None:
    first_wrote = threading.Event()
    second_denied = threading.Event()
    first_released = threading.Event()
    denials: list[str] = []

    def first(req: Request, convo: Convo, feature: dict) -> Reply | None:
        if not convo.succeeded("Write"):
            return write(req, "shared.txt", "from first\n")
        first_wrote.set()
        if not convo.succeeded(TOOL + "feature_release"):
            assert second_denied.wait(120), "the second agent was never denied"
            return release(feature)
        first_released.set()  # feature_release has answered: its file locks went with it
        return None

    def second(req: Request, convo: Convo, feature: dict) -> Reply | None:
        if convo.succeeded("Write"):
            return None
        writes = [c for c in convo.calls if c.name == "Write"]
        if writes and writes[-1].is_error:
            denials.append(writes[-1].result or "")
            second_denied.set()
            if len(writes) >= 200:
                return release(feature, "failed", "never got the lock")
            assert first_released.wait(120), "the first agent never released"  # then the model tries again
        else:
            assert first_wrote.wait(120), "the first agent never wrote"
        return write(req, "shared.txt", "from second\n")

    features = [{"name": "first", "category": "backend"}, {"name": "second", "category": "backend"}]
    run = make_run(Agents({"first": first, "second": second}), features)
    done = run.supervise("--max-agents", "2")

    assert done.returncode == 0, done.stdout + done.stderr
    assert run.status()["counts"] == {"passing": 2}
    assert denials and "shared.txt is held by feature #1 (first)" in denials[0]
    assert (run.project / "shared.txt").read_text() == "from second\n"
    assert "waiting for a file lock" in done.stdout
    assert run.queue().file_locks() == []


# -- infrastructure failures ---------------------------------------------------------------------


class Watched:
    """A supervisor process whose output lines are timestamped as they arrive."""

    def __init__(self, run: Run, *args: str) -> None:
        self.started = time.monotonic()
        self.proc = run.start(*args)
        self.lines: list[tuple[float, str]] = []
        self.err = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.started, line.rstrip("\n")))

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> float:
        """Seconds from start to exit."""
        try:
            self.err = self.proc.stderr.read() if self.proc.wait(timeout) is not None else ""
        finally:
            self.proc.kill()
        self._reader.join(10)
        return time.monotonic() - self.started

    def first(self, fragment: str) -> float | None:
        """When a line containing ``fragment`` was printed, in seconds from start."""
        return next((at for at, line in self.lines if fragment in line), None)

    @property
    def out(self) -> str:
        return "\n".join(line for _, line in self.lines)


def without_cli_retry_cap(run: Run) -> Run:
    """The environment a user has: the CLI's own retry policy (about ten retries over minutes)."""
    run.env.pop("CLAUDE_CODE_MAX_RETRIES", None)
    return run


def assert_untouched(run: Run, features: list[dict]) -> None:
    report = run.status()
    assert report["counts"] == {"pending": len(features)}
    assert all(f["attempts"] == 0 and f["cost_usd"] == 0 for f in report["features"])
    assert run.queue().file_locks() == []


def test_a_rejected_key_stops_the_run_within_seconds_before_any_session_starts(make_run: Callable[..., Run]) -> None:
    run = without_cli_retry_cap(make_run(Agents(), APP))
    run.server.fail_all(401)  # the whole API refuses the key, as the real one does
    watched = Watched(run, "--max-agents", "3")
    took = watched.wait()

    assert watched.proc.returncode == 2, watched.out + watched.err
    assert took < 10, took
    line = one_line(watched.err)
    assert "rejected the credentials (401)" in line and "ANTHROPIC_API_KEY" in line
    assert run.server.requests == []  # no session was started, let alone retried for minutes
    assert_untouched(run, APP)


def test_credentials_refused_only_by_sessions_still_stop_the_run_within_seconds(
    make_run: Callable[..., Run],
) -> None:
    # A key the endpoint's request check accepts but its sessions refuse (a gateway, an OAuth
    # login): the first sessions give up after one CLI retry instead of ten over three minutes.
    run = without_cli_retry_cap(make_run(Agents(), APP))
    run.server.fail_all(401, agent_loop_only=True)
    watched = Watched(run, "--max-agents", "3")
    took = watched.wait()

    assert watched.proc.returncode == 2, watched.out + watched.err
    assert took < 10, took
    line = one_line(watched.err)
    assert "401" in line and "ANTHROPIC_API_KEY" in line
    assert "<synthetic>" not in watched.out  # the CLI's name for its own error messages is no model
    assert "API: retrying (401 authentication_failed" in watched.out
    assert_untouched(run, APP)


class NotAnthropic(http.server.BaseHTTPRequestHandler):
    """A web server that is not the Messages API: a 404 page for everything."""

    def do_POST(self) -> None:
        page = b"<html><body>Not Found</body></html>"
        self.send_response(404)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    do_GET = do_HEAD = do_POST

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("endpoint", ["unreachable", "not-anthropic"])
def test_a_wrong_endpoint_is_named_within_seconds_and_the_run_ends_at_the_outage_limit(
    make_run: Callable[..., Run], endpoint: str
) -> None:
    features = APP[:3]
    run = without_cli_retry_cap(make_run(Agents(), features, outage_limit_seconds=5))
    server = None
    if endpoint == "unreachable":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}"  # nobody listens once it is closed
        named = f"cannot reach the API at {url}"
    else:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotAnthropic)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        named = f"{url} does not answer like the Anthropic Messages API (HTTP 404, text/html)"
    run.env["ANTHROPIC_BASE_URL"] = url
    try:
        watched = Watched(run, "--max-agents", "3")
        took = watched.wait()
    finally:
        if server is not None:
            server.shutdown()

    assert watched.proc.returncode == 1, watched.out + watched.err
    shown = watched.first(named)
    assert shown is not None and shown < 10, (shown, watched.out)
    assert took < 5 + 15, took
    line = one_line(watched.err)
    assert "gave up after the API was unavailable for" in line and named in line
    assert run.server.requests == []
    assert_untouched(run, features)


def test_an_api_down_at_start_is_probed_until_it_answers_and_no_session_is_spent_meanwhile(
    make_run: Callable[..., Run],
) -> None:
    features = APP[:2]
    run = make_run(Agents(), features)
    run.server.fail_all(529)
    probes = lambda: [r for r in run.server.raw_requests if r.body == {}]  # noqa: E731
    proc = run.start("--max-agents", "2")
    try:
        assert run.server.wait_until(lambda: len(probes()) >= 3, timeout=60), run.server.raw_requests
        assert run.server.requests == []  # while the API is down, only free probes are sent
        run.server.recover()
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        proc.kill()
    assert proc.returncode == 0, out + err
    assert "API unavailable (529)" in out and "the API answers again" in out
    report = run.status()
    assert report["counts"] == {"passing": 2}
    assert all(f["attempts"] == 1 for f in report["features"])


def test_an_outage_mid_run_ends_the_run_at_its_limit_even_while_the_cli_is_still_retrying(
    make_run: Callable[..., Run],
) -> None:
    def then_outage(req: Request, convo: Convo, feature: dict) -> Reply | None:
        if convo.succeeded(TOOL + "feature_release"):
            run.server.fail_all(529, agent_loop_only=True)  # from the next session on
        return None

    features = [{"name": "first", "category": "backend"}, {"name": "second", "depends_on": ["first"]}]
    run = without_cli_retry_cap(make_run(Agents({"first": then_outage}), features, outage_limit_seconds=4))
    watched = Watched(run, "--max-agents", "1")
    took = watched.wait()

    assert watched.proc.returncode == 1, watched.out + watched.err
    line = one_line(watched.err)
    assert "gave up after the API was unavailable for" in line and "529" in line
    began = watched.first("#2 second: API: retrying (529")
    # Without the limit the CLI would go on retrying for minutes; the run ends soon after it.
    assert began is not None and took - began < 4 + 15, (began, took, watched.out)
    by_name = run.status()["by_name"]
    assert (by_name["first"]["status"], by_name["first"]["attempts"]) == ("passing", 1)
    assert (by_name["second"]["status"], by_name["second"]["attempts"]) == ("pending", 0)
    (stopped,) = run.queue().runs(by_name["second"]["id"])
    assert stopped.outcome == "interrupted"


BROKEN_CLIS = {
    "exits-at-once": "#!/bin/sh\necho 'claude: broken install' >&2\nexit 1\n",
    "not-executable": "#!/bin/sh\nexit 0\n",
    "hangs": "#!/bin/sh\nexec sleep 600\n",
    # Answers --version, then cannot run a session.
    "fails-sessions": '#!/bin/sh\n[ "$1" = --version ] && { echo 9.9.9; exit 0; }\necho "no session" >&2\nexit 3\n',
}


@pytest.mark.parametrize("kind", list(BROKEN_CLIS))
def test_a_broken_claude_cli_stops_the_run_with_one_line_naming_it_and_uses_no_attempt(
    make_run: Callable[..., Run], tmp_path: Path, kind: str
) -> None:
    cli = tmp_path / f"claude-{kind}"
    cli.write_text(BROKEN_CLIS[kind], encoding="utf-8")
    cli.chmod(0o644 if kind == "not-executable" else 0o755)
    features = APP[:3]
    run = make_run(Agents(), features, cli_path=str(cli))
    watched = Watched(run, "--max-agents", "3")
    took = watched.wait()

    assert watched.proc.returncode == 2, watched.out + watched.err
    line = one_line(watched.err)
    assert f"claude CLI '{cli}'" in line or f"claude CLI at {cli}" in line, line
    assert "check the claude CLI install" in line
    assert took < 30, took  # the hanging one is given 10 s to answer --version
    assert_untouched(run, features)


def test_an_overloaded_api_pauses_the_run_which_resumes_by_itself(make_run: Callable[..., Run]) -> None:
    run = make_run(Agents(), APP[:4])
    run.server.fail_all(529, agent_loop_only=True)  # the start-up probe passes; sessions meet the outage
    proc = run.start("--max-agents", "3")
    try:
        failed = lambda: sum(r.kind == "http_error:529" for r in run.server.requests)  # noqa: E731
        # Two waves of sessions meet the outage (each CLI tries twice) before it ends.
        assert run.server.wait_until(lambda: failed() >= 8, timeout=120), run.server.requests
        run.server.recover()
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        proc.kill()
    assert proc.returncode == 0, out + err
    assert "pausing new claims" in out and "529" in out
    report = run.status()
    assert report["counts"] == {"passing": 4}
    # Only the sessions that did the work counted.
    assert all(f["attempts"] == 1 for f in report["features"])


# -- agent failures ------------------------------------------------------------------------------


def test_a_failing_verify_command_fails_the_attempt_and_the_resumed_retry_sees_its_output(
    make_run: Callable[..., Run],
) -> None:
    def fix_on_retry(req: Request, convo: Convo, feature: dict) -> Reply | None:
        if len(convo.prompts) == 1:
            return None  # the first attempt forgets proof.txt (the task prompt names the verify command)
        if "proof.txt is missing" in convo.prompts[-1] and not convo.succeeded("Write", now=True):
            return write(req, "proof.txt", "proof\n")
        if not convo.succeeded(TOOL + "feature_release", now=True):
            return release(feature, notes="added proof.txt")
        return None

    features = [
        {
            "name": "checked",
            "category": "backend",
            "verify": "test -f proof.txt || { echo proof.txt is missing; exit 3; }",
        }
    ]
    brain = Agents({"checked": fix_on_retry})
    run = make_run(brain, features)
    done = run.supervise("--max-agents", "1")

    assert done.returncode == 0, done.stdout + done.stderr
    feature = run.status()["by_name"]["checked"]
    assert (feature["status"], feature["attempts"]) == ("passing", 2)
    runs = run.queue().runs(feature["id"])
    assert [r.outcome for r in runs] == ["failed", "passing"]
    assert "proof.txt is missing" in runs[0].error
    prompts = brain.prompts["checked"]
    # The retry resumed the first session: one conversation holds both prompts.
    assert prompts[0].startswith("Implement feature #1: checked")
    assert prompts[-1].startswith("Your previous attempt at feature #1 (checked) did not pass")
    assert "proof.txt is missing" in prompts[-1] and "exit" in prompts[-1]


def test_a_cheap_model_s_failed_attempt_is_retried_one_model_up_in_the_same_session(
    make_run: Callable[..., Run],
) -> None:
    def fix_on_retry(req: Request, convo: Convo, feature: dict) -> Reply | None:
        if len(convo.prompts) > 1 and not convo.succeeded("Write", now=True):
            return write(req, "proof.txt", "proof\n")
        return None  # the first attempt forgets proof.txt

    verify = "test -f proof.txt || { echo proof.txt is missing; exit 3; }"
    brain = Agents({"suite": fix_on_retry})
    run = make_run(brain, [{"name": "suite", "category": "testing", "verify": verify}])  # haiku by category
    done = run.supervise("--max-agents", "1")

    assert done.returncode == 0, done.stdout + done.stderr
    feature = run.status()["by_name"]["suite"]
    assert (feature["status"], feature["attempts"], feature["model"]) == ("passing", 2, "claude-sonnet-5-5")
    runs = run.queue().runs(feature["id"])
    assert [(r.outcome, r.model) for r in runs] == [("failed", "claude-haiku-5-5"), ("passing", "claude-sonnet-5-5")]
    # The retry resumed the haiku session on sonnet: one conversation, both models.
    assert runs[0].session_id == runs[1].session_id
    assert set(run.server.models_by_session[runs[0].session_id]) == {"claude-haiku-5-5", "claude-sonnet-5-5"}
    # Each model is charged its own attempt (the resumed session's running total split by attempt).
    assert all(r.cost_usd and r.cost_usd > 0 for r in runs)
    for r in runs:
        assert f"  {r.model}: ${r.cost_usd:.4f}," in done.stdout


def test_an_agent_that_never_releases_is_reminded_retried_and_failed_and_blocks_its_dependents(
    make_run: Callable[..., Run],
) -> None:
    def mute(req: Request, convo: Convo, feature: dict) -> Reply | None:
        if not convo.succeeded("Write"):
            return write(req, "mute.txt", "half done\n")
        return Reply.text("I think I am done.")

    features = [
        {"name": "mute", "category": "backend", "max_attempts": 2},
        {"name": "child", "category": "backend", "depends_on": ["mute"]},
        {"name": "grandchild", "category": "testing", "depends_on": ["child"]},
    ]
    brain = Agents({"mute": mute})
    run = make_run(brain, features)
    done = run.supervise("--max-agents", "2")

    assert done.returncode == 1, done.stdout + done.stderr
    report = run.status()
    by_name = report["by_name"]
    assert (by_name["mute"]["status"], by_name["mute"]["attempts"]) == ("failed", 2)
    assert "without feature_release" in by_name["mute"]["notes"]
    assert by_name["child"]["status"] == by_name["grandchild"]["status"] == "blocked"
    assert by_name["child"]["attempts"] == 0
    prompts = brain.prompts["mute"]
    reminders = [p for p in prompts if p.startswith("You ended your turn without calling")]
    retries = [p for p in prompts if p.startswith("Your previous attempt at feature")]
    # One conversation across both attempts (the retry resumed it): task, 2 reminders, retry, 2 reminders.
    assert len(retries) == 1 and len(reminders) == 4 and prompts[0].startswith("Implement feature")
    # Every prompt's model responses count: feature_get, Write and a text, then one text per prompt.
    assert [r.num_turns for r in run.queue().runs(by_name["mute"]["id"])] == [3 + 2, 1 + 2]
    assert "blocked: 2" in done.stdout


# -- stopping ----------------------------------------------------------------------------------------


def test_sigint_gives_every_feature_back_and_leaves_no_lock_or_process(make_run: Callable[..., Run]) -> None:
    hold = threading.Event()
    working: set[str] = set()
    all_working = threading.Event()

    def busy(req: Request, convo: Convo, feature: dict) -> Reply | None:
        if convo.succeeded("Write"):
            with brain.lock:
                working.add(feature["name"])
                if len(working) == len(ROOTS):
                    all_working.set()
            hold.wait(120)  # the agent is mid-task when the supervisor is interrupted
        return None

    brain = Agents(dict.fromkeys(ROOTS, busy))
    run = make_run(brain, APP)
    proc = run.start("--max-agents", "3")
    try:
        assert all_working.wait(120), "the agents never got to work"
        sessions = descendants(proc.pid)  # the CLIs and their MCP servers
        assert len([c for c in sessions.values() if "_bundled/claude" in c]) == 3, sessions
        assert len(run.queue().file_locks()) == 3
        interrupted = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - interrupted
    finally:
        hold.set()
        proc.kill()
    assert proc.returncode == 130, out + err
    assert took < 15, took
    report = run.status()
    assert report["counts"] == {"pending": len(APP)}
    assert all(f["attempts"] == 0 for f in report["features"])
    queue = run.queue()
    assert queue.file_locks() == []
    # What the stopped sessions had spent is recorded, on their attempts and their features.
    for name in ROOTS:
        feature = report["by_name"][name]
        (stopped,) = queue.runs(feature["id"])
        assert stopped.outcome == "interrupted"
        assert stopped.num_turns >= 2 and stopped.cost_usd > 0, stopped
        assert feature["cost_usd"] == pytest.approx(stopped.cost_usd)
    assert "cost $0.0000" not in out
    assert_all_exit(sessions, timeout=10)  # an exiting process may take a moment to be reaped


def test_a_report_made_before_ctrl_c_is_kept_and_not_redone(make_run: Callable[..., Run]) -> None:
    reported, hold = threading.Event(), threading.Event()

    def report_then_linger(req: Request, convo: Convo, feature: dict) -> Reply | None:
        if convo.succeeded(TOOL + "feature_release"):
            reported.set()
            hold.wait(120)  # still writing its closing words when the supervisor is interrupted
        return None

    features = [
        {"name": "early", "category": "backend", "verify": "test -f early.txt"},
        {"name": "later", "category": "backend", "depends_on": ["early"]},
    ]
    run = make_run(Agents({"early": report_then_linger}), features)
    proc = run.start("--max-agents", "1")
    try:
        assert reported.wait(120), "the agent never reported"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        hold.set()
        proc.kill()
    assert proc.returncode == 130, out + err
    by_name = run.status()["by_name"]
    # Its verify still decided; the work is not thrown away to be done again next run.
    assert (by_name["early"]["status"], by_name["early"]["attempts"]) == ("passing", 1)
    assert (by_name["later"]["status"], by_name["later"]["attempts"]) == ("pending", 0)
    (attempt,) = run.queue().runs(by_name["early"]["id"])
    assert attempt.outcome == "passing" and attempt.cost_usd > 0


# -- what things cost ------------------------------------------------------------------------------


def session_totals(transcript: Path) -> tuple[float, int, int]:
    """The last running totals the CLI reported in a transcript: cost, input and output tokens."""
    results = [
        entry["data"]
        for entry in map(json.loads, transcript.read_text(encoding="utf-8").splitlines())
        if entry["type"] == "ResultMessage"
    ]
    usage = [u for m, u in results[-1]["model_usage"].items() if m != "<synthetic>"]
    tokens_in = sum(u["inputTokens"] + u["cacheReadInputTokens"] + u["cacheCreationInputTokens"] for u in usage)
    return results[-1]["total_cost_usd"], tokens_in, sum(u["outputTokens"] for u in usage)


def test_a_resumed_retry_records_only_what_it_spent_itself(make_run: Callable[..., Run]) -> None:
    def fix_on_retry(req: Request, convo: Convo, feature: dict) -> Reply | None:
        if len(convo.prompts) > 1 and not convo.succeeded("Write", now=True):
            return write(req, "proof.txt", "proof\n")
        if len(convo.prompts) > 1 and not convo.succeeded(TOOL + "feature_release", now=True):
            return release(feature, notes="added proof.txt")
        return None

    features = [{"name": "checked", "category": "backend", "verify": "test -f proof.txt"}]
    run = make_run(Agents({"checked": fix_on_retry}), features)
    done = run.supervise("--max-agents", "1")

    assert done.returncode == 0, done.stdout + done.stderr
    feature = run.status()["by_name"]["checked"]
    first, second = run.queue().runs(feature["id"])
    assert second.session_id == first.session_id  # the retry resumed the first session
    cost_1, in_1, out_1 = session_totals(Path(first.transcript_path))
    cost_2, in_2, out_2 = session_totals(Path(second.transcript_path))
    assert cost_2 > cost_1 > 0  # the CLI reports the resumed session's running total
    assert (first.cost_usd, first.input_tokens, first.output_tokens) == (pytest.approx(cost_1), in_1, out_1)
    assert (second.cost_usd, second.input_tokens, second.output_tokens) == (
        pytest.approx(cost_2 - cost_1),
        in_2 - in_1,
        out_2 - out_1,
    )
    assert feature["cost_usd"] == pytest.approx(cost_2)  # every dollar once: what the session cost in all
    assert f"cost ${cost_2:.4f}" in done.stdout


# -- budgets -------------------------------------------------------------------------------------


def test_the_run_budget_stops_new_claims_before_it_is_crossed(make_run: Callable[..., Run]) -> None:
    # Every sonnet session here costs the same (4 turns at fixed usage), about $0.0028.
    features = [{"name": f"f{i}", "category": "backend"} for i in range(6)]
    run = make_run(Agents(), features)
    done = run.supervise("--max-agents", "1", "--max-cost", "0.007")

    assert done.returncode == 1, done.stdout + done.stderr
    report = run.status()
    assert report["counts"] == {"passing": 2, "pending": 4}
    spent = sum(f["cost_usd"] for f in report["features"])
    assert 0 < spent <= 0.007
    assert all(f["attempts"] == 0 for f in report["features"] if f["status"] == "pending")
    assert "run budget of $0.0070 is spent or committed" in done.stdout
    assert "4 feature(s) left pending (raise --max-cost to go on)" in done.stderr


def test_status_and_the_run_forecast_what_the_unfinished_features_will_cost(make_run: Callable[..., Run]) -> None:
    # Every sonnet session here costs the same, about $0.0028: three finished features make a forecast.
    first = [{"name": f"f{i}", "category": "backend"} for i in range(3)]
    run = make_run(Agents(), first)
    assert run.supervise("--max-agents", "3").returncode == 0
    write_features(run.project, [*first, {"name": "g0", "category": "backend"}, {"name": "g1"}], indent=2)

    imported = subprocess.run(run.command("import"), env=run.env, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert imported.returncode == 0, imported.stderr
    report = run.status()
    per_feature = sum(report["by_name"][f"f{i}"]["cost_usd"] for i in range(3)) / 3  # their mean
    assert per_feature > 0
    assert report["cost"]["forecast_usd"] == pytest.approx(2 * per_feature)
    assert (report["cost"]["unfinished"], report["cost"]["finished_samples"]) == (2, 3)
    shown = subprocess.run(run.command("status"), env=run.env, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert f"the 2 unfinished should cost about ${2 * per_feature:.4f} more" in shown.stdout

    # A budget below the forecast is named at the start; the run still spends what it may.
    done = run.supervise("--max-agents", "1", "--max-cost", "0.004")
    assert done.returncode == 1, done.stdout + done.stderr
    warned = "the run budget of $0.0040 will likely run out: the 2 unfinished features should cost about"
    assert f"{warned} ${2 * per_feature:.4f}" in done.stdout
    after = run.status()
    assert sorted(f["status"] for f in after["features"]) == ["passing"] * 4 + ["pending"]
    left = next(f for f in after["features"] if f["status"] == "pending")
    assert f"the 1 unfinished should cost about ${after['cost']['forecast_usd']:.4f} more" in done.stdout
    assert after["cost"]["forecast_usd"] == pytest.approx(per_feature - left["cost_usd"], rel=0.05)


def test_a_session_over_its_feature_budget_is_stopped_and_the_feature_fails(make_run: Callable[..., Run]) -> None:
    def spendthrift(req: Request, convo: Convo, feature: dict) -> Reply | None:
        return write(req, f"draft-{len(convo.calls)}.txt", "more\n")  # never finishes on its own

    features = [
        {"name": "pricey", "category": "backend", "max_cost_usd": 0.002},
        {"name": "after", "category": "backend", "depends_on": ["pricey"]},
        {"name": "cheap", "category": "backend"},
    ]
    run = make_run(Agents({"pricey": spendthrift}), features)
    done = run.supervise("--max-agents", "2")

    assert done.returncode == 1, done.stdout + done.stderr
    by_name = run.status()["by_name"]
    pricey = by_name["pricey"]
    # Stopped by the SDK's max_budget_usd after the turn that crossed $0.002 ($0.0007 a turn).
    assert (pricey["status"], pricey["attempts"]) == ("failed", 1)
    assert "stopped at its budget" in pricey["notes"]
    assert 0.002 <= pricey["cost_usd"] < 0.002 + 0.0007 * 2
    assert by_name["after"]["status"] == "blocked" and by_name["cheap"]["status"] == "passing"


# -- sandbox ---------------------------------------------------------------------------------------


def test_agents_cannot_push_commit_switch_branches_or_write_outside_the_project(
    make_run: Callable[..., Run], tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    attempts = [
        ("Bash", {"command": "git init -q && git push origin main", "description": "publish"}),
        ("Bash", {"command": "git -c user.name=a commit -qam wip", "description": "commit"}),
        ("Bash", {"command": "git checkout -b mine", "description": "branch"}),
        ("Write", {"file_path": str(outside), "content": "escaped\n"}),
        ("Bash", {"command": "echo built > bash.txt", "description": "build"}),
    ]
    answers: list[tuple[str, bool, str]] = []

    def probe(req: Request, convo: Convo, feature: dict) -> Reply | None:
        done = [c for c in convo.calls if c.name in ("Bash", "Write") and c.result is not None]
        if len(done) < len(attempts):
            name, args = attempts[len(done)]
            return Reply.tool_use(name, args)
        if not answers:
            answers.extend((c.name, c.is_error, c.result or "") for c in done)
        return None

    run = make_run(Agents({"sandboxed": probe}), [{"name": "sandboxed", "category": "backend"}])
    done = run.supervise("--max-agents", "1")

    assert done.returncode == 0, done.stdout + done.stderr
    pushed, committed, switched, (_, write_denied, write_text), (_, bash_denied, _) = answers
    for (_, denied, text), entry in zip((pushed, committed, switched), ("push", "commit", "checkout"), strict=True):
        assert denied and f"`git {entry}` is not allowed" in text and "bash_deny" in text, text
        assert "agent-manager commits, merges and switches branches itself" in text, text
    assert not (run.project / ".git").exists()  # the whole line was refused, not just its tail
    assert write_denied and "outside the project" in write_text
    assert not outside.exists()
    assert not bash_denied and (run.project / "bash.txt").read_text() == "built\n"


# -- many sessions at once ---------------------------------------------------------------------


def test_eight_sessions_started_at_once_each_keep_their_own_cli_state(make_run: Callable[..., Run]) -> None:
    barrier = threading.Barrier(8, timeout=180)

    def together(req: Request, convo: Convo, feature: dict) -> Reply | None:
        if not any(c.name == "Write" for c in convo.calls):
            barrier.wait()  # all eight CLIs are up and mid-session before any goes on
        return None

    features = [{"name": f"part-{i}", "category": "backend"} for i in range(8)]
    run = make_run(Agents({f["name"]: together for f in features}), features)
    user_config = Path(run.env["CLAUDE_CONFIG_DIR"])
    done = run.supervise("--max-agents", "8")

    assert done.returncode == 0, done.stdout + done.stderr
    assert run.status()["counts"] == {"passing": 8}
    assert run.server.peak_concurrency == 8
    state = run.project / ".agent-manager" / "claude"
    configs = sorted(state.glob("feature-*/.claude.json"))
    assert len(configs) == 8
    for config in configs:
        json.loads(config.read_text())  # whole, parseable state: nobody wrote over anybody
    assert not (user_config / ".claude.json").exists()  # the user's own CLI state was not touched


# -- telling a person ------------------------------------------------------------------------------


def test_notify_command_tells_a_person_once_per_question_permission_and_run_end(
    make_run: Callable[..., Run], tmp_path: Path
) -> None:
    log = tmp_path / "notified.jsonl"
    features = [
        {"name": "port", "description": "Serve it. [ask: Which port should it use?]"},
        {"name": "toucher", "description": "[bash: touch ok.flag]"},  # nobody approves: denied at the timeout
        {"name": "plain"},
    ]
    run = make_run(
        Agents(),
        features,
        ask_bash=["touch ok.flag"],
        permission_timeout_seconds=1,
        notify_command=f'printf "%s\\n" "$AGENT_MANAGER_EVENT_JSON" >> {log}',
    )
    done = run.supervise("--max-agents", "3")

    assert done.returncode == 1, done.stdout + done.stderr  # a feature waits for an answer
    told = [json.loads(line) for line in log.read_text().splitlines()]
    ids = {f["name"]: f["id"] for f in run.status()["features"]}
    by_event = {event: [t for t in told if t["event"] == event] for event in ("question", "permission", "run_end")}
    assert sorted(t["event"] for t in told) == ["permission", "question", "run_end"]  # once each
    (question,) = by_event["question"]
    assert (question["feature_id"], question["feature"]) == (ids["port"], "port")
    assert question["message"] == f"feature #{ids['port']} (port) asks: Which port should it use?"
    assert question["text"] == question["message"]  # what a Slack incoming webhook shows
    (permission,) = by_event["permission"]
    assert permission["feature"] == "toucher" and "Bash: touch ok.flag" in permission["message"]
    assert f"agent-manager approve {permission['request_id']}" in permission["message"]
    (end,) = by_event["run_end"]
    assert told[-1] == end and end["exit_code"] == 1 and end["counts"]["needs_input"] == 1
    assert end["message"].startswith("agent-manager run ended (")
