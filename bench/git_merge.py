"""Benchmark 8: git worktree mode, the merge queue's throughput and latency, and features that share files.

The real Supervisor (supervisor/loop.py) runs against a real git repository in a temporary
directory and a SQLite queue. Sessions are simulated (no claude CLI): an agent thinks for half
of its seeded duration, writes its file inside ``task.cwd`` (its worktree, or the project in
shared mode) after asking ``task.guard_write`` exactly as the CLI's write hook does (refused:
it waits a little and asks again, which is lock waiting), thinks for the other half, reports
passing through its own queue as feature_release would, and returns. Given a repair prompt
(a conflict, or a check that failed on the merged tree) it removes the conflict markers from
the files, keeping both sides' lines, and reports passing again.

Table 1: 40 independent features (each writes its own new file), 8 agents, sessions of 0.2-0.6 s:
no gate, gate ``true`` and gate ``sleep 0.05`` in worktree mode, and shared mode beside them.
*last turn -> commit*: the feature's last session returned -> the view told it passed (by then
its commit is on the branch). *merges/s*: (merges - 1) / (last commit - first commit).

Table 2: 40 features, 12 of which edit a line of one of 3 tracked 30-line files; 4 of those
edit the same line as another (a real conflict in worktree mode). The same DAG and durations in
worktree and shared mode.

Every row is the median of 3 runs (interleaved). --quick: one run of each, 12 features (6 of
them sharing files, 2 on a line another edits too). Every run is checked: the supervisor exits
0, every feature passes, the branch holds exactly one commit per passing feature, each feature's
edit is in the branch's tree (worktree mode), and no worktree is left. Exit 1 otherwise.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, ms, parse_args, percentiles, print_table, write_results
from simulated import bench_settings

from api.database import Database
from api.features_file import FeatureSpec
from api.queue import FeatureQueue
from api.records import Status
from supervisor.gitrepo import GitRepo
from supervisor.integration import plan
from supervisor.live import PlainView
from supervisor.loop import Supervisor
from supervisor.routing import AgentPolicy
from supervisor.runner import ActivityEvent, AgentOutcome, AgentTask, Ending

AGENTS = 8
SESSION_S = (0.2, 0.6)  # uniform, seeded per feature
REPAIR_SHARE = 0.5  # a repair session lasts this share of the feature's duration
LOCK_RETRY_S = 0.02  # a refused write is asked again after this long
SHARED_LINES = 30  # lines of each tracked shared file
BRANCH = "main"
RUN_TIMEOUT_S = 300.0
GATES = (None, "true", "sleep 0.05")
MODES = ("worktree", "shared")
REPEATS = 3  # full run: every row is the median of this many runs
MARKERS = ("<<<<<<< ", "=======", ">>>>>>> ", "||||||| ")

# Table 2's shared files, as units in claim order: (file, line, how many features edit that line).
# A unit of 2 is a same-line pair: adjacent in the claim order, so both worktrees exist before
# either merges and the second one to merge meets a real conflict.
SHARED_UNITS_FULL = (
    ("shared/a.txt", 3, 2),
    ("shared/b.txt", 3, 1),
    ("shared/c.txt", 3, 2),
    ("shared/a.txt", 10, 1),
    ("shared/b.txt", 10, 2),
    ("shared/c.txt", 10, 2),
    ("shared/a.txt", 17, 1),
    ("shared/b.txt", 17, 1),
)  # 12 features, 4 of them on a line another edits too
SHARED_UNITS_QUICK = (
    ("shared/a.txt", 3, 2),
    ("shared/b.txt", 3, 1),
    ("shared/c.txt", 10, 2),
    ("shared/b.txt", 10, 1),
)  # 6 features, 2 of them on a line another edits too
SHARED_FILES = ("shared/a.txt", "shared/b.txt", "shared/c.txt")


@dataclass(frozen=True)
class Edit:
    """What one feature's agent writes: a new file (line None) or one line of a tracked file."""

    path: str
    line: int | None = None

    def text(self, name: str) -> str:
        return f"{name} was here" if self.line is None else f"line {self.line}: edited by {name}"


