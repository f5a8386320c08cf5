"""`agent-manager lead`: the lead agent's MCP server over stdio, and a serve-mode supervisor in
the same process, on one event loop. stdout carries the MCP protocol, so the run's progress
goes to stderr (Claude Code keeps it in its MCP log) and to DIR/.agent-manager/logs/.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

from supervisor.commands import prepare_run
from supervisor.config import Settings


def cmd_lead(settings: Settings) -> int:
    from supervisor.lead_tools import LeadContext, build_lead_server
    from supervisor.live import PlainView
    from supervisor.loop import Supervisor

    settings, queue, runner, git = prepare_run(settings, serve=True)
    supervisor = Supervisor(queue, runner, settings, PlainView(sys.stderr), git=git)
    lead_id = f"lead@{socket.gethostname()}:{os.getpid()}"

    async def main() -> int:
        loop = asyncio.get_running_loop()
        run = asyncio.create_task(supervisor.run(), name="supervisor")

        def stopped() -> str | None:
            if not run.done():
                return None
            summary = run.result() if not run.cancelled() and run.exception() is None else None
            return (summary.stop_reason if summary else None) or "it exited"

        def poke() -> None:
            loop.call_soon_threadsafe(supervisor.poke)

        context = LeadContext(queue=queue, lead_id=lead_id, poke=poke, stopped=stopped)
        server = build_lead_server(context)
        serve = asyncio.create_task(server.run_stdio_async(), name="lead-mcp")
        done, _ = await asyncio.wait({run, serve}, return_when=asyncio.FIRST_COMPLETED)
        if serve in done:
            supervisor.stop("the lead's MCP client disconnected")  # give the claimed features back and leave
            summary = await run
            return summary.exit_code if summary.exit_code != 1 else 0
        summary = run.result()
        if summary.exit_code == 130:  # SIGTERM/SIGINT (Claude Code closing its MCP servers): leave now
            # The stdio transport reads stdin in a worker thread that no cancellation reaches, and
            # the event loop's shutdown would wait for it: the features are given back, so exit.
            runner.close()
            sys.stderr.flush()
            os._exit(130)
        # The supervisor stopped on its own (a rejected key, a dead database): keep answering the
        # lead about the queue; its wait names why nothing runs.
        await serve
        return summary.exit_code

    try:
        return asyncio.run(main())
    finally:
        runner.close()
