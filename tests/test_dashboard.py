"""The web dashboard against a real queue: what its pages show, how its actions reach the queue,
and what it refuses (no token, a foreign host, a form without its CSRF token, a non-local bind).

Pages and actions go through Starlette's TestClient on the real app; the event stream and the
CLI go through a real uvicorn server and a real `agent-manager dashboard` process.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from api.features_file import FeatureSpec
from api.queue import FeatureQueue
from api.records import ClaimedFeature, Decision, Status, Verdict
from supervisor.dashboard.app import create_app
from supervisor.dashboard.board import FRESH_S
from supervisor.dashboard.data import MAX_TRANSCRIPT_ENTRIES
from supervisor.dashboard.options import DashboardOptions, make_options
from supervisor.dashboard.server import DashboardServer, bind
from supervisor.dashboard.svg import STATUS_COLOURS
from supervisor.transcripts import open_transcript
from tests.support.harness import REPO

TOKEN = "correct-horse-battery-staple"
LOCAL = "http://127.0.0.1:8765"
SCRIPT = "<script>window.pwned = 1</script>"
ESCAPED = "&lt;script&gt;window.pwned = 1&lt;/script&gt;"


def client(queue: FeatureQueue, token: str | None = None, **options: object) -> TestClient:
    assert queue.project_dir is not None
    app = create_app(queue, DashboardOptions(token=token, **options), project_dir=queue.project_dir)  # type: ignore[arg-type]
    return TestClient(app.asgi, base_url=LOCAL, follow_redirects=False)


def claim_all(queue: FeatureQueue) -> dict[str, ClaimedFeature]:
    """Claim every ready feature, by name."""
    return {c.name: c for c in queue.claim(10, "sup")}


def finish(queue: FeatureQueue, c: ClaimedFeature, status: Status, notes: str = "") -> None:
    run = queue.start_run(c, "sonnet")
    queue.finish_attempt(run.id, {"outcome": str(status), "cost_usd": 0.25}, c, Verdict(status, notes, give_up=True))


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


@pytest.fixture
def mixed(queue: FeatureQueue) -> FeatureQueue:
    """A queue with one feature in every status: passing, failed, blocked, claimed, needs_input, pending."""
    queue.import_specs(
        [
            FeatureSpec(name="schema", category="database"),
            FeatureSpec(name="broken"),
            FeatureSpec(name="after-broken", depends_on=("broken",)),
            FeatureSpec(name="api", depends_on=("schema",)),
            FeatureSpec(name="port"),
            FeatureSpec(name="later", depends_on=("api", "port")),
        ]
    )
    ready = claim_all(queue)
    assert set(ready) == {"schema", "broken", "port"}
    finish(queue, ready["schema"], Status.PASSING, "tables made")
    finish(queue, ready["broken"], Status.FAILED, "verify failed: 1 test failed")
    run = queue.start_run(ready["port"], "sonnet")
    queue.ask(ready["port"].agent_id, ready["port"].id, "Which port should it use?")
    asked = Verdict(Status.NEEDS_INPUT, count_attempt=False)
    queue.finish_attempt(run.id, {"outcome": "needs_input"}, ready["port"], asked)
    assert set(claim_all(queue)) == {"api"}
    return queue


def statuses(queue: FeatureQueue) -> dict[str, str]:
    return {f.name: str(f.status) for f in queue.status_report().features}


# -- what the pages show ---------------------------------------------------------------------------


def test_the_page_shows_every_feature_its_status_the_counts_and_the_cost_per_model(mixed: FeatureQueue) -> None:
    with client(mixed) as web:
        page = web.get("/")
    assert page.status_code == 200
    rows = dict(re.findall(r'<tr id="row-\d+" data-id="\d+" data-status="(\w+)">\s*<td class="num">\d+</td>\s*'
                           r'<td class="name"><a href="/feature/\d+">([^<]+)</a>', page.text))  # fmt: skip
    assert {name: status for status, name in rows.items()} == statuses(mixed)
    for status in ("passing", "failed", "blocked", "claimed", "needs_input", "pending"):
        assert f'<span class="count s-{status}"><span class="dot"></span>{status} <b>1</b></span>' in page.text
    assert "2 of 6 finished, 1 running" in page.text
    assert '<td>sonnet</td><td class="num">$0.5000</td>' in page.text.replace("\n", "").replace("  ", "")
    assert "Which port should it use?" in page.text  # the open question, with its answer box
    assert 'action="/answer/' in page.text
    now = page.text[page.text.index('<section id="now"') : page.text.index('<section id="features"')]
    assert re.findall(r'<td class="name"><a href="/feature/\d+">([^<]+)</a>', now) == ["api"]  # running now


def test_the_page_forecasts_the_cost_of_the_unfinished_features_once_three_have_finished(queue: FeatureQueue) -> None:
    queue.import_specs([FeatureSpec(name=f"f{i}") for i in range(5)])
    ready = claim_all(queue)

    def costing_a_quarter(name: str, status: Status) -> None:
        run = queue.start_run(ready[name], "sonnet")
        verdict = Verdict(status, cost_usd=0.25, give_up=True)
        queue.finish_attempt(run.id, {"outcome": str(status), "cost_usd": 0.25}, ready[name], verdict)

    for name in ("f0", "f1"):
        costing_a_quarter(name, Status.PASSING)
    with client(queue) as web:
        assert "no cost forecast until 3 features have finished" in web.get("/").text
    costing_a_quarter("f2", Status.FAILED)
    with client(queue) as web:  # a new server: no snapshot taken before the change
        page = web.get("/").text
    assert "the 2 unfinished should cost about <b>$0.5000</b> more" in page  # $0.25 each
    assert "(an estimate from the 3 finished)" in page


def test_the_graph_has_one_node_per_feature_coloured_by_its_status(mixed: FeatureQueue) -> None:
    with client(mixed) as web:
        svg = web.get("/fragment/dag").text
    root = ET.fromstring(svg)
    ns = {"svg": "http://www.w3.org/2000/svg"}
    nodes = root.findall(".//svg:g[@data-status]", ns)
    want = {f.id: str(f.status) for f in mixed.status_report().features}
    assert {int(n.attrib["id"].removeprefix("node-")): n.attrib["data-status"] for n in nodes} == want
    for node in nodes:
        rect = node.find("svg:rect", ns)
        assert rect is not None and rect.attrib["fill"] == STATUS_COLOURS[node.attrib["data-status"]]
    assert len(root.findall(".//svg:g[@class='edges']/svg:path", ns)) == 4  # api, after-broken, later x2


def test_agent_text_is_escaped_in_names_notes_questions_and_the_transcript(queue: FeatureQueue, tmp_path: Path) -> None:
    queue.import_specs([FeatureSpec(name=f"x{SCRIPT}", description=f"build {SCRIPT}"), FeatureSpec(name="asks")])
    ready = claim_all(queue)
    c = ready[f"x{SCRIPT}"]
    transcript = tmp_path / "t.jsonl"
    run = queue.start_run(c, "sonnet", str(transcript))
    with open_transcript(transcript) as t:
        t.write("prompt", {"model": "sonnet", "prompt": f"build {SCRIPT}"})
        t.write("AssistantMessage", {"content": [{"text": f"I will print {SCRIPT}"}]})
    failed = Verdict(Status.FAILED, SCRIPT, give_up=True)
    queue.finish_attempt(run.id, {"outcome": "failed", "error": SCRIPT}, c, failed)
    asking = ready["asks"]
    queue.start_run(asking, "sonnet")
    queue.ask(asking.agent_id, asking.id, f"May I? {SCRIPT}")

    with client(queue) as web:
        pages = [web.get("/").text, web.get(f"/feature/{c.id}").text, web.get("/fragment/dag").text]
    for page in pages:
        assert "window.pwned" in page  # the text is there...
        assert SCRIPT not in page  # ...never as markup
    board, feature, svg = pages
    assert f"x{ESCAPED}" in board and f"May I? {ESCAPED}" in board and ESCAPED in board  # name, question, notes
    assert f"build {ESCAPED}" in feature and f"assistant: I will print {ESCAPED}" in feature  # prompt, reply
    assert f"x{ESCAPED}" in svg


def test_a_feature_page_shows_its_attempts_notes_verify_output_and_transcript(
    queue: FeatureQueue, tmp_path: Path
) -> None:
    queue.import_specs([FeatureSpec(name="api", verify="pytest -q tests/test_api.py")])
    c = claim_all(queue)["api"]
    transcript = tmp_path / "feature-1-attempt-1.jsonl"
    run = queue.start_run(c, "sonnet", str(transcript))
    with open_transcript(transcript) as t:
        t.write("prompt", {"model": "sonnet", "prompt": "Build the API."})
        t.write("AssistantMessage", {"content": [{"name": "Write", "input": {"file_path": "api.py"}}]})
        t.write("UserMessage", {"content": [{"tool_use_id": "1", "content": "written"}]})
        t.write("ResultMessage", {"subtype": "success", "num_turns": 3, "total_cost_usd": 0.12})
    verify = "verify `pytest -q tests/test_api.py` exited 1:\nE   assert 404 == 200"
    queue.finish_attempt(
        run.id, {"outcome": "failed", "error": verify, "num_turns": 3}, c, Verdict(Status.FAILED, verify)
    )
    with client(queue) as web:
        page = web.get("/feature/1").text
        second = web.get("/feature/1?attempt=2")
    assert "pytest -q tests/test_api.py" in page  # the verify command
    assert "E   assert 404 == 200" in page  # its output, in the attempt and in the notes
    for line in ("&gt; prompt (sonnet):\nBuild the API.", 'tool call: Write {&#34;file_path&#34;: &#34;api.py&#34;}',
                 "tool result: written", "result: success, 3 turns, $0.1200"):  # fmt: skip
        assert line in page
    assert second.status_code == 400 and "has no attempt 2" in second.text


def test_a_long_transcript_shows_its_newest_entries_and_says_where_the_rest_is(
    queue: FeatureQueue, tmp_path: Path
) -> None:
    queue.import_specs([FeatureSpec(name="chatty")])
    c = claim_all(queue)["chatty"]
    transcript = tmp_path / "long.jsonl"
    queue.start_run(c, "sonnet", str(transcript))
    with open_transcript(transcript) as t:
        for i in range(MAX_TRANSCRIPT_ENTRIES + 100):
            t.write("AssistantMessage", {"content": [{"text": f"step {i}"}]})
    with client(queue) as web:
        page = web.get(f"/feature/{c.id}").text
    assert f"step {MAX_TRANSCRIPT_ENTRIES + 99}<" in page and "step 99<" not in page and "step 100<" in page
    assert f"the first 100 entries are not shown: agent-manager logs {c.id} --attempt 1" in page


def test_a_page_that_has_the_table_is_sent_only_the_rows_that_changed(mixed: FeatureQueue) -> None:
    ids = {f.name: f.id for f in mixed.status_report().features}
    with client(mixed) as web:
        version = re.search(r'data-version="(\d+)"', web.get("/").text).group(1)  # type: ignore[union-attr]
        mixed.retry(ids["broken"])  # failed -> pending, and its dependent is no longer blocked
        time.sleep(FRESH_S + 0.1)  # the snapshot the page came from is stale by then, whatever the watcher saw
        delta = web.get(f"/fragment/board?v={version}").text
        full = web.get("/fragment/board?v=999999").text  # a version the server never had: the whole table
    changed = sorted(int(fid) for fid in re.findall(r'<tr id="row-(\d+)"', delta))
    assert 'data-delta="1"' in delta and changed == sorted([ids["broken"], ids["after-broken"]])
    assert 'data-delta="1"' not in full and len(re.findall(r'<tr id="row-', full)) == 6


# -- actions ---------------------------------------------------------------------------------------


def test_an_answer_typed_into_the_page_resumes_the_question_s_feature(mixed: FeatureQueue) -> None:
    port = next(f.id for f in mixed.status_report().features if f.name == "port")
    with client(mixed) as web:
        token = csrf_of(web.get("/").text)  # also sets the CSRF cookie
        done = web.post(f"/answer/{port}", data={"csrf": token, "next": "/", "text": "8080"})
        assert done.status_code == 303 and done.headers["location"] == "/"
        after = web.get("/").text
    assert mixed.questions() == []
    assert statuses(mixed)["port"] == "pending"
    (resumed,) = [c for c in mixed.claim(10, "sup") if c.name == "port"]
    assert resumed.resume_prompt is not None and "8080" in resumed.resume_prompt
    assert f"answered #{port} (port): its session resumes with the answer" in after


def test_retry_stop_and_permission_decisions_go_through_the_queue_verbs(mixed: FeatureQueue) -> None:
    ids = {f.name: f.id for f in mixed.status_report().features}
    request = mixed.request_permission(ids["api"], None, "agent-x", "Bash", {"command": "curl example.com"})
    with client(mixed) as web:
        token = csrf_of(web.get("/").text)
        form = {"csrf": token, "next": "/"}
        assert web.post(f"/retry/{ids['broken']}", data=form).status_code == 303
        assert web.post(f"/stop/{ids['api']}", data=form).status_code == 303
        assert web.post(f"/permission/{request.id}", data=form | {"decision": "allow"}).status_code == 303
        again = web.post(f"/permission/{request.id}", data=form | {"decision": "deny"})
        assert "was already allowed" in web.get(again.headers["location"]).text  # the verb's refusal, shown
    assert statuses(mixed)["broken"] == "pending"
    assert mixed.permission(request.id).decision is Decision.ALLOW
    assert mixed.permission(request.id).decided_by == "dashboard (testclient)"
    (stop,) = mixed.open_controls("sup")
    assert (stop.feature_id, stop.kind, stop.text) == (ids["api"], "stop", "stopped from the dashboard")


def test_a_message_typed_into_a_running_feature_s_page_is_queued_for_its_supervisor(mixed: FeatureQueue) -> None:
    ids = {f.name: f.id for f in mixed.status_report().features}
    with client(mixed) as web:
        running = web.get(f"/feature/{ids['api']}").text
        assert f'action="/nudge/{ids["api"]}"' in running
        assert 'action="/nudge/' not in web.get(f"/feature/{ids['schema']}").text  # passing: nobody to tell
        token = csrf_of(running)
        sent = web.post(f"/nudge/{ids['api']}", data={"csrf": token, "next": "/", "text": "use the v2 endpoint"})
        assert sent.status_code == 303
        told = web.get("/").text
        web.post(f"/nudge/{ids['api']}", data={"csrf": token, "next": "/", "text": "  "})
        empty = web.get("/").text
        web.post(f"/nudge/{ids['later']}", data={"csrf": token, "next": "/", "text": "hello"})
        idle = web.get("/").text
    (control,) = mixed.open_controls("sup")
    assert (control.feature_id, control.kind, control.text) == (ids["api"], "nudge", "use the v2 endpoint")
    assert f"told the agent of feature #{ids['api']}: it reads the message at its next turn" in told
    assert "the message is empty" in empty
    assert f"feature #{ids['later']} (later) is pending, not running: nothing to nudge" in idle


def test_an_action_without_its_csrf_token_or_from_another_site_is_refused_and_changes_nothing(
    mixed: FeatureQueue,
) -> None:
    broken = next(f.id for f in mixed.status_report().features if f.name == "broken")
    with client(mixed) as web:
        token = csrf_of(web.get("/").text)
        refused = [
            web.post(f"/retry/{broken}", data={"next": "/"}),  # no token in the form
            web.post(f"/retry/{broken}", data={"csrf": "guess", "next": "/"}),
            web.post(f"/retry/{broken}", data={"csrf": token}, headers={"origin": "http://evil.example"}),
            web.post(f"/retry/{broken}", json={"csrf": token}),  # not a form
        ]
        web.cookies.clear()  # a cross-site request carries no SameSite=Strict cookie
        refused.append(web.post(f"/retry/{broken}", data={"csrf": token, "next": "/"}))
        assert web.get(f"/retry/{broken}").status_code == 405  # actions are POSTs only
    assert [r.status_code for r in refused] == [403, 403, 403, 415, 403]
    assert "security token" in refused[0].text
    assert statuses(mixed)["broken"] == "failed"


def test_an_action_returns_only_to_a_path_of_this_server(mixed: FeatureQueue) -> None:
    broken = next(f.id for f in mixed.status_report().features if f.name == "broken")
    with client(mixed) as web:
        token = csrf_of(web.get("/").text)
        done = web.post(f"/retry/{broken}", data={"csrf": token, "next": "https://evil.example/x"})
        protocol_relative = web.post(f"/retry/{broken}", data={"csrf": token, "next": "//evil.example/x"})
    assert done.headers["location"] == "/" and protocol_relative.headers["location"] == "/"


# -- who may look ------------------------------------------------------------------------------------


def test_with_a_token_every_request_must_carry_it(mixed: FeatureQueue) -> None:
    with client(mixed, token=TOKEN) as web:
        for path in ("/", "/feature/1", "/fragment/board", "/fragment/dag", "/events", "/static/dashboard.js"):
            assert web.get(path).status_code == 401, path
        assert web.post("/retry/2", data={"csrf": "x"}).status_code == 401
        assert web.get("/", headers={"authorization": "Bearer wrong-token-wrong-token"}).status_code == 403
        assert web.get("/?token=wrong").status_code == 403
        assert web.get("/", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert web.get("/", headers={"x-agent-manager-token": TOKEN}).status_code == 200
        # The first visit with ?token= sets a cookie and drops the token from the address.
        first = web.get(f"/feature/1?token={TOKEN}&attempt=1")
        assert first.status_code == 303 and first.headers["location"] == "/feature/1?attempt=1"
        cookie = first.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert web.get("/feature/1").status_code == 200  # the cookie carries it now
        assert web.get("/fragment/board").status_code == 200


def test_without_a_token_only_requests_to_a_loopback_host_are_answered(mixed: FeatureQueue) -> None:
    with client(mixed) as web:
        assert web.get("/").status_code == 200
        assert web.get("/", headers={"host": "localhost:8765"}).status_code == 200
        rebound = web.get("/", headers={"host": "attacker.example:8765"})
    assert rebound.status_code == 403 and "localhost" in rebound.text


def test_every_response_carries_a_content_security_policy_that_forbids_inline_script(mixed: FeatureQueue) -> None:
    with client(mixed) as web:
        for response in (web.get("/"), web.get("/feature/99"), web.get("/static/dashboard.css")):
            policy = response.headers["content-security-policy"]
            assert "script-src 'self'" in policy and "unsafe-inline" not in policy
            assert response.headers["x-frame-options"] == "DENY"
        assert web.get("/feature/99").status_code == 404


def test_options_refuse_a_host_others_can_reach_without_a_token() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert make_options(host, 0, None).host == host
    for host in ("0.0.0.0", "::", "192.0.2.1"):
        with pytest.raises(Exception, match="pass --token"):
            make_options(host, 0, None)
    assert make_options("0.0.0.0", 0, TOKEN).token == TOKEN
    with pytest.raises(Exception, match="at least 16 characters"):
        make_options("0.0.0.0", 0, "short")


# -- live updates through a real server ---------------------------------------------------------------


@pytest.fixture
def served(queue: FeatureQueue) -> Iterator[tuple[FeatureQueue, int]]:
    """The dashboard of ``queue`` on a real uvicorn server in a thread: (queue, port)."""
    assert queue.project_dir is not None
    options = DashboardOptions(port=0)
    sock = bind(options)
    server = DashboardServer(create_app(queue, options, project_dir=queue.project_dir), sock)
    server.start()
    yield queue, sock.getsockname()[1]
    server.stop()


def get(port: int, path: str, **headers: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def read_events(port: int, events: list[tuple[float, str]], ready: threading.Event, count: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/events")
    response = conn.getresponse()
    assert response.status == 200 and response.headers["content-type"].startswith("text/event-stream")
    ready.set()
    while len(events) < count:
        line = response.fp.readline().decode()
        if line.startswith("event: "):
            events.append((time.monotonic(), line.removeprefix("event: ").strip()))
    conn.close()


def test_a_change_in_the_database_reaches_an_open_page_within_a_second(served: tuple[FeatureQueue, int]) -> None:
    queue, port = served
    events: list[tuple[float, str]] = []
    ready = threading.Event()
    reader = threading.Thread(target=read_events, args=(port, events, ready, 1), daemon=True)
    reader.start()
    assert ready.wait(10)
    time.sleep(0.3)  # let the stream reach its wait: the change must come after it
    changed = time.monotonic()
    queue.import_specs([FeatureSpec(name="new")])
    reader.join(5)
    assert events and events[0][1] == "change", events
    assert events[0][0] - changed < 1.0
    assert ">new</a>" in get(port, "/fragment/board")[1]


# -- the command line ----------------------------------------------------------------------------------


def cli(project: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(project.parent)}
    return subprocess.run(
        [sys.executable, str(REPO / "agent_manager.py"), "dashboard", "--project-dir", str(project), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env,
    )  # fmt: skip


def test_the_cli_refuses_a_non_local_bind_without_a_token_bad_ports_and_a_port_in_use(project: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        runs = {
            "0.0.0.0 without a token": cli(project, "--host", "0.0.0.0"),
            "a port out of range": cli(project, "--port", "70000"),
            "a port that is not a number": cli(project, "--port", "http"),
            "a port in use": cli(project, "--port", str(taken)),
        }
    for why, done in runs.items():
        assert done.returncode == 2, (why, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, (why, done.stderr)
        assert done.stderr.startswith("agent-manager: error: ")
    assert "pass --token" in runs["0.0.0.0 without a token"].stderr
    assert "between 1 and 65535" in runs["a port out of range"].stderr
    assert "must be an integer" in runs["a port that is not a number"].stderr
    assert "address already in use" in runs["a port in use"].stderr.lower()


def test_the_cli_serves_the_page_and_takes_its_token_from_the_environment(project: Path) -> None:
    (project / "features.json").write_text(json.dumps([{"name": "schema"}]))
    imported = subprocess.run(
        [sys.executable, str(REPO / "agent_manager.py"), "import", "--project-dir", str(project)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    env = {"PATH": "/usr/bin:/bin", "HOME": str(project.parent), "AGENT_MANAGER_DASHBOARD_TOKEN": TOKEN}
    command = [sys.executable, str(REPO / "agent_manager.py"), "dashboard", "--project-dir", str(project)]
    proc = subprocess.Popen(
        [*command, "--host", "0.0.0.0", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=REPO, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(re.search(r":(\d+)/", line).group(1))  # type: ignore[union-attr]
        assert get(port, "/")[0] == 401
        status, page = get(port, "/", Authorization=f"Bearer {TOKEN}")
        assert status == 200 and 'data-status="pending"' in page and ">schema</a>" in page
    finally:
        proc.terminate()
        proc.wait(10)