# -- the project --------------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.rstrip("\n")


def make_project(project: Path) -> None:
    """A git repository with one commit: a README and the three 30-line shared files."""
    project.mkdir(parents=True)
    git(project, "init", "-q", f"--initial-branch={BRANCH}")
    (project / "README").write_text("bench\n")
    for name in SHARED_FILES:
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"line {n}\n" for n in range(1, SHARED_LINES + 1)))
    git(project, "add", "-A")
    git(project, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "initial")
    (project / ".git" / "info" / "exclude").write_text("/.agent-manager/\n")


def independent(n: int) -> dict[str, Edit]:
    return {f"f{i:02d}": Edit(f"src/f{i:02d}.txt") for i in range(n)}


def sharing(n: int, units: tuple[tuple[str, int, int], ...]) -> dict[str, Edit]:
    """``n`` features in claim order: the shared units spread evenly among features writing new files."""
    shared = sum(count for _, _, count in units)
    solo = n - shared
    total = len(units) + solo
    edits: list[Edit] = []
    next_unit = 0
    for i in range(total):
        if (i + 1) * len(units) // total > i * len(units) // total:
            path, line, count = units[next_unit]
            next_unit += 1
            edits += [Edit(path, line)] * count
        else:
            edits.append(Edit(f"src/f{len(edits):02d}.txt"))
    assert len(edits) == n and next_unit == len(units)
    return {f"f{i:02d}": edit for i, edit in enumerate(edits)}


def durations_for(names: list[str], seed: str) -> dict[str, float]:
    rng = random.Random(f"git_merge:{seed}")
    return {name: rng.uniform(*SESSION_S) for name in names}


# -- the simulated agent -----------------------------------------------------------------


class SimulatedAgent:
    """An AgentRunner: each session thinks, writes its edit through the write guard, thinks, reports passing."""

    def __init__(self, database_url: str, edits: Mapping[str, Edit], durations: Mapping[str, float]) -> None:
        # Its own engine and threads, as the agents' MCP calls are not the supervisor's.
        self.queue = FeatureQueue(Database(database_url, pool_size=AGENTS))
        self.pool = ThreadPoolExecutor(max_workers=AGENTS, thread_name_prefix="agent")
        self.edits = edits
        self.durations = durations
        self.returned: dict[str, float] = {}  # monotonic time the feature's last session returned
        self.sessions: dict[str, int] = {}
        self.repair_sessions: dict[str, int] = {}
        self.lock_wait_s = 0.0  # agent-seconds spent refused by guard_write
        self.lock_wait_by_feature: dict[str, float] = {}

    async def run(self, task: AgentTask, on_activity: Callable[[ActivityEvent], None]) -> AgentOutcome:
        name = task.feature_name
        repair = "conflict markers" in task.prompt or "merged tree failed" in task.prompt
        duration = self.durations[name] * (REPAIR_SHARE if repair else 1.0)
        self.sessions[name] = self.sessions.get(name, 0) + 1
        await asyncio.sleep(duration / 2)
        if repair:
            self.repair_sessions[name] = self.repair_sessions.get(name, 0) + 1
            await self._resolve(task, on_activity)
        else:
            await self._write(task, on_activity, self.edits[name])
        await asyncio.sleep(duration / 2)
        notes = f"resolved the conflict in {self.edits[name].path}" if repair else f"wrote {self.edits[name].path}"
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.pool, self.queue.report, task.agent_id, task.feature_id, "passing", notes)
        self.returned[name] = time.monotonic()
        return AgentOutcome(
            Ending.COMPLETED, session_id=f"sim-{task.feature_id}", num_turns=2, cost_usd=0.01, model=task.model
        )

    async def _may_write(self, task: AgentTask, path: Path, on_activity: Callable[[ActivityEvent], None]) -> None:
        """Ask the write guard until it allows the write, as the CLI's hook and a patient model would."""
        assert task.guard_write is not None
        refused_at = None
        while True:
            decision = await task.guard_write(str(path))
            if decision.allowed:
                break
            if refused_at is None:
                refused_at = time.monotonic()
                on_activity(ActivityEvent(task.feature_id, "waiting_lock", decision.reason))
            await asyncio.sleep(LOCK_RETRY_S)
        if refused_at is not None:
            waited = time.monotonic() - refused_at
            self.lock_wait_s += waited
            name = task.feature_name
            self.lock_wait_by_feature[name] = self.lock_wait_by_feature.get(name, 0.0) + waited

    async def _write(self, task: AgentTask, on_activity: Callable[[ActivityEvent], None], edit: Edit) -> None:
        target = task.cwd / edit.path
        await self._may_write(task, target, on_activity)
        if edit.line is None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(edit.text(task.feature_name) + "\n")
            return
        # Read after the lock is granted: in shared mode that is the others' latest, in a worktree its own copy.
        lines = target.read_text().splitlines()
        lines[edit.line - 1] = edit.text(task.feature_name)
        target.write_text("\n".join(lines) + "\n")

    async def _resolve(self, task: AgentTask, on_activity: Callable[[ActivityEvent], None]) -> None:
        """Rewrite the files the prompt lists (and its own) without conflict markers, keeping both sides."""
        listed = {line[2:].strip() for line in task.prompt.splitlines() if line.startswith("- ")}
        for name in sorted(listed | {self.edits[task.feature_name].path}):
            target = task.cwd / name
            if not target.is_file():
                continue
            text = target.read_text()
            if not any(line.startswith(MARKERS) for line in text.splitlines()):
                continue
            await self._may_write(task, target, on_activity)
            target.write_text(without_markers(text))

    def close(self) -> None:
        self.pool.shutdown()
        self.queue.db.dispose()


