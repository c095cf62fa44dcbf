"""Where a new run's starting weights come from: foreign checkpoints (POSTER++'s ir50, the
authors' QCS checkpoints) or earlier qcsfer weights files, applied in the order of InitConfig."""

from __future__ import annotations

import logging

from ..config import InitConfig
from ..errors import TrainingError
from ..models.backbone_file import load_backbone_file
from ..models.convert import load_ir50_backbone, load_reference_checkpoint
from ..models.qcs import QCSModel
from ..models.weights import load_weights
from ..pretrained import resolve_weights
from .weight_fit import load_fitting

log = logging.getLogger("qcsfer.train")


def initialize(model: QCSModel, init: InitConfig) -> None:
    """Starting weights from foreign or earlier checkpoints; every key is accounted for."""
    if init.ir50:
        log.info(load_ir50_backbone(init.ir50, model).summary())
    if init.reference:
        parts = init.reference_parts
        state, report = load_reference_checkpoint(init.reference, model.config, model.mode, parts)
        model.load_state_dict(state, strict=parts == "all")  # every requested key is in state
        log.info(report.summary())
    if init.backbone:
        card = load_backbone_file(init.backbone, model.base.backbone)
        log.info("backbone initialised from %s (%s)", init.backbone, card.get("network"))
    if init.backbone_from:
        source, _ = load_weights(resolve_weights(init.backbone_from), base_only=True)
        backbone = source.backbone.state_dict()
        load_fitting(model.base.backbone, backbone, init.backbone_from, option="init.backbone_from")
        log.info("backbone initialised from %s", init.backbone_from)
    if init.weights:
        source, card = load_weights(resolve_weights(init.weights))  # 'default', a run dir
        if card.network == "base" or model.mode == "baseline":  # a baseline: the base alone
            base = source if card.network == "base" else source.base
            load_fitting(model.base, base.state_dict(), init.weights, card.model)
            loaded = "base network"
        elif card.mode == model.mode:
            load_fitting(model, source.state_dict(), init.weights, card.model)
            loaded = "all weights"
        else:
            raise TrainingError(
                f"{init.weights}: a {card.mode} training graph cannot start a "
                f"{model.mode} run; use its base network (an inference weights file)"
            )
        log.info("%s initialised from %s (%s)", loaded, init.weights, card.network)
