"""RDS+ embeddings (Ivison et al., 2025): the position-weighted mean of a model's final hidden states over
an example's tokens, unit norm. ``rds`` computes them in memory; ``build`` stores every row's once
(``gradsift.store.embeddings``) so that a selection reads them instead of running the model over the pool.

Later positions get linearly more weight (position t of T has weight t / sum(1..T)): in a causal model
only the last tokens have seen the whole example.

What a build stores is what ``rds`` computes with its defaults: the run's base model as rds loads it
(float32, no LoRA adapter), the ``prompt`` part of each record, ``TOKEN_LIMIT`` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from gradsift.config import TOKEN_LIMIT, Part
from gradsift.data.chat import ChatEncoder, collate
from gradsift.data.records import ExampleRef, example_part, read_messages
from gradsift.features.adam import normalize_rows
from gradsift.store.datastore import GradientStore
from gradsift.store.embeddings import POOLING
from gradsift.utils.distributed import World, shard_bounds
from gradsift.utils.models import ModelInfo

STORED_PART: Part = "prompt"  # rds's default pool_part and target_part: the task as asked


def weighted_mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, tokens, hidden) -> (batch, hidden): mean over real tokens with weights growing with position.
    Right padding: a row's real tokens come first."""
    weights = attention_mask.float() * torch.arange(1, hidden.shape[1] + 1, device=hidden.device)
    weights = weights / weights.sum(1, keepdim=True)
    return torch.einsum("bt,bth->bh", weights, hidden.float())


def embed(refs: Sequence[ExampleRef], encoder: ChatEncoder, model, device, part: Part = "whole", *,
          batch_size: int, desc: str = "") -> torch.Tensor:
    """(len(refs), hidden) unit-norm pooled embeddings of examples (the turns of ``part``, rendered with the
    chat template), length-sorted in batches."""
    encoded = [encoder.encode(example_part(read_messages(r), part)) for r in refs]
    order = sorted(range(len(refs)), key=lambda i: len(encoded[i][0]))
    out = torch.zeros(len(refs), model.config.hidden_size)
    with torch.inference_mode():
        for k in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch",
                      disable=not desc or len(order) <= batch_size):
            members = order[k: k + batch_size]
            batch = collate([encoded[i] for i in members], encoder.tokenizer.pad_token_id)
            mask = batch["attention_mask"].to(device)
            # logits at one position only: the LM head is a fifth of a small model, and no logit is read
            hidden = model(input_ids=batch["input_ids"].to(device), attention_mask=mask, output_hidden_states=True,
                           logits_to_keep=1).hidden_states[-1]
            out[members] = weighted_mean_pool(hidden, mask).cpu()
    return normalize_rows(out)


def stored_dtype(store_dtype: str) -> str:
    """The embeddings' dtype beside a store's rows: float32 beside float16 rows, where they are a few percent
    of the store and rds then selects exactly as in memory (float16's rounding, ~5e-4, reorders near ties);
    float16 beside int8 and bit rows, so that a compact store stays compact."""
    return "float32" if store_dtype == "float16" else "float16"


def stored_settings(model: ModelInfo, dim: int, store: GradientStore) -> dict:
    """What a build's embeddings of STORE are (``store.embeddings``'s metadata)."""
    return {"model": {"name": model.name, "fingerprint": model.fingerprint}, "part": STORED_PART,
            "max_length": TOKEN_LIMIT, "pooling": POOLING, "dim": dim, "dtype": stored_dtype(store.dtype),
            "rows": len(store.index)}


def begin_stored(stores: list[GradientStore], model: ModelInfo, dim: int, world: World) -> list[int]:
    """The stores (by position) still to embed with ``dim``-wide vectors of MODEL, their layouts made by
    the main process."""
    todo = [k for k, store in enumerate(stores) if store.begin_embeddings(stored_settings(model, dim, store))] \
        if world.main else None
    todo = world.share(todo)
    world.barrier()
    return todo


def embed_stores(stores: list[GradientStore], todo: list[int], model, tokenizer, device, world: World, *,
                 chunk_size: int, batch_size: int) -> None:
    """Embed the rows of the stores ``todo`` (one data set) and commit them chunk by chunk; under torchrun
    each process takes the rows ``shard_bounds`` gives it, cut where one process cuts its chunks, so the
    vectors are the same bytes. ``model``: the base model in float32, as rds loads it."""
    index = stores[todo[0]].index
    first_row, end_row = shard_bounds(index.column("tokens"), chunk_size, world.size)[world.rank]
    progress = {k: stores[k].begin_embedding_shard(world.rank, world.size, first_row, end_row) for k in todo}
    done = {k: stores[k].committed_embeddings(progress[k]) for k in todo}
    encoder = ChatEncoder(tokenizer, TOKEN_LIMIT)
    first = min(done.values())
    bar = tqdm(total=end_row - first_row, initial=first - first_row, unit="ex", smoothing=0.1,
               desc=f"embed {' + '.join(stores[k].name for k in todo)}", disable=not world.main)
    for start in range(first, end_row, chunk_size):
        refs = index[start: min(start + chunk_size, end_row)]
        vectors = embed(refs, encoder, model, device, STORED_PART, batch_size=batch_size).numpy()
        for k in todo:
            if done[k] <= start:  # rows are committed in order
                stores[k].write_embeddings(start, vectors, progress[k])
        bar.update(len(refs))
    bar.close()
    world.barrier()  # every shard written
    if world.main:
        for k in todo:
            stores[k].finish_embeddings()
    world.barrier()
