"""Selection methods, one class each; ``METHODS`` maps ``--method`` names to them."""

from .base import Pool, SelectionMethod, SimilarityMethod, Target, TargetScores, subtask_of
from .bm25 import Bm25
from .exact import Exact
from .full import FullPool
from .fusion import Fusion
from .less import Less
from .oracle import Oracle
from .random import RandomSelection
from .rds import Rds

# Oracle is not among them: it reads a benchmark's labels, and only experiments run it
METHODS: dict[str, type[SelectionMethod]] = {m.name: m for m in (Fusion, Less, Exact, RandomSelection, Bm25, Rds,
                                                                 FullPool)}

__all__ = ["METHODS", "Bm25", "Exact", "FullPool", "Fusion", "Less", "Oracle", "Pool", "RandomSelection", "Rds", "SelectionMethod",
           "SimilarityMethod", "Target", "TargetScores", "subtask_of"]
