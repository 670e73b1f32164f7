"""`spec.workspace` of a Workflow: the Git repository its steps work on, handed from step to step (each step
starts from the commit the one before it pushed; `codeforge.orchestrator.workspace` does the handing)."""

from __future__ import annotations

import re
from typing import Final

from pydantic import Field, field_validator

from codeforge.api.spec_model import SpecModel
from codeforge.api.task import validate_git_ref, validate_workspace_url

#: The placeholder in `pushBranch` replaced by the Workflow's name.
WORKFLOW_PLACEHOLDER: Final = "{{workflow}}"
DEFAULT_PUSH_BRANCH: Final = f"codeforge/{WORKFLOW_PLACEHOLDER}"


def check_git_url(url: str) -> str:
    """spec.workspace.git.url: the rules of a task's workspace URL (one place: `validate_workspace_url`)."""
    return validate_workspace_url(url.strip())


class GitSource(SpecModel):
    """The repository a Workflow works on."""

    url: str = Field(
        min_length=1,
        max_length=2048,
        description="https://, http://, ssh://, git:// or file:// URL, without credentials (those come from "
        "the AgentPools' spec.workspace.credentialsSecret).",
    )
    ref: str = Field(
        default="HEAD",
        min_length=1,
        max_length=255,
        description="Branch, tag or commit the run starts from; resolved to a commit once, when the run "
        "starts (default: the repository's default branch).",
    )
    push_branch: str = Field(
        default=DEFAULT_PUSH_BRANCH,
        min_length=1,
        max_length=255,
        description=f"The branch the final commit is pushed to when the run succeeds; {WORKFLOW_PLACEHOLDER} "
        "is replaced by the Workflow's name.",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return check_git_url(value)

    @field_validator("ref")
    @classmethod
    def _check_ref(cls, value: str) -> str:
        if value != "HEAD":
            validate_git_ref(value, "ref")
        return value

    @field_validator("push_branch")
    @classmethod
    def _check_branch(cls, value: str) -> str:
        name = value.removeprefix("refs/heads/")
        validate_git_ref(name.replace(WORKFLOW_PLACEHOLDER, "w"), "pushBranch")
        return name

    def branch_for(self, workflow: str) -> str:
        """The push branch with the Workflow's name filled in (a full ref, refs/heads/...)."""
        return "refs/heads/" + self.push_branch.replace(WORKFLOW_PLACEHOLDER, safe_ref_part(workflow))


def safe_ref_part(value: str) -> str:
    """`value` made usable inside a ref name (a Workflow name or run id): other characters become '-'."""
    cleaned = re.sub(r"[^A-Za-z0-9._/-]", "-", value).strip("/")
    parts = [p.lstrip(".").removesuffix(".lock").rstrip(".") or "-" for p in cleaned.split("/") if p]
    return "/".join(parts) or "-"


class WorkspaceSpec(SpecModel):
    """`spec.workspace`: the code the Workflow's steps work on, handed from step to step through Git."""

    git: GitSource


class StepWorkspace(SpecModel):
    """A step's workspace options."""

    merge: bool = Field(
        default=False,
        strict=True,
        description="For a fan-out joined with `all`: merge the parts' commits into the step's output "
        "(the step fails, naming the files, when they conflict). Default: the step passes its input on.",
    )