def without_markers(text: str) -> str:
    """Resolve every conflict hunk by keeping their side, then ours (a diff3 base section is dropped)."""
    out: list[str] = []
    ours: list[str] = []
    theirs: list[str] = []
    where = None  # None outside a hunk, else "ours", "base" or "theirs"
    for line in text.splitlines():
        if line.startswith("<<<<<<< "):
            where, ours, theirs = "ours", [], []
        elif line.startswith("||||||| ") and where == "ours":
            where = "base"
        elif line == "=======" and where in ("ours", "base"):
            where = "theirs"
        elif line.startswith(">>>>>>> ") and where == "theirs":
            out += theirs + ours
            where = None
        elif where == "ours":
            ours.append(line)
        elif where == "theirs":
            theirs.append(line)
        elif where is None:
            out.append(line)
    return "\n".join(out) + "\n"


class TimingView(PlainView):
    """The plain view (into a buffer) that also notes when each feature was recorded passing."""

    def __init__(self) -> None:
        super().__init__(io.StringIO())
        self.passed: dict[str, float] = {}

    def finished(self, state, status: str, notes: str) -> None:
        if status == Status.PASSING:
            self.passed[state.claim.name] = time.monotonic()
        super().finished(state, status, notes)


# -- one run ---------------------------------------------------------------------------------


