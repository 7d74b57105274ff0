"""Options of `framepack doctor`."""

from __future__ import annotations

from pydantic import Field

from framepack_cli.options.base import OptionsBase, cli


class DoctorOptions(OptionsBase):
    """Report what this machine can run."""

    json_output: bool = Field(False, description="Print the same facts as one JSON object on stdout.",
                              json_schema_extra=cli(aliases=("--json",)))
    models_dir: list[str] | None = Field(
        None, description="Folder(s) to look for model files in (each file's kind is read from its header).",
        json_schema_extra=cli(variadic=True, metavar="DIR"))
    save_path: str = Field(".", description="Output folder whose free disk space is reported.",
                           json_schema_extra=cli(metavar="DIR"))
