"""Run `codeforge run FILE --dry-run` on each file named on the command line, in this one process, and print
one JSON line per file: {"file", "code", "out", "err"}, or {"file", "crash": traceback} when the command
raised instead of exiting. A segfault kills the process: the caller sees a signal and the files not reported.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback

import typer

from codeforge.embedded.command import run_command

# The `run` command itself, without the other subcommands (the operator's imports cost seconds per batch).
app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
app.command("run")(run_command)
app.command("noop", hidden=True)(
    lambda: None
)  # two commands: `run` stays a subcommand, as in `codeforge run`


def main(paths: list[str]) -> None:
    real_stdout = sys.stdout
    for path in paths:
        out, err = io.StringIO(), io.StringIO()
        report: dict[str, object] = {"file": path}
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                app(["run", path, "--dry-run"], prog_name="codeforge")
        except SystemExit as exc:
            report["code"] = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # any escape is what the fuzz test reports
            report["crash"] = traceback.format_exc()[-4000:]
        else:
            report["code"] = 0
        report["out"], report["err"] = out.getvalue()[-4000:], err.getvalue()[-8000:]
        report["err_length"] = len(err.getvalue())
        real_stdout.write(json.dumps(report) + "\n")
        real_stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
