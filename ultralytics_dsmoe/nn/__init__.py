"""DS-MoE blocks, one file per family. ``register.BLOCKS`` names the ones the YAML parser may use.

Paper stages: 1-2 ``text`` (ClassText, SemanticDistill); 3 ``encoder`` (MobileSAMEncoder, HybridEncoder, AnisotropicDSConv);
4 ``cbam``; 5 ``hyperbolic`` (HyperbolicAlign); 6 ``broadcast`` (SpaceBroadcast); 7-8 ``moe`` (ExpertRouter inside
SparseMoE); 9-10 ``fusion`` (ExpertEnsemble, FeatureAggregate).
"""

from .broadcast import SpaceBroadcast
from .cbam import CBAM
from .encoder import AnisotropicDSConv, HybridEncoder, MobileSAMEncoder, Pick, SpatialPrior
from .fusion import ExpertEnsemble, FeatureAggregate
from .hyperbolic import HyperbolicAlign
from .moe import ExpertRouter, SparseMoE
from .text import ClassText, SemanticDistill

__all__ = (
    "CBAM",
    "AnisotropicDSConv",
    "ClassText",
    "ExpertEnsemble",
    "ExpertRouter",
    "FeatureAggregate",
    "HybridEncoder",
    "HyperbolicAlign",
    "MobileSAMEncoder",
    "Pick",
    "SemanticDistill",
    "SparseMoE",
    "SpatialPrior",
    "SpaceBroadcast",
)
