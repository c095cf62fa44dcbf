"""QCS models: the base (inference) network, CSA, the training topology and named configs."""

from .base import BaseNetwork
from .configs import CONFIGS, CSAConfig, ModelConfig, get_config
from .csa import CrossSimilarityAttention, Pair
from .qcs import TOPOLOGY, BranchLogits, QCSModel, branch_loss

__all__ = [
    "CONFIGS",
    "TOPOLOGY",
    "BaseNetwork",
    "BranchLogits",
    "CSAConfig",
    "CrossSimilarityAttention",
    "ModelConfig",
    "Pair",
    "QCSModel",
    "branch_loss",
    "get_config",
]
