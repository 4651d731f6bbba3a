#!/usr/bin/env python
"""Django's command-line entry point for checkout operations."""
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "checkout.settings")
    from django.core.management import execute_from_command_line

    from checkout.env import stop_on_bad_configuration

    # Configuration errors (a bad setting, an unknown time zone) are the operator's to fix:
    # one line naming the variable, exit 2, no traceback.
    with stop_on_bad_configuration():
        execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
