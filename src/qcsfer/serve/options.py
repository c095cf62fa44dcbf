"""The options of one prediction request, from the query string, form fields or JSON keys."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..decision import PRIORS
from ..inference.faces import parse_box
from ..inference.haar import CASCADES
from .errors import ApiError

# Detectors a client may choose by name; never a path (no endpoint reads server files).
DETECTORS = (*sorted(CASCADES), "mtcnn", "blazeface", "blazeface-back")


class PredictOptions(BaseModel):
    """How to read the faces of the images of one request."""

    model_config = ConfigDict(extra="forbid")

    detector: Literal[DETECTORS] | None = Field(  # type: ignore[valid-type]
        None, description="face detector (default: the server's)"
    )
    no_detect: bool = Field(False, description="each image is one pre-cropped face")
    boxes: str | None = Field(
        None,
        description="classify these boxes instead of detecting faces: 'x0,y0,x1,y1;x0,y0,x1,y1'",
        examples=["10,20,110,120"],
    )
    top_k: int | None = Field(
        None, ge=1, description="also list each face's k most probable classes as 'top'"
    )
    prior: Literal[PRIORS] | None = Field(  # type: ignore[valid-type]
        None,
        description="class prior: 'dataset' (most accurate on the training data's class mix) or "
        "'balanced' (every class weighted equally; needs a model that records its training "
        "prior, see /v1/model); default: the server's",
    )
    annotated: bool = Field(
        False, description="answer with the image, faces drawn on it (one image only)"
    )
    annotated_format: Literal["png", "jpeg"] = Field("png", description="format of that image")

    @field_validator("boxes")
    @classmethod
    def _boxes_parse(cls, value: str | None) -> str | None:
        if value is not None:
            for text in value.split(";"):
                parse_box(text)  # ValueError -> a 422 naming the box
        return value

    def box_list(self) -> list[tuple[float, float, float, float]] | None:
        return [parse_box(t) for t in self.boxes.split(";")] if self.boxes else None

    def merged(self, fields: dict) -> PredictOptions:
        """These options overridden by the same names sent in the request body."""
        if not fields:
            return self
        try:
            return PredictOptions.model_validate({**self.model_dump(exclude_unset=True), **fields})
        except ValidationError as exc:
            raise ApiError(422, "invalid_options", describe_validation(exc.errors())) from exc


def describe_validation(errors: list) -> str:
    """Pydantic/FastAPI validation errors as one readable line."""
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "body"))
        parts.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)
