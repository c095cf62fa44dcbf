"""A run directory holds exactly one run, written by one process at a time.

- A new run refuses a directory that already holds files, unless told to `overwrite` it (then
  the old run's files are removed first, so no `best.*` or `metrics.jsonl` of the old run is
  mixed into the new one) or to `resume` it.
- `RunLock` is an exclusive lock (`run.lock`, an OS file lock, so a killed process never
  leaves it held); a lock file left by a killed process is reported with its pid and taken over.
- Temporary files of interrupted atomic writes (`.NAME.*.tmp`, as large as a checkpoint) are
  removed when a run starts or resumes.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from pathlib import Path
from types import TracebackType

from ..errors import TrainingError

log = logging.getLogger("qcsfer.train")

LOCK_NAME = "run.lock"
# Files a qcsfer run writes: --overwrite removes a directory only when it holds one of them.
RUN_MARKERS = ("config.yaml", "last.pt", "metrics.jsonl", "train.log", "best.safetensors")


class RunDirError(TrainingError):
    """The run directory cannot be used as asked; the message says why and what to do."""


def leftover_temporaries(run_dir: Path) -> list[Path]:
    """Temporary files of interrupted atomic writes (see qcsfer.io.atomic_write)."""
    found = []
    for folder in (run_dir, run_dir / "checkpoints"):
        if folder.is_dir():
            found += [p for p in folder.glob(".*.tmp") if p.is_file()]
    return sorted(found)


def remove_temporaries(run_dir: Path) -> None:
    """Remove leftovers of interrupted writes, each one logged."""
    for path in leftover_temporaries(run_dir):
        path.unlink()
        log.info("removed %s, left by an interrupted write", path)


def prepare_new_run(run_dir: Path, overwrite: bool) -> None:
    """Make sure a new run starts in an empty directory (call with the lock held)."""
    present = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)
    if not present:
        return
    if not overwrite:
        raise RunDirError(
            f"{run_dir} already holds a run ({', '.join(present[:5])}"
            f"{', ...' if len(present) > 5 else ''}): continue it with "
            f"`qcsfer train --resume {run_dir}`, replace it with --overwrite, "
            "or choose another --run-dir"
        )
    if not any((run_dir / name).exists() for name in RUN_MARKERS):
        raise RunDirError(
            f"{run_dir} holds files that are not a qcsfer run ({', '.join(present[:5])}); "
            "--overwrite only replaces run directories: choose another --run-dir"
        )
    for name in present:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    log.warning("--overwrite: removed the earlier run in %s (%d entries)", run_dir, len(present))


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
