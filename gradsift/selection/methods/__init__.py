"""Selection methods, one class each; ``METHODS`` maps ``--method`` names to them."""

from gradsift.selection.methods.base import Pool, SelectionMethod, SimilarityMethod, Target, TargetScores, subtask_of
from gradsift.selection.methods.bm25 import Bm25
from gradsift.selection.methods.exact import Exact
from gradsift.selection.methods.full import FullPool
from gradsift.selection.methods.fusion import Fusion
from gradsift.selection.methods.less import Less
from gradsift.selection.methods.oracle import Oracle
from gradsift.selection.methods.random import RandomSelection
from gradsift.selection.methods.rds import Rds

# Oracle is not among them: it reads a benchmark's labels, and only experiments run it
METHODS: dict[str, type[SelectionMethod]] = {m.name: m for m in (Fusion, Less, Exact, RandomSelection, Bm25, Rds,
                                                                 FullPool)}

__all__ = ["METHODS", "Bm25", "Exact", "FullPool", "Fusion", "Less", "Oracle", "Pool", "RandomSelection", "Rds", "SelectionMethod",
           "SimilarityMethod", "Target", "TargetScores", "subtask_of"]
