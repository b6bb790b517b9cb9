"""Prompt building and greedy generation shared by the summarization and drift evaluations."""
from __future__ import annotations

import torch


def render_prompt(tokenizer, text: str, chat: bool) -> list[int]:
    """Token ids of `text` as the user turn of the chat template (instruct models) or as plain text."""
    if chat and getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        if hasattr(out, "keys"):  # transformers 5 may return a BatchEncoding
            out = out["input_ids"]
        return list(out)
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def fit_document(tokenizer, template: str, document: str, max_tokens: int, chat: bool) -> list[int]:
    """Prompt ids of template.format(doc=...) with the DOCUMENT truncated (never the instruction or the cue)
    so that the whole prompt fits in max_tokens."""
    overhead = len(render_prompt(tokenizer, template.format(doc=""), chat))
    budget = max_tokens - overhead
    if budget <= 0:
        raise ValueError(f"the prompt template alone takes {overhead} tokens, more than max_input_tokens={max_tokens}")
    doc_ids = tokenizer(document, add_special_tokens=False)["input_ids"]
    if len(doc_ids) > budget:
        document = tokenizer.decode(doc_ids[:budget], skip_special_tokens=True)
    ids = render_prompt(tokenizer, template.format(doc=document), chat)
    while len(ids) > max_tokens and budget > 0:  # re-tokenising a cut can add a token or two
        budget -= max(1, len(ids) - max_tokens)
        document = tokenizer.decode(doc_ids[:budget], skip_special_tokens=True)
        ids = render_prompt(tokenizer, template.format(doc=document), chat)
    return ids


@torch.no_grad()
def greedy(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, device) -> list[list[int]]:
    """Greedy continuations of a batch of prompts (left padding), stopping at EOS; new tokens only. The decode steps
    run through the CPU decode kernels where they fit (dart.kernels.decoding)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = torch.tensor(p)
        mask[i, T - len(p) :] = 1
    from dart import kernels

    with kernels.decoding(model):  # decode steps (batch <= 8, CPU) on the decode kernels; the prefill through torch
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    results = []
    for row in out[:, T:].tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        results.append(row)
    return results
