"""Selection methods, one file each; importing this package registers the built-in ones in ``METHODS``.

A new method is one file: a ``SelectionMethod`` subclass decorated with ``@register`` (``base``)."""

from gradsift.selection.methods.base import (
    METHODS,
    Pool,
    SelectionMethod,
    SimilarityMethod,
    Target,
    TargetScores,
    method_class,
    register,
    selectable,
    subtask_of,
)
from gradsift.selection.methods.bm25 import Bm25
from gradsift.selection.methods.exact import Exact
from gradsift.selection.methods.full import FullPool
from gradsift.selection.methods.fusion import Fusion
from gradsift.selection.methods.less import Less
from gradsift.selection.methods.oracle import Oracle
from gradsift.selection.methods.random import RandomSelection
from gradsift.selection.methods.rds import Rds

__all__ = ["METHODS", "Bm25", "Exact", "FullPool", "Fusion", "Less", "Oracle", "Pool", "RandomSelection", "Rds",
           "SelectionMethod", "SimilarityMethod", "Target", "TargetScores", "method_class", "register", "selectable",
           "subtask_of"]
