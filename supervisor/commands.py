"""Day-to-day commands (import, status, retry): wiring between settings, the queue and the display.

The run's machinery (the SDK, mcp, apscheduler, the live view) is imported by cmd_run alone:
it takes seconds to import, and `status`, `logs` and `--help` must answer at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from api.database import Database, normalise_url
from api.errors import InputError
from api.estimates import cost_json
from api.features_file import load_features_file
from api.queue import FeatureQueue
from api.records import ImportReport
from supervisor import display
from supervisor.config import Settings
from supervisor.transcripts import read_entries

if TYPE_CHECKING:
    from supervisor.dashboard.options import DashboardOptions
    from supervisor.view import RunSummary

CREDENTIAL_VARIABLES = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_VERTEX",
)


def _sqlite_file(settings: Settings) -> Path | None:
    """The SQLite file of the queue, or None on PostgreSQL. Raises InputError for a bad URL."""
    url = normalise_url(settings.database_url)
    return Path(url.database or ":memory:").absolute() if url.get_backend_name() == "sqlite" else None


def _sqlite_missing(settings: Settings) -> bool:
    path = _sqlite_file(settings)
    return path is not None and not path.exists()


def _make_dir(path: Path, hint: str = "the run keeps its logs there: make the project directory writable") -> None:
    """Create one of our directories in the project. Raises InputError naming it and the reason."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {path}: {exc.strerror}; {hint}") from None


def open_queue(settings: Settings, *, must_exist: bool = False) -> FeatureQueue:
    """Open (creating or upgrading) the project's database. Raises DatabaseError / InputError.

    With ``must_exist`` (status, logs, retry) a missing SQLite file is an error and nothing is
    created; otherwise the default location DIR/.agent-manager is created when missing.
    """
    if must_exist and _sqlite_missing(settings):
        raise InputError(
            f"no database at {_sqlite_file(settings)}: "
            f"run `agent-manager import --project-dir {settings.project_dir}` first"
        )
    path = _sqlite_file(settings)
    if not must_exist and path is not None and path.parent == settings.state_dir:
        # Ours to create; any other directory must exist already (see Database).
        _make_dir(settings.state_dir, "make the project directory writable or pass --database-url")
    db = Database(settings.database_url)
    db.migrate()
    return FeatureQueue(db, project_dir=settings.project_dir, lease_seconds=settings.lease_seconds)


def import_features(settings: Settings) -> ImportReport:
    """Load the features file into the queue; nothing is written if any of it is invalid."""
    if _sqlite_missing(settings):
        # Validate before the first open so a bad file never leaves an empty database behind.
        load_features_file(settings.features_file)
    queue = open_queue(settings)
    # Dependencies may name features imported earlier from another file.
    specs = load_features_file(settings.features_file, known_edges=queue.dependency_map())
    return queue.import_specs(specs)


def cmd_import(settings: Settings) -> int:
    report = import_features(settings)
    display.print_import(report, settings.features_file)
    return 0


def cmd_status(settings: Settings, as_json: bool) -> int:
    report = open_queue(settings, must_exist=True).status_report()
    worktrees = feature_worktrees(settings)
    if as_json:
        data = report.to_json() | {
            "cost": cost_json(report.features),
            "worktrees": {str(fid): str(path) for fid, path in sorted(worktrees.items())},
        }
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        display.print_status(report, worktrees)
    return 0


def feature_worktrees(settings: Settings) -> dict[int, Path]:
    """Feature worktrees left in the project (failed features' are kept for inspection), by feature id."""
    from supervisor.gitrepo import WORKTREES_DIR, worktree_feature_id

    root = settings.project_dir / WORKTREES_DIR
    found: dict[int, Path] = {}
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            fid = worktree_feature_id(entry.name)
            if fid is not None and entry.is_dir():
                found[fid] = entry
    return found


