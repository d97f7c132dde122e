"""modules/errors.py stand-in: `report(message, exc_info=False)` records (message, exception or None) in `reports` and prints
the message and traceback to stderr, as Forge logs a swallowed script or callback error; `display` likewise."""
import sys
import traceback

reports: list = []


def report(message: str, *, exc_info: bool = False) -> None:
    exc = sys.exc_info()[1] if exc_info else None
    reports.append((message, exc))
    print("***", message, file=sys.stderr)
    if exc is not None:
        print("    " + "".join(traceback.format_exception(exc)).replace("\n", "\n    "), file=sys.stderr)


def display(e: Exception, task, *, full_traceback=False):
    reports.append((f"{task}: {type(e).__name__}", e))
    print(f"{task or 'error'}: {type(e).__name__}", file=sys.stderr)


def print_error_explanation(message):
    print(message, file=sys.stderr)
