"""A hard rate limit mid-run: sessions started while limited (goal 0), and resets_at -> the first new session.

The real Supervisor (SQLite queue, 4 agents) runs 24 simulated sessions of 0.5 s each. 1.25 s
after the first session started (the third wave is halfway through), the account's window is
used up: every running session is refused on its next request, and as the CLI does then, it
reports a rate-limit event (status "rejected", ``resets_at`` = the hit + 3 s, the five_hour
window) and ends like a session refused with a 429 (API_UNAVAILABLE, status 429); a session that
starts before ``resets_at`` is refused at once. A refused session reports nothing, so its feature
goes back to the queue. Measured per trial (wall-clock seconds): claims the supervisor made while
limited (a call to ``queue.claim`` between the limit and ``resets_at``; goal 0), sessions started
while limited (the same, counting when the runner was called: a claim made just before the event
arrived may start just after it), the delay from ``resets_at`` to the first session started after
it (the throttle waits RATE_WINDOW_MARGIN_S past it on purpose), the sessions started in the
first wave after the reset (within 0.25 s of the first; the run's concurrency before the window
is 4), attempts used beyond one per feature (goal 0: no attempt is spent on the limit) and the
run's length.

Two rows: the throttle as it is, and the throttle without its rate-limit window (rate-limit
events only halve the agents, the 429s pause claims with the outage backoff), which is how the
run handled a hard limit before. The outage backoff starts at 1 s here instead of 5 s, so that
the 3 s window outlasts it, as a real window (up to five hours) outlasts any backoff.
5 trials each (1 with --quick).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parse_args, print_table, write_results
from simulated import RecordingView, bench_settings, load_queue

from api.database import Database
from api.features_file import FeatureSpec
from api.queue import FeatureQueue
from supervisor import throttle
from supervisor.loop import Supervisor
from supervisor.routing import AgentPolicy
from supervisor.runner import ActivityEvent, AgentOutcome, AgentTask, Ending

FEATURES = 24
SESSION_S = 0.5
MAX_AGENTS = 4
HIT_AFTER_S = 1.25  # after the first session started
RESETS_IN_S = 3.0
TRIAL_TIMEOUT_S = 120.0
GOAL_DELAY_S = throttle.RATE_WINDOW_MARGIN_S + 0.5
BACKOFF_S = 1.0
WAVE_S = 0.25


class LimitedRunner:
    """Simulated sessions of SESSION_S seconds under an account whose window runs out mid-run."""

    def __init__(self, database_url: str) -> None:
        self.queue = FeatureQueue(Database(database_url, pool_size=MAX_AGENTS))
        self.pool = ThreadPoolExecutor(max_workers=MAX_AGENTS, thread_name_prefix="agent")
        self.starts: list[float] = []  # time.time() of every session
        self.hit_at: float | None = None
        self.resets_at: float | None = None
        self.hit = asyncio.Event()
        self.refused = 0

    def limited(self, now: float) -> bool:
        return self.resets_at is not None and now < self.resets_at

    async def run(self, task: AgentTask, on_activity: Callable[[ActivityEvent], None]) -> AgentOutcome:
        now = time.time()
        if not self.starts:
            asyncio.get_running_loop().call_later(HIT_AFTER_S, self._hit)
        self.starts.append(now)
        if self.limited(now):
            return self._refused(task, on_activity)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.hit.wait(), SESSION_S)
        if self.hit_at is not None and self.hit_at > now and self.limited(time.time()):
            return self._refused(task, on_activity)  # running when the limit hit: its next request is refused
        await asyncio.sleep(max(0.0, now + SESSION_S - time.time()))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.pool, self.queue.report, task.agent_id, task.feature_id, "passing", "")
        return AgentOutcome(Ending.COMPLETED, session_id=f"sim-{task.feature_id}", num_turns=1, model=task.model)

    def _hit(self) -> None:
        self.hit_at = time.time()
        self.resets_at = self.hit_at + RESETS_IN_S
        self.hit.set()

    def _refused(self, task: AgentTask, on_activity: Callable[[ActivityEvent], None]) -> AgentOutcome:
        """What a CLI refused by a hard limit says: the rate-limit event, then a 429 result."""
        self.refused += 1
        on_activity(
            ActivityEvent(
                task.feature_id, "rate_limit", "rejected", utilization=1.0, resets_at=self.resets_at,
                rate_limit_type="five_hour",
            )
        )  # fmt: skip
        message = "API unavailable (429): You've hit your 5-hour limit"
        return AgentOutcome(Ending.API_UNAVAILABLE, message, api_error_status=429)

    def close(self) -> None:
        self.pool.shutdown()
        self.queue.db.dispose()


@contextlib.contextmanager
def without_the_window(off: bool) -> Iterator[None]:
    """The throttle as before the rate-limit window: rate-limit events only halve the agents."""
    if not off:
        yield
        return
    with mock.patch.object(throttle.Throttle, "_rate_window", lambda self, window: None):
        yield


def trial(workdir: Path, window: bool) -> dict[str, Any]:
    url = f"sqlite:///{workdir / 'queue.db'}"
    queue = load_queue(url, [FeatureSpec(f"f{i:02d}") for i in range(FEATURES)])
    runner = LimitedRunner(url)
    view = RecordingView()
    settings = bench_settings(workdir, url, MAX_AGENTS, AgentPolicy(backoff_initial_seconds=BACKOFF_S))
    supervisor = Supervisor(queue, runner, settings, view)  # type: ignore[arg-type]
    claims: list[float] = []  # time.time() as the supervisor called claim, once per feature claimed
    claim = queue.claim

    def recording_claim(*args: Any, **kwargs: Any) -> Any:
        asked = time.time()
        got = claim(*args, **kwargs)
        claims.extend([asked] * len(got))
        return got

    queue.claim = recording_claim  # type: ignore[method-assign]

    async def main() -> tuple[float, Any]:
        started = time.time()
        return started, await asyncio.wait_for(supervisor.run(), TRIAL_TIMEOUT_S)

    try:
        with without_the_window(not window):
            started, summary = asyncio.run(main())
        features = queue.status_report().features
    finally:
        runner.close()
        queue.db.dispose()
    assert runner.hit_at is not None and runner.resets_at is not None
    hit_at, resets_at = runner.hit_at, runner.resets_at
    after = [s for s in runner.starts if s >= resets_at]
    return {
        "exit_code": summary.exit_code,
        "passing": sum(1 for f in features if f.status == "passing"),
        "started_while_limited": sum(1 for s in runner.starts if hit_at < s < resets_at),
        "claimed_while_limited": sum(1 for at in claims if hit_at < at < resets_at),
        "refused_sessions": runner.refused,
        "delay_s": round(min(after) - resets_at, 3) if after else None,
        "first_wave": sum(1 for s in after if s - min(after) <= WAVE_S),
        "extra_attempts": sum(f.attempts for f in features) - FEATURES,
        "sessions": len(runner.starts),
        "run_s": round(time.time() - started, 2),
        "limit_at_s": round(hit_at - started, 2),
        "notes": [n for n in view.notes if "rate limit" in n or "concurrency" in n or "paused" in n],
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    trials = 1 if args.quick else 5
    began = time.monotonic()
    rows, results = [], []
    for window in (True, False):
        runs = []
        for _ in range(trials):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(trial(Path(tmp), window))
        name = "rate-limit window (now)" if window else "without the window (before)"
        delays = [r["delay_s"] for r in runs if r["delay_s"] is not None]
        row = {
            "throttle": name,
            "trials": trials,
            "started_while_limited_max": max(r["started_while_limited"] for r in runs),
            "claimed_while_limited_max": max(r["claimed_while_limited"] for r in runs),
            "delay_s_median": statistics.median(delays) if delays else None,
            "delay_s_max": max(delays) if delays else None,
            "first_wave_min": min(r["first_wave"] for r in runs),
            "extra_attempts_max": max(r["extra_attempts"] for r in runs),
            "all_passed": all(r["exit_code"] == 0 and r["passing"] == FEATURES for r in runs),
            "run_s_median": statistics.median(r["run_s"] for r in runs),
            "runs": runs,
        }
        results.append(row)
        rows.append(
            [
                name,
                row["claimed_while_limited_max"],
                row["started_while_limited_max"],
                row["delay_s_median"],
                row["delay_s_max"],
                row["first_wave_min"],
                row["extra_attempts_max"],
                "yes" if row["all_passed"] else "NO",
                row["run_s_median"],
            ]
        )
    print_table(
        f"A hard limit {HIT_AFTER_S:g} s into {FEATURES} sessions of {SESSION_S:g} s ({MAX_AGENTS} agents), "
        f"resets_at = +{RESETS_IN_S:g} s; {trials} trial(s)",
        [
            "throttle",
            "claimed while limited (max; goal 0)",
            "started while limited (max)",
            "resets_at -> first session, s (median)",
            "(max)",
            "first wave after reset (min)",
            "attempts spent on the limit (max; goal 0)",
            "all passed",
            "run, s (median)",
        ],
        rows,
        note=f"the throttle waits {throttle.RATE_WINDOW_MARGIN_S:g} s past resets_at on purpose (goal: delay <= "
        f"{GOAL_DELAY_S:g} s)",
    )
    write_results(
        "rate_limit",
        args.quick,
        {
            "features": FEATURES,
            "session_s": SESSION_S,
            "max_agents": MAX_AGENTS,
            "hit_after_s": HIT_AFTER_S,
            "resets_in_s": RESETS_IN_S,
            "margin_s": throttle.RATE_WINDOW_MARGIN_S,
            "backoff_initial_s": BACKOFF_S,
            "wave_s": WAVE_S,
            "goal_delay_s": GOAL_DELAY_S,
            "rows": results,
        },
        time.monotonic() - began,
    )


if __name__ == "__main__":
    main()
