"""Sweeps that survive a failed job: the job's folder records why (FAILED), the other jobs run,
and the sweep exits non-zero at the end (FailedJobsCallback, registered in conf/config.yaml)."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from hydra.experimental.callback import Callback

from certtrain.atomic import atomic_write_text

FAILED_MARKER = "FAILED"
log = logging.getLogger(__name__)


def mark_failed(job_dir: Path, error: BaseException, expected: bool) -> None:
    """Write why the job failed into its folder: the one-line reason, and the traceback of an
    unexpected error (a bug) below it."""
    text = f"{type(error).__name__}: {error}\n"
    if not expected:
        text += "\n" + "".join(traceback.format_exception(error))
    atomic_write_text(job_dir / FAILED_MARKER, text)


def clear_failed(job_dir: Path) -> None:
    (job_dir / FAILED_MARKER).unlink(missing_ok=True)


def failed_jobs(sweep_dir: Path) -> list[Path]:
    return sorted(path.parent for path in Path(sweep_dir).rglob(FAILED_MARKER))


class FailedJobsCallback(Callback):
    """At the end of a multirun: list the failed jobs and exit with status 1 if there are any."""

    def on_multirun_end(self, config, **kwargs) -> None:
        failed = failed_jobs(Path(config.hydra.sweep.dir))
        if failed:
            for job in failed:
                reason = (job / FAILED_MARKER).read_text().splitlines()[0]
                log.error("failed job %s: %s", job, reason)
            log.error("%d job(s) of the sweep failed (see FAILED in their folders); the others finished", len(failed))
            sys.exit(1)
