"""What may differ when a run resumes, and what must not.

A resumed run continues under the configuration saved in its checkpoint. Options that only say
how long to run, where the data or cache live, or what to report (`SAFE_ON_RESUME`) may be
changed with `--set`, e.g. `--set epochs=30` to extend a run; any other is refused by name,
since the run would no longer be one run. A config.yaml edited by hand since the run started
is reported and kept aside (config.edited.yaml), never applied or lost silently. The data
must be what the run trained on: each split's fingerprint is compared with the checkpoint's
and a difference is refused, saying what changed, unless it is explicitly allowed.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import yaml

from ..config import TrainConfig, apply_overrides, from_dict, to_dict
from ..data.fingerprint import describe_change
from ..errors import TrainingError

log = logging.getLogger("qcsfer.train")

SAFE_ON_RESUME = frozenset(
    {
        "epochs",
        "max_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "tensorboard",
        "eval_batch_size",
        "device",
        "data.root",
        "data.cache_dir",
        "data.storage",
    }
)


def resumed_config(config: TrainConfig, overrides: list[str], epochs_done: int) -> TrainConfig:
    """The checkpoint's configuration with `--set` changes that are safe on resume."""
    if not overrides:
        return config
    data = to_dict(config)
    keys = apply_overrides(data, overrides)
    refused = sorted(set(keys) - SAFE_ON_RESUME)
    if refused:
        raise TrainingError(
            f"--set {', '.join(refused)} cannot change when resuming: the run would no longer "
            f"be one run (start a new run instead). Options that can: {sorted(SAFE_ON_RESUME)}"
        )
    changed = from_dict(TrainConfig, data)
    if changed.epochs < epochs_done:
        raise TrainingError(f"--set epochs={changed.epochs}: {epochs_done} epochs are done")
    log.info("resuming with %s", ", ".join(overrides))
    return changed


def _differences(before: Any, after: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, before, after) for every value that differs."""
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            found += _differences(before.get(key), after.get(key), name)
        return found
    return [] if before == after else [(prefix or "config", before, after)]


def keep_edited_config(run_dir: Path, config: TrainConfig) -> list[str]:
    """Report a config.yaml changed by hand since the run started, and move it aside to
    config.edited.yaml (the run rewrites config.yaml from its checkpoint). Returns the changes."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return []
    try:
        on_disk = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        on_disk = f"<not readable YAML: {exc}>"
    if isinstance(on_disk, dict):  # options added since the run started are not edits
        with contextlib.suppress(TypeError, ValueError):  # an invalid edit: reported as it is
            on_disk = to_dict(from_dict(TrainConfig, on_disk))
    changes = _differences(to_dict(config), on_disk)
    if not changes:
        return []
    kept = path.replace(run_dir / "config.edited.yaml")
    safe = [f"--set {key}={after}" for key, _, after in changes if key in SAFE_ON_RESUME]
    described = [f"{key}: {before!r} -> {after!r}" for key, before, after in changes]
    log.warning(
        "config.yaml was edited after the run started (%s): a resumed run continues its "
        "checkpoint's configuration, so the edit is not applied; it is kept as %s.%s",
        "; ".join(described),
        kept,
        f" To apply the safe changes: qcsfer train --resume {run_dir} {' '.join(safe)}"
        if safe
        else "",
    )
    return described


def check_data(
    recorded: dict[str, Any] | None, current: dict[str, Any], allow_change: bool
) -> None:
    """Refuse to resume on data other than the run's (unless allowed), saying what changed."""
    if recorded is None:
        log.warning("this checkpoint records no data fingerprint: the data cannot be checked")
        return
    changes = [describe_change(n, recorded[n], current[n]) for n in current if n in recorded]
    changes = [c for c in changes if c]
    if not changes:
        return
    message = "the data differ from what this run trained on: " + "; ".join(changes)
    if not allow_change:
        raise TrainingError(
            f"{message}. Restore the data, or resume with --allow-data-change to continue "
            "on the data as they are now"
        )
    log.warning("%s; continuing on them (--allow-data-change)", message)
