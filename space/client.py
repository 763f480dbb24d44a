"""Helpers for programs that call the app through ``gradio_client`` (the tests and benchmarks)."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def client_temp_folder(folder: str | Path) -> Iterator[Path]:
    """Make ``folder`` Python's temp folder while gradio_client clients run in this process.

    gradio_client 2.7 fetches each output file through a new folder in the temp folder and leaves
    that folder behind empty, one per gallery image. The caller owns ``folder`` and deletes it.
    """
    previous = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield Path(folder)
    finally:
        tempfile.tempdir = previous
