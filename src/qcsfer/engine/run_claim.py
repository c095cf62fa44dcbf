"""A run directory holds exactly one run, written by one process at a time.

- A new run refuses a directory that already holds files, unless told to `overwrite` a run
  there (then the old run's files, and only those, are removed first, so no `best.*` or
  `metrics.jsonl` of the old run is mixed into the new one) or to `resume` it.
- `RunLock` is an exclusive lock (`run.lock`, an OS file lock, so a killed process never
  leaves it held); a lock file left by a killed process is reported with its pid and taken over.
- Temporary files of interrupted atomic writes (`.NAME.*.tmp`, as large as a checkpoint) are
  removed when a run starts or resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from types import TracebackType

from ..errors import TrainingError
from ..outputs import check_output_folder
from .run_files import LOCK_NAME, is_run_dir, remove_run_files, temporaries

log = logging.getLogger("qcsfer.train")


class RunDirError(TrainingError):
    """The run directory cannot be used as asked; the message says why and what to do."""


def leftover_temporaries(run_dir: Path) -> list[Path]:
    """Temporary files of interrupted atomic writes (see qcsfer.io.atomic_write)."""
    return temporaries(run_dir) + temporaries(run_dir / "checkpoints")


def remove_temporaries(run_dir: Path) -> None:
    """Remove leftovers of interrupted writes, each one logged."""
    for path in leftover_temporaries(run_dir):
        path.unlink()
        log.info("removed %s, left by an interrupted write", path)


def prepare_new_run(run_dir: Path, overwrite: bool) -> None:
    """Make sure a new run starts in an empty directory (call with the lock held).

    --overwrite replaces only a folder recognisably written by qcsfer, and removes only the
    files a run writes there (engine/run_files.py): anything else in it is kept, and named.
    """
    present = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)
    if not present:
        return
    listed = f"{', '.join(present[:5])}{', ...' if len(present) > 5 else ''}"
    if not is_run_dir(run_dir):
        raise RunDirError(
            f"{run_dir} holds files that are not a qcsfer run ({listed}); nothing there is "
            "replaced (--overwrite only replaces a run directory written by qcsfer): choose "
            "another --run-dir"
        )
    if not overwrite:
        if (run_dir / "last.pt").is_file():
            raise RunDirError(
                f"{run_dir} already holds a run ({listed}): continue it with "
                f"`qcsfer train --resume {run_dir}`, replace it with --overwrite, "
                "or choose another --run-dir"
            )
        raise RunDirError(
            f"{run_dir} holds a run that stopped before its first last.pt was written ({listed}), "
            "so there is nothing to resume: replace it with --overwrite, or choose another "
            "--run-dir"
        )
    kept = remove_run_files(run_dir)
    log.warning("--overwrite: removed the earlier run's files in %s", run_dir)
    if kept:
        log.warning(
            "--overwrite: kept %d entries the run did not write: %s", len(kept), ", ".join(kept)
        )


def claim_run_dir(run_dir: Path, new: bool, overwrite: bool) -> tuple[RunLock, bool]:
    """Lock the run directory and ready it (a new run gets it free of any earlier run's files).
    Returns the held lock and whether the directory was created; a refusal changes nothing."""
    created = not run_dir.exists()
    check_output_folder(run_dir)  # a file there, a folder that cannot be written, a full disk
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir).acquire()
    try:
        remove_temporaries(run_dir)
        if new:
            prepare_new_run(run_dir, overwrite)
    except BaseException:
        lock.release()
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise
    return lock, created


class RunLock:
    """Exclusive use of a run directory by one process, released on any exit.

    The OS lock (flock) is what excludes: the kernel drops it when its process dies, however it
    dies. The file's text (pid and host) is for messages: naming the process holding the lock,
    or the killed process whose lock file was left behind.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirError(
                f"{self.path.parent} is in use by {holder} (lock {self.path}): wait for that "
                "run to finish or stop it; two runs must not write one directory"
            ) from None
        if not self._still_linked(fd):  # its holder released (unlinked) it meanwhile: retry
            os.close(fd)
            return self.acquire()
        stale = os.read(fd, 200).decode(errors="replace").strip()
        if stale:
            log.warning(
                "%s: stale lock of %s, which is no longer running (killed?): taken over",
                self.path,
                stale,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def _still_linked(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        self.path.unlink(missing_ok=True)  # while still held: no one else has it open yet
        os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
