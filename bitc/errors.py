"""The two kinds of failure a user can see, each with its own exit code."""

from __future__ import annotations


class BitcError(Exception):
    """A failure bitc reports as one line; `exit_code` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str = "") -> None:
        # Names from the model (values, nodes, files) may hold line breaks; the message must stay one line.
        super().__init__(" ".join(str(message).splitlines()))


class BadInputError(BitcError):
    """The user's model, artifact, option or input is unusable (exit code 2)."""

    exit_code = 2


class CompileError(BitcError):
    """A valid input that bitc could not compile (exit code 1)."""

    exit_code = 1


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's text: what a one-line error message can carry."""
    text = str(exc).strip()
    return next((line.strip()[:limit] for line in text.splitlines() if line.strip()), type(exc).__name__)
