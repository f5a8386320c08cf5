"""Git for a run: where each attempt works, and how a passing feature lands as one commit.

- ``worktree`` (the default in a git repository with a commit): each feature works in its own
  worktree and branch; a passing feature enters the merge queue, which squashes it onto the
  integration branch, runs its ``verify`` and the project's ``gate`` on the merged tree, and only
  then moves the branch. One merge at a time per branch, across every supervisor on the queue.
- ``shared``: one tree for every agent, as before; in a git repository each passing feature's
  written files are committed, one commit per feature.
- ``off``: not a git repository; nothing is committed.

The supervisor is the only git writer (agents' git writes are on the Bash deny-list).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from api.errors import AgentManagerError, InputError
from api.queue import FeatureQueue
from api.records import RunRecord
from api.verify import run_verify
from supervisor.gitrepo import DirtyCheckoutError, GitError, GitRepo, MergeResult, feature_branch
from supervisor.routing import ISOLATIONS

log = logging.getLogger("agent_manager.git")

MERGE_POLL_S = 0.2  # how often a merge waiting on another supervisor's asks again
MOVED_RETRIES = 3  # the branch moved under a merge (someone committed by hand): build it again
_MARKERS = (b"<<<<<<< ", b">>>>>>> ")


@dataclass(frozen=True)
class GitPlan:
    """How a run uses git, decided once at its start (see :func:`plan`)."""

    mode: str  # "worktree", "shared" or "off"
    repo: GitRepo | None = None
    branch: str | None = None  # the integration branch (worktree mode)
    remote: str | None = None  # where the integration branch lives, when several hosts share it

    @property
    def isolated(self) -> bool:
        return self.mode == "worktree"


@dataclass(frozen=True)
class Landing:
    """What one trip through the merge queue did; at most one field is set."""

    commit: str | None = None  # merged: the integration branch now ends with it
    conflicts: tuple[str, ...] = ()  # the feature does not merge with the integration head
    unresolved: tuple[str, ...] = ()  # files the agent left with conflict markers
    check_failed: str | None = None  # verify or gate failed on the merged tree
    blocked: str | None = None  # the project checkout refused the fast-forward: the user must act


class SetupFailed(AgentManagerError):
    """A feature's worktree could not be made ready (git, worktree_copy or worktree_setup)."""


def plan(project_dir: Path, isolation: str | None, branch: str | None, remote: str | None = None) -> GitPlan:
    """Decide the run's git mode and check the project directory. Raises InputError naming what is wrong."""
    if isolation is not None and isolation not in ISOLATIONS:
        raise InputError(f"isolation must be worktree or shared, got {isolation!r}")
    top = _toplevel(project_dir)
    if top is None:
        if isolation == "worktree":
            raise InputError(
                f"--isolation worktree needs a git repository: {project_dir} is not one "
                "(run `git init` and commit, or use --isolation shared)"
            )
        return GitPlan("off")
    repo = GitRepo(top)
    if remote is not None and isolation == "shared":
        raise InputError("--remote needs worktree isolation: shared mode commits in the project directory only")
    if isolation == "shared" or (isolation is None and not repo.has_commits() and remote is None):
        return GitPlan("shared", repo)
    if not repo.has_commits():
        raise InputError(f"--isolation worktree needs at least one commit in {top}: commit something first")
    if top != project_dir.resolve():
        raise InputError(
            f"{project_dir} is inside the git repository {top}: pass --project-dir {top}, or --isolation shared"
        )
    branch = branch or repo.current_branch()
    if branch is None:
        raise InputError(f"{top} has a detached HEAD: check out a branch or name one with --branch")
    if remote is not None:
        if remote not in repo.remotes():
            raise InputError(f"no git remote {remote!r} in {top} (`git remote -v` lists them)")
        try:
            repo.fetch(remote, branch)  # unreachable, or no such branch there: said now
        except InputError as exc:
            raise InputError(f"cannot fetch {branch} from {remote}: {exc.message}") from None
    else:
        repo.head(branch)  # an unknown branch is named now, not at the first merge
    checkout = repo.checkout_of(branch)
    if checkout is not None:
        dirty = repo.modified_files(cwd=checkout)
        if dirty:
            raise DirtyCheckoutError(branch, checkout, dirty)
    return GitPlan("worktree", repo, branch, remote)


