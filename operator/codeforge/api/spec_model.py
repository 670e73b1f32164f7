"""The base of the Workflow spec's models (`codeforge.api.workflow`, `codeforge.api.workspace`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class SpecModel(BaseModel):
    """camelCase in manifests, unknown fields refused, immutable once parsed."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,  # Python code builds models by attribute name; manifests use `by_name=False`
        frozen=True,
        use_enum_values=False,
        allow_inf_nan=False,
    )
