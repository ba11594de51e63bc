"""The gradient pass shared by ``build`` and ``methods.exact``: a run's model at a checkpoint, and each
example's features (Adam or plain gradients) handed to reducers (a projector, or exact's) as the
backward pass streams them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from gradsift.config import AdamForm, ModelDtype
from gradsift.data.chat import ChatEncoder, collate, encode_refs
from gradsift.features.adam import AdamState
from gradsift.features.gradients import PerExampleGradients
from gradsift.training.run import Checkpoint, Run
from gradsift.utils.errors import StoreMismatchError


# -- the gradient pass, shared with ``methods.exact`` -------------------------------------------------
class RowReducer(Protocol):
    """What a pass makes of each example's features as the backward pass streams them: ``accumulate`` adds
    parameter ``param``'s (batch, numel) features into a (batch, dim) buffer, ``finish`` turns the buffer
    into the rows kept. A projector is one (unit projected rows); ``methods.exact`` has two more."""

    dim: int

    def accumulate(self, out: torch.Tensor, param: int, grad: torch.Tensor) -> None: ...

    def finish(self, out: torch.Tensor) -> torch.Tensor: ...


def open_run(path: Path, adam: bool) -> Run:
    """The complete warmup run at PATH, checked to hold the optimizer state Adam features need (``adam``)."""
    run = Run.open(path)
    if not run.complete:
        raise StoreMismatchError(f"warmup run {run.path} is not complete; finish it with `gradsift warmup`")
    if adam:
        for checkpoint in run.checkpoints:
            checkpoint.require_adam_state()
    return run


def features_dtype(device: torch.device, model_dtype: ModelDtype = "auto") -> torch.dtype:
    """The model's dtype in a gradient pass: ``auto`` is bfloat16 on a GPU, float32 on a CPU."""
    if model_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[model_dtype]


def load_features_model(run: Run, device: torch.device, model_dtype: ModelDtype = "auto"):
    """(peft model, tokenizer) of the run for gradient features, in eval mode (``features_dtype``)."""
    model, tokenizer = run.load_model(device, features_dtype(device, model_dtype))
    model.eval()  # no LoRA dropout while extracting features
    return model, tokenizer


def use_checkpoint(model, checkpoint: Checkpoint, grads: PerExampleGradients, device: torch.device,
                   adam: bool) -> AdamState | None:
    """Load the checkpoint's adapter into the model; return its Adam state when ``adam``."""
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, checkpoint.adapter_state())
    return checkpoint_adam(checkpoint, grads.names, device) if adam else None


def checkpoint_adam(checkpoint: Checkpoint, names: list[str], device: torch.device | str = "cpu") -> AdamState:
    """A checkpoint's Adam moments of the parameters ``names``, with its step, betas and eps."""
    m, v = checkpoint.adam_state(names)
    return AdamState(m.to(device), v.to(device), checkpoint.step, checkpoint.betas, checkpoint.eps)


def batch_features(grads: PerExampleGradients, reducers: list[RowReducer], batch: dict[str, torch.Tensor],
                   adam: AdamState | None = None, form: AdamForm = "corrected") -> list[torch.Tensor]:
    """Each reducer's rows (batch, dim) of one padded batch: of Adam features when ``adam`` is given,
    of plain gradients otherwise. Each parameter's gradient is transformed once and handed to every
    reducer as soon as the backward pass yields it."""
    outs = [torch.zeros(batch["input_ids"].shape[0], r.dim, device=batch["input_ids"].device) for r in reducers]

    def consume(param: int, grad: torch.Tensor) -> None:
        if adam is not None:
            grad = adam.feature(grad, slice(grads.offsets[param], grads.offsets[param] + grads.numels[param]), form)
        for reducer, out in zip(reducers, outs):
            reducer.accumulate(out, param, grad)

    grads.backward(batch, consume)
    return [reducer.finish(out) for reducer, out in zip(reducers, outs)]


def chunk_features(refs, encoder: ChatEncoder, grads: PerExampleGradients, reducers: list[RowReducer],
                   adam: AdamState | None, form: AdamForm, *, batch_size: int, device) -> list[np.ndarray]:
    """Each reducer's rows (len(refs), dim) of one chunk of examples; rows without label tokens stay zero.
    Batches are length-sorted within the chunk, so a chunk's result does not depend on where a pass started."""
    rows = [np.zeros((len(refs), r.dim), dtype=np.float32) for r in reducers]
    ok = [i for i, ref in enumerate(refs) if ref.status == "ok"]
    encoded = dict(zip(ok, encode_refs([refs[i] for i in ok], encoder)))
    ok.sort(key=lambda i: (len(encoded[i][0]), i))
    for k in range(0, len(ok), batch_size):
        members = ok[k: k + batch_size]
        batch = {n: t.to(device) for n, t in collate([encoded[i] for i in members],
                                                      encoder.tokenizer.pad_token_id).items()}
        for out, features in zip(rows, batch_features(grads, reducers, batch, adam, form)):
            out[members] = features.cpu().numpy()
    return rows
