"""Offline tokenizers: the 1k-token BPE of the tiny test models (trained on real news text, committed)."""
from __future__ import annotations

from pathlib import Path

TINY_BPE = Path(__file__).resolve().parents[1] / "assets" / "tiny_bpe_1k.json"


def tiny_tokenizer():
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(TINY_BPE), eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    tok.model_max_length = 2048
    return tok
