#!/usr/bin/env python3
"""agent-manager: run a queue of features through parallel Claude agents.

Thin entry point: parse arguments, resolve settings, call the supervisor package.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from api import defaults
from api.errors import AgentManagerError, InputError

ENV_PREFIX = "AGENT_MANAGER_"


def _env_name(dest: str) -> str:
    return ENV_PREFIX + dest.upper()


# dest -> (flags, type, default, help); every option falls back to AGENT_MANAGER_<DEST>.
COMMON_OPTIONS: dict[str, tuple[tuple[str, ...], Callable[[str], Any], Any, str]] = {
    "project_dir": (("--project-dir",), str, None, "the repository the agents work in (required)"),
    "database_url": (
        ("--database-url",),
        str,
        None,
        "SQLAlchemy URL of the queue (default sqlite:///DIR/.agent-manager/features.db; "
        "postgresql+psycopg://... to share one queue between hosts)",
    ),
    "features": (("--features",), str, None, "features file to import (default DIR/features.json)"),
}
RUN_OPTIONS: dict[str, tuple[tuple[str, ...], Callable[[str], Any], Any, str]] = {
    "max_agents": (
        ("--max-agents", "--parallel"),
        int,
        defaults.MAX_AGENTS,
        "agent sessions at once; --parallel 1 runs sequentially",
    ),
    "lease_seconds": (("--lease-seconds",), float, defaults.LEASE_SECONDS, "claim lease; renewed every third of it"),
    "max_cost": (
        ("--max-cost",),
        float,
        None,
        "US dollars this run may spend on agents; no new feature starts once it would cross it",
    ),
    "isolation": (
        ("--isolation",),
        str,
        None,
        "worktree: each feature in its own git worktree, landed as one commit through a merge queue "
        "(default in a git repository with a commit); shared: one tree for all agents",
    ),
    "branch": (
        ("--branch",),
        str,
        None,
        "the integration branch features land on (default: the branch checked out in DIR)",
    ),
    "remote": (
        ("--remote",),
        str,
        None,
        "a git remote that holds the integration branch, for supervisors on several hosts: each merge is "
        "pushed there with a compare-and-swap",
    ),
}

DASHBOARD_OPTIONS: dict[str, tuple[tuple[str, ...], Callable[[str], Any], Any, str]] = {
    "dashboard_host": (
        ("--host",),
        str,
        defaults.DASHBOARD_HOST,
        "address the dashboard listens on; any but this machine's loopback needs --token",
    ),
    "dashboard_port": (("--port",), int, defaults.DASHBOARD_PORT, "the dashboard's port (0 picks a free one)"),
    "dashboard_token": (
        ("--token",),
        str,
        None,
        "a secret every request to the dashboard must carry (open it once with ?token=...)",
    ),
}


def _add(parser: argparse.ArgumentParser, options: dict, *, suppress: bool = False) -> None:
    for dest, (flags, _kind, default, text) in options.items():
        shown = f" [env {_env_name(dest)}" + (f"; default {default}]" if default is not None else "]")
        parser.add_argument(
            *flags,
            dest=dest,
            type=str,  # converted after the env fallback, so both get the same error message
            default=argparse.SUPPRESS if suppress else None,
            metavar=dest.split("_")[-1].upper(),
            help=text + shown,
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent-manager",
        description="Run a DAG of features through parallel Claude Agent SDK sessions.",
        epilog="Subcommands take the same --project-dir. Exit codes: 0 all passing, 1 some failed or blocked, "
        "2 bad usage or input.",
    )
    _add(parser, COMMON_OPTIONS)
    _add(parser, RUN_OPTIONS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help="omit to run the supervisor")
    p_import = sub.add_parser("import", help="load features.json into the queue (all or nothing)")
    p_status = sub.add_parser("status", help="show every feature and its status")
    p_status.add_argument("--json", action="store_true", help="machine-readable output")
    p_retry = sub.add_parser("retry", help="put a failed feature back in the queue")
    p_retry.add_argument("feature_id", type=int, metavar="ID")
    p_logs = sub.add_parser("logs", help="a feature's attempts and the transcript of the last one")
    p_logs.add_argument("feature_id", type=int, metavar="ID")
    p_logs.add_argument("--attempt", type=int, help="show this attempt's transcript instead of the last")
    p_logs.add_argument("--raw", action="store_true", help="print the transcript's JSON lines")
    p_clean = sub.add_parser(
        "clean", help="remove the git worktrees and branches of features that are not running (failed ones' too)"
    )
    p_serve = sub.add_parser(
        "serve", help="run the supervisor without exiting when the queue is empty: later features start within 1 s"
    )
    _add(p_serve, RUN_OPTIONS, suppress=True)
    p_serve.add_argument(
        "--dashboard",
        action="store_true",
        help="serve the web dashboard from this process too (see --host, --port, --token)",
    )
    _add(p_serve, DASHBOARD_OPTIONS, suppress=True)
    p_dashboard = sub.add_parser(
        "dashboard", help="serve a web page of the queue that updates itself, with answer, approve, retry and stop"
    )
    _add(p_dashboard, DASHBOARD_OPTIONS, suppress=True)
    budget = (("--max-cost",), float, None, "the run's budget in US dollars, shown against what it spent")
    _add(p_dashboard, {"max_cost": budget}, suppress=True)
    p_lead = sub.add_parser(
        "lead",
        help="serve the lead agent's MCP tools over stdio (claude mcp add agent-manager-lead -- agent-manager lead "
        "--project-dir DIR), with a serve-mode supervisor in the same process",
    )
    _add(p_lead, RUN_OPTIONS, suppress=True)
    p_questions = sub.add_parser("questions", help="the questions agents asked that wait for an answer")
    p_questions.add_argument("--json", action="store_true", help="machine-readable output")
    p_answer = sub.add_parser("answer", help="answer a feature's question: its session resumes with the answer")
    p_answer.add_argument("feature_id", type=int, metavar="ID")
    p_answer.add_argument("text", metavar="TEXT")
    p_permissions = sub.add_parser("permissions", help="tool calls waiting for a person's approval")
    p_permissions.add_argument("--json", action="store_true", help="machine-readable output")
    p_approve = sub.add_parser("approve", help="allow a waiting permission request")
    p_approve.add_argument("request_id", type=int, metavar="REQUEST_ID")
    p_approve.add_argument("--reason", help="told to the agent")
    p_deny = sub.add_parser("deny", help="refuse a waiting permission request")
    p_deny.add_argument("request_id", type=int, metavar="REQUEST_ID")
    p_deny.add_argument("--reason", help="told to the agent, so it can do without")
    p_stop = sub.add_parser("stop", help="stop a running feature (any supervisor on the queue): it fails, or --requeue")
    p_stop.add_argument("feature_id", type=int, metavar="ID")
    p_stop.add_argument("--requeue", action="store_true", help="put it back to pending instead of failing it")
    p_stop.add_argument("--reason", help="recorded in the feature's notes")
    p_nudge = sub.add_parser("nudge", help="tell a running feature's agent something, at its next turn")
    p_nudge.add_argument("feature_id", type=int, metavar="ID")
    p_nudge.add_argument("text", metavar="TEXT")
    p_demo = sub.add_parser(
        "demo",
        help="run real claude sessions on an example project against a scripted local model (no API key needed)",
    )
    _add(p_demo, {"max_agents": RUN_OPTIONS["max_agents"]}, suppress=True)
    p_demo.add_argument(
        "--project-dir",
        dest="demo_dir",
        metavar="DIR",
        help="where to build the demo project (default: a new temp dir)",
    )
    people = (p_questions, p_answer, p_permissions, p_approve, p_deny, p_stop, p_nudge)
    for p in (p_import, p_status, p_retry, p_logs, p_clean, p_serve, p_lead, p_dashboard, *people):
        # SUPPRESS: a flag given before the subcommand is not overwritten by the subparser's default.
        _add(p, COMMON_OPTIONS, suppress=True)
    return parser


def _resolve(args: argparse.Namespace, options: dict) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for dest, (flags, kind, default, _text) in options.items():
        raw = getattr(args, dest, None)
        source = flags[0]
        if raw is None and os.environ.get(_env_name(dest)):
            raw, source = os.environ[_env_name(dest)], _env_name(dest)
        if raw is None:
            values[dest] = default
            continue
        try:
            values[dest] = kind(raw)
        except ValueError:
            raise InputError(f"{source} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
        if kind is float and not math.isfinite(values[dest]):
            raise InputError(f"{source} must be a finite number, got {raw!r}")
    return values


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from supervisor import commands
    from supervisor.config import make_settings

    run_opts = _resolve(args, RUN_OPTIONS)
    if args.command == "demo":
        if run_opts["max_agents"] < 1:
            raise InputError(f"--max-agents must be at least 1, got {run_opts['max_agents']}")
        from pathlib import Path

        from supervisor.demo import run_demo

        return run_demo(max_agents=run_opts["max_agents"], project_dir=args.demo_dir and Path(args.demo_dir))
    dashboard = None
    if args.command == "dashboard" or getattr(args, "dashboard", False):
        from supervisor.dashboard.options import make_options

        # Checked before anything opens: a host others can reach without a token is refused.
        web = _resolve(args, DASHBOARD_OPTIONS)
        dashboard = make_options(
            web["dashboard_host"], web["dashboard_port"], web["dashboard_token"], run_opts["max_cost"]
        )
    common = _resolve(args, COMMON_OPTIONS)
    settings = make_settings(common["project_dir"], common["database_url"], common["features"], **run_opts)
    if args.command == "import":
        return commands.cmd_import(settings)
    if args.command == "status":
        return commands.cmd_status(settings, args.json)
    if args.command == "retry":
        return commands.cmd_retry(settings, args.feature_id)
    if args.command == "clean":
        return commands.cmd_clean(settings)
    if args.command == "logs":
        return commands.cmd_logs(settings, args.feature_id, args.attempt, args.raw)
    if args.command in ("questions", "answer", "permissions", "approve", "deny", "stop", "nudge"):
        return _people(args, settings)
    if args.command == "serve":
        return commands.cmd_run(settings, serve=True, dashboard=dashboard)
    if args.command == "dashboard" and dashboard is not None:
        return commands.cmd_dashboard(settings, dashboard)
    if args.command == "lead":
        from supervisor.lead import cmd_lead

        return cmd_lead(settings)
    return commands.cmd_run(settings)


def _people(args: argparse.Namespace, settings: Any) -> int:
    from supervisor import people

    if args.command == "questions":
        return people.cmd_questions(settings, args.json)
    if args.command == "answer":
        return people.cmd_answer(settings, args.feature_id, args.text)
    if args.command == "permissions":
        return people.cmd_permissions(settings, args.json)
    if args.command in ("approve", "deny"):
        return people.cmd_decide(settings, args.request_id, args.command == "approve", args.reason)
    if args.command == "stop":
        return people.cmd_stop(settings, args.feature_id, args.reason, args.requeue)
    return people.cmd_nudge(settings, args.feature_id, args.text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; every failure ends as one line on stderr and an exit code, never a traceback."""
    try:
        code = run(argv)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at interpreter exit
        return code
    except AgentManagerError as exc:
        print(f"agent-manager: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("agent-manager: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError as exc:
        if not _stdout_reader_gone():
            print(f"agent-manager: error: {_os_error_line(exc)}", file=sys.stderr)
            return 2
        # `logs ID | head`: the reader has what it wanted. Python's recipe: point stdout at
        # devnull so the flush at exit cannot fail again, and end as a SIGPIPE death would.
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        line = _os_error_line(exc)
        _silence_stdout()  # so the flush at exit cannot fail again
        print(f"agent-manager: error: {line}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last resort: a bug still gets one line and a report
        saved = _save_traceback()
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        print(f"agent-manager: internal error: {message} (traceback saved to {saved})", file=sys.stderr)
        return 1


EXIT_BROKEN_PIPE = 128 + 13  # 128 + SIGPIPE, as git and cat end
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EPIPE})


def _stdout_reader_gone() -> bool:
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _fd, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # closed, or not a file (the tests' capture)
        return True


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout already closed or not a file
        pass


def _os_error_line(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.filename is not None:
        target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
        return f"{target}: {reason}"
    # No file named: a write to an already open file, in practice the output (`> /dev/full`).
    return f"cannot write: {reason}" if exc.errno in _WRITE_ERRNOS else reason


def _save_traceback() -> str:
    import tempfile
    import traceback

    try:
        with tempfile.NamedTemporaryFile(
            "w", prefix="agent-manager-traceback-", suffix=".txt", delete=False, encoding="utf-8"
        ) as out:
            traceback.print_exc(file=out)
            return out.name
    except OSError:
        return "nowhere: the temp directory is not writable"


if __name__ == "__main__":
    sys.exit(main())
