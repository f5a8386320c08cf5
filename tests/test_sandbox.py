"""The Bash deny-list: which command lines an agent may not run."""

from __future__ import annotations

import pytest

from supervisor.sandbox import DEFAULT_BASH_DENY, denied_command


@pytest.mark.parametrize(
    "command,entry",
    [
        ("git push origin main", "git push"),
        ("git add . && git commit -m x && git push", "git commit"),
        ("git -C sub -c user.name=x commit -qam wip", "git commit"),
        ("git --no-pager stash push", "git stash"),
        ("git checkout -b mine", "git checkout"),
        ("git switch main", "git switch"),
        ("git reset --soft HEAD~1", "git reset"),
        ("cd repo; sudo apt-get install x", "sudo"),
        ("/usr/bin/sudo -u root ls", "sudo"),
        ("FOO=1 env nohup git push --force", "git push"),
        ("echo $(sudo cat /etc/shadow)", "sudo"),
        ("bash -c 'cd /tmp && rm -rf /'", "rm -rf /"),
        ('sh -c "git push"', "git push"),
        ("make test\ngit push", "git push"),
        ("ls | xargs sudo rm", "sudo"),
        ("mkfs.ext4 /dev/sda1", None),  # a different program: list it to deny it
        ("mkfs -t ext4 /dev/sda1", "mkfs"),
        ("rm -rf ~", "rm -rf ~"),
    ],
)
def test_dangerous_commands_are_found_wherever_they_hide_in_the_line(command: str, entry: str | None) -> None:
    assert denied_command(command, DEFAULT_BASH_DENY) == entry


@pytest.mark.parametrize(
    "command",
    [
        "git status && git diff",
        "git -C sub log --oneline && git add -A && git diff --staged",
        "python -m pytest -q",
        "rm -rf build/ dist/",
        "rm -rf /tmp/work/cache",  # "rm -rf /" means the root, not any absolute path
        "echo 'git push is denied here'",
        "grep -r sudo docs/",
        "pip install -e .",
    ],
)
def test_ordinary_work_is_allowed(command: str) -> None:
    assert denied_command(command, DEFAULT_BASH_DENY) is None


def test_a_configured_list_replaces_the_defaults() -> None:
    assert denied_command("git push", ["npm publish"]) is None
    assert denied_command("npm publish --access public", ["npm publish"]) == "npm publish"
    assert denied_command("sudo ls", []) is None
