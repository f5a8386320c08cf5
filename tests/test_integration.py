"""Worktree mode in process: the supervisor with a scripted runner against real git repositories."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import agent_manager
from api.database import Database
from api.errors import InputError
from api.features_file import FeatureSpec
from api.queue import FeatureQueue
from api.records import Status
from supervisor.gitrepo import GitRepo, commit_message
from supervisor.integration import GitPlan, plan
from supervisor.runner import AgentOutcome, AgentTask
from tests.support.git import git, no_user_git_config  # noqa: F401 - an autouse fixture
from tests.support.projects import write_features
from tests.support.runners import ScriptedRunner, passes
from tests.support.supervise import supervise


def repo_with_queue(project: Path, *names: str) -> tuple[GitRepo, FeatureQueue]:
    git(project, "init", "-q", "--initial-branch=main")
    (project / "README").write_text("hello\n")
    git(project, "add", "README")
    git(project, "-c", "user.name=O", "-c", "user.email=o@x", "commit", "-qm", "initial")
    db = Database(f"sqlite:///{project / 'queue.db'}")
    db.migrate()
    (project / ".git" / "info" / "exclude").write_text("queue.db*\n/.agent-manager/\n")
    queue = FeatureQueue(db, project_dir=project, lease_seconds=30)
    queue.import_specs([FeatureSpec(name) for name in names])
    return GitRepo(project), queue


async def writes_file(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
    """Write ``<name>.txt`` through the write guard, as the CLI's Write tool would, and pass."""
    target = task.cwd / f"{task.feature_name}.txt"
    assert task.guard_write is not None
    decision = await task.guard_write(str(target))
    assert decision.allowed, decision.reason
    target.write_text(f"{task.feature_name}\n")
    return await passes(task, runner)


def test_a_feature_merged_by_a_supervisor_that_died_before_recording_it_is_recorded_not_rerun(
    project: Path,
) -> None:
    repo, queue = repo_with_queue(project, "solo")
    # The dead supervisor: claimed, worked in the worktree, merged, recorded the commit, then died.
    claim = queue.claim(1, "dead-host:1:abc")[0]
    _, _, run = queue.begin_attempt(claim, "sonnet", lambda n: None)
    worktree = repo.worktree(claim.id, "main")
    (worktree / "solo.txt").write_text("solo\n")
    repo.commit_all(worktree, "wip")
    merged = repo.squash_merge(claim.id, "main", commit_message("solo", claim.id, 1, "sonnet", 0.1))
    assert merged.commit is not None
    queue.set_run_commit(run.id, merged.commit)
    assert repo.advance("main", merged.commit, merged.base)
    queue.give_back_all("dead-host:1:abc")  # what the reaper does once its lease expires
    runner = ScriptedRunner(queue)

    summary, _ = supervise(queue, runner, git=plan(project, None, None))

    assert runner.tasks == []  # no session: the work was merged already
    feature = queue.status_report().features[0]
    assert (feature.status, summary.exit_code) == (Status.PASSING, 0)
    assert "merged as" in feature.notes
    assert git(project, "rev-list", "--count", "main") == "2"  # once, not twice
    assert repo.worktrees() == []


