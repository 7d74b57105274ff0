"""Help layout and the checks that run before a command parses its options.

Help is plain text (click's layout, no boxes or colours), the same in a terminal, a pipe or a file: every
option's full name starts its line, with its value's name; the help text follows on the same line when the
name is short and on the next, indented, when it is long, so no name is ever cut, at any width. Options are
grouped under the headings of their options model (`panel=`).

Before parsing, a command whose engine is not built yet says so (one line, exit 2), and a command given
nothing at all names what it needs (with its usage line, exit 2) instead of printing its help with exit 0.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

from pydantic import BaseModel
from typer.core import TyperArgument, TyperCommand, TyperGroup

try:  # typer >= 0.29 vendors its own click; its classes and exceptions are not click's
    from typer._click import Context, HelpFormatter
    from typer._click.exceptions import ClickException, MissingParameter, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer runs on click itself (click < 8.2 prints help, exit 0)
    from click import Context, HelpFormatter
    from click.exceptions import ClickException, MissingParameter, UsageError

    NoArgsIsHelpError = ()  # type: ignore[assignment,misc]

__all__ = ["ClickException", "MissingParameter", "NoArgsIsHelpError", "FramepackCommand", "FramepackGroup",
           "MissingInput", "command_class"]

from framepack_cli.cli.build import required_inputs

MAX_HELP_WIDTH = 100  # help uses the terminal's width up to this (click's default stops at 80)


class MissingInput(UsageError):
    """A command ran with nothing it needs: shown with the usage line, exit 2."""


class FramepackGroup(TyperGroup):
    """A command group whose command list shows each command's whole summary, wrapped (not cut at 45
    characters as click does)."""

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, " ".join((cmd.help or "").split("\n\n")[0].split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _refuse(target: str) -> None:
    module, _, func = target.partition(":")
    getattr(importlib.import_module(module), func)()


class FramepackCommand(TyperCommand):
    """A subcommand built from an options model; subclassed per command by `command_class`."""

    options_cls: ClassVar[type[BaseModel] | None] = None
    refuse_first: ClassVar[str | None] = None  # "module:function" raising NotBuiltError, called before parsing

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        asks_help = any(a in ctx.help_option_names for a in args)
        if not ctx.resilient_parsing and not asks_help:
            if self.refuse_first:
                _refuse(self.refuse_first)
            needed = required_inputs(self.options_cls) if self.options_cls is not None else []
            if not args and needed:
                raise MissingInput(f"missing {', '.join(needed)}", ctx)
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        """`[OPTIONS] PATH` (a required argument bare, an optional one in brackets; typer writes `{PATH}`)."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                name = name if param.required else f"[{name}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces

    def format_options(self, ctx: Context, formatter: HelpFormatter) -> None:
        panels: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            if getattr(param, "hidden", False):
                continue
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                panels.setdefault("Arguments", []).append((name, param.help or ""))
                continue
            names = ", ".join([*param.opts, *param.secondary_opts])
            value = "" if getattr(param, "is_flag", False) else f" {param.metavar or param.make_metavar(ctx)}"
            panel = getattr(param, "rich_help_panel", None) or "Options"
            panels.setdefault(panel, []).append((names + value, getattr(param, "help", None) or ""))
        for panel, rows in panels.items():
            with formatter.section(panel):
                formatter.write_dl(rows)


def command_class(options_cls: type[BaseModel], refuse_first: str | None = None) -> type[FramepackCommand]:
    attrs: dict[str, Any] = {"options_cls": options_cls, "refuse_first": refuse_first}
    return type(f"{options_cls.__name__}Command", (FramepackCommand,), attrs)
