"""Digests of the card fields that give a model's outputs their meaning, checked on every read.

The tensor hash (`tensors.sha256`) vouches for the tensors only: a card edited by hand, its
class order reversed, loaded and mislabelled every face. Each card qcsfer writes therefore also
records `meaning_sha256`: one sha256 per field that changes what the outputs mean or how inputs
are prepared (MEANING_FIELDS), over the field's canonical JSON (sorted keys, no spaces), so
reformatting the file changes nothing and a changed value names the field. A card edited
through qcsfer (`write_card`, `tools/calibrate.py`) is stamped anew; cards written before
this have no digests and are read as before.

Not a signature: whoever edits the values can recompute the digests. It stops an edit made by
mistake or without knowing what it breaks, not one made to deceive.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .errors import WeightsError

DIGEST_KEY = "meaning_sha256"
MEANING_FIELDS = ("network", "mode", "model", "classes", "preprocessing", "decision")


def field_digest(value: Any) -> str:
    """sha256 of a JSON value in canonical form (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def meaning_digests(data: Mapping[str, Any]) -> dict[str, str]:
    """The digests to record for a card's JSON data (as written: lists, not tuples)."""
    return {name: field_digest(data.get(name)) for name in MEANING_FIELDS}


def check_meaning(data: Mapping[str, Any]) -> None:
    """Nothing when the recorded digests match (or none are recorded); else WeightsError
    naming the fields that changed since the card was written."""
    recorded = data.get(DIGEST_KEY)
    if recorded is None:  # written before the digests existed
        return
    if not isinstance(recorded, Mapping) or not all(isinstance(v, str) for v in recorded.values()):
        raise WeightsError(f"{DIGEST_KEY} must map field names to sha256 digests")
    changed = [name for name, digest in recorded.items() if digest != field_digest(data.get(name))]
    if changed:
        raise WeightsError(
            f"{', '.join(changed)} changed after this card was written ({DIGEST_KEY} does not "
            "match): these fields say what the model's outputs mean and how inputs are "
            "prepared, so the edited card is refused. Restore the card as it was saved; to "
            "change it on purpose, go through qcsfer.card (read_card, ModelCard.replace, "
            "write_card) or tools/calibrate.py, which record new digests"
        )
