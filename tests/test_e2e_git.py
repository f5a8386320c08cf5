"""End to end in git: real `claude` sessions (scripted model) in per-feature worktrees, a merge queue
that checks the merged tree, and one commit per passing feature on the integration branch."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor.scripted_model import Reply, Request
from supervisor.scripted_model.agents import TOOL, Agents, Convo, release, write
from tests.support.git import NO_USER_CONFIG, git
from tests.support.harness import Run

pytestmark = pytest.mark.slow

LINES = "".join(f"line {n}\n" for n in range(1, 11))
TRAILERS = ("Agent-Manager-Feature-Id", "Agent-Manager-Attempt", "Agent-Manager-Model", "Agent-Manager-Cost-USD")


def init_repo(run: Run, files: dict[str, str]) -> str:
    """Make the run's project a repository on main with one commit of ``files``; its head."""
    run.env |= NO_USER_CONFIG
    project = run.project
    git(project, "init", "-q", "--initial-branch=main")
    for name, text in files.items():
        (project / name).write_text(text)
    git(project, "add", *files)
    git(project, "-c", "user.name=Owner", "-c", "user.email=owner@example.com", "commit", "-qm", "initial")
    return git(project, "rev-parse", "HEAD")


def feature_commits(project: Path, since: str) -> list[dict[str, str]]:
    """The commits on main after ``since``, oldest first: subject, trailers, files."""
    commits = []
    for sha in git(project, "rev-list", "--reverse", f"{since}..main").split():
        trailers = git(project, "log", "-1", "--format=%(trailers:only,unfold)", sha)
        entry = dict(line.split(": ", 1) for line in trailers.splitlines() if ": " in line)
        entry["subject"] = git(project, "log", "-1", "--format=%s", sha)
        entry["files"] = " ".join(sorted(git(project, "show", "--format=", "--name-only", sha).split()))
        entry["parents"] = str(len(git(project, "log", "-1", "--format=%P", sha).split()))
        commits.append(entry)
    return commits