def run_once(
    workdir: Path, label: str, edits: Mapping[str, Edit], durations: Mapping[str, float], mode: str, gate: str | None
) -> dict:
    """Supervise ``edits`` to the end in a fresh repository and queue; the row's figures and its checks."""
    project = workdir / label
    make_project(project)
    url = f"sqlite:///{workdir / f'{label}.db'}"
    db = Database(url)
    db.migrate()
    queue = FeatureQueue(db, project_dir=project, lease_seconds=60)
    queue.import_specs([FeatureSpec(name, category="backend") for name in edits])
    agent = SimulatedAgent(url, edits, durations)
    view = TimingView()
    settings = bench_settings(project, url, AGENTS, AgentPolicy(gate=gate), idle_poll_seconds=0.2)
    supervisor = Supervisor(queue, agent, settings, view, git=plan(project, mode, None))
    gc.collect()
    gc.freeze()  # as `agent-manager run` does before it starts supervising
    try:
        summary = asyncio.run(asyncio.wait_for(supervisor.run(), RUN_TIMEOUT_S))
        features = queue.status_report().features
        outcomes = [r.outcome for f in features for r in queue.runs(f.id)]
    finally:
        agent.close()
        db.dispose()
    status = {f.name: f.status for f in features}
    passing = sorted(name for name, s in status.items() if s == Status.PASSING)
    failed = sorted(name for name, s in status.items() if s == Status.FAILED)
    commits = int(git(project, "rev-list", "--count", BRANCH)) - 1  # the initial commit is not a feature's
    lost = sorted(name for name, edit in edits.items() if not _landed(project, name, edit))
    after_turn = [view.passed[name] - agent.returned[name] for name in passing if name in view.passed]
    landed_at = sorted(view.passed.values())
    span = landed_at[-1] - landed_at[0] if len(landed_at) > 1 else 0.0
    integration = supervisor.git
    merge_seconds = integration.merge_seconds
    row = {
        "label": label,
        "mode": mode,
        "gate": gate,
        "features": len(edits),
        "agents": AGENTS,
        "shared_features": sum(1 for e in edits.values() if e.line is not None),
        "wall_s": summary.wall_seconds,
        "ideal_s": max(sum(durations.values()) / AGENTS, max(durations.values())),
        "exit_code": summary.exit_code,
        "stop_reason": summary.stop_reason,
        "passing": len(passing),
        "failed": failed,
        "commits": commits,
        "merges_per_s": (len(landed_at) - 1) / span if span > 0 else None,
        "merge_span_s": span,
        "turn_to_commit_ms": {k: ms(v) for k, v in percentiles(after_turn, (50, 95, 99)).items()},
        "turn_to_commit_max_ms": ms(max(after_turn)) if after_turn else None,
        "merge_s_median": statistics.median(merge_seconds) if merge_seconds else None,
        "merge_s_p99": percentiles(merge_seconds, (99,))["p99"] if merge_seconds else None,
        "merged": integration.merged,
        "conflicts": integration.conflicts,
        "repairs": integration.repairs,
        "repaired": integration.repaired,
        "repaired_features": sorted(agent.repair_sessions),
        "sessions": sum(agent.sessions.values()),
        "attempts": len(outcomes),
        # Attempts given back because the feature's worktree could not be created (no session ran).
        "workspace_errors": outcomes.count("workspace_error"),
        "lock_wait_agent_s": agent.lock_wait_s,
        "lock_wait_s_by_feature": {k: round(v, 3) for k, v in sorted(agent.lock_wait_by_feature.items())},
        "edits_lost": lost,
        "worktrees_left": [str(p) for p in GitRepo(project).worktrees()],
        "git_summary": summary.git,
    }
    row["problems"] = _problems(row, mode)
    return row


def _landed(project: Path, name: str, edit: Edit) -> bool:
    """Whether the feature's edit is in the branch's tree."""
    shown = subprocess.run(["git", "show", f"{BRANCH}:{edit.path}"], cwd=project, capture_output=True, text=True)
    return shown.returncode == 0 and edit.text(name) in shown.stdout.splitlines()


def _problems(row: dict, mode: str) -> list[str]:
    problems = []
    if row["exit_code"] != 0:
        problems.append(f"the supervisor exited {row['exit_code']}: {row['stop_reason']}")
    if row["passing"] != row["features"]:
        problems.append(f"{row['passing']} of {row['features']} features passing (failed: {row['failed']})")
    if row["commits"] != row["passing"]:
        problems.append(f"{row['commits']} commits on {BRANCH} for {row['passing']} passing features")
    if mode == "worktree" and row["edits_lost"]:
        problems.append(f"edits missing from {BRANCH}: {row['edits_lost']}")
    if row["worktrees_left"]:
        problems.append(f"worktrees left: {row['worktrees_left']}")
    return problems


