"""Task.workspace (issue #11): the wire format between orchestrator and agent refuses bad input clearly."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from codeforge.api.task import MAX_MERGE_PARTS, Task, TaskWorkspace, WorkspaceAction

SHA_A = "a" * 40
SHA_B = "b" * 40


def ws(**fields: Any) -> TaskWorkspace:
    return TaskWorkspace(**{"url": "https://git.example.com/team/service.git", "base": SHA_A, **fields})


def error_of(**fields: Any) -> str:
    with pytest.raises(ValidationError) as info:
        ws(**fields)
    return str(info.value)


def test_a_task_without_workspace_is_unchanged() -> None:
    task = Task(id="t-1", pool="research")
    assert task.workspace is None


def test_checkout_round_trips_through_json() -> None:
    task = Task(
        id="t-1",
        pool="impl",
        workspace=ws(push_ref="refs/codeforge/wf/implement/v1/p0"),
    )
    again = Task.model_validate_json(task.model_dump_json())
    assert again == task
    assert again.workspace is not None
    assert again.workspace.action is WorkspaceAction.CHECKOUT
    assert again.workspace.push_ref == "refs/codeforge/wf/implement/v1/p0"


@pytest.mark.parametrize(
    "fields",
    [
        {"action": "resolve", "ref": "main", "base": None},
        {"action": "resolve", "ref": "refs/tags/v1.2.3", "base": None},
        {"action": "merge", "parts": [SHA_A, SHA_B], "push_ref": "refs/codeforge/wf/s/v1/merge"},
        {"action": "publish", "commit": SHA_B, "push_ref": "refs/heads/codeforge/wf", "base": None},
    ],
)
def test_system_actions_parse_from_json_strings(fields: dict[str, Any]) -> None:
    workspace = ws(**fields)
    assert TaskWorkspace.model_validate_json(workspace.model_dump_json()) == workspace


@pytest.mark.parametrize(
    "url",
    [
        "https://git.example.com/a.git",
        "http://127.0.0.1:8080/repo.git",
        "ssh://git@github.com/org/repo.git",
        "git://host/repo",
        "file:///tmp/x/repo.git",
    ],
)
def test_urls_of_every_scheme_are_accepted(url: str) -> None:
    assert ws(url=url).url == url


@pytest.mark.parametrize(
    "url",
    [
        "https://alice:s3cr3t-pw@git.example.com/a.git",
        "https://ghp_tokenvalue@git.example.com/a.git",
        "ssh://git:s3cr3t-pw@host/a.git",
    ],
)
def test_credentials_in_the_url_are_refused_without_echoing_them(url: str) -> None:
    message = error_of(url=url)
    assert "must not contain credentials" in message
    assert "credentialsSecret" in message
    assert "s3cr3t" not in message
    assert "ghp_tokenvalue" not in message


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("git@github.com:org/repo.git", "ssh://git@host/path"),
        ("ftp://host/repo", "must start with"),
        ("https:///repo.git", "must name a host"),
        ("file://relative/repo", "absolute local path"),
        ("https://host/", "repository path"),
        ("https://host/a b", "whitespace"),
    ],
)
def test_bad_urls_say_what_to_write(url: str, words: str) -> None:
    assert words in error_of(url=url)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"base": None}, "'checkout' needs base"),
        ({"action": "resolve", "base": None}, "'resolve' needs ref"),
        ({"action": "merge"}, "'merge' needs parts, push_ref"),
        ({"action": "publish", "base": None}, "'publish' needs commit, push_ref"),
        ({"action": "rebase"}, "unknown workspace action 'rebase'"),
        ({"base": "abc123"}, "full 40-hex SHA-1"),
        ({"base": SHA_A.upper()}, "full 40-hex SHA-1"),
        ({"action": "merge", "parts": ["main"], "push_ref": "refs/x/y"}, "parts: 'main' is not a commit"),
        ({"push_ref": "codeforge/wf"}, "must be a full ref"),
        ({"push_ref": "refs/heads/a..b"}, "not a valid git ref"),
        ({"push_ref": "refs/heads/x.lock"}, "not a valid git ref"),
        ({"action": "resolve", "ref": "-rf", "base": None}, "not a valid git ref"),
        ({"action": "resolve", "ref": "ma in", "base": None}, "not a valid git ref"),
        ({"extra_field": 1}, "extra_field"),
    ],
)
def test_bad_fields_are_named(fields: dict[str, Any], words: str) -> None:
    assert words in error_of(**fields)


def test_every_string_and_list_is_bounded() -> None:
    assert "at most" in error_of(url="https://h/" + "r" * 3000) or "2048" in error_of(
        url="https://h/" + "r" * 3000
    )
    assert "1024" in error_of(push_ref="refs/heads/" + "x" * 1100)
    too_many = [SHA_A] * (MAX_MERGE_PARTS + 1)
    assert str(MAX_MERGE_PARTS) in error_of(action="merge", parts=too_many, push_ref="refs/x/y")


def test_a_task_with_a_secret_in_its_workspace_url_errors_without_the_secret() -> None:
    with pytest.raises(ValidationError) as info:
        Task.model_validate(
            {"id": "t", "pool": "p", "workspace": {"url": "https://u:s3cr3t@h/r.git", "base": SHA_A}}
        )
    assert "must not contain credentials" in str(info.value)
    assert "s3cr3t" not in str(info.value)


def test_a_cleanup_names_one_runs_prefix_and_round_trips() -> None:
    spec = TaskWorkspace(
        url="https://git.example.com/team/service.git",
        action=WorkspaceAction.CLEANUP,
        push_ref="refs/codeforge/r1/",
    )
    again = TaskWorkspace.model_validate_json(spec.model_dump_json())
    assert again.action is WorkspaceAction.CLEANUP
    assert again.push_ref == "refs/codeforge/r1/"


@pytest.mark.parametrize(
    "prefix",
    [
        "refs/codeforge/r1",  # not a prefix
        "refs/codeforge/",  # every run's refs
        "refs/heads/",  # branches (the pushBranch)
        "refs/heads/codeforge/r1/",
        "refs/codeforge/r1//",
        "refs/codeforge/../heads/",
        "refs/codeforge-cache/r1/",
    ],
)
def test_a_cleanup_refuses_anything_but_a_runs_prefix(prefix: str) -> None:
    with pytest.raises(ValidationError) as info:
        TaskWorkspace(
            url="https://git.example.com/team/service.git", action=WorkspaceAction.CLEANUP, push_ref=prefix
        )
    assert "push_ref" in str(info.value)


def test_a_cleanup_needs_its_prefix() -> None:
    with pytest.raises(ValidationError, match="needs push_ref"):
        TaskWorkspace.model_validate_json('{"url": "https://git.example.com/s.git", "action": "cleanup"}')
