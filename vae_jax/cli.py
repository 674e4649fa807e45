"""Pieces shared by the command lines: one-line flag errors and positive-number flags."""

from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """Reports a bad flag in one line (and exit code 2), without the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive(kind):
    """An argparse type: `kind(text)` (int or float), refused unless > 0."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


positive_int = positive(int)
