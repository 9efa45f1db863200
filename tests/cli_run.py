"""Run the ``anystep`` CLI in-process for tests: its exit code, and its stdout / stderr."""

from __future__ import annotations


def exit_code(args: list[str]) -> int:
    """``anystep ARGS``: the exit code only (what it printed stays in capsys for the caller)."""
    from anystep.cli import main

    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """``anystep ARGS``: exit code and stderr (user errors: 2 and one line)."""
    code = exit_code(args)
    return code, capsys.readouterr().err


def run_cli_out(args: list[str], capsys) -> tuple[int, str, str]:
    """``anystep ARGS``: exit code, stdout and stderr."""
    code = exit_code(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err
