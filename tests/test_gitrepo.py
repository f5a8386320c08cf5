"""supervisor.gitrepo against real git repositories in tmp_path."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from api.errors import InputError
from supervisor.gitrepo import (
    DirtyCheckoutError,
    GitError,
    GitRepo,
    commit_message,
    feature_branch,
)
from tests.support.git import git, no_user_git_config  # noqa: F401 - an autouse fixture

LINES = "".join(f"line {n}\n" for n in range(1, 11))


def make_repo(path: Path, identity: bool = True) -> GitRepo:
    """A repository on branch main with one commit (README, lines.txt) and an untracked features.json."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "--quiet", "--initial-branch=main")
    if identity:
        git(path, "config", "user.name", "Project Owner")
        git(path, "config", "user.email", "owner@example.com")
    (path / "README").write_text("hello\n")
    (path / "lines.txt").write_text(LINES)
    git(path, "add", "README", "lines.txt")
    git(path, "-c", "user.name=Project Owner", "-c", "user.email=owner@example.com", "commit", "-qm", "initial")
    (path / "features.json").write_text("[]\n")
    return GitRepo(path)


def edit_line(worktree: Path, number: int, text: str) -> None:
    lines = (worktree / "lines.txt").read_text().splitlines(keepends=True)
    lines[number - 1] = f"{text}\n"
    (worktree / "lines.txt").write_text("".join(lines))


def message(feature_id: int, name: str = "") -> str:
    return commit_message(name or f"Feature {feature_id}", feature_id, 1, "claude-test", 0.123456)


def test_a_feature_worktree_starts_at_the_branch_head_on_its_own_branch_and_is_reused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project")
    (repo.root / "README").write_text("second\n")
    git(repo.root, "commit", "-qam", "second")
    assert repo.has_commits()
    assert repo.current_branch() == "main"

    path = repo.worktree(1, "main")

    assert path == repo.root / ".agent-manager" / "worktrees" / "feature-1"
    assert git(path, "rev-parse", "HEAD") == repo.head("main")
    assert git(path, "symbolic-ref", "--short", "HEAD") == feature_branch(1) == "agent-manager/feature-1"
    assert (path / "README").read_text() == "second\n"
    (path / "work.txt").write_text("in progress\n")
    assert repo.worktree(1, "main") == path  # a retry resumes
    assert (path / "work.txt").read_text() == "in progress\n"
    assert repo.worktrees() == [path]
    # The worktrees stay out of the project's own status.
    assert git(repo.root, "status", "--porcelain") == "?? features.json"
    with pytest.raises(InputError, match="no branch 'nope'"):
        repo.worktree(2, "nope")


