"""A small byte-level BPE tokenizer (RoBERTa's kind and special tokens) for tests and benchmarks.

Where the real roberta-base tokenizer cannot be downloaded, this one is trained in a second on the
captions the pipeline itself writes: the demo corpus's captions phrased by the template backend
(tasks.rephrase.phrasing) with a spread of descriptor words, so its merges fit the shards' text.
"""

from __future__ import annotations

from itertools import product
from pathlib import Path


def pipeline_captions() -> list[str]:
    """Template-backend captions of the demo corpus over every descriptor word of DESIGN.md's table."""
    from schemas.captions import SLOT_WORDS, Descriptors
    from tasks.demo_corpus import GENERATORS, demo_clips
    from tasks.rephrase.phrasing import template_caption

    originals = [c for clip in demo_clips(len(GENERATORS)) for c in clip.captions]
    words = [dict(zip(SLOT_WORDS, combo, strict=True)) for combo in product(*SLOT_WORDS.values())]
    return [
        template_caption(original, Descriptors(**words[(i * 7) % len(words)]), i)
        for i, original in enumerate(originals * 4)
    ] + originals


def train_tiny_tokenizer(out_dir: str | Path, texts: list[str] | None = None, vocab_size: int = 400) -> Path:
    """Train, save for ``from_pretrained`` under ``out_dir``, and return ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = texts or pipeline_captions()
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts * 4, trainer)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>"))
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=512,
    )
    out = Path(out_dir)
    fast.save_pretrained(str(out))
    return out