def cmd_clean(settings: Settings) -> int:
    """Remove the worktrees and branches agent-manager left behind, except those of running features."""
    from api.records import Status
    from supervisor.gitrepo import BRANCH_PREFIX, GitRepo
    from supervisor.integration import copied_paths

    queue = open_queue(settings, must_exist=True)
    running = {f.id for f in queue.status_report().features if f.status == Status.CLAIMED}
    repo = GitRepo(settings.project_dir)
    secrets = [str(p) for p in copied_paths(repo.root, settings.policy.worktree_copy)]
    removed, kept, saved = repo.clean(keep=running, exclude=secrets)
    for fid in kept:
        print(f"kept the worktree of feature #{fid}: it is running")
    for fid, branch in sorted(saved.items()):
        print(f"saved the unmerged work of feature #{fid} on branch {branch} (`git branch -D {branch}` drops it)")
    branches = sorted({*removed})
    print(
        f"removed {len(branches)} feature worktree(s) and branch(es)"
        + (f": {', '.join(f'{BRANCH_PREFIX}{i}' for i in branches)}" if branches else "")
    )
    return 0


def cmd_retry(settings: Settings, feature_id: int) -> int:
    queue = open_queue(settings, must_exist=True)
    queue.retry(feature_id)
    print(f"feature #{feature_id} is pending again with a fresh attempt budget")
    return 0


def check_credentials(env: dict[str, str] | None = None) -> None:
    """Fail fast, before claiming anything, when the CLI could not authenticate at all."""
    env = dict(os.environ if env is None else env)
    if any(env.get(k) for k in CREDENTIAL_VARIABLES):
        return
    config_dir = Path(env.get("CLAUDE_CONFIG_DIR") or Path.home() / ".claude")
    if (config_dir / ".credentials.json").exists():
        return
    raise InputError(
        "no Anthropic credentials: set ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN, or log in with `claude login`)"
    )