def _toplevel(directory: Path) -> Path | None:
    try:
        return Path(GitRepo(directory).run("rev-parse", "--show-toplevel")).resolve()
    except InputError:  # not a repository, or no git at all
        return None


class Integration:
    """The run's git side: worktrees, the merge queue and the commits. Blocking git runs in threads."""

    def __init__(
        self,
        git: GitPlan,
        queue: FeatureQueue,
        owner: str,
        *,
        lease_seconds: float,
        setup: str | None = None,
        copy: Sequence[str] = (),
        gate: str | None = None,
        timeout_s: float = 1800.0,
    ) -> None:
        self.plan = git
        self.queue = queue
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.setup = setup
        self.copy = tuple(copy)
        self.gate = gate
        self.timeout_s = timeout_s
        self._turn = asyncio.Lock()
        self._holding = False
        # What the run's summary reports.
        self.merged = 0
        self.conflicts = 0  # trips through the merge queue that met a conflict
        self.repairs = 0  # repair sessions started
        self.repaired = 0  # features merged after at least one repair
        self.merge_seconds: list[float] = []

    @property
    def isolated(self) -> bool:
        return self.plan.isolated

    @property
    def repo(self) -> GitRepo:
        assert self.plan.repo is not None
        return self.plan.repo

    @property
    def branch(self) -> str:
        assert self.plan.branch is not None
        return self.plan.branch

    @property
    def lock_name(self) -> str:
        """The merge lock's key: one integration branch, whichever clone a supervisor works in."""
        return self.plan.branch or "HEAD"

    @property
    def remote(self) -> str | None:
        return self.plan.remote

    @property
    def integration_ref(self) -> str:
        """The full ref of the integration branch as this clone sees it (fetched, with a remote)."""
        if self.remote:
            return f"refs/remotes/{self.remote}/{self.branch}"
        return f"refs/heads/{self.branch}"

    def _integration_head(self) -> str:
        """The integration branch's head now (fetched first, with a remote). Blocking."""
        if self.remote:
            return self.repo.fetch(self.remote, self.branch)
        return self.repo.head(self.branch)

    def summary(self) -> str | None:
        """The run's git figures for its summary, one line."""
        if self.plan.mode == "off":
            return None
        if not self.isolated:
            return f"committed {self.merged} feature(s) in the shared tree"
        target = f"{self.remote}/{self.branch}" if self.remote else self.branch
        line = f"merged {self.merged} onto {target}, conflicts {self.conflicts}, repaired {self.repaired}"
        if self.merge_seconds:
            ordered = sorted(self.merge_seconds)
            line += f", merge time median {ordered[len(ordered) // 2]:.2f} s"
        return line

    # -- where an attempt works -------------------------------------------------------------

    async def workspace(self, feature_id: int, env: Mapping[str, str] | None = None) -> Path:
        """The feature's worktree (created from the integration head, set up once), reused on retry.

        Raises SetupFailed with git's or the setup command's output."""
        repo = self.repo
        path = repo.worktree_path(feature_id)
        fresh = not path.exists()
        try:
            start = await asyncio.to_thread(self._integration_head) if fresh else None
            path = await asyncio.to_thread(repo.worktree, feature_id, self.branch, start)
        except InputError as exc:
            raise SetupFailed(f"cannot create the worktree: {exc.message}") from None
        if fresh:
            try:
                await asyncio.to_thread(self._copy_in, path)
            except OSError as exc:
                await asyncio.to_thread(repo.remove_worktree, feature_id)
                raise SetupFailed(f"worktree_copy failed: {exc}") from None
            if self.setup:
                result = await run_verify(self.setup, path, self.timeout_s, env)
                if not result.passed:
                    await asyncio.to_thread(repo.remove_worktree, feature_id)
                    tail = result.output_tail
                    raise SetupFailed(f"worktree_setup `{self.setup}` {result.ended}; output tail:\n{tail}")
        return path

    def _copied(self) -> list[Path]:
        return copied_paths(self.repo.root, self.copy)

    def _copy_in(self, worktree: Path) -> None:
        """worktree_copy: files the repository does not track (``.env``), copied into a new worktree."""
        for relative in self._copied():
            source, target = self.repo.root / relative, worktree / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, dirs_exist_ok=True, symlinks=True)
            else:
                shutil.copy2(source, target)

    async def merged_earlier(self, previous: Sequence[RunRecord]) -> str | None:
        """The commit of an earlier attempt that is already on the integration branch: the
        supervisor that merged it died before recording the feature as passing."""
        if not self.isolated:
            return None
        recorded = next((r.commit_sha for r in reversed(previous) if r.commit_sha), None)
        if recorded is None:
            return None

        def on_branch() -> bool:
            self._integration_head()
            return self.repo.is_ancestor(recorded, self.integration_ref)

        return recorded if await asyncio.to_thread(on_branch) else None

    async def discard(self, feature_id: int) -> None:
        """A merged feature's worktree and branch are no longer needed."""
        try:
            await asyncio.to_thread(self.repo.remove_worktree, feature_id)
        except InputError as exc:
            log.warning("could not remove the worktree of feature %s: %s", feature_id, exc.message)

    # -- the merge queue --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def merge_turn(self, waiting: Callable[[], None]) -> AsyncIterator[None]:
        """Hold the branch's merge lock: this process's merges in turn, other supervisors' through the database."""
        async with self._turn:
            told = False
            take = self.queue.take_merge_lock
            while not await asyncio.to_thread(take, self.lock_name, self.owner, self.lease_seconds):
                if await asyncio.to_thread(self._break_dead_holder):
                    continue
                if not told:
                    waiting()
                    told = True
                await asyncio.sleep(MERGE_POLL_S)
            self._holding = True
            try:
                yield
            finally:
                self._holding = False
                with contextlib.suppress(AgentManagerError):
                    await asyncio.to_thread(self.queue.drop_merge_lock, self.lock_name, self.owner)

    def _break_dead_holder(self) -> bool:
        """Drop a merge lock held by a supervisor of this host that is gone (killed mid-merge),
        instead of waiting out its lease; a holder elsewhere, or alive, is waited for. Were the
        host name shared by two machines, the worst case is two merges at once: the branch still
        moves only by compare-and-swap, so one of them is built again."""
        holder = self.queue.merge_lock_holder(self.lock_name)
        if holder is None:
            return False
        host, _, rest = holder[0].partition(":")
        pid = rest.partition(":")[0]
        if host != socket.gethostname() or not pid.isdigit() or _alive(int(pid)):
            return False
        log.warning("merge lock of %s held by %s, which is gone: taken over", self.lock_name, holder[0])
        self.queue.drop_merge_lock(self.lock_name, holder[0])
        return True

    def renew(self) -> None:
        """Called by the supervisor's heartbeat: a long gate keeps the merge lock."""
        if self._holding:
            self.queue.renew_merge_lock(self.lock_name, self.owner, self.lease_seconds)

    async def commit_work(self, worktree: Path, message: str) -> Landing | None:
        """Commit what the agent left in its worktree (outside the merge lock: it is this feature's
        alone); a Landing when conflict markers from a repair are still there."""
        repo = self.repo
        unresolved = await asyncio.to_thread(lambda: _with_markers(worktree, repo.unmerged(worktree)))
        if unresolved:
            return Landing(unresolved=unresolved)
        copied = [p.as_posix() for p in await asyncio.to_thread(self._copied)]
        await asyncio.to_thread(repo.commit_all, worktree, message, copied)
        return None

    async def land(
        self,
        feature_id: int,
        worktree: Path,
        message: str,
        verify: str | None,
        run_id: int,
        env: Mapping[str, str] | None = None,
    ) -> Landing:
        """Squash the feature onto the integration head, check the merged tree, move the branch.

        Call inside :meth:`merge_turn`, after :meth:`commit_work`. The commit is recorded on the run
        before the branch moves, so a supervisor killed in between is found out by :meth:`merged_earlier`.
        """
        repo, started = self.repo, time.monotonic()
        loop = asyncio.get_running_loop()

        def check(tree: Path) -> str | None:
            return asyncio.run_coroutine_threadsafe(self._check(tree, verify, env), loop).result()

        for _ in range(MOVED_RETRIES):
            head = await asyncio.to_thread(self._integration_head)
            result: MergeResult = await asyncio.to_thread(
                repo.squash_merge, feature_id, self.branch, message, check, head
            )
            if result.conflicts:
                self.conflicts += 1
                return Landing(conflicts=result.conflicts)
            if result.check_failed is not None:
                return Landing(check_failed=result.check_failed)
            assert result.commit is not None
            await asyncio.to_thread(self.queue.set_run_commit, run_id, result.commit)
            try:
                moved = await asyncio.to_thread(self._move, result.commit, result.base)
            except (DirtyCheckoutError, GitError) as exc:
                return Landing(blocked=exc.message)
            if moved:
                self.merged += 1
                self.merge_seconds.append(time.monotonic() - started)
                return Landing(commit=result.commit)
        return Landing(blocked=f"{self.branch} kept moving while feature #{feature_id} was merged onto it")

    def _move(self, new: str, expected_old: str) -> bool:
        """Compare-and-swap the integration branch: in the remote (then this clone's branch follows
        when it can fast-forward cleanly), else in this repository."""
        if not self.remote:
            return self.repo.advance(self.branch, new, expected_old)
        if not self.repo.push(self.remote, self.branch, new, expected_old):
            return False
        self.repo.fetch(self.remote, self.branch)
        with contextlib.suppress(InputError):  # the local branch is a convenience; the remote's is the truth
            local = self.repo.head(self.branch)
            if self.repo.is_ancestor(local, new):
                self.repo.advance(self.branch, new, local)
        return True

    async def _check(self, tree: Path, verify: str | None, env: Mapping[str, str] | None) -> str | None:
        for what, command in (("verify command", verify), ("gate", self.gate)):
            if not command:
                continue
            result = await run_verify(command, tree, self.timeout_s, env)
            if not result.passed:
                tail = result.output_tail
                return f"{what} `{command}` {result.ended} on the merged tree; output tail:\n{tail}".rstrip()
        return None

    async def reopen(self, worktree: Path) -> tuple[str, ...]:
        """Bring the integration head into the feature's worktree for the agent to repair against;
        the conflicted files (with markers) when it does not merge cleanly."""

        def merge() -> tuple[str, ...]:
            self._integration_head()
            return self.repo.merge_into(worktree, self.integration_ref)

        return await asyncio.to_thread(merge)

    # -- shared mode ------------------------------------------------------------------------

    async def commit_shared(self, paths: Sequence[str], message: str, project_dir: Path) -> str:
        """Shared mode: commit exactly the files the feature's agent wrote. Raises GitError."""
        commit = await asyncio.to_thread(self.repo.commit_paths, paths, message, project_dir)
        self.merged += 1
        return commit


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _with_markers(worktree: Path, files: Sequence[str]) -> tuple[str, ...]:
    """Which of ``files`` still hold a conflict marker line."""
    left = []
    for name in files:
        try:
            data = (worktree / name).read_bytes()
        except OSError:
            continue  # deleted: a resolution too
        if any(line.startswith(_MARKERS) for line in data.splitlines()):
            left.append(name)
    return tuple(left)


__all__ = ["ISOLATIONS", "GitPlan", "Integration", "Landing", "SetupFailed", "feature_branch", "plan"]


def copied_paths(root: Path, patterns: Sequence[str]) -> list[Path]:
    """worktree_copy's files, relative to the repository: never part of a feature's commit."""
    found: set[Path] = set()
    for pattern in patterns:
        for source in root.glob(pattern):
            relative = source.relative_to(root)
            if relative.parts and relative.parts[0] not in (".agent-manager", ".git"):
                found.add(relative)
    return sorted(found)
