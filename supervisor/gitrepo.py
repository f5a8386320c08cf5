"""Git for worktree mode: a worktree and branch per feature, a squash merge built and checked in a
scratch worktree, and a compare-and-swap move of the integration branch.

The supervisor is the only git writer. Everything here drives the git CLI with explicit arguments,
never a shell string; a failing git command becomes :class:`GitError`, one line naming the command
and the first line git wrote to stderr.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from api.errors import InputError
from supervisor.sandbox import git_subcommand

WORKTREES_DIR = Path(".agent-manager") / "worktrees"
BRANCH_PREFIX = "agent-manager/feature-"
SAVED_PREFIX = "agent-manager-saved/feature-"  # work `clean` found unmerged; never removed by agent-manager
IDENTITY = (("user.name", "agent-manager"), ("user.email", "agent-manager@localhost"))
TRAILER_FEATURE_ID = "Agent-Manager-Feature-Id"
TRAILER_ATTEMPT = "Agent-Manager-Attempt"
TRAILER_MODEL = "Agent-Manager-Model"
TRAILER_COST = "Agent-Manager-Cost-USD"

# The user's hooks stay out of the supervisor's git: a pre-commit hook must not veto or rewrite a
# merge commit whose tree the gate already checked.
# No automatic gc either: `gc --auto` after a commit runs `worktree prune`, which deletes the
# half-made admin directory of a worktree another thread is adding.
_NO_HOOKS = ("-c", "core.hooksPath=/dev/null", "-c", "gc.auto=0")
# git does not serialise its own worktree bookkeeping: `worktree add`, `list`, `prune`, `remove`
# (and `branch`, which reads it) running at once fail on each other's half-written files.
_WORKTREE_ADMIN = frozenset({"worktree", "branch"})
_ADMIN_LOCKS: dict[Path, threading.Lock] = {}
_ADMIN_LOCKS_GUARD = threading.Lock()
_ADMIN_LOCK_FILE = "agent-manager-worktrees.lock"
# Set when the supervisor itself runs under git (a hook, `git rebase --exec`); they would point
# every command here at that other repository.
_REPO_ENV = frozenset(
    {
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_COMMON_DIR",
        "GIT_PREFIX",
    }
)


class GitError(InputError):
    """A git command failed; ``command`` and ``stderr`` say which and why."""

    def __init__(self, command: str, cwd: Path, stderr: str, returncode: int) -> None:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        # git may chat before it fails ("Preparing worktree ..."): its fatal: or error: line says why.
        first = next((line for line in lines if line.startswith(("fatal:", "error:"))), lines[0] if lines else "")
        first = first or f"exit status {returncode}"
        super().__init__(f"`{command}` failed in {cwd}: {first}")
        self.command = command
        self.stderr = stderr
        self.returncode = returncode


class DirtyCheckoutError(InputError):
    """The integration branch is checked out in a directory with modified tracked files."""

    def __init__(self, branch: str, path: Path, files: Sequence[str]) -> None:
        shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        super().__init__(
            f"{path} has uncommitted changes to tracked files ({shown}): commit or stash your changes in {path}, "
            f"then run again (agent-manager only fast-forwards {branch} over a clean checkout)"
        )
        self.branch = branch
        self.path = path
        self.files = tuple(files)


@dataclass(frozen=True)
class MergeResult:
    """What :meth:`GitRepo.squash_merge` built; exactly one of the last three fields is set."""

    base: str  # the integration head the merge was built on: advance()'s expected_old
    commit: str | None = None  # the squash commit, parent ``base``; no branch points at it yet
    conflicts: tuple[str, ...] = ()  # repository-relative paths git could not merge
    check_failed: str | None = None  # what the check said about the merged tree

    @property
    def merged(self) -> bool:
        return self.commit is not None


def feature_branch(feature_id: int) -> str:
    return f"{BRANCH_PREFIX}{feature_id}"


def commit_message(name: str, feature_id: int, attempt: int, model: str, cost_usd: float, body: str = "") -> str:
    """A feature's commit message: its name as the subject, ``body``, then the Agent-Manager trailers."""

    def one_line(text: str) -> str:
        return " ".join(text.split())

    trailers = [
        f"{TRAILER_FEATURE_ID}: {feature_id}",
        f"{TRAILER_ATTEMPT}: {attempt}",
        f"{TRAILER_MODEL}: {one_line(model) or 'unknown'}",
        f"{TRAILER_COST}: {cost_usd:.4f}",
    ]
    paragraphs = [one_line(name) or f"feature {feature_id}", body.strip(), "\n".join(trailers)]
    return "\n\n".join(p for p in paragraphs if p) + "\n"


