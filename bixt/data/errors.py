"""The base of the data errors that a task reports as one clean line, wherever they were raised."""
from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["DataError", "data_errors_exit"]


class DataError(Exception):
    """Bad input data: ``message`` names the file (and line, key or value) and says the fix.

    An error raised in a DataLoader worker process reaches the main process rebuilt by torch as
    ``type(err)(text)``, where ``text`` is ``"Caught <type> in DataLoader worker process N.\\n
    Original Traceback ..."`` ending in the formatted exception. The constructor takes the original
    message back out of that text, so ``message`` is the same in either process and a task prints
    it as is; ``str(err)`` keeps the worker's traceback for debugging. Subclasses add the builtin
    base their callers catch (``ValueError``, ``RuntimeError``).
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = _original_message(type(self), str(message))


def _original_message(cls: type, text: str) -> str:
    """``text`` itself, or the message inside the text torch builds from a worker's traceback."""
    if not text.startswith(f"Caught {cls.__name__} ") or "\nOriginal Traceback" not in text:
        return text
    # traceback.format_exception ends with "<module>.<qualname>: <message>" (plus a newline)
    marker = f"{cls.__module__}.{cls.__qualname__}: "
    _, found, message = text.rpartition(marker)
    return message.rstrip("\n") if found else text


@contextlib.contextmanager
def data_errors_exit() -> Iterator[None]:
    """A task's entry point: a :class:`DataError` (a bad input file, raised here or in a worker)
    ends the process with its message as one line, ``error: ...``, instead of a traceback."""
    try:
        yield
    except DataError as err:
        raise SystemExit(f"error: {err.message}") from None
