"""DS-MoE blocks, one file per family, and ``BLOCKS``: the one table that says what each block is.

Every fact about a block lives in its ``BLOCKS`` entry: the name the model YAML uses, the channel rule the parser
applies (``ultralytics_dsmoe.patches.parser``), the paper stages it implements (``tests/test_stages.py``), and the row
of the cost breakdown it is counted in (``python -m ultralytics_dsmoe.costs``). The same entries define the classes a
checkpoint may contain (``ultralytics_dsmoe.patches.checkpoints``). Adding a block means adding one entry.
"""

from __future__ import annotations

from dataclasses import dataclass

from .broadcast import SpaceBroadcast
from .cbam import DSCBAM
from .encoder import AnisotropicDSConv, HybridEncoder, MobileSAMEncoder, Pick, SpatialPrior
from .fusion import ExpertEnsemble, FeatureAggregate
from .gate import ResidualGate
from .hyperbolic import HyperbolicAlign
from .moe import ExpertRouter, SparseMoE
from .rules import (
    ChannelRule,
    declared_output,
    geometry_output,
    hybrid_output,
    listed_output,
    picked_output,
    same_channels,
    scaled_output,
)
from .text import ClassText, SemanticDistill


@dataclass(frozen=True)
class Block:
    """One row of the stage table.

    Args:
        cls: the block class.
        rule: how ``parse_model`` derives its output channels and arguments; None for blocks that are not YAML rows
            (parts of another block).
        stages: the paper stages (1-10) it implements; () for plumbing.
        cost: the cost-breakdown row it is counted in; None when its parts are counted instead.
    """

    cls: type
    rule: ChannelRule | None = None
    stages: tuple[int, ...] = ()
    cost: str | None = None


TEXT, ADAPTERS = "Stages 1-2 text", "Stage 3-4 DSConv adapters + CBAM"
FUSION = "Stages 9-10 ensemble + aggregation"
BLOCKS: dict[str, Block] = {
    "MobileSAMEncoder": Block(MobileSAMEncoder, listed_output, (3,), "Stage 3 MobileSAM TinyViT"),
    "HybridEncoder": Block(HybridEncoder, hybrid_output, (3,)),  # counted as its TinyViT and its stem
    "SpatialPrior": Block(SpatialPrior, None, (3,), "Stage 3 full-resolution stem + fusion (HybridEncoder)"),
    "Pick": Block(Pick, picked_output),
    "AnisotropicDSConv": Block(AnisotropicDSConv, same_channels, (3,), ADAPTERS),  # eqs. 4-5
    "DSCBAM": Block(DSCBAM, same_channels, (4,), ADAPTERS),
    "ClassText": Block(ClassText, declared_output, (1,), TEXT),
    "SemanticDistill": Block(SemanticDistill, same_channels, (2,), TEXT),
    "HyperbolicAlign": Block(HyperbolicAlign, geometry_output, (5,), "Stage 5 hyperbolic alignment"),
    "SpaceBroadcast": Block(SpaceBroadcast, scaled_output, (6,), "Stage 6 space broadcasting"),
    "SparseMoE": Block(SparseMoE, scaled_output, (7, 8), "Stages 7-8 router + sparse experts"),
    "ExpertRouter": Block(ExpertRouter, None, (7,)),  # counted inside SparseMoE
    "ExpertEnsemble": Block(ExpertEnsemble, scaled_output, (9,), FUSION),
    "FeatureAggregate": Block(FeatureAggregate, scaled_output, (10,), FUSION),
    "ResidualGate": Block(ResidualGate, same_channels, (), "Upgrade: zero-initialised residual gate"),  # dsmoe-v8/11
}
# Names that older plugin versions used, still accepted in model YAMLs and checkpoints: old name -> current name.
RENAMED = {"CBAM": "DSCBAM"}  # 0.1.0; Ultralytics has its own, different CBAM

__all__ = ("BLOCKS", "RENAMED", "Block", *BLOCKS)
