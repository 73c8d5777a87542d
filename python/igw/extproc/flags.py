"""Go-style flag values, so the reference picker's command lines work unchanged.

* durations: Go ``time.ParseDuration`` syntax (``50ms``, ``2s``, ``1m30s``, ``1.5h``, ``300us``);
* sizes: plain bytes or Kubernetes / IEC quantities (``10Mi``, ``10MiB``, ``64M``, ``1Gi``);
* booleans: ``--flag`` (true), ``--flag=false``, ``--flag=0``, ``--flag true`` ...
* every long flag is also accepted with a single dash (``-grpc-port=9002``), as Go's ``flag``
  package allows.

Each parser raises ``argparse.ArgumentTypeError`` with what was expected, so a bad value is
one clear line from argparse and exit code 2.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?B?|[kKMGTP]B?|B)?\s*$")
_SIZE_FACTORS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
}

# What can serve an ext_proc port: grpc.aio, or igw's own HTTP/2 transport (h2_transport.py).
GRPC_TRANSPORTS = ("grpcio", "igw")

TRUE = frozenset({"1", "t", "true", "yes", "y", "on"})
FALSE = frozenset({"0", "f", "false", "no", "n", "off"})


def parse_duration(text: str) -> float:
    """Seconds from a Go duration string ("0" alone is allowed, as in Go)."""
    raw = text.strip()
    if raw in ("0", "+0", "-0"):
        return 0.0
    sign = -1.0 if raw.startswith("-") else 1.0
    body = raw.lstrip("+-")
    pos, total = 0, 0.0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            raise argparse.ArgumentTypeError(
                f"invalid duration {text!r}: expected Go syntax such as 50ms, 2s, 1m30s"
            )
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not body:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: empty")
    return sign * total


def parse_size(text: str) -> int:
    """Bytes from ``1048576``, ``10Mi``, ``10MiB``, ``64M``, ``1Gi``; empty -> 0 (unset)."""
    if not text.strip():
        return 0
    match = _SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: expected bytes or a quantity such as 10MiB, 64Mi, 1G"
        )
    number, unit = match.group(1), (match.group(2) or "")
    if unit.endswith("B") and unit != "B":
        unit = unit[:-1]
    return int(float(number) * _SIZE_FACTORS[unit])


def parse_bool(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r}: expected true or false")


def names(flag: str) -> tuple[str, str]:
    """The ``--flag`` and Go-style ``-flag`` spellings of a long option."""
    bare = flag.lstrip("-")
    return f"--{bare}", f"-{bare}"


def add_bool(parser: argparse._ActionsContainer, flag: str, default: bool, help_text: str) -> None:
    """A Go-style boolean: ``--flag`` means true, ``--flag=false`` / ``--flag false`` work."""
    parser.add_argument(
        *names(flag),
        nargs="?",
        const=True,
        default=default,
        type=parse_bool,
        metavar="BOOL",
        help=f"{help_text} (default {str(default).lower()})",
    )
