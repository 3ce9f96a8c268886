"""`--open`: show downloaded files with the system's viewer, the way each platform does it.

macOS `open`, Windows `os.startfile`, elsewhere `xdg-open` (freedesktop.org; found on PATH, so a desktop
without it, e.g. a server over ssh, gets a sentence instead of an error). The viewer is started detached:
the command does not wait for the picture to be closed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def viewer_command() -> list[str] | None:
    """The command that opens a file with its default application here; None when there is none."""
    if sys.platform == "darwin":
        return ["open"]
    if os.name == "nt":
        return []  # os.startfile
    found = shutil.which("xdg-open")
    return [found] if found else None


def open_paths(paths: list[Path]) -> str | None:
    """Open each path; None when done, else why not (one sentence)."""
    command = viewer_command()
    if command is None:
        return "no system viewer here (xdg-open is not installed)"
    for path in paths:
        if not command:
            os.startfile(path)  # type: ignore[attr-defined]  # Windows only
            continue
        try:
            subprocess.Popen(
                [*command, str(path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as error:
            return f"{command[0]} could not be started ({error.strerror})"
    return None
