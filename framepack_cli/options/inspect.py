"""Options of `framepack inspect`."""

from __future__ import annotations

from pydantic import Field

from framepack_cli.options.base import OptionsBase, cli


class InspectOptions(OptionsBase):
    """Say what a weights file or directory is."""

    path: str = Field(..., description="File or directory to inspect; a models directory (`framepack download`) "
                      "lists what is there, each file's kind and what each command still lacks.",
                      json_schema_extra=cli(argument=True))
    json_output: bool = Field(False, description="Print one JSON object instead of a table.",
                              json_schema_extra=cli(aliases=("--json",)))
