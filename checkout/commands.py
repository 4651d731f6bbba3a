"""The base of the project's management commands: every usage error is one line and exit status 2.

argparse prints its whole usage before an error, and Django prints a CommandError as
`CommandError: ...`. A command built on `Command` says every usage error the same way,
whoever finds it: argparse (unknown option, missing or malformed value) or the command
itself (`UsageError`: unknown job, a day not over yet, no such id, a refused database):

    runjob: error: unknown job 'nope'; known jobs: ... (see --help)

on one line of stderr, exit status 2. Any other CommandError is one line too,
`<command>: <message>`, with its own status. `--help` is unchanged: it is the place for
usage. Called from code (`call_command`), both are raised as CommandError with their status.

Destructive options (`seed_demo --reset`, `restore_backup --replace`) on a database the
command did not make need `--yes-destroy <database name>`: `refuse_destruction` says what
would be destroyed and refuses unless the name was typed.
"""
from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError, CommandParser, SystemCheckError

EXIT_USAGE = 2


class UsageError(CommandError):
    """The command was asked for something it cannot do as asked: exit status 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, returncode=EXIT_USAGE)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def usage_line(command: str, message: str) -> str:
    return f"{command}: error: {one_line(message)} (see --help)"


class UsageParser(CommandParser):
    """CommandParser whose errors are one line (`usage_line`) and exit status 2."""

    command = ""

    def error(self, message):
        if not self.called_from_command_line:
            raise UsageError(message)
        self.exit(EXIT_USAGE, usage_line(self.command, message) + "\n")


class Command(BaseCommand):
    """BaseCommand with one-line errors: usage errors exit 2, other failures with their own status."""

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        # BaseCommand builds a CommandParser and offers no hook for its class; UsageParser
        # changes only error(), so the parser Django configured is kept as it is.
        parser.__class__ = UsageParser
        parser.command = subcommand
        self.command_name = subcommand
        return parser

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except SystemCheckError:
            raise
        except CommandError as exc:
            if not getattr(self, "_called_from_command_line", False) or options.get("traceback"):
                raise
            if exc.returncode == EXIT_USAGE:
                line = usage_line(self.command_name, str(exc))
            else:
                line = f"{self.command_name}: {one_line(exc)}"
            self.stderr.write(line)
            sys.exit(exc.returncode)


def add_destroy_confirmation(parser, *, what: str) -> None:
    parser.add_argument(
        "--yes-destroy", dest="yes_destroy", metavar="DATABASE",
        help=f"confirm {what} on a database this command did not make: type that database's name",
    )


def refuse_destruction(confirmation: str | None, *, database: str, damage: str, why: str) -> None:
    """Go on only if `confirmation` is `database`'s name; else UsageError saying what would be destroyed.

    `damage` says what would go, naming the database ("--reset would delete 200 orders, ... in
    database 'x'"), `why` why the command does not just do it ("it is not a demo database").
    """
    if confirmation == database:
        return
    if confirmation is None:
        raise UsageError(f"{damage}, and {why}; to do it anyway add --yes-destroy {database}")
    raise UsageError(
        f"--yes-destroy {confirmation!r} is not the name of the database {database!r}; nothing was changed"
    )
