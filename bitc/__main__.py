"""`python -m bitc` is the `bitc` command."""

from bitc.cli import run

run()
