"""Chat formatting and label masking: an example's messages rendered with the model's chat template,
only assistant tokens labelled; batches and the per-example loss.
"""

from __future__ import annotations

from typing import get_args

import torch

from gradsift.config import Response
from gradsift.data.answers import final_answer_start, without_reasoning
from gradsift.data.records import ExampleRef, read_messages

IGNORE_INDEX = -100
RESPONSES = get_args(Response)


# Used when a tokenizer has no chat template: the tulu format, ending each assistant turn with EOS.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


class ChatEncoder:
    """Renders messages with the chat template and labels the assistant tokens only.

    ``response`` says which reply tokens carry the loss: ``full``, every one (the paper); ``answer``, the
    final answer only (``final_answer_start``), its reasoning kept as context; ``answer-only``, the
    reasoning removed, so the reply is its final answer alone."""

    def __init__(self, tokenizer, max_length: int, response: Response = "full"):
        if tokenizer.chat_template is None:
            tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
        if response not in RESPONSES:
            raise ValueError(f"unknown response labelling {response!r}; known: {RESPONSES}")
        self.tokenizer, self.max_length, self.response = tokenizer, max_length, response

    def _render(self, messages, generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def assistant_spans(self, messages) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and the character spans of assistant turns (with their end-of-turn marker)."""
        text = self._render(messages)
        spans = []
        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = len(self._render(messages[:k], generation_prompt=True)) if k else 0
            upto = self._render(messages[: k + 1])
            if not text.startswith(upto) or start > len(upto):
                raise ValueError("the chat template does not render conversations prefix by prefix")
            if self.response == "answer":  # the reply's text is in its rendered turn, after the turn header
                at = text.find(m["content"], start, len(upto))
                start = start if at < 0 else at + final_answer_start(m["content"])
            spans.append((start, len(upto)))
        return text, spans

    def encode(self, messages) -> tuple[list[int], list[int]]:
        """(input_ids, labels), truncated to max_length; labels are IGNORE_INDEX outside assistant turns."""
        if self.response == "answer-only":
            messages = without_reasoning(messages)
        text, spans = self.assistant_spans(messages)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                             truncation=True, max_length=self.max_length)
        ids = enc["input_ids"]
        labels = [
            tok if any(s <= a < e for s, e in spans) else IGNORE_INDEX
            for tok, (a, _) in zip(ids, enc["offset_mapping"])
        ]
        return ids, labels


def label_count(labels: list[int]) -> int:
    """Tokens that carry a loss (the first token is never predicted)."""
    return sum(1 for label in labels[1:] if label != IGNORE_INDEX)


def encode_refs(refs: list[ExampleRef], encoder: ChatEncoder) -> list[tuple[list[int], list[int]]]:
    return [encoder.encode(read_messages(ref)) for ref in refs]


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch. Padding never changes an example's loss: it is masked and unlabelled."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def per_example_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token loss over each example's label tokens: shape (batch,). Every row needs a label.

    Logits are computed only at positions whose next token is labelled in some row: the LM head
    is a fifth of a small model, and prompts are usually most of an example."""
    labels = batch["labels"][:, 1:]
    keep = (labels != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    labels = labels[:, keep]
    token_loss = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return token_loss.sum(1) / (labels != IGNORE_INDEX).sum(1)
