"""modules/errors.py stand-in: report() and display() only log (to stderr), as in A1111.

Stand-in addition: `reports`, an uncapped list of (message, exception or None) so tests can see what was
logged. `exception_records` keeps A1111's capped (5) record format.
"""
from __future__ import annotations

import sys
import textwrap
import traceback

exception_records: list[dict] = []
reports: list[tuple[str, BaseException | None]] = []  # stand-in only


def format_exception(e, tb):
    return {"exception": str(e), "traceback": [[f"{x.filename}, line {x.lineno}, {x.name}", x.line] for x in traceback.extract_tb(tb)]}


def get_exceptions():
    return exception_records[::-1]  # newest first


def record_exception():
    _, e, tb = sys.exc_info()
    if e is None or (exception_records and exception_records[-1] == e):
        return
    exception_records.append(format_exception(e, tb))
    del exception_records[:-5]  # only the latest five are kept


def report(message: str, *, exc_info: bool = False) -> None:
    """Print an error message to stderr, with the current traceback if exc_info is set."""
    record_exception()
    reports.append((message, sys.exc_info()[1] if exc_info else None))
    text = "".join(f"*** {line}\n" for line in message.splitlines())
    if exc_info:
        text += textwrap.indent(traceback.format_exc(), "    ") + "\n---\n"
    sys.stderr.write(text)


def print_error_explanation(message):
    record_exception()
    lines = message.strip().split("\n")
    rule = "=" * max(map(len, lines))
    sys.stderr.write("\n".join([rule, *lines, rule]) + "\n")


def display(e: Exception, task, *, full_traceback=False):
    record_exception()
    headline = f"{task or 'error'}: {type(e).__name__}"
    reports.append((headline, e))
    print(headline, file=sys.stderr)
    formatted = traceback.TracebackException.from_exception(e)
    if full_traceback:  # include the frames that led to the handler as well
        formatted.stack = traceback.StackSummary(traceback.extract_stack()[:-2] + formatted.stack)
    print(*formatted.format(), sep="", file=sys.stderr)


already_displayed = {}


def display_once(e: Exception, task):
    if task not in already_displayed:
        display(e, task)
        already_displayed[task] = 1


def run(code, task):
    try:
        code()
    except Exception as e:
        display(task, e)  # (sic: A1111 passes the arguments in this order)
