"""Which layers get LoRA, whatever the architecture calls them, and peft's config for a run.

The paper adapts the attention's projections (q, k, v, o). Architectures name and shape them
differently: Llama, Mistral, Qwen2 and Gemma-3 have ``q_proj`` ... ``o_proj``; Phi-3 fuses q, k, v
into ``qkv_proj``; GPT-NeoX has ``query_key_value`` and ``dense``; GPT-2 has ``c_attn`` and
``c_proj`` (``Conv1D`` layers, and an MLP ``c_proj`` too). With no ``--lora-targets``, the linear
layers directly inside each attention block are adapted, named by their own name where it is theirs
alone, else with their block's (``attn.c_proj``); targets are matched as peft matches them (a module
path equal to a target or ending in ``.target``).
"""

from __future__ import annotations

import torch

from gradsift.utils.errors import ConfigError


def _linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"  # GPT-2's transposed linear


def linear_layers(model: torch.nn.Module) -> list[str]:
    """The module paths of every linear layer (``nn.Linear`` or transformers' ``Conv1D``)."""
    return [name for name, module in model.named_modules() if _linear(module)]


def attention_layers(model: torch.nn.Module) -> list[str]:
    """The module paths of the linear layers directly inside the model's attention blocks."""
    return [f"{name}.{child}" for name, module in model.named_modules() if type(module).__name__.endswith("Attention")
            for child, layer in module.named_children() if _linear(layer)]


def matches(path: str, target: str) -> bool:
    """peft's rule: a target names a module whose path is the target or ends in ``.target``."""
    return path == target or path.endswith("." + target)


def attention_targets(model: torch.nn.Module) -> list[str]:
    """Targets that adapt exactly the attention's linear layers: each layer's own name, or its block's
    name and its own where another layer of that name lies outside attention (GPT-2's MLP ``c_proj``)."""
    attention = attention_layers(model)
    if not attention:
        raise ConfigError(f"found no attention block in {type(model).__name__}: give --lora-targets (its linear "
                          f"layers: {', '.join(sorted({p.rsplit('.', 1)[-1] for p in linear_layers(model)}))})")
    others = set(linear_layers(model)) - set(attention)
    targets = set()
    for path in attention:
        leaf = path.rsplit(".", 1)[-1]
        targets.add(leaf if not any(matches(o, leaf) for o in others) else ".".join(path.split(".")[-2:]))
    return sorted(targets)


def lora_targets(model: torch.nn.Module, requested: list[str] | None) -> tuple[list[str], str | None]:
    """(the targets a run adapts, a one-line notice or None). ``requested`` None: the attention's layers.
    Targets that match no linear layer are a ConfigError listing the model's; attention layers that no
    target covers are named in the notice."""
    if requested is None:
        return attention_targets(model), None
    layers = linear_layers(model)
    unmatched = [t for t in requested if not any(matches(p, t) for p in layers)]
    if unmatched:
        names = sorted({p.rsplit(".", 1)[-1] for p in layers})
        raise ConfigError(f"--lora-targets {' '.join(unmatched)} match no linear layer of {type(model).__name__}; "
                          f"its linear layers: {', '.join(names)} (or leave --lora-targets out: the attention's)")
    uncovered = sorted({p.rsplit(".", 1)[-1] for p in attention_layers(model)
                        if not any(matches(p, t) for t in requested)})
    notice = (f"LoRA on {', '.join(requested)} leaves the attention's {', '.join(uncovered)} unadapted "
              "(leave --lora-targets out to adapt them all)") if uncovered else None
    return list(requested), notice


def lora_config(settings: dict):
    """peft's LoraConfig from a run's settings (``TrainingArguments.fingerprint()``, targets resolved)."""
    from peft import LoraConfig

    return LoraConfig(r=settings["lora_r"], lora_alpha=settings["lora_alpha"], lora_dropout=settings["lora_dropout"],
                      target_modules=list(settings["lora_targets"]), task_type="CAUSAL_LM")


def lora_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    """The trainable parameters in model order (the LoRA factors, unless fine-tuning fully): the order
    of every flattened gradient and of the optimizer state."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def adapted_layers(model: torch.nn.Module, targets: list[str]) -> list[str]:
    """The module paths of the linear layers ``targets`` adapt (before peft wraps them)."""
    return [p for p in linear_layers(model) if any(matches(p, t) for t in targets)]
