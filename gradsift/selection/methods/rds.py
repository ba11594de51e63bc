"""RDS+ (Ivison et al., 2025): cosine of position-weighted mean-pooled final hidden states of the
selector model, pool rows against target examples, aggregated over the target's subtasks.

Later positions get linearly more weight (position t of T has weight t / sum(1..T)): in a causal model
only the last tokens have seen the whole example."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from gradsift.config import Part, SelectConfig
from gradsift.data.chat import ChatEncoder, collate
from gradsift.data.records import example_part, read_messages
from gradsift.features.adam import normalize_rows
from gradsift.selection.methods.base import Pool, SimilarityMethod, Target, register
from gradsift.utils.errors import ConfigError
from gradsift.utils.models import load_model, pick_device


def weighted_mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, tokens, hidden) -> (batch, hidden): mean over real tokens with weights growing with position.
    Right padding: a row's real tokens come first."""
    weights = attention_mask.float() * torch.arange(1, hidden.shape[1] + 1, device=hidden.device)
    weights = weights / weights.sum(1, keepdim=True)
    return torch.einsum("bt,bth->bh", weights, hidden.float())


@register
@dataclass
class Rds(SimilarityMethod):
    name: ClassVar[str] = "rds"
    reads_model: ClassVar[bool] = True
    model: str = ""
    max_length: int = 1024
    batch_size: int = 16
    device: str = "auto"
    target_part: Part = "prompt"  # the task as asked, not a worked answer's form (docs/methods.md)
    pool_part: Part = "prompt"

    def embed(self, refs, encoder: ChatEncoder, model, device, desc: str, part: Part = "whole") -> torch.Tensor:
        """Unit-norm pooled embeddings of examples (the turns of ``part``, rendered with the chat template),
        length-sorted in batches."""
        encoded = [encoder.encode(example_part(read_messages(r), part)) for r in refs]
        order = sorted(range(len(refs)), key=lambda i: len(encoded[i][0]))
        out = torch.zeros(len(refs), model.config.hidden_size)
        with torch.inference_mode():
            for k in tqdm(range(0, len(order), self.batch_size), desc=desc, unit="batch",
                          disable=len(order) <= self.batch_size):
                members = order[k: k + self.batch_size]
                batch = collate([encoded[i] for i in members], encoder.tokenizer.pad_token_id)
                mask = batch["attention_mask"].to(device)
                hidden = model(input_ids=batch["input_ids"].to(device), attention_mask=mask,
                               output_hidden_states=True).hidden_states[-1]
                out[members] = weighted_mean_pool(hidden, mask).cpu()
        return normalize_rows(out)

    def similarities(self, pool: Pool, targets: list[Target]) -> Iterator[tuple[int, list[torch.Tensor]]]:
        if not self.model:
            raise ValueError("rds needs the selector model (--model)")
        device = pick_device(self.device)
        model, tokenizer, _ = load_model(self.model, device)
        encoder = ChatEncoder(tokenizer, self.max_length)
        goals = [self.embed(t.refs, encoder, model, device, f"rds {t.name}", self.target_part) for t in targets]
        pool_emb = self.embed(pool.refs, encoder, model, device, "rds pool", self.pool_part)
        for start in range(0, len(pool.refs), self.chunk_rows):
            chunk = pool_emb[start: start + self.chunk_rows]
            yield start, [chunk @ g.T for g in goals]

    def settings(self) -> dict:
        return {**super().settings(), "model": self.model, "max_length": self.max_length,
                "target_part": self.target_part, "pool_part": self.pool_part}

    @classmethod
    def from_config(cls, config: SelectConfig, labels: dict[str, set[str]] | None = None) -> Rds:
        if not config.model:
            raise ConfigError("--method rds needs the selector model: --model MODEL")
        return cls(**cls.similarity_settings(config), **cls.part_settings(config), model=config.model,
                   max_length=cls.token_limit(config), batch_size=config.batch_size, device=config.device)