def assert_tidy(project: Path, kept: tuple[int, ...] = ()) -> None:
    """After a run: no modified tracked file, worktrees only for the kept failures, no stray branches."""
    assert git(project, "status", "--porcelain", "--untracked-files=no") == ""
    untracked = git(project, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert untracked == ["?? features.json"], untracked
    listed = [line.split()[0] for line in git(project, "worktree", "list").splitlines()]
    expected = [str(project)] + [str(project / ".agent-manager" / "worktrees" / f"feature-{i}") for i in kept]
    assert sorted(listed) == sorted(expected)
    branches = git(project, "branch", "--list", "agent-manager/*", "--format=%(refname:short)").split()
    assert branches == [f"agent-manager/feature-{i}" for i in kept]


def read_then_write(relative: str, content: Callable[[Request, Convo], str]) -> Callable[..., Reply | None]:
    """A hook for this prompt: Read the file (the CLI wants an existing file read first), Write it, release."""

    def step(req: Request, convo: Convo, feature: dict) -> Reply | None:
        path = os.path.join(req.working_dir() or "", relative)
        now = convo.current()
        if not any(c.name == "Read" and c.result is not None for c in now):
            return Reply.tool_use("Read", {"file_path": path})
        if not any(c.name == "Write" and c.result is not None and not c.is_error for c in now):
            return Reply.tool_use("Write", {"file_path": path, "content": content(req, convo)})
        if not convo.succeeded(TOOL + "feature_release", now=True):
            return release(feature)
        return Reply.text("done")

    return step


def with_line(number: int, text: str) -> str:
    lines = LINES.splitlines(keepends=True)
    lines[number - 1] = f"{text}\n"
    return "".join(lines)


def test_a_dependent_starts_from_its_merged_dependency_and_every_feature_is_one_commit(
    make_run: Callable[..., Run],
) -> None:
    features = [
        {"name": "schema", "verify": "test -f schema.txt"},
        # Verified in its own worktree and on the merged tree: passes only with its dependency merged.
        {"name": "api", "depends_on": ["schema"], "verify": "test -f schema.txt && test -f api.txt"},
        {"name": "styles", "verify": "test -f styles.txt"},
    ]
    seen: dict[str, Convo] = {}

    def watch(req: Request, convo: Convo, feature: dict) -> Reply | None:
        seen[feature["name"]] = convo
        return None

    brain = Agents({"api": watch})
    run = make_run(brain, features)
    base = init_repo(run, {"README.md": "hello\n"})

    done = run.supervise("--max-agents", "2")

    assert done.returncode == 0, done.stdout + done.stderr
    report = run.status()
    assert report["counts"] == {"passing": 3}
    commits = feature_commits(run.project, base)
    assert sorted(c["subject"] for c in commits) == ["api", "schema", "styles"]
    by_name = {c["subject"]: c for c in commits}
    assert [c["subject"] for c in commits].index("schema") < [c["subject"] for c in commits].index("api")
    for name, commit in by_name.items():
        assert commit["files"] == f"{name}.txt"  # exactly the feature's own change, squashed
        assert commit["parents"] == "1"  # linear history
        assert set(TRAILERS) <= set(commit)
        feature = report["by_name"][name]
        assert commit["Agent-Manager-Feature-Id"] == str(feature["id"])
        assert commit["Agent-Manager-Attempt"] == "1"
        assert commit["Agent-Manager-Model"] == "claude-sonnet-5-5"
        assert float(commit["Agent-Manager-Cost-USD"]) == pytest.approx(feature["cost_usd"], abs=1e-4)
    # The agent of api wrote only api.txt: schema.txt was in its worktree because schema had merged.
    assert [c.input["file_path"].rsplit("/", 1)[1] for c in seen["api"].calls if c.name == "Write"] == ["api.txt"]
    # The project checkout was fast-forwarded: the files are there, and the tree is tidy.
    for name in ("schema", "api", "styles"):
        assert (run.project / f"{name}.txt").read_text() == f"{name}\n"
    assert_tidy(run.project)
    assert "merged 3" in done.stdout
    schema = report["by_name"]["schema"]
    logs = subprocess.run(run.command("logs", str(schema["id"])), env=run.env, capture_output=True, text=True)
    sha = git(run.project, "log", "--format=%H", f"--grep=^Agent-Manager-Feature-Id: {schema['id']}$")
    assert sha[:12] in logs.stdout, logs.stdout


def test_two_features_editing_one_file_in_different_places_both_land(make_run: Callable[..., Run]) -> None:
    started = threading.Barrier(2, timeout=120)

    def edit(line: int) -> Callable[..., Reply | None]:
        step = read_then_write("lines.txt", lambda req, convo: _current(req, line))

        def hook(req: Request, convo: Convo, feature: dict) -> Reply | None:
            if not convo.calls or convo.calls[-1].name == TOOL + "feature_get":
                started.wait()  # both worktrees exist, both from the first commit
            return step(req, convo, feature)

        return hook

    brain = Agents({"top": edit(2), "bottom": edit(9)})
    run = make_run(brain, [{"name": "top"}, {"name": "bottom"}])
    base = init_repo(run, {"lines.txt": LINES})

    done = run.supervise("--max-agents", "2")

    assert done.returncode == 0, done.stdout + done.stderr
    expected = LINES.replace("line 2\n", "line 2 by top\n").replace("line 9\n", "line 9 by bottom\n")
    assert (run.project / "lines.txt").read_text() == expected
    commits = feature_commits(run.project, base)
    assert sorted(c["subject"] for c in commits) == ["bottom", "top"]
    assert all(c["files"] == "lines.txt" for c in commits)
    assert "conflicts 0" in done.stdout
    assert_tidy(run.project)


def _current(req: Request, line: int) -> str:
    """lines.txt as the agent's worktree has it, with ``line`` changed by the feature."""
    path = Path(req.working_dir() or "") / "lines.txt"
    lines = path.read_text().splitlines(keepends=True)
    name = "top" if line == 2 else "bottom"
    lines[line - 1] = f"line {line} by {name}\n"
    return "".join(lines)


def test_a_real_conflict_is_repaired_by_the_resumed_session(make_run: Callable[..., Run]) -> None:
    started = threading.Barrier(2, timeout=120)
    resolved = with_line(5, "line 5 by left and right")
    repair_prompts: list[str] = []

    def hook(name: str) -> Callable[..., Reply | None]:
        first = read_then_write("lines.txt", lambda req, convo: with_line(5, f"line 5 by {name}"))
        repair = read_then_write("lines.txt", lambda req, convo: resolved)

        def step(req: Request, convo: Convo, feature: dict) -> Reply | None:
            if len(convo.prompts) > 1 and "conflict" in convo.prompts[-1]:
                if not convo.current():
                    repair_prompts.append(convo.prompts[-1])
                return repair(req, convo, feature)
            if not convo.calls or convo.calls[-1].name == TOOL + "feature_get":
                started.wait()
            return first(req, convo, feature)

        return step

    brain = Agents({"left": hook("left"), "right": hook("right")})
    run = make_run(brain, [{"name": "left"}, {"name": "right"}])
    base = init_repo(run, {"lines.txt": LINES})

    done = run.supervise("--max-agents", "2")

    assert done.returncode == 0, done.stdout + done.stderr
    assert (run.project / "lines.txt").read_text() == resolved
    assert len(repair_prompts) == 1
    assert "lines.txt" in repair_prompts[0] and "<<<<<<<" in repair_prompts[0]
    commits = feature_commits(run.project, base)
    assert sorted(c["subject"] for c in commits) == ["left", "right"]
    assert all(c["parents"] == "1" and c["Agent-Manager-Attempt"] == "1" for c in commits)
    report = run.status()
    assert report["counts"] == {"passing": 2}
    assert {f["attempts"] for f in report["features"]} == {1}  # a repair is not a new attempt
    assert "conflicts 1" in done.stdout and "repaired 1" in done.stdout
    assert_tidy(run.project)


GATE = "test ! -f a.txt || test ! -f b.txt || test -f both.txt"


@pytest.mark.parametrize("repairs", [1, 0], ids=["repaired", "no-repairs-left"])
def test_a_gate_that_fails_only_on_the_merged_tree_is_caught(make_run: Callable[..., Run], repairs: int) -> None:
    started = threading.Barrier(2, timeout=120)
    gate_prompts: list[str] = []

    def hook(req: Request, convo: Convo, feature: dict) -> Reply | None:
        if len(convo.prompts) > 1 and "merged tree failed" in convo.prompts[-1]:
            gate_prompts.append(convo.prompts[-1]) if not convo.current() else None
            if not convo.succeeded("Write", now=True):
                return write(req, "both.txt", "a and b\n")
            return None if convo.succeeded(TOOL + "feature_release", now=True) else release(feature)
        if not convo.calls or convo.calls[-1].name == TOOL + "feature_get":
            started.wait()
        return None

    brain = Agents({"a": hook, "b": hook}, file_for=lambda f: (f"{f['name']}.txt", "x\n"))
    run = make_run(brain, [{"name": "a"}, {"name": "b"}], gate=GATE, merge_repairs=repairs)
    base = init_repo(run, {"README.md": "hello\n"})

    done = run.supervise("--max-agents", "2")

    commits = feature_commits(run.project, base)
    report = run.status()
    if repairs:
        assert done.returncode == 0, done.stdout + done.stderr
        assert len(gate_prompts) == 1 and GATE in gate_prompts[0]
        first, second = (c["files"] for c in commits)  # the second to merge carries the repair
        assert (first, second) in (("a.txt", "b.txt both.txt"), ("b.txt", "a.txt both.txt"))
        assert_tidy(run.project)
        return
    # No repair allowed: the second feature fails on the merged tree and never reaches main.
    assert done.returncode == 1, done.stdout + done.stderr
    assert gate_prompts == []
    assert len(commits) == 1
    failed = next(f for f in report["features"] if f["status"] != "passing")
    assert f"gate `{GATE}` exited 1 on the merged tree" in failed["notes"]
    assert not (run.project / "both.txt").exists()
    # Its worktree is kept for inspection (status lists it); the passing one's is gone.
    assert_tidy(run.project, kept=(failed["id"],))
    status = subprocess.run(run.command("status"), env=run.env, capture_output=True, text=True, check=True).stdout
    assert f"feature-{failed['id']}" in status
    # `clean` removes it, and keeps its work (which never reached main) on a branch of its own.
    cleaned = subprocess.run(run.command("clean"), env=run.env, capture_output=True, text=True, check=True).stdout
    saved = f"agent-manager-saved/feature-{failed['id']}"
    assert f"saved the unmerged work of feature #{failed['id']} on branch {saved}" in cleaned
    assert f"{failed['name']}.txt" in git(run.project, "ls-tree", "-r", "--name-only", saved).split()
    assert_tidy(run.project)


def test_kill_9_during_the_merge_leaves_the_branch_before_the_feature_and_the_next_run_lands_it(
    make_run: Callable[..., Run], tmp_path: Path
) -> None:
    entered, proceed = tmp_path / "in-gate", tmp_path / "proceed"
    gate = f"test -f {proceed} || (touch {entered}; sleep 30)"
    run = make_run(Agents(), [{"name": "solo", "verify": "test -f solo.txt"}], gate=gate)
    base = init_repo(run, {"README.md": "hello\n"})
    supervisor = run.start("--lease-seconds", "3")
    try:
        deadline = time.monotonic() + 120
        while not entered.exists():  # the gate is running on the merged tree
            assert supervisor.poll() is None, supervisor.communicate()
            assert time.monotonic() < deadline, "the merge never started"
            time.sleep(0.05)
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait(30)
    finally:
        _kill_matching(str(entered))
    assert git(run.project, "rev-parse", "main") == base  # not half merged: not merged at all
    assert git(run.project, "status", "--porcelain", "--untracked-files=no") == ""

    proceed.touch()
    done = run.supervise("--lease-seconds", "3")

    assert done.returncode == 0, done.stdout + done.stderr
    commits = feature_commits(run.project, base)
    assert [c["subject"] for c in commits] == ["solo"]
    assert commits[0]["files"] == "solo.txt"
    assert (run.project / "solo.txt").read_text() == "solo\n"
    assert_tidy(run.project)


def _kill_matching(text: str) -> None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                continue


@pytest.mark.postgres
def test_two_supervisors_on_two_clones_of_one_bare_repository_land_every_feature_once(
    make_run: Callable[..., Run], pg_url: str, tmp_path: Path
) -> None:
    parts = [f"part-{i}" for i in range(6)]
    features = [{"name": name, "verify": f"test -f {name}.txt"} for name in parts]
    # Claimed by whichever host: its worktree must hold every part, merged by either host.
    features.append({"name": "joined", "depends_on": parts, "verify": " && ".join(f"test -f {n}.txt" for n in parts)})
    seed, bare = tmp_path / "seed", tmp_path / "shared.git"
    seed.mkdir()
    git(seed, "init", "-q", "--initial-branch=main")
    (seed / "README.md").write_text("hello\n")
    git(seed, "add", "README.md")
    git(seed, "-c", "user.name=O", "-c", "user.email=o@x", "commit", "-qm", "initial")
    git(tmp_path, "clone", "-q", "--bare", str(seed), str(bare))
    base = git(bare, "rev-parse", "main")
    # Four sessions at once, two on each host, before any of them writes.
    started = threading.Barrier(4, timeout=120)
    met: set[str] = set()
    lock = threading.Lock()

    def meet(req: Request, convo: Convo, feature: dict) -> Reply | None:
        with lock:
            first = feature["name"] not in met and len(met) < 4
            met.add(feature["name"]) if first else None
        if first:
            started.wait()
        return None

    runs = [make_run(Agents(dict.fromkeys(parts, meet)), features, pg_url) for _ in range(2)]
    for run in runs:  # a clone of the shared repository in each project directory
        run.env |= NO_USER_CONFIG
        git(run.project, "init", "-q", "--initial-branch=main")
        git(run.project, "remote", "add", "origin", str(bare))
        git(run.project, "fetch", "-q", "origin")
        git(run.project, "checkout", "-q", "-b", "main", "origin/main")

    procs = [run.start("--max-agents", "2", "--remote", "origin") for run in runs]
    outputs = [proc.communicate(timeout=240) for proc in procs]

    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out + err
    report = runs[0].status()
    assert report["counts"] == {"passing": 7}
    ids = {str(f["id"]) for f in report["features"]}
    history = git(bare, "rev-list", "--reverse", f"{base}..main").split()
    assert len(history) == 7  # no commit lost, none merged twice
    seen_ids = []
    for sha in history:
        assert len(git(bare, "log", "-1", "--format=%P", sha).split()) == 1  # linear
        trailer = git(bare, "log", "-1", "--format=%(trailers:key=Agent-Manager-Feature-Id,valueonly)", sha)
        seen_ids.append(trailer.strip())
    assert sorted(seen_ids) == sorted(ids)
    assert git(bare, "log", "-1", "--format=%s", history[-1]) == "joined"
    # Both hosts merged some of the work; both clones end clean, their main behind or equal.
    merged = [int(out.split("merged ", 1)[1].split()[0]) for out, _ in outputs]
    assert sum(merged) == 7 and min(merged) >= 1, merged
    for run in runs:
        assert git(run.project, "status", "--porcelain", "--untracked-files=no") == ""
        git(run.project, "fetch", "-q", "origin")
        git(run.project, "merge-base", "--is-ancestor", "main", "origin/main")  # behind at most, never diverged
        assert git(run.project, "worktree", "list").count("\n") == 0


def test_a_question_in_a_worktree_is_answered_and_the_resumed_session_lands_one_commit(
    make_run: Callable[..., Run],
) -> None:
    brain = Agents()
    run = make_run(brain, [{"name": "config", "description": "Write the config. [ask: YAML or TOML?]"}])
    base = init_repo(run, {"README.md": "demo\n"})

    first = run.supervise()
    assert first.returncode == 1, first.stdout + first.stderr
    assert "1 feature(s) wait for an answer" in first.stdout
    assert run.status()["by_name"]["config"]["status"] == "needs_input"
    assert feature_commits(run.project, base) == []  # nothing lands while it waits
    worktree = run.project / ".agent-manager" / "worktrees" / "feature-1"
    assert worktree.is_dir()  # kept for the resumed session

    answered = run.supervise("answer", "1", "TOML")
    assert answered.returncode == 0, answered.stderr
    second = run.supervise()
    assert second.returncode == 0, second.stdout + second.stderr

    (commit,) = feature_commits(run.project, base)
    assert commit["subject"] == "config" and commit["files"] == "config.txt"
    assert "Their answer: TOML" in git(run.project, "show", "main:config.txt")
    assert len(brain.sessions_by_feature["config"]) == 1  # the answer continued the asking session
    assert_tidy(run.project)


def test_an_agent_s_commands_worktree_setup_verify_and_the_gate_know_their_feature_and_slot(
    make_run: Callable[..., Run], tmp_path: Path
) -> None:
    # Ports, databases and the like per running feature: AGENT_MANAGER_SLOT never collides.
    log = tmp_path / "env.log"

    def record(who: str) -> str:
        return f'echo "{who} $AGENT_MANAGER_FEATURE_ID $AGENT_MANAGER_FEATURE_NAME $AGENT_MANAGER_SLOT" >> {log}'

    features = [
        {"name": name, "description": f"[bash: {record('agent')}]", "verify": record("verify")}
        for name in ("alpha", "beta", "gamma")
    ]
    run = make_run(Agents(), features, worktree_setup=record("setup"), gate=record("gate"))
    init_repo(run, {"README.md": "hello\n"})

    done = run.supervise("--max-agents", "2")

    assert done.returncode == 0, done.stdout + done.stderr
    ids = {f["name"]: str(f["id"]) for f in run.status()["features"]}
    seen: dict[tuple[str, str], set[str]] = {}
    for line in log.read_text().splitlines():
        who, fid, name, slot = line.split()
        assert ids[name] == fid
        seen.setdefault((who, name), set()).add(slot)
    # Every command of every feature ran with its feature; verify runs in the worktree and on the
    # merged tree. A feature keeps one slot for its session, and slots stay below --max-agents.
    assert set(seen) == {(who, name) for who in ("setup", "agent", "verify", "gate") for name in ids}
    for name in ids:
        slots = set().union(*(seen[(who, name)] for who in ("setup", "agent", "verify", "gate")))
        assert len(slots) == 1 and slots <= {"0", "1"}