def test_worktree_copy_and_setup_run_in_each_new_worktree_and_a_failing_setup_spends_no_attempt(
    project: Path,
) -> None:
    _repo, queue = repo_with_queue(project, "good", "bad")
    queue.default_max_attempts = 2
    (project / ".env").write_text("SECRET=1\n")  # untracked, copied in, never committed
    with (project / ".git" / "info" / "exclude").open("a") as exclude:
        exclude.write("setup.out\n")  # what a set-up makes is ignored, as node_modules would be
    seen: dict[str, tuple[str, str]] = {}

    async def looks(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        seen[task.feature_name] = ((task.cwd / ".env").read_text(), (task.cwd / "setup.out").read_text())
        return await writes_file(task, runner)

    setup = 'test "$(basename "$PWD")" != feature-2 && echo ready > setup.out || { echo no network; exit 3; }'
    runner = ScriptedRunner(queue, looks)

    summary, _ = supervise(
        queue, runner, git=plan(project, None, None), worktree_setup=setup, worktree_copy=(".env",), max_attempts=2
    )

    by_name = {f.name: f for f in queue.status_report().features}
    assert seen == {"good": ("SECRET=1\n", "ready\n")}
    assert by_name["good"].status == Status.PASSING
    bad = by_name["bad"]
    # Given back twice in the run (max_attempts), then failed, with the set-up's output; the runner never ran.
    assert bad.status == Status.FAILED and "exited 3" in bad.notes and "no network" in bad.notes
    assert [r.outcome for r in queue.runs(bad.id)] == ["workspace_error", "workspace_error"]
    assert summary.exit_code == 1
    assert git(project, "show", "--name-only", "--format=", "main") == "good.txt"
    assert (project / ".env").read_text() == "SECRET=1\n"


def test_file_locks_name_repository_paths_across_worktrees_and_refuse_the_project_checkout(
    project: Path,
) -> None:
    _repo, queue = repo_with_queue(project, "one")
    answers: list[tuple[bool, str]] = []

    async def probes(task: AgentTask, runner: ScriptedRunner) -> AgentOutcome:
        assert task.guard_write is not None and task.cwd != project
        for path in (task.cwd / "src" / "a.py", "src/a.py", project / "src" / "b.py"):
            decision = await task.guard_write(str(path))
            answers.append((decision.allowed, decision.reason))
        answers.append((True, str(queue.file_locks())))
        return await passes(task, runner)

    supervise(queue, ScriptedRunner(queue, probes), git=plan(project, None, None))

    assert [allowed for allowed, _ in answers[:3]] == [True, True, False]
    assert "outside the project" in answers[2][1]
    assert "('src/a.py'," in answers[3][1]  # one lock, by its repository-relative path


def test_a_dirty_checkout_is_refused_in_one_line_before_anything_is_written(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    git(project, "init", "-q", "--initial-branch=main")
    (project / "README").write_text("hello\n")
    git(project, "add", "README")
    git(project, "-c", "user.name=O", "-c", "user.email=o@x", "commit", "-qm", "initial")
    (project / "README").write_text("an edit the user has not committed\n")
    write_features(project, [{"name": "one"}])
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")

    code = agent_manager.main(["--project-dir", str(project)])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "uncommitted changes to tracked files (README)" in err[0] and "commit or stash" in err[0]
    assert not (project / ".agent-manager").exists()  # no database, no logs


def test_plan_picks_worktree_in_a_repository_with_a_commit_and_shared_otherwise(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert plan(plain, None, None) == GitPlan("off")
    with pytest.raises(InputError, match="needs a git repository"):
        plan(plain, "worktree", None)
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    assert plan(empty, None, None).mode == "shared"
    full = tmp_path / "full"
    full.mkdir()
    git(full, "init", "-q", "--initial-branch=trunk")
    git(full, "-c", "user.name=O", "-c", "user.email=o@x", "commit", "-q", "--allow-empty", "-m", "x")
    chosen = plan(full, None, None)
    assert (chosen.mode, chosen.branch) == ("worktree", "trunk")
    assert plan(full, "shared", None).mode == "shared"
    with pytest.raises(InputError, match="no branch 'nope'"):
        plan(full, None, "nope")


def test_each_merged_feature_records_its_commit_on_its_last_attempt(project: Path) -> None:
    repo, queue = repo_with_queue(project, "a", "b")
    runner = ScriptedRunner(queue, writes_file)

    summary, supervisor = supervise(queue, runner, git=plan(project, None, None), max_agents=2)

    assert summary.exit_code == 0 and summary.git is not None and summary.git.startswith("merged 2 onto main")
    for feature in queue.status_report().features:
        run = queue.runs(feature.id)[-1]
        assert run.commit_sha is not None and repo.is_ancestor(run.commit_sha, "refs/heads/main")
        assert git(project, "log", "-1", "--format=%s", run.commit_sha) == feature.name
    assert [t.cwd.name for t in sorted(runner.tasks, key=lambda t: t.feature_id)] == ["feature-1", "feature-2"]
    assert supervisor.git.merged == 2


def test_a_stdio_mcp_server_gets_the_agent_worktree_back_from_its_environment(tmp_path: Path) -> None:
    from api.identity import Identity

    worktree = tmp_path / "project" / ".agent-manager" / "worktrees" / "feature-3"
    worktree.mkdir(parents=True)
    sent = Identity("sqlite:///x.db", tmp_path / "project", "agent-3", 3, work_dir=worktree)

    back = Identity.from_env(sent.to_env())

    assert back.files_root == worktree.resolve() and back.project_dir == (tmp_path / "project").resolve()
    assert Identity.from_env({k: v for k, v in sent.to_env().items() if "WORK_DIR" not in k}).work_dir is None


def test_a_merge_lock_left_by_a_killed_supervisor_of_this_host_does_not_hold_up_merges(project: Path) -> None:
    import socket

    _repo, queue = repo_with_queue(project, "one")
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead_owner = f"{socket.gethostname()}:{gone.pid}:abcdef"
    assert queue.take_merge_lock("main", dead_owner, 3600)  # would block every merge for an hour

    summary, _ = supervise(queue, ScriptedRunner(queue, writes_file), git=plan(project, None, None), timeout=30)

    assert summary.exit_code == 0 and queue.status_report().features[0].status == Status.PASSING
    assert queue.merge_lock_holder("main") is None