class GitRepo:
    """The project directory ``root`` (the top of a git work tree) as the supervisor writes to it."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.worktrees_dir = self.root / WORKTREES_DIR
        self._identity: tuple[str, ...] | None = None

    # -- running git --------------------------------------------------------------------------

    def _git(
        self, args: Sequence[str], cwd: Path | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        where = cwd or self.root
        env = {key: value for key, value in os.environ.items() if key not in _REPO_ENV}
        sub = git_subcommand(args)
        admin = self._admin() if sub and sub[0] in _WORKTREE_ADMIN else contextlib.nullcontext()
        try:
            with admin:
                return subprocess.run(
                    ["git", *_NO_HOOKS, *args],
                    cwd=where,
                    env=env,
                    input=stdin,
                    capture_output=True,
                    text=True,
                    encoding="utf-8",
                    errors="replace",
                    check=False,
                )
        except OSError as exc:  # no git on PATH, or cwd is gone
            raise InputError(f"cannot run `git {' '.join(args)}` in {where}: {exc}; is git installed?") from exc

    @contextlib.contextmanager
    def _admin(self) -> Iterator[None]:
        """Hold the repository's worktree bookkeeping: a thread lock in this process, and an
        flock on a file in .git for other supervisors working in the same clone."""
        with _ADMIN_LOCKS_GUARD:
            lock = _ADMIN_LOCKS.setdefault(self.root, threading.Lock())
        with lock:
            git_dir = self.root / ".git"
            if not git_dir.is_dir():  # not a repository's top (yet): nothing to share
                yield
                return
            with open(git_dir / _ADMIN_LOCK_FILE, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def run(self, *args: str, cwd: Path | None = None, stdin: str | None = None) -> str:
        """Run ``git ARGS`` in ``cwd`` (default: the root) and return its stdout without the final newline.

        Raises GitError when git exits non-zero.
        """
        proc = self._git(args, cwd, stdin)
        if proc.returncode != 0:
            raise GitError(f"git {' '.join(args)}", cwd or self.root, proc.stderr, proc.returncode)
        return proc.stdout.rstrip("\n")

    def _ok(self, *args: str, cwd: Path | None = None) -> bool:
        return self._git(args, cwd).returncode == 0

    # -- reading ------------------------------------------------------------------------------

    def has_commits(self) -> bool:
        return self._ok("rev-parse", "--verify", "--quiet", "HEAD^{commit}")

    def current_branch(self) -> str | None:
        """The branch checked out in the root, None when HEAD is detached."""
        proc = self._git(("symbolic-ref", "--quiet", "--short", "HEAD"))
        return proc.stdout.strip() if proc.returncode == 0 else None

    def head(self, branch: str) -> str:
        """The commit ``branch`` points at; raises InputError when there is no such branch."""
        proc = self._git(("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}"))
        if proc.returncode != 0:
            raise InputError(f"no branch {branch!r} in {self.root}: create it or name an existing branch")
        return proc.stdout.strip()

    def remotes(self) -> list[str]:
        return self.run("remote").split()

    def resolve(self, ref: str) -> str:
        """The commit ``ref`` (a full ref name or a commit) names; raises InputError when none."""
        proc = self._git(("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"))
        if proc.returncode != 0:
            raise InputError(f"{ref} does not name a commit in {self.root}")
        return proc.stdout.strip()

    def fetch(self, remote: str, branch: str) -> str:
        """Fetch ``branch`` from ``remote`` into refs/remotes/REMOTE/BRANCH; its head. Raises GitError."""
        self.run("fetch", "--quiet", "--no-tags", remote, f"+refs/heads/{branch}:refs/remotes/{remote}/{branch}")
        return self.resolve(f"refs/remotes/{remote}/{branch}")

    def push(self, remote: str, branch: str, new: str, expected_old: str) -> bool:
        """Move ``branch`` on ``remote`` from ``expected_old`` to ``new``, a compare-and-swap
        (``--force-with-lease``); False when another host moved it first. Raises GitError otherwise."""
        ref = f"refs/heads/{branch}"
        proc = self._git(("push", "--quiet", "--porcelain", f"--force-with-lease={ref}:{expected_old}", remote,
                          f"{new}:{ref}"))  # fmt: skip
        if proc.returncode == 0:
            return True
        if self.fetch(remote, branch) != expected_old:
            return False
        raise GitError(f"git push {remote} {new}:{ref}", self.root, proc.stderr or proc.stdout, proc.returncode)

    def _has_branch(self, branch: str) -> bool:
        return self._ok("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}")

    def modified_files(self, ignoring: Iterable[str] = (), cwd: Path | None = None) -> list[str]:
        """Tracked files changed in ``cwd``'s work tree or index (untracked files do not count)."""
        tokens = iter(self.run("status", "--porcelain=v1", "-z", "--untracked-files=no", cwd=cwd).split("\0"))
        skip = set(ignoring)
        files: list[str] = []
        for token in tokens:
            if not token:
                continue
            status, path = token[:2], token[3:]
            if "R" in status or "C" in status:
                next(tokens, None)  # the original path of a rename or copy
            if path not in skip:
                files.append(path)
        return files

    def is_clean(self, ignoring: Iterable[str] = (), cwd: Path | None = None) -> bool:
        return not self.modified_files(ignoring, cwd)

    # -- worktrees ----------------------------------------------------------------------------

    def worktree_path(self, feature_id: int) -> Path:
        return self.worktrees_dir / f"feature-{feature_id}"

    def _registered(self) -> dict[Path, str | None]:
        """Every worktree git knows of (the root included): path -> checked-out ref, None if detached."""
        found: dict[Path, str | None] = {}
        path: Path | None = None
        for line in self.run("worktree", "list", "--porcelain").splitlines():
            if line.startswith("worktree "):
                path = Path(line.removeprefix("worktree ")).resolve()
                found[path] = None
            elif line.startswith("branch ") and path is not None:
                found[path] = line.removeprefix("branch ")
        return found

    def worktrees(self) -> list[Path]:
        """agent-manager's worktrees of this repository (features' and merges' in progress)."""
        return sorted(path for path in self._registered() if path.is_relative_to(self.worktrees_dir))

    def worktree(self, feature_id: int, base: str, start: str | None = None) -> Path:
        """The feature's worktree on its own branch, created from ``base``'s current head (or
        the commit ``start``, such as a remote branch's fetched head).

        An existing worktree (a retry) is returned as it is, with the agent's work in it.
        Raises GitError or InputError when git cannot create it.
        """
        path = self.worktree_path(feature_id)
        self.run("worktree", "prune")  # forget worktrees whose directory was deleted by hand
        if path in self._registered():
            return path
        if path.exists():
            raise InputError(f"{path} exists but is not a git worktree: move it out of the way and run again")
        self._exclude_worktrees_dir()
        branch = feature_branch(feature_id)
        if self._has_branch(branch):
            # The worktree was removed but its branch kept the feature's commits: resume from them.
            self.run("worktree", "add", str(path), branch)
        else:
            self.run("worktree", "add", "-b", branch, str(path), start or self.head(base))
        return path

    def remove_worktree(self, feature_id: int) -> None:
        """Remove the feature's worktree, uncommitted work included, and delete its branch."""
        self._remove(self.worktree_path(feature_id))
        branch = feature_branch(feature_id)
        if self._has_branch(branch):
            self.run("branch", "-D", branch)

    def clean(
        self, keep: Iterable[int] = (), exclude: Iterable[str] = ()
    ) -> tuple[list[int], list[int], dict[int, str]]:
        """Remove every feature worktree and branch but those of ``keep``, and leftover merge worktrees,
        losing no work: a worktree's uncommitted changes (but the ``exclude``d paths, worktree_copy's
        secrets) and commits its branch has beyond HEAD are kept on a branch under SAVED_PREFIX.

        Returns the feature ids removed, those kept, and the saved branch of each feature saved."""
        held, skip = set(keep), list(exclude)
        ids = {fid for p in self.worktrees() if (fid := worktree_feature_id(p.name)) is not None}
        branches = self.run("branch", "--list", f"{BRANCH_PREFIX}*", "--format=%(refname:short)").split()
        ids |= {int(b.removeprefix(BRANCH_PREFIX)) for b in branches if b.removeprefix(BRANCH_PREFIX).isdigit()}
        for path in self.worktrees():
            if path.name.startswith("merge-"):
                self._remove(path)
        saved = {}
        for fid in sorted(ids - held):
            branch = self._save_work(fid, skip)
            if branch is not None:
                saved[fid] = branch
            self.remove_worktree(fid)
        self.run("worktree", "prune")
        return sorted(ids - held), sorted(ids & held), saved

    def _save_work(self, feature_id: int, exclude: list[str]) -> str | None:
        """Keep what a feature's worktree and branch hold that HEAD does not, on a branch of its own."""
        path, branch = self.worktree_path(feature_id), feature_branch(feature_id)
        if path in self._registered():
            message = f"feature #{feature_id}: the work left in its worktree, saved by agent-manager clean"
            self.commit_all(path, message, exclude)
        if not self._has_branch(branch) or self.run("rev-list", "--count", f"HEAD..refs/heads/{branch}") == "0":
            return None
        saved, n = f"{SAVED_PREFIX}{feature_id}", 1
        while self._has_branch(saved):
            n += 1
            saved = f"{SAVED_PREFIX}{feature_id}-{n}"
        self.run("branch", saved, f"refs/heads/{branch}")
        return saved

    def _remove(self, path: Path) -> None:
        if path in self._registered():
            self.run("worktree", "remove", "--force", "--force", str(path))  # twice: even when locked
        self.run("worktree", "prune")

    def _exclude_worktrees_dir(self) -> None:
        """Keep the worktrees out of the root's `git status` without touching a tracked .gitignore."""
        exclude = Path(self.run("rev-parse", "--git-path", "info/exclude"))
        exclude = exclude if exclude.is_absolute() else self.root / exclude
        pattern = f"/{WORKTREES_DIR.as_posix()}/"
        text = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
        if pattern not in text.splitlines():
            exclude.parent.mkdir(parents=True, exist_ok=True)
            separator = "\n" if text and not text.endswith("\n") else ""
            exclude.write_text(f"{text}{separator}{pattern}\n", encoding="utf-8")

    # -- committing and merging ---------------------------------------------------------------

    def _identity_args(self) -> tuple[str, ...]:
        """``-c`` options for the supervisor's identity where the repository configures none."""
        if self._identity is None:
            args: list[str] = []
            for key, value in IDENTITY:
                if not self._ok("config", "--get", key):
                    args += ["-c", f"{key}={value}"]
            self._identity = tuple(args)
        return self._identity

    def commit_all(self, worktree: Path, message: str, exclude: Iterable[str] = ()) -> str | None:
        """Commit everything in ``worktree`` (new, changed, deleted files) but the ``exclude``d paths;
        None when nothing changed."""
        self.run("add", "-A", "--", ".", *(f":(exclude,literal){path}" for path in exclude), cwd=worktree)
        if self._ok("diff", "--cached", "--quiet", cwd=worktree):
            return None
        self.run(*self._identity_args(), "commit", "--quiet", "-F", "-", cwd=worktree, stdin=message)
        return self.run("rev-parse", "HEAD", cwd=worktree)

    def squash_merge(
        self,
        feature_id: int,
        branch: str,
        message: str,
        check: Callable[[Path], str | None] | None = None,
        base: str | None = None,
    ) -> MergeResult:
        """Build the feature's branch squashed onto ``branch``'s head as one commit; ``branch`` does not move.

        The merge happens in a scratch worktree, never in the root. ``check`` runs on the merged tree
        and returns None when it passes, else the failure text. A feature that changed nothing still
        gets its (empty) commit, so every passing feature has exactly one. Only committed work on the
        feature branch is merged: call :meth:`commit_all` first. ``base``: build on this commit
        instead (a remote branch's fetched head). Raises GitError on anything but a conflict.
        """
        base = base or self.head(branch)
        scratch = self.worktrees_dir / f"merge-{feature_id}"
        self._remove(scratch)  # left over by a merge that was killed
        self._exclude_worktrees_dir()
        self.run("worktree", "add", "--detach", str(scratch), base)
        try:
            merge = self._git((*self._identity_args(), "merge", "--squash", feature_branch(feature_id)), cwd=scratch)
            if merge.returncode != 0:
                unmerged = self.run("diff", "--name-only", "--diff-filter=U", "-z", cwd=scratch).split("\0")
                conflicts = tuple(path for path in unmerged if path)
                if not conflicts:
                    raise GitError(
                        f"git merge --squash {feature_branch(feature_id)}", scratch, merge.stderr, merge.returncode
                    )
                return MergeResult(base=base, conflicts=conflicts)
            # The tree is fixed before the check runs: what the check leaves behind is not committed.
            tree = self.run("write-tree", cwd=scratch)
            failure = check(scratch) if check is not None else None
            if failure is not None:
                return MergeResult(base=base, check_failed=failure)
            commit = self.run(*self._identity_args(), "commit-tree", tree, "-p", base, "-F", "-", stdin=message)
            return MergeResult(base=base, commit=commit)
        finally:
            self._remove(scratch)

    def is_ancestor(self, commit: str, ref: str) -> bool:
        """Whether ``commit`` is on ``ref`` (a full ref name or a commit; False for an unknown commit)."""
        return self._ok("merge-base", "--is-ancestor", commit, ref)

    def merge_into(self, worktree: Path, ref: str) -> tuple[str, ...]:
        """Merge ``ref`` (a full ref name) into the feature worktree without committing, for the agent to repair.

        Returns the conflicted paths (their files now hold conflict markers); () when the merge
        applied cleanly (it stays uncommitted: the next :meth:`commit_all` concludes it).
        """
        proc = self._git((*self._identity_args(), "merge", "--no-ff", "--no-commit", ref), worktree)
        conflicts = self.unmerged(worktree)
        if proc.returncode != 0 and not conflicts and "Already up to date" not in proc.stdout:
            raise GitError(f"git merge --no-commit {ref}", worktree, proc.stderr or proc.stdout, proc.returncode)
        return conflicts

    def unmerged(self, worktree: Path) -> tuple[str, ...]:
        """Paths with unresolved merge entries in ``worktree``'s index."""
        listed = self.run("diff", "--name-only", "--diff-filter=U", "-z", cwd=worktree).split("\0")
        return tuple(sorted({path for path in listed if path}))

    def commit_paths(self, paths: Sequence[str], message: str, cwd: Path | None = None) -> str:
        """Commit exactly ``paths`` (as they are on disk) onto HEAD of ``cwd``, whatever else is
        staged or modified there; with no paths, an empty commit. Returns the new commit."""
        where = cwd or self.root
        present = [p for p in paths if (where / p).exists() or self.run("ls-files", "--", p, cwd=where)]
        if present:
            self.run("add", "-A", "--", *present, cwd=where)
            self.run(*self._identity_args(), "commit", "--quiet", "--allow-empty", "-F", "-", "--", *present,
                     cwd=where, stdin=message)  # fmt: skip
            return self.run("rev-parse", "HEAD", cwd=where)
        # An empty commit that leaves the user's index alone (`git commit` without paths would take it).
        parent = self._git(("rev-parse", "--verify", "--quiet", "HEAD^{commit}"), where).stdout.strip()
        tree = (
            self.run("rev-parse", f"{parent}^{{tree}}", cwd=where)
            if parent
            else self.run("hash-object", "-t", "tree", "-w", "--stdin", cwd=where, stdin="")
        )
        commit = self.run(*self._identity_args(), "commit-tree", tree, *(("-p", parent) if parent else ()), "-F", "-",
                          cwd=where, stdin=message)  # fmt: skip
        self.run("update-ref", "-m", "agent-manager: commit", "HEAD", commit, parent or "0" * 40, cwd=where)
        return commit

    def checkout_of(self, branch: str) -> Path | None:
        """The work tree that has ``branch`` checked out, if any."""
        ref = f"refs/heads/{branch}"
        return next((path for path, head in self._registered().items() if head == ref), None)

    def advance(self, branch: str, new: str, expected_old: str) -> bool:
        """Move ``branch`` from ``expected_old`` to ``new``; False when it had moved meanwhile.

        Where ``branch`` is checked out (normally the root) it is fast-forwarded there, which also
        updates that directory's files; elsewhere the ref is swapped atomically. Raises
        DirtyCheckoutError when that checkout has modified tracked files, GitError when git refuses
        (for example an untracked file the fast-forward would overwrite).
        """
        checkout = self.checkout_of(branch)
        if checkout is None:
            ref = f"refs/heads/{branch}"
            proc = self._git(("update-ref", "-m", f"agent-manager: advance {branch}", ref, new, expected_old))
            if proc.returncode == 0:
                return True
            if self.head(branch) != expected_old:
                return False
            raise GitError(f"git update-ref {ref} {new} {expected_old}", self.root, proc.stderr, proc.returncode)
        if self.head(branch) != expected_old:
            return False
        dirty = self.modified_files(cwd=checkout)
        if dirty:
            raise DirtyCheckoutError(branch, checkout, dirty)
        proc = self._git(("merge", "--ff-only", "--quiet", new), cwd=checkout)
        if proc.returncode != 0:
            if self.head(branch) != expected_old:
                return False
            raise GitError(f"git merge --ff-only {new}", checkout, proc.stderr, proc.returncode)
        # `merge --ff-only` takes no expected old value: if another writer moved the branch past `new`
        # after the check above, it succeeds without moving anything.
        return self.head(branch) == new


def worktree_feature_id(name: str) -> int | None:
    """The feature id of a feature worktree's directory name (``feature-<id>``), else None."""
    number = name.removeprefix("feature-")
    return int(number) if number != name and number.isdigit() else None
