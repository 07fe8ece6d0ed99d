"""The `xtk` command line: the parser made from the command table (toolkit/cli/table.py), and main().

One grammar for every command (tests/test_cli.py holds it): a run folder is `--run DIR` on every command that
reads or writes one, and `--out` names anything else a command writes; `--model` is the same MODEL argument on
every command that takes it; a command that reads a recipe takes `key=value`
overrides anywhere on its line (its usage says so); help shows every default."""

from __future__ import annotations

import argparse
import os
import signal

from rich.markup import escape

from toolkit import __version__
from toolkit.cli.resolve import console
from toolkit.cli.table import COMMANDS, RECIPE
from toolkit.io.errors import USER_ERRORS, Unanswered
from toolkit.io.signals import Terminated, handled


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default wherever the help text does not already say it; not for options without one."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xtk", description="Distil a teacher into a small extraction student.")
    parser.add_argument("--version", action="version", version=f"xtk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for cmd in COMMANDS:
        words = cmd.name.split()
        options = dict(help=cmd.help, description=cmd.help, formatter_class=HelpFormatter)
        if len(words) == 1:
            p = sub.add_parser(words[0], **options)
        else:
            if words[0] not in groups:
                g = sub.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = g.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
            p = groups[words[0]].add_parser(words[1], **options)
        for arg in cmd.args:
            p.add_argument(*arg.flags, **{k: v() if k in ("choices", "help") and callable(v) else v
                                          for k, v in arg.options.items()})
        p.set_defaults(handler=cmd.run, takes_overrides=RECIPE[1] in cmd.args)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the line; `key=value` words anywhere after a recipe command become recipe overrides."""
    parser = make_parser()
    args, extra = parser.parse_known_args(argv)
    words = [*getattr(args, "overrides", []), *extra]  # in the order given: a later value for a key wins
    bad = [w for w in words if w.startswith("-") or "=" not in w]
    if bad or (extra and not args.takes_overrides):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    args.overrides = words
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with handled():
        try:
            return int(args.handler(args) or 0)
        except USER_ERRORS as exc:
            console.print("[bold red]error:[/]", escape(str(exc)), highlight=False, soft_wrap=True)
            return 3 if isinstance(exc, Unanswered) else 2
        except KeyboardInterrupt as exc:
            killed = isinstance(exc, Terminated)
            console.print(f"[yellow]{'terminated' if killed else 'interrupted'}: re-run the same command to "
                          "resume[/]")
            return 128 + (signal.SIGTERM if killed else signal.SIGINT)
