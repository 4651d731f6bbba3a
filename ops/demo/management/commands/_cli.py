"""Argument handling shared by the demo's management commands."""
import sys

from django.core.management.base import CommandError


def one_line_errors(parser, name: str):
    """Make a command's usage errors one line and exit status 2 (argparse prints the whole usage)."""

    def error(message):
        if not parser.called_from_command_line:
            raise CommandError(f"{message}", returncode=2)
        sys.stderr.write(f"{name}: {message}\n")
        sys.exit(2)

    parser.error = error
    return parser
