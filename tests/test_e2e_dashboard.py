"""End to end: `agent-manager serve --dashboard` runs real `claude` sessions (scripted model) while
headless Chromium looks at the dashboard as a person would.

One page stays open the whole time (it is never reloaded, so everything it shows arrived as a
live update); a second tab opens feature pages, answers the question and tells a running agent
something. Screenshots are saved
under the test's tmp_path/screenshots.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.scripted_model.agents import Agents
from tests.support.harness import Run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

WAIT_MS = 90_000  # sessions of the real CLI; far more than they take, bounded all the same
SCRIPT = "<script>window.pwned = 1</script>"
FEATURES = [
    {"name": "schema", "category": "database", "description": "Create the tables."},
    {"name": "port", "category": "backend", "description": "Serve the API. [ask: Which port should it use?]"},
    {"name": "api", "category": "backend", "description": "Routes.", "depends_on": ["port"]},
    {
        "name": "banner",
        "category": "frontend",
        "description": f'Show {SCRIPT} and <img src=x onerror="window.pwned = 2"> as text on the page.',
    },
    # Busy for up to 80 s, unless a person's message cuts it short.
    {"name": "polish", "category": "frontend", "description": "[turns: 400] [sleep: 0.2]", "depends_on": ["api"]},
]


class Served:
    """The serve process, its output read in a thread (so a full pipe never blocks it), its URL."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.url_seen = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            found = re.search(r"dashboard: (http://\S+)", line)
            if found and not self.url:
                self.url = found.group(1)
                self.url_seen.set()


@pytest.fixture
def served(make_run: Callable[..., Run]) -> Iterator[tuple[Run, Served]]:
    run = make_run(Agents(), FEATURES)
    proc = run.start("serve", "--dashboard", "--port", "0", "--max-agents", "2")
    served = Served(proc)
    try:
        assert served.url_seen.wait(60), "".join(served.lines) + (proc.stderr.read() if proc.poll() else "")
        yield run, served
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the supervisor gives back what it holds, the server stops
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError("serve --dashboard did not stop within 30 s of Ctrl-C") from None
    assert proc.returncode == 130, proc.stderr.read() if proc.stderr else ""


def test_a_person_watches_the_run_reads_a_transcript_and_answers_a_question_in_the_browser(
    served: tuple[Run, Served], browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    run, server = served
    shots = tmp_path / "screenshots"
    shots.mkdir()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    board = context.new_page()
    board.goto(server.url)
    board.evaluate("window.neverReloaded = true")
    ids = {name: i for i, name in enumerate(["schema", "port", "api", "banner", "polish"], start=1)}

    def badge(name: str) -> Any:
        return board.locator(f"#row-{ids[name]} .badge")

    # The table fills, and follows the run: two features pass, one waits for a person.
    expect(board.locator("tr[data-id]")).to_have_count(5)
    expect(badge("schema")).to_have_text("passing", timeout=WAIT_MS)
    expect(badge("banner")).to_have_text("passing", timeout=WAIT_MS)
    expect(badge("port")).to_have_text("needs_input", timeout=WAIT_MS)
    expect(badge("api")).to_have_text("pending")
    expect(board.locator("#people")).to_contain_text("Which port should it use?")
    expect(board.locator("#node-2")).to_have_attribute("data-status", "needs_input")  # the graph recoloured
    expect(board.locator("#connection")).to_have_text("live")
    board.screenshot(path=str(shots / "1-board-waiting-for-an-answer.png"), full_page=True)

    # A feature page shows its transcript, agent text as text: the description's markup never runs.
    tab = context.new_page()
    tab.goto(server.url + f"feature/{ids['banner']}")
    transcript = tab.locator("#transcript")
    expect(transcript).to_contain_text(f"Show {SCRIPT} and <img src=x onerror=")
    expect(transcript).to_contain_text("tool call: mcp__agent-manager__feature_release")
    expect(transcript.locator("script, img")).to_have_count(0)
    assert tab.evaluate("window.pwned") is None and board.evaluate("window.pwned") is None
    tab.screenshot(path=str(shots / "2-feature-transcript-with-markup-as-text.png"), full_page=True)

    # An answer typed into the page resumes the question's feature, and its dependent runs after it.
    tab.goto(server.url + f"feature/{ids['port']}")
    tab.fill(f"#answer-{ids['port']}", "8080")
    tab.get_by_role("button", name="Answer").click()
    expect(tab.locator(".flash.notice")).to_contain_text("its session resumes with the answer")
    expect(badge("port")).to_have_text("passing", timeout=WAIT_MS)
    expect(badge("api")).to_have_text("passing", timeout=WAIT_MS)
    expect(board.locator(".progress-text")).to_have_text("4 of 5 finished, 1 running", timeout=WAIT_MS)
    expect(board.locator("#people")).not_to_contain_text("Which port")

    tab.goto(server.url + f"feature/{ids['port']}")
    expect(tab.locator("#attempts tbody tr:not(.detail)")).to_have_count(2)  # asked, then resumed and passed
    expect(tab.locator("#transcript")).to_contain_text("Their answer: 8080")
    tab.screenshot(path=str(shots / "4-answered-feature.png"), full_page=True)
    assert "Their answer: 8080" in (run.project / "port.txt").read_text()

    # A message typed into a running feature's page reaches its agent at its next turn.
    tab.goto(server.url + f"feature/{ids['polish']}")
    tab.fill(f"#nudge-{ids['polish']}", "use the v2 endpoint")
    tab.get_by_role("button", name="Send").click()
    expect(tab.locator(".flash.notice")).to_contain_text("it reads the message at its next turn")
    expect(badge("polish")).to_have_text("passing", timeout=WAIT_MS)
    expect(board.locator(".progress-text")).to_have_text("5 of 5 finished")
    assert board.evaluate("window.neverReloaded") is True  # all of it arrived as live updates
    board.screenshot(path=str(shots / "3-board-all-passing.png"), full_page=True)
    assert "operator: use the v2 endpoint" in (run.project / "polish.txt").read_text()


def test_the_dashboard_refuses_to_listen_beyond_this_machine_without_a_token(make_run: Callable[..., Run]) -> None:
    run = make_run(Agents(), FEATURES[:1])
    done = run.supervise("serve", "--dashboard", "--host", "0.0.0.0")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "agent-manager: error: --host 0.0.0.0 can be reached from other machines: pass --token (or set "
        "AGENT_MANAGER_DASHBOARD_TOKEN) so that only people who have it can see the run and act on it, "
        "or listen on 127.0.0.1"
    ]
    assert not (run.project / ".agent-manager" / "features.db").exists()  # refused before anything ran
