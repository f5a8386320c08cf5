"""What the agents are told: the protocol (system prompt), the task, reminders and retry feedback."""

from __future__ import annotations

from api.records import FeatureContext

SYSTEM_APPEND = """\
You are one of several coding agents working in parallel on the same repository, each on its own
feature. Coordination goes through the `agent-manager` MCP tools:
1. Call `feature_get` first: it returns your feature, its acceptance steps and the notes left by
   the features it depends on.
2. Before you create or edit a file, call `claim_file` with its path. If another agent holds it,
   work on something else and try again later; edits to files held by others are refused.
   Call `release_file` when you are done with a file.
3. Work only inside the current working directory. Do not push, deploy or rewrite git history.
4. Finish by calling `feature_release` exactly once with your feature id and status `passing`
   (all acceptance steps hold), `failed` (you cannot complete it; say why) or `pending` (give it
   back unfinished). Put in `notes` what you built and what the next agent should know.
"""

REMINDER = (
    "You ended your turn without calling the `feature_release` tool. Call `feature_release` now with your "
    "feature id and status `passing`, `failed` or `pending`, and notes on what you did. If work remains, "
    "finish it first."
)


def task_prompt(feature: FeatureContext, feedback: str | None = None) -> str:
    """The first user message of a session ."""
    lines = [f"Implement feature #{feature.id}: {feature.name}"]
    if feature.category:
        lines.append(f"Category: {feature.category}")
    if feature.description:
        lines += ["", feature.description]
    if feature.steps:
        lines += ["", "Acceptance steps:", *(f"- {step}" for step in feature.steps)]
    if feature.verify:
        lines += [
            "",
            f"After you report passing, this command must exit 0 in the working directory: {feature.verify}",
        ]
    done = [d for d in feature.dependencies if d.notes]
    if done:
        lines += ["", "Notes from the features this one builds on:"]
        lines += [f"- {d.name}: {d.notes}" for d in done]
    if feedback:
        lines += ["", "A previous attempt at this feature failed:", feedback, "Fix the cause before reporting passing."]
    lines += ["", f"When done, call feature_release with feature_id={feature.id}."]
    return "\n".join(lines)


def retry_prompt(feature: FeatureContext, feedback: str) -> str:
    """Sent when resuming the previous session of a failed attempt."""
    return (
        f"Your previous attempt at feature #{feature.id} ({feature.name}) did not pass:\n{feedback}\n\n"
        f"Fix it, then call feature_release with feature_id={feature.id} again."
    )


def repair_prompt(
    feature: FeatureContext, branch: str, conflicts: tuple[str, ...], check_failed: str | None, unresolved: bool
) -> str:
    """Sent when a feature that passed in its worktree does not land on the integration branch."""
    if conflicts:
        files = "\n".join(f"- {name}" for name in conflicts)
        what = (
            f"still has git conflict markers in:\n{files}"
            if unresolved
            else f"conflicts with work merged on {branch} since you started. The integration branch is now "
            f"merged into your working directory; these files hold git conflict markers "
            f"(<<<<<<<, =======, >>>>>>>):\n{files}"
        )
        todo = (
            "Resolve every conflict so that both your feature and the other work hold, remove all the "
            "markers, and check that your acceptance steps still pass."
        )
    else:
        what = (
            f"merged cleanly with {branch}, but the check on the merged tree failed:\n{check_failed}\n\n"
            f"Your working directory now holds the merged code."
        )
        todo = "Find out why the merged code fails and fix it, keeping both your feature and the other work."
    return (
        f"Your feature #{feature.id} ({feature.name}) {what}\n\n{todo} Do not run git commands that commit or "
        f"switch branches: agent-manager commits and merges for you. Then call feature_release with "
        f"feature_id={feature.id} and status passing again (or failed if you cannot)."
    )
