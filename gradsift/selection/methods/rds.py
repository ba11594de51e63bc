"""RDS+ (Ivison et al., 2025): cosine of position-weighted mean-pooled final hidden states of the
selector model (``features.embeddings``), pool rows against target examples, aggregated over the
target's subtasks.

Given gradient stores (fusion's inputs), it reads each store's stored embeddings where they are the ones
it would compute (the same model, part and token limit: ``GradientStore.has_embeddings``) and runs the
model only over the rest: with every store embedded, no model is loaded."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch

from gradsift.config import TOKEN_LIMIT, Part, SelectConfig
from gradsift.data.chat import ChatEncoder
from gradsift.features.embeddings import embed
from gradsift.selection.methods.base import Pool, SimilarityMethod, Target, register
from gradsift.store.datastore import GradientStore
from gradsift.utils.errors import ConfigError
from gradsift.utils.models import load_model, pick_device


@register
@dataclass
class Rds(SimilarityMethod):
    name: ClassVar[str] = "rds"
    reads_stores_too: ClassVar[bool] = True  # a store's index / embeddings: no model, no re-indexing
    reads_model: ClassVar[bool] = True
    model: str = ""  # default, given stores: the pool store's model
    max_length: int = TOKEN_LIMIT
    batch_size: int = 16
    device: str = "auto"
    target_part: Part = "prompt"  # the task as asked, not a worked answer's form (docs/methods.md)
    pool_part: Part = "prompt"

    def stored(self, store: GradientStore | None, part: Part) -> bool:
        """Whether STORE holds the embeddings of PART this method would compute."""
        return store is not None and store.has_embeddings(self.model, part, self.max_length)

    def similarities(self, pool: Pool, targets: list[Target]) -> Iterator[tuple[int, list[torch.Tensor]]]:
        if not self.model and pool.store is not None:
            self.model = pool.store.manifest["model"]["name"]
        if not self.model:
            raise ValueError("rds needs the selector model (--model)")
        inputs = [(pool.store, self.pool_part, pool.refs, "rds pool")]
        inputs += [(t.store, self.target_part, t.refs, f"rds {t.name}") for t in targets]
        stored = [self.stored(store, part) for store, part, *_ in inputs]
        self._say_why_not_stored([(store, part) for (store, part, *_), s in zip(inputs, stored) if store and not s])
        embedded = iter([])
        if not stored[0]:
            pool.say_a_store_would_be_faster("rds", "embedding")
        if not all(stored):  # the model, for what no store holds
            device = pick_device(self.device)
            model, tokenizer, _ = load_model(self.model, device)
            encoder = ChatEncoder(tokenizer, self.max_length)
            embedded = iter([embed(refs, encoder, model, device, part, batch_size=self.batch_size, desc=desc)
                             for (_, part, refs, desc), s in zip(inputs, stored) if not s])
        pool_emb = None if stored[0] else next(embedded)
        goals = [torch.from_numpy(t.store.embedding_rows(t.rows)) if s else next(embedded)
                 for t, s in zip(targets, stored[1:])]
        for start in range(0, len(pool.refs), self.chunk_rows):
            which = slice(start, start + self.chunk_rows)
            chunk = torch.from_numpy(pool.store.embedding_rows(which)) if pool_emb is None else pool_emb[which]
            yield start, [chunk @ g.T for g in goals]

    def _say_why_not_stored(self, missing: list[tuple[GradientStore, Part]]) -> None:
        """One line: which stores' embeddings rds computes in memory, and how to store them."""
        if not missing:
            return
        reasons = []
        for store, part in missing:
            meta = store.embeddings_meta()
            if meta is None or meta["status"] != "complete":
                reasons.append(f"{store.path} has none (rerun its `gradsift build` with the same arguments to add "
                               "them; no gradient is recomputed)")
            else:
                reasons.append(f"{store.path} holds {meta['part']} embeddings by {meta['model']['name']} at "
                               f"{meta['max_length']} tokens, not {part} by {self.model} at {self.max_length}")
        print(f"rds: embedding in memory, as no stored embeddings fit: {'; '.join(reasons)}")

    def settings(self) -> dict:
        return {**super().settings(), "model": self.model, "max_length": self.max_length,
                "target_part": self.target_part, "pool_part": self.pool_part}

    @classmethod
    def from_config(cls, config: SelectConfig, labels: dict[str, set[str]] | None = None) -> Rds:
        if not config.model and config.train_store is None:
            raise ConfigError("--method rds needs the selector model: --model MODEL")
        return cls(**cls.similarity_settings(config), **cls.part_settings(config), model=config.model or "",
                   max_length=cls.token_limit(config), batch_size=config.batch_size, device=config.device)