# -- the tables ------------------------------------------------------------------------------


def _median(rows: list[dict], key: Callable[[dict], float | None]) -> float | None:
    values = [v for v in map(key, rows) if v is not None]
    return statistics.median(values) if values else None


def _span(rows: list[dict], key: Callable[[dict], int]) -> int | str:
    """A count over repeats: the value, or "low-high" when the repeats differ."""
    values = sorted(map(key, rows))
    return values[0] if values[0] == values[-1] else f"{values[0]}-{values[-1]}"


def _ok(rows: list[dict]) -> list[dict]:
    """The runs whose checks passed (a run the supervisor stopped has no figures worth a median); all when none did."""
    return [r for r in rows if not r["problems"]] or rows


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    started = time.perf_counter()
    # The user's git configuration (signing, hooks, another default branch) stays out of the numbers.
    os.environ["GIT_CONFIG_GLOBAL"] = os.devnull
    os.environ["GIT_CONFIG_NOSYSTEM"] = "1"
    n = 12 if args.quick else 40
    repeats = 1 if args.quick else REPEATS
    units = SHARED_UNITS_QUICK if args.quick else SHARED_UNITS_FULL
    solo = independent(n)
    solo_durations = durations_for(list(solo), "throughput")
    shared = sharing(n, units)
    shared_durations = durations_for(list(shared), "sharing")
    throughput: dict[tuple[str, str | None], list[dict]] = {}
    conflicts: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-git-merge-") as tmp:
        workdir = Path(tmp)
        for r in range(repeats):  # repeats interleaved, so that other work on the machine hits every row alike
            for i, (mode, gate) in enumerate([*(("worktree", g) for g in GATES), ("shared", None)]):
                row = run_once(workdir, f"throughput-{i}-r{r}", solo, solo_durations, mode, gate)
                throughput.setdefault((mode, gate), []).append(row)
            for mode in MODES:
                row = run_once(workdir, f"sharing-{mode}-r{r}", shared, shared_durations, mode, None)
                conflicts.setdefault(mode, []).append(row)

    table1 = [
        {
            "mode": mode,
            "gate": gate,
            "features": n,
            "agents": AGENTS,
            "runs": len(rows),
            "runs_ok": sum(not r["problems"] for r in rows),
            "wall_s": _median(_ok(rows), lambda r: r["wall_s"]),
            "ideal_s": rows[0]["ideal_s"],
            "merges_per_s": _median(_ok(rows), lambda r: r["merges_per_s"]),
            "turn_to_commit_p50_ms": _median(_ok(rows), lambda r: r["turn_to_commit_ms"]["p50"]),
            "turn_to_commit_p99_ms": _median(_ok(rows), lambda r: r["turn_to_commit_ms"]["p99"]),
            "merge_median_ms": _median(
                _ok(rows), lambda r: None if r["merge_s_median"] is None else ms(r["merge_s_median"])
            ),
            "workspace_errors": sum(r["workspace_errors"] for r in rows),
        }
        for (mode, gate), rows in throughput.items()
    ]
    table2 = [
        {
            "mode": mode,
            "runs": len(rows),
            "runs_ok": sum(not r["problems"] for r in rows),
            "wall_s": _median(_ok(rows), lambda r: r["wall_s"]),
            "conflicts": _span(_ok(rows), lambda r: r["conflicts"]),
            "repairs": _span(_ok(rows), lambda r: r["repairs"]),
            "repaired": _span(_ok(rows), lambda r: r["repaired"]),
            "failed": _span(_ok(rows), lambda r: len(r["failed"])),
            "commits": _span(_ok(rows), lambda r: r["commits"]),
            "edits_lost": _span(_ok(rows), lambda r: len(r["edits_lost"])),
            "lock_wait_agent_s": _median(_ok(rows), lambda r: r["lock_wait_agent_s"]),
            "workspace_errors": sum(r["workspace_errors"] for r in rows),
        }
        for mode, rows in conflicts.items()
    ]
    print_table(
        f"Merge throughput and latency: {n} independent features, {AGENTS} agents, sessions "
        f"{SESSION_S[0]}-{SESSION_S[1]} s" + (f", median of {repeats} runs" if repeats > 1 else ""),
        [
            "mode",
            "features",
            "agents",
            "gate",
            "wall s",
            "ideal s",
            "merges/s",
            "turn->commit p50 ms",
            "p99 ms",
            "merge median ms",
            "worktree errors",
            "runs ok",
        ],
        [
            [
                t["mode"],
                t["features"],
                t["agents"],
                "-" if t["mode"] == "shared" else (f"`{t['gate']}`" if t["gate"] else "none"),
                t["wall_s"],
                t["ideal_s"],
                t["merges_per_s"],
                t["turn_to_commit_p50_ms"],
                t["turn_to_commit_p99_ms"],
                t["merge_median_ms"],
                t["workspace_errors"],
                f"{t['runs_ok']}/{t['runs']}",
            ]
            for t in table1
        ],
        note="ideal = max(total session time / agents, longest session): no merging at all. merges/s = (merges - 1) "
        "/ (last commit - first commit). turn->commit = last session returned -> feature recorded passing (its "
        "commit on the branch). merge median = Integration.merge_seconds (inside the merge lock). Shared mode commits "
        "in the project directory instead (no merge, no gate). worktree errors: attempts given back because `git "
        "worktree add` failed (no session ran; the feature was claimed again), all runs together. runs ok: runs that "
        "passed every check; the other columns are medians over those.",
    )
    print_table(
        f"Features sharing files: {n} features, {sum(c for _, _, c in units)} of them edit a line of one of "
        f"{len(SHARED_FILES)} tracked files, {sum(c - 1 for _, _, c in units)} on a line another edits too"
        + (f", median of {repeats} runs" if repeats > 1 else ""),
        [
            "mode",
            "wall s",
            "conflicts met",
            "repairs",
            "repaired features",
            "failed features",
            "commits",
            "edits lost",
            "lock-wait agent-s",
            "worktree errors",
            "runs ok",
        ],
        [
            [
                t["mode"],
                t["wall_s"],
                t["conflicts"],
                t["repairs"],
                t["repaired"],
                t["failed"],
                t["commits"],
                t["edits_lost"],
                t["lock_wait_agent_s"],
                t["workspace_errors"],
                f"{t['runs_ok']}/{t['runs']}",
            ]
            for t in table2
        ],
        note="commits: on the branch, one per passing feature. edits lost: features whose line is not in the "
        "branch's final tree. Shared mode has no merges and so no conflicts: a second edit of a line overwrites "
        "the first (last writer wins). Medians and counts over the runs that passed every check (runs ok); counts "
        "that differ between those runs are shown low-high.",
    )
    every = [row for rows in (*throughput.values(), *conflicts.values()) for row in rows]
    problems = [f"{row['label']}: {problem}" for row in every for problem in row["problems"]]
    for problem in problems:
        print(f"CHECK FAILED: {problem}")
    results = {
        "parameters": {
            "features": n,
            "agents": AGENTS,
            "repeats": repeats,
            "session_s": list(SESSION_S),
            "repair_share": REPAIR_SHARE,
            "lock_retry_s": LOCK_RETRY_S,
            "shared_units": [list(u) for u in units],
            "gates": list(GATES),
            "backend": "sqlite",
            "git": git(REPO_ROOT, "--version"),
        },
        "throughput": table1,
        "sharing": table2,
        "runs": every,
        "problems": problems,
        "ok": not problems,
    }
    write_results("git_merge", args.quick, results, time.perf_counter() - started)
    return results


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
