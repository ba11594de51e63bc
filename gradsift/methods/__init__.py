"""Selection methods, one class each; ``METHODS`` maps ``--method`` names to them."""

from .base import Pool, SelectionMethod, SimilarityMethod, Target, TargetScores, subtask_of
from .bm25 import Bm25
from .full import FullPool
from .less import Less
from .random import RandomSelection
from .rds import Rds

METHODS: dict[str, type[SelectionMethod]] = {m.name: m for m in (Less, RandomSelection, Bm25, Rds, FullPool)}

__all__ = ["METHODS", "Bm25", "FullPool", "Less", "Pool", "RandomSelection", "Rds", "SelectionMethod",
           "SimilarityMethod", "Target", "TargetScores", "subtask_of"]
