"""Regenerate dart/assets/tiny_bpe_1k.json: a 1,024-token byte-level BPE trained on the real ABC news text
(gensim's lee_background.cor). It gives the tiny random test models (tiny_llama, tiny_gpt2) a real, offline
tokenizer. Run: python scripts/make_tiny_tokenizer.py"""
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from dart.data.texts import news_articles

out = Path(__file__).resolve().parents[1] / "dart" / "assets" / "tiny_bpe_1k.json"
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(
    vocab_size=1024,
    special_tokens=["<|endoftext|>", "<|pad|>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
)
tok.train_from_iterator(news_articles(), trainer=trainer)
out.parent.mkdir(parents=True, exist_ok=True)
tok.save(str(out))
print(f"wrote {out} ({tok.get_vocab_size()} tokens)")
