"""Run the ``anystep`` CLI in-process for tests: its exit code and stderr."""

from __future__ import annotations


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """``anystep ARGS``: exit code and stderr (user errors: 2 and one line)."""
    from anystep.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err