def _ignore_state_dir(settings: Settings) -> None:
    """Keep the queue, logs and CLI state out of the user's git status without touching their .gitignore."""
    _make_dir(settings.state_dir)
    marker = settings.state_dir / ".gitignore"
    if not marker.exists():
        try:
            marker.write_text("# written by agent-manager: nothing in here belongs in git\n*\n", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write {marker}: {exc.strerror}; make the project directory writable") from None


def _log_to_file(settings: Settings) -> None:
    """Library warnings (the SDK's, a runner's crash) go to a file: the terminal is for the view and one-line errors."""
    import logging

    _make_dir(settings.logs_dir)
    handler = logging.FileHandler(settings.logs_dir / "supervisor.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)


def cmd_run(settings: Settings, *, serve: bool = False, dashboard: DashboardOptions | None = None) -> int:
    """Run the supervisor: until no claimable work remains, or with ``serve`` until stopped;
    ``dashboard``: serve the web dashboard from this process too (supervisor.dashboard)."""
    import asyncio

    from supervisor.live import make_view
    from supervisor.loop import Supervisor

    sock = None
    if dashboard is not None:
        from supervisor.dashboard import server

        sock = server.bind(dashboard)  # first: a port in use is refused before the run writes anything
    try:
        settings, queue, runner, git = prepare_run(settings, serve=serve)
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    supervisor = Supervisor(queue, runner, settings, make_view(), git=git)
    link = web = None
    if dashboard is not None and sock is not None:
        link = server.SupervisorLink(supervisor, settings.max_cost_usd)
        web = server.start_beside(settings, dashboard, link, sock)

    async def main() -> RunSummary:
        if link is not None:
            link.attach(asyncio.get_running_loop())
        return await supervisor.run()

    try:
        summary = asyncio.run(main())
    finally:
        runner.close()
        if web is not None:
            web.stop()
    if summary.stop_reason and summary.exit_code != 130:
        print(f"agent-manager: error: {summary.stop_reason}", file=sys.stderr)
    return summary.exit_code


def cmd_dashboard(settings: Settings, options: DashboardOptions) -> int:
    """`agent-manager dashboard`: serve the web page of the project's queue until interrupted."""
    from supervisor.dashboard import server
    from supervisor.dashboard.app import create_app

    sock = server.bind(options)  # first: a port in use is one line, before the database opens
    try:
        queue = open_queue(settings, must_exist=True)
        app = create_app(queue, options, project_dir=settings.project_dir)
        print(f"dashboard: {server.url_of(sock, options)} ({settings.project_dir})", flush=True)
        if options.token:
            print("open it once with ?token=YOUR_TOKEN at the end of the address; a cookie keeps it", flush=True)
        server.DashboardServer(app, sock).run()
    finally:
        sock.close()
    return 0


def prepare_run(settings: Settings, *, serve: bool = False) -> tuple[Settings, FeatureQueue, Any, Any]:
    """Everything a run checks and opens before its supervisor starts: (settings with the policy,
    queue, ClaudeRunner, git plan). Raises InputError before anything is written on bad input."""
    import dataclasses
    import gc

    from supervisor.claude_runner import ClaudeRunner
    from supervisor.integration import plan
    from supervisor.routing import load_policy

    policy = load_policy(settings.project_dir)
    check_credentials()
    # Before anything is written: a dirty checkout or an unknown branch leaves the queue as it was.
    git = plan(
        settings.project_dir,
        settings.isolation or policy.isolation,
        settings.branch or policy.branch,
        settings.remote or policy.remote,
    )
    _ignore_state_dir(settings)
    _log_to_file(settings)
    if settings.features_file.exists():
        import_features(settings)
    queue = open_queue(settings)
    queue.default_max_attempts = policy.max_attempts
    if not serve and not queue.status_report().features:
        raise InputError(
            f"no features to run: create {settings.features_file} (see features.example.json) or pass --features FILE"
        )
    settings = dataclasses.replace(
        settings, policy=policy, database_url=queue.db.url.render_as_string(hide_password=False), serve=serve
    )
    runner = ClaudeRunner(cli_path=policy.cli_path, project_dir=settings.project_dir)
    # Modules, mappers and compiled statements live as long as the process: keeping them out of
    # the collector's full scans shortens its pauses, which landed on dispatches (50-95 ms).
    gc.freeze()
    return settings, queue, runner, git


def cmd_logs(settings: Settings, feature_id: int, attempt: int | None, raw: bool) -> int:
    """Print a feature's attempts and the transcript of one (the last by default)."""
    from supervisor.routing import load_policy

    queue = open_queue(settings, must_exist=True)
    feature = queue.feature_context(feature_id)
    runs = queue.runs(feature_id)
    display.print_runs(feature, runs)
    role = load_policy(settings.project_dir).role_for(feature.category)
    print(f"role ({role[0]}): {role[1]}" if role else f"role: none for category {feature.category or '(none)'}")
    for q in queue.questions(open_only=False, feature_id=feature_id):
        print(f"question: {q.question}\n  answer: {q.answer if q.answered_at else '(waiting: agent-manager answer)'}")
    for p in queue.permissions(open_only=False, feature_id=feature_id):
        print(f"permission request {p.id}: {p.summary}: {p.decision}" + (f" ({p.reason})" if p.reason else ""))
    if not runs:
        return 0
    chosen = runs[-1] if attempt is None else next((r for r in runs if r.attempt == attempt), None)
    if chosen is None:
        raise InputError(f"feature #{feature_id} has no attempt {attempt}; it has {len(runs)}")
    path = Path(chosen.transcript_path or "")
    if not chosen.transcript_path or not path.exists():
        print(f"(no transcript file for attempt {chosen.attempt})")
        return 0
    print(f"\ntranscript of attempt {chosen.attempt}: {path}")
    if raw:
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                sys.stdout.write(line)
        return 0
    for entry in read_entries(path):
        # A line that is not an entry: the last of a session still being written.
        text = display.transcript_line(entry) if isinstance(entry, dict) else entry
        if text:
            print(text)
    return 0
