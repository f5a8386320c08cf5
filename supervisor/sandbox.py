"""What an agent's Bash tool may not run: a deny-list matched against every command in a line."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence

# The supervisor is the only git writer: agents leave their changes in the working tree.
GIT_WRITES = (
    "git commit",
    "git stash",
    "git reset",
    "git checkout",
    "git switch",
    "git rebase",
    "git merge",
    "git cherry-pick",
    "git revert",
    "git am",
    "git push",
)
DEFAULT_BASH_DENY = (
    *GIT_WRITES,
    "git clean -fdx",
    "rm -rf /",
    "rm -rf ~",
    "rm -rf /*",
    "sudo",
    "su",
    "shutdown",
    "reboot",
    "mkfs",
)
_SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", "|&", ";;"}
_WRAPPERS = {"env", "command", "exec", "nohup", "time", "nice", "builtin", "xargs", "timeout"}
_SHELLS = {"sh", "bash", "zsh", "dash"}
# git's options before its sub-command, and those that take the next word as their value.
_GIT_OPTIONS_WITH_VALUE = {"-C", "-c", "--git-dir", "--work-tree", "--namespace", "--super-prefix", "--config-env"}


def denied_command(command: str, deny: Sequence[str]) -> str | None:
    """The deny-list entry that ``command`` would run, or None.

    Every simple command in the line is checked (after ``;``, ``&&``, ``|``, inside ``$(...)``
    and ``sh -c '...'``), with variable assignments and wrappers such as ``env`` or ``nohup``
    skipped, and the program compared by its base name. An entry matches a command that starts
    with the entry's words (so ``rm -rf /`` is the root, not any absolute path).
    """
    patterns = [shlex.split(entry) for entry in deny if entry.strip()]
    for words in _simple_commands(command):
        for pattern, entry in zip(patterns, (e for e in deny if e.strip()), strict=True):
            if _starts_with(words, pattern):
                return entry
    return None


def _simple_commands(command: str, depth: int = 0) -> list[list[str]]:
    lexer = shlex.shlex(command.replace("\n", " ; "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: judge the plain words rather than let it through
        tokens = command.split()
    commands: list[list[str]] = [[]]
    for token in tokens:
        if token in _SEPARATORS or token.startswith(("$(", "`")):
            commands.append([])
        else:
            commands[-1].append(token.lstrip("`").rstrip("`"))
    found: list[list[str]] = []
    for words in commands:
        words = _unwrap(words)
        if not words:
            continue
        found.append(words)
        if depth < 3 and os.path.basename(words[0]) in _SHELLS and "-c" in words[1:-1]:
            found += _simple_commands(words[words.index("-c", 1) + 1], depth + 1)
    return found


def _unwrap(words: list[str]) -> list[str]:
    while words and (("=" in words[0] and not words[0].startswith("=")) or os.path.basename(words[0]) in _WRAPPERS):
        words = words[1:]
        while words and words[0].startswith("-") and len(words) > 1:  # the wrapper's own options
            words = words[1:]
    return words


def _starts_with(words: list[str], pattern: list[str]) -> bool:
    if not pattern or os.path.basename(words[0]) != pattern[0]:
        return False
    args = git_subcommand(words[1:]) if pattern[0] == "git" else words[1:]
    return len(args) >= len(pattern) - 1 and args[: len(pattern) - 1] == pattern[1:]


def git_subcommand(args: Sequence[str]) -> list[str]:
    """``git -C dir -c k=v commit ...`` -> ``commit ...``: git's own options do not hide its sub-command."""
    rest = list(args)
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] in _GIT_OPTIONS_WITH_VALUE else rest[1:]
    return rest
