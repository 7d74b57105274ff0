"""The `framepack` typer app: registers every subcommand from its options model, and is the ONE place that
turns errors into output and exit codes.

- `FramepackError` (bad input, wrong file) -> `Error: ...; <hint>` on one line, exit 2, no traceback;
  its subclass `ResourceError` (out of memory, disk full, unwritable folder) exits 3.
- click usage errors (unknown flag, missing value) -> one `Error: ...` line, exit 2; a missing argument or a
  command given nothing also print its usage line first. A group without its command (`framepack`,
  `framepack lora`) prints its help on stderr, exit 2 (click's own rule); `--help` prints on stdout, exit 0.
- Ctrl-C -> one `Interrupted ...` line saying how far the run got and what it wrote, exit 130.
- anything else is a bug -> exit 1; the traceback only with `--debug`.

No torch import happens here: `framepack --help` must stay fast. Runners are imported when a command runs.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from typing import Any

import typer

from framepack_cli import __version__
from framepack_cli.cli.build import (
    expand_variadic,
    known_flags,
    make_command,
    normalize_dashes,
    tuple_flags,
    variadic_flags,
)
from framepack_cli.cli.commands import COMMANDS, CommandSpec, load_options
from framepack_cli.cli.help import (
    MAX_HELP_WIDTH,
    ClickException,
    FramepackGroup,
    MissingInput,
    MissingParameter,
    NoArgsIsHelpError,
    command_class,
)
from framepack_cli.errors import FramepackError, Interrupted

HELP = (
    "FramePack image-to-video in one tool: generate videos from a start image, edit single images "
    "(one-frame, Kisekaeichi, 1f-mc), cache datasets and train LoRAs. Every musubi-tuner option name works, "
    "with underscores or dashes."
)


def _runner(spec: CommandSpec) -> Callable[[Any], Any]:
    def run(opts: Any) -> Any:
        module, _, func = spec.runner.partition(":")
        try:
            return call_runner(getattr(importlib.import_module(module), func), opts)
        except KeyboardInterrupt:
            # click would print a blank line and `Aborted!`; the runners that track their work raise
            # `Interrupted` with a better line themselves.
            raise Interrupted("Interrupted") from None

    return run


def call_runner(fn: Callable[..., Any], opts: Any) -> Any:
    """Call an engine entry point with its validated options.

    An entry point that reports progress takes a `sink` parameter: it gets the terminal's `RichProgress`
    (progress bars and messages on stderr, results on stdout), closed here when the run ends however it
    ends. The others are called with the options only.
    """
    if "sink" not in inspect.signature(fn).parameters:
        return fn(opts)
    from framepack_cli.cli.render import RichProgress

    sink = RichProgress()
    try:
        return fn(opts, sink=sink)
    finally:
        sink.close()


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": MAX_HELP_WIDTH}


def build_app() -> typer.Typer:
    app = typer.Typer(
        help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
        context_settings=CONTEXT, cls=FramepackGroup, rich_markup_mode=None,
    )
    groups: dict[str, typer.Typer] = {}
    for spec in COMMANDS:
        target = app
        *parents, name = spec.path
        for depth in range(len(parents)):
            key = " ".join(parents[: depth + 1])
            if key not in groups:
                group = typer.Typer(
                    help=spec.group_help, no_args_is_help=True, add_completion=False, context_settings=CONTEXT,
                    cls=FramepackGroup, rich_markup_mode=None,
                )
                target.add_typer(group, name=parents[depth])
                groups[key] = group
            target = groups[key]
        options = load_options(spec)
        cmd = make_command(options, _runner(spec), doc=spec.help)
        target.command(name, help=spec.help, epilog=spec.epilog, cls=command_class(options, spec.refuse_first))(cmd)

    @app.callback(invoke_without_command=True)
    def _root(
        version: bool = typer.Option(False, "--version", help="Print the version and exit."),
        debug: bool = typer.Option(False, "--debug", help="Show the full traceback of internal errors."),
    ) -> None:
        if version:
            typer.echo(f"framepack {__version__}")
            raise typer.Exit(0)

    return app


def _err(line: str) -> None:
    sys.stderr.write(line.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`framepack`, `python -m framepack_cli`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    classes = [load_options(s) for s in COMMANDS]
    args = expand_variadic(normalize_dashes(args, known_flags(classes)), variadic_flags(classes), tuple_flags(classes))
    command = typer.main.get_command(build_app())
    try:
        rc = command.main(args=args, prog_name="framepack", standalone_mode=False)
    except typer.Exit as e:
        rc = e.exit_code
    except typer.Abort:
        _err("Aborted.")
        rc = 130
    except NoArgsIsHelpError as e:  # `framepack`, `framepack lora`: which command? Help on stderr, exit 2.
        _err(e.format_message())
        rc = 2
    except ClickException as e:
        # Usage errors: unknown option, missing value... one line, exit 2.
        msg = e.format_message().replace("\n", " ").replace("Value error, ", "")
        ctx = getattr(e, "ctx", None)
        if ctx is not None and isinstance(e, (MissingParameter, MissingInput)):
            _err(ctx.get_usage())
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        _err(f"Error: {msg}{where}")
        rc = 2
    except FramepackError as e:
        if debug:
            import traceback

            traceback.print_exc()
        # One line per problem, the fix on the same line.
        lines = e.message.splitlines() or [""]
        if e.hint:
            lines[-1] = f"{lines[-1]}; {e.hint}"
        for line in lines:
            _err(f"Error: {line}")
        rc = e.exit_code
    except Interrupted as e:
        # Ctrl-C during a run: one line saying how far it got and what it wrote; no traceback.
        _err(str(e))
        rc = e.exit_code
    except KeyboardInterrupt:
        _err("Interrupted")
        rc = 130
    except Exception as e:  # a bug: say so in one line unless --debug
        if debug:
            raise
        _err(f"Internal error: {type(e).__name__}: {e} (run again with --debug for the traceback)")
        rc = 1
    sys.exit(rc if isinstance(rc, int) else 0)
