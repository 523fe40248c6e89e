"""The argument types, help formatter and shared flags of every ``neumf-fast`` command."""

from __future__ import annotations

import argparse
import ast

def layers(text: str) -> tuple[int, ...]:
    """``64,32,16,8`` or the paper code's ``[64,32,16,8]``."""
    try:
        value = ast.literal_eval(text if text.strip().startswith("[") else f"[{text}]")
        layers = tuple(int(v) for v in value)
    except (ValueError, SyntaxError, TypeError):
        raise argparse.ArgumentTypeError(f"layers must be integers like 64,32,16,8, got {text!r}") from None
    if len(layers) < 2 or any(v <= 0 for v in layers) or layers[0] % 2:
        raise argparse.ArgumentTypeError(f"layers need at least two positive widths, the first even: {text!r}")
    return layers


def _number(kind, ok, what: str):
    """An argparse type: ``kind(text)`` that satisfies ``ok``, else "must be {what}"."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive = _number(int, lambda v: v > 0, "a positive integer")
non_negative = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number")
unit_interval = _number(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


_thread_count = _number(int, lambda v: v > 0, "auto or a positive integer")


def threads(text: str) -> int | None:
    return None if text == "auto" else _thread_count(text)


BACKEND_CHOICES = ["auto", "triton", "cuda", "cpu", "torch"]


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default in --help (not for flags and options with no default)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or isinstance(action, argparse._HelpAction):
            return action.help
        return super()._get_help_string(action)




def add_device_flags(p: argparse.ArgumentParser, backend_default: str | None = None) -> None:
    """``--backend`` and ``--device`` as every command that runs a model takes them."""
    p.add_argument("--backend", choices=BACKEND_CHOICES, default=backend_default,
                   help="the fused op's kernels (NEUMF_FAST_BACKEND overrides)" if backend_default else
                   "default: the one it was trained with")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
