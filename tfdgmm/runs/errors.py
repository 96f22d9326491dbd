"""One-line error messages for the command line (a way on, not a traceback)."""

from __future__ import annotations

import errno

__all__ = ["is_disk_full", "one_line"]


def is_disk_full(err: BaseException) -> bool:
    """An `OSError(ENOSPC)`, or TensorFlow's error for a write that ran out of space."""
    if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return (
        type(err).__name__ == "ResourceExhaustedError"
        or "No space left" in text
        or ("Disk quota exceeded" in text)
    )


def one_line(err: BaseException, command: str = "train") -> str:
    """The message of `err` on one line, with what to do next for a full disk."""
    if is_disk_full(err):
        text = str(getattr(err, "message", None) or err).strip().splitlines()[0]
        hint = (
            " rerun the same command with --resume to continue from the last checkpoint"
            if command == "train"
            else " rerun the command"
        )
        return f"the disk is full ({text}); free some space, then{hint}"
    text = " ".join(str(err).split())
    return text or type(err).__name__
