"""Options shared by the runtime's two commands (``cogent-edge``, ``cogent-device``)."""

from __future__ import annotations

import argparse

__all__ = ["add_bundle_options"]


def add_bundle_options(parser: argparse.ArgumentParser) -> None:
    """``--no-verify`` and ``--log-level``: how a command loads a bundle and how much it says."""
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the sha256 check of the bundle's files (not recommended)"
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="logging verbosity on stderr (default: %(default)s)",
    )
