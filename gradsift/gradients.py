"""Per-example gradients of the LoRA weights for a whole padded batch in one backward pass.

Every LoRA factor is an ``nn.Linear`` without bias (``lora_A``: in -> r, ``lora_B``: r -> out, with
the LoRA scaling applied to ``lora_B``'s output downstream). For such a layer with inputs x_t and
output gradients g_t, example b's weight gradient is  sum_t g_{b,t} x_{b,t}^T.  Hooks capture x and g,
so one backward of the summed per-example losses yields every example's gradient. Right padding adds
nothing: padded positions carry no loss and no real token attends to them, so their g is exactly 0.
"""

from __future__ import annotations

import torch

from .data import per_example_loss
from .warmup import lora_parameters


class PerExampleGradients:
    """Context manager: inside it, ``compute(batch)`` returns (batch, n_params) float32 gradients of
    each example's mean label loss w.r.t. the LoRA parameters, flattened in ``lora_parameters`` order."""

    def __init__(self, model):
        self.model = model
        self.names = [n for n, _ in lora_parameters(model)]
        self.shapes = [tuple(p.shape) for _, p in lora_parameters(model)]
        self.size = sum(p.numel() for _, p in lora_parameters(model))
        self._grads: list[torch.Tensor | None] = [None] * len(self.names)
        self._handles = []

    def __enter__(self) -> "PerExampleGradients":
        modules = dict(self.model.named_modules())
        for i, (name, param) in enumerate(lora_parameters(self.model)):
            module = modules[name.rsplit(".", 1)[0]]
            if not isinstance(module, torch.nn.Linear) or module.weight is not param or module.bias is not None:
                raise TypeError(f"{name} is not the weight of a bias-free nn.Linear; cannot take per-example gradients")
            self._handles.append(module.register_forward_hook(self._hook(i)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, i: int):
        def forward_hook(module, inputs, output):
            x = inputs[0].detach()

            def backward_hook(grad_output):
                self._grads[i] = torch.einsum("bto,bti->boi", grad_output.float(), x.float())

            output.register_hook(backward_hook)

        return forward_hook

    def compute(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        losses = per_example_loss(self.model, batch)
        if not torch.isfinite(losses).all():
            raise FloatingPointError("non-finite per-example loss (an example without label tokens?)")
        losses.sum().backward()
        self.model.zero_grad(set_to_none=True)  # the summed .grad is not needed
        grads = torch.cat([g.flatten(1) for g in self._grads], dim=1)
        self._grads = [None] * len(self.names)
        return grads