def test_two_features_changing_one_file_in_different_places_land_as_one_commit_each(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project")
    initial = repo.head("main")
    first, second = repo.worktree(1, "main"), repo.worktree(2, "main")
    edit_line(first, 1, "first feature")
    assert repo.commit_all(first, "wip") is not None
    (first / "extra.txt").write_text("more\n")
    assert repo.commit_all(first, "wip 2") is not None  # two commits on the branch, squashed to one
    edit_line(second, 10, "second feature")
    assert repo.commit_all(second, "wip") is not None

    for feature_id in (1, 2):
        result = repo.squash_merge(feature_id, "main", message(feature_id), check=lambda tree: None)
        assert result.merged and result.conflicts == () and result.check_failed is None
        assert result.base == repo.head("main")
        assert repo.advance("main", result.commit or "", result.base)

    history = git(repo.root, "rev-list", "--parents", "main").splitlines()
    assert len(history) == 3 and all(len(entry.split()) <= 2 for entry in history)  # linear
    assert git(repo.root, "rev-list", "main~2") == initial
    for rev, feature_id in (("main", 2), ("main~1", 1)):
        body = git(repo.root, "log", "-1", "--format=%B", rev)
        assert body.splitlines()[0] == f"Feature {feature_id}"
        trailers = subprocess.run(
            ["git", "interpret-trailers", "--parse"], input=body, capture_output=True, text=True, check=True
        ).stdout.splitlines()
        assert trailers == [
            f"Agent-Manager-Feature-Id: {feature_id}",
            "Agent-Manager-Attempt: 1",
            "Agent-Manager-Model: claude-test",
            "Agent-Manager-Cost-USD: 0.1235",
        ]
    merged = (repo.root / "lines.txt").read_text().splitlines()
    assert merged[0] == "first feature" and merged[9] == "second feature"
    assert (repo.root / "extra.txt").read_text() == "more\n"
    assert git(repo.root, "status", "--porcelain") == "?? features.json"
    assert repo.worktrees() == [repo.worktree_path(1), repo.worktree_path(2)]  # no scratch worktree left


def test_a_conflict_is_reported_with_its_path_and_moves_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project")
    first, second = repo.worktree(1, "main"), repo.worktree(2, "main")
    edit_line(first, 5, "first says five")
    edit_line(second, 5, "second says five")
    repo.commit_all(first, "wip")
    repo.commit_all(second, "wip")
    landed = repo.squash_merge(1, "main", message(1), check=None)
    assert repo.advance("main", landed.commit or "", landed.base)
    before = repo.head("main")

    result = repo.squash_merge(2, "main", message(2), check=lambda tree: pytest.fail("no check on a conflict"))

    assert result.conflicts == ("lines.txt",)
    assert not result.merged and result.base == before
    assert repo.head("main") == before
    assert git(repo.root, "status", "--porcelain") == "?? features.json"
    assert "first says five" in (repo.root / "lines.txt").read_text()
    assert repo.worktrees() == [repo.worktree_path(1), repo.worktree_path(2)]
    assert "merge-2" not in git(repo.root, "worktree", "list")


def test_a_check_failing_only_on_the_merged_tree_keeps_the_branch_where_it_was(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project")

    def check(tree: Path) -> str | None:
        text = (tree / "lines.txt").read_text()
        return "alpha and omega together" if "alpha" in text and "omega" in text else None

    first, second = repo.worktree(1, "main"), repo.worktree(2, "main")
    edit_line(first, 1, "alpha")
    edit_line(second, 10, "omega")
    repo.commit_all(first, "wip")
    repo.commit_all(second, "wip")
    assert check(first) is None and check(second) is None  # each branch alone passes
    landed = repo.squash_merge(1, "main", message(1), check)
    assert landed.merged and repo.advance("main", landed.commit or "", landed.base)
    before = repo.head("main")

    result = repo.squash_merge(2, "main", message(2), check)

    assert result.check_failed == "alpha and omega together"
    assert not result.merged and result.conflicts == ()
    assert repo.head("main") == before
    assert "omega" not in (repo.root / "lines.txt").read_text()
    assert repo.worktrees() == [repo.worktree_path(1), repo.worktree_path(2)]


@pytest.mark.parametrize("checked_out", [True, False], ids=["checked-out-in-root", "not-checked-out"])
def test_advance_returns_false_when_the_branch_moved_after_the_merge_was_built(
    tmp_path: Path, checked_out: bool
) -> None:
    repo = make_repo(tmp_path / "project")
    if not checked_out:
        git(repo.root, "switch", "--quiet", "-c", "elsewhere")
    wt = repo.worktree(1, "main")
    edit_line(wt, 3, "feature")
    repo.commit_all(wt, "wip")
    result = repo.squash_merge(1, "main", message(1), check=None)
    # Another writer lands first.
    git(repo.root, "commit", "--quiet", "--allow-empty", "-m", "someone else")
    if not checked_out:
        git(repo.root, "branch", "--quiet", "--force", "main", "elsewhere")
    moved = repo.head("main")

    assert not repo.advance("main", result.commit or "", result.base)

    assert repo.head("main") == moved
    assert git(repo.root, "status", "--porcelain") == "?? features.json"
    # Rebuilt on the new head, the merge lands.
    retry = repo.squash_merge(1, "main", message(1), check=None)
    assert retry.base == moved and repo.advance("main", retry.commit or "", retry.base)
    assert git(repo.root, "rev-parse", "main~1") == moved


def test_advance_refuses_a_project_dir_with_modified_tracked_files(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project")
    wt = repo.worktree(1, "main")
    edit_line(wt, 3, "feature")
    repo.commit_all(wt, "wip")
    result = repo.squash_merge(1, "main", message(1), check=None)
    (repo.root / "README").write_text("local edit\n")
    assert not repo.is_clean() and repo.is_clean(ignoring=["README"])

    with pytest.raises(DirtyCheckoutError, match=r"\(README\): commit or stash your changes in") as caught:
        repo.advance("main", result.commit or "", result.base)

    assert "\n" not in str(caught.value)
    assert repo.head("main") == result.base
    assert (repo.root / "README").read_text() == "local edit\n"


def test_advance_reports_an_untracked_file_the_fast_forward_would_overwrite(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project")
    wt = repo.worktree(1, "main")
    (wt / "new.txt").write_text("from the feature\n")
    repo.commit_all(wt, "wip")
    result = repo.squash_merge(1, "main", message(1), check=None)
    (repo.root / "new.txt").write_text("the user's own\n")

    with pytest.raises(GitError, match=r"`git merge --ff-only \w+` failed in .*untracked working tree files"):
        repo.advance("main", result.commit or "", result.base)

    assert repo.head("main") == result.base
    assert (repo.root / "new.txt").read_text() == "the user's own\n"


def test_remove_worktree_deletes_the_worktree_and_its_branch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project")
    path = repo.worktree(7, "main")
    (path / "lines.txt").write_text("uncommitted\n")
    (path / "scratch.txt").write_text("untracked\n")

    repo.remove_worktree(7)

    assert not path.exists()
    assert "feature-7" not in git(repo.root, "worktree", "list")
    assert git(repo.root, "branch", "--list", feature_branch(7)) == ""
    assert repo.worktrees() == []
    repo.remove_worktree(7)  # nothing left to remove is fine


def test_commits_without_a_configured_identity_are_signed_by_the_supervisor(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project", identity=False)
    wt = repo.worktree(1, "main")
    assert repo.commit_all(wt, "nothing yet") is None
    (wt / "README").write_text("changed\n")

    sha = repo.commit_all(wt, "change README")

    assert sha == git(wt, "rev-parse", "HEAD")
    assert git(wt, "log", "-1", "--format=%an <%ae>") == "agent-manager <agent-manager@localhost>"
    result = repo.squash_merge(1, "main", message(1), check=None)
    assert git(repo.root, "log", "-1", "--format=%cn", result.commit or "") == "agent-manager"
    with pytest.raises(GitError, match=r"^`git checkout no-such-branch` failed in .*: error: pathspec"):
        repo.run("checkout", "no-such-branch")


def test_commit_paths_commits_exactly_the_given_files_and_leaves_the_rest_as_it_was(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project")
    root = repo.root
    (root / "README").write_text("the user's own edit\n")  # modified, not the feature's
    (root / "mine.txt").write_text("new\n")
    edit_line(root, 3, "changed by the feature")
    (root / "other.txt").write_text("the user's staged file\n")
    git(root, "add", "other.txt")

    commit = repo.commit_paths(["mine.txt", "lines.txt"], message(7, "Mine"))

    assert git(root, "show", "--format=", "--name-only", commit).split() == ["lines.txt", "mine.txt"]
    assert git(root, "log", "-1", "--format=%s", commit) == "Mine"
    # The user's modified and staged files are untouched, still modified and still staged.
    assert git(root, "status", "--porcelain", "--", "README", "other.txt").splitlines() == [" M README", "A  other.txt"]

    empty = repo.commit_paths([], message(8, "Nothing written"))
    assert git(root, "show", "--format=", "--name-only", empty) == ""
    assert git(root, "rev-parse", "HEAD") == empty and git(root, "rev-parse", "HEAD~1") == commit
    assert git(root, "status", "--porcelain", "--", "other.txt") == "A  other.txt"


def test_commit_paths_makes_the_first_commit_of_an_empty_repository(tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    root.mkdir()
    git(root, "init", "--quiet", "--initial-branch=main")
    (root / "a.txt").write_text("a\n")
    repo = GitRepo(root)

    first = repo.commit_paths(["a.txt"], message(1))
    second = repo.commit_paths([], message(2))

    assert git(root, "rev-list", "main").split() == [second, first]


def test_merge_into_leaves_conflict_markers_for_the_agent_and_is_then_committed_as_a_merge(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project")
    worktree = repo.worktree(1, "main")
    edit_line(worktree, 5, "line 5 by the feature")
    repo.commit_all(worktree, message(1))
    edit_line(repo.root, 5, "line 5 on main")
    git(repo.root, "-c", "user.name=O", "-c", "user.email=o@x", "commit", "-qam", "main moves")

    assert repo.merge_into(worktree, "refs/heads/main") == ("lines.txt",)
    assert "<<<<<<< " in (worktree / "lines.txt").read_text()
    assert repo.unmerged(worktree) == ("lines.txt",)

    edit_line(worktree, 5, "line 5 by both")
    (worktree / "lines.txt").write_text(
        "".join(line for line in (worktree / "lines.txt").read_text().splitlines(keepends=True) if line[:7] not in
                ("<<<<<<<", "=======", ">>>>>>>") and "line 5 on main" not in line and "by the feature" not in line)
    )  # fmt: skip
    repo.commit_all(worktree, message(1))
    assert repo.unmerged(worktree) == ()
    assert repo.is_ancestor(repo.head("main"), f"refs/heads/{feature_branch(1)}")
    merged = repo.squash_merge(1, "main", message(1))
    assert merged.commit is not None and not merged.conflicts
    assert repo.merge_into(worktree, "refs/heads/main") == ()  # already contains main: nothing to do


def test_clean_removes_feature_worktrees_and_branches_except_the_running_ones(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project")
    for fid in (1, 2, 3):
        repo.worktree(fid, "main")
    repo.remove_worktree(3)
    git(repo.root, "branch", feature_branch(4), "main")  # a branch whose worktree was deleted by hand

    removed, kept, saved = repo.clean(keep={2})

    assert (removed, kept, saved) == ([1, 4], [2], {})  # nothing in them that main lacks
    assert repo.worktrees() == [repo.worktree_path(2)]
    assert git(repo.root, "branch", "--list", "agent-manager*", "--format=%(refname:short)") == feature_branch(2)


def test_clean_loses_no_work_it_keeps_a_branch_of_what_main_lacks_but_the_copied_secrets(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project")
    failed = repo.worktree(1, "main")  # a failed feature's worktree, with the agent's work uncommitted
    (failed / "new.py").write_text("print('new')\n")
    (failed / "README").write_text("changed\n")
    (failed / ".env").write_text("TOKEN=secret\n")  # worktree_copy's: never committed anywhere
    landed = repo.worktree(2, "main")
    repo.commit_all(landed, "an unlanded commit")  # nothing to commit: clean, branch at main
    (landed / "kept.txt").write_text("x\n")
    repo.commit_all(landed, "committed but never merged")
    repo.worktree(3, "main")  # nothing done in it

    removed, kept, saved = repo.clean(exclude=[".env"])

    assert (removed, kept) == ([1, 2, 3], [])
    assert saved == {1: "agent-manager-saved/feature-1", 2: "agent-manager-saved/feature-2"}
    files = git(repo.root, "ls-tree", "-r", "--name-only", saved[1]).split()
    assert sorted(files) == ["README", "lines.txt", "new.py"]  # not .env
    assert git(repo.root, "show", f"{saved[1]}:README") == "changed"
    assert "kept.txt" in git(repo.root, "ls-tree", "-r", "--name-only", saved[2]).split()
    assert repo.worktrees() == []
    # A second clean never touches saved branches; saving the same feature again takes a new name.
    again = repo.worktree(1, "main")
    (again / "more.py").write_text("x = 1\n")
    assert repo.clean()[2] == {1: "agent-manager-saved/feature-1-2"}
    assert git(repo.root, "rev-parse", "--verify", "--quiet", saved[1])


def test_push_is_a_compare_and_swap_on_the_remote_branch(tmp_path: Path) -> None:
    seed = make_repo(tmp_path / "seed")
    bare = tmp_path / "shared.git"
    git(tmp_path, "clone", "-q", "--bare", str(seed.root), str(bare))
    clones = []
    for name in ("a", "b"):
        git(tmp_path, "clone", "-q", str(bare), name)
        clones.append(GitRepo(tmp_path / name))
    a, b = clones
    base = a.fetch("origin", "main")
    assert b.fetch("origin", "main") == base

    def commit_on(repo: GitRepo, parent: str, text: str) -> str:
        tree = repo.run("rev-parse", f"{parent}^{{tree}}")
        return repo.run("-c", "user.name=O", "-c", "user.email=o@x", "commit-tree", tree, "-p", parent, "-m", text)

    first = commit_on(a, base, "from a")
    assert a.push("origin", "main", first, base)
    stale = commit_on(b, base, "from b")
    assert not b.push("origin", "main", stale, base)  # a moved it first: refused, not overwritten
    assert git(bare, "rev-parse", "main") == first
    assert b.fetch("origin", "main") == first  # push() fetched: b sees the new head
    rebuilt = commit_on(b, first, "from b, again")
    assert b.push("origin", "main", rebuilt, first)
    assert git(bare, "rev-list", "main").split() == [rebuilt, first, base]


def test_worktrees_made_merged_and_removed_from_many_threads_at_once_never_trip_over_each_other(
    tmp_path: Path,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    repo = make_repo(tmp_path / "project")
    stop = False

    def lister() -> int:
        seen = 0
        while not stop:
            repo.worktrees()
            seen += 1
        return seen

    def feature(fid: int) -> str | None:
        worktree = repo.worktree(fid, "main")
        (worktree / f"f{fid}.txt").write_text(f"{fid}\n")
        repo.commit_all(worktree, message(fid))
        merged = repo.squash_merge(fid, "main", message(fid))  # a scratch worktree each
        repo.remove_worktree(fid)
        return merged.commit

    with ThreadPoolExecutor(max_workers=10) as pool:
        listing = pool.submit(lister)
        try:
            commits = list(pool.map(feature, range(1, 25)))
        finally:
            stop = True  # a failing feature must fail the test, not leave the lister spinning
        assert listing.result() > 0
    assert all(commits)
    assert repo.worktrees() == []
