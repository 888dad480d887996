"""A tiny LLaMA-architecture model with random weights and a tokenizer trained here, saved to a
directory: what the LLM backends load through the same ``from_pretrained(dir)`` path as real models.

Import the fixtures into a test module (``from fixtures_llm import tiny_llm, ...``). The models are
built once per session (a module-level cache: several test modules import these fixtures).
"""

from __future__ import annotations

from pathlib import Path

import pytest

CORPUS = [
    "A dog barks while a man talks in the background",
    "Birds chirp and a stream of water flows nearby",
    "A car engine revs and then idles as people speak",
    "Rain falls on a tin roof while thunder rumbles in the distance",
    "A woman laughs and a baby cries",
    "Footsteps on gravel followed by a door closing",
    "An airplane flies overhead while wind blows",
    "A bell rings several times and a crowd cheers",
    "Music plays as a man sings loudly",
    "A train horn blows and the train passes by on the tracks",
    "The sound of typing on a keyboard and clicking a mouse",
    "A cat meows and a bird tweets outside",
    "Water splashes in a sink and a faucet runs",
    "Sirens wail as an emergency vehicle drives past",
    "A crowd applauds after a short speech",
    "A helicopter hovers and leaves",
    "The sound: a dog barks is coming from the far left of a small highly reverberant room.",
    "Rephrase as a short English sentence describing the sound and all the details of its source.",
    "near far up down front left right back small large acoustically dampened highly reverberant room",
] * 4
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_BUILT: dict[tuple, Path] = {}


def build_tiny_llama(
    out: Path, *, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2,
    chat_template: str | None = None, seed: int = 0,
) -> Path:
    """Train a byte-level BPE on CORPUS, wrap it as a fast tokenizer, build a random LlamaForCausalLM."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>"]
    bpe.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if chat_template:
        tok.chat_template = chat_template
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def _cached(tmp_path_factory: pytest.TempPathFactory, name: str, **kwargs) -> Path:
    key = (name, tuple(sorted(kwargs.items())))
    if key not in _BUILT:
        _BUILT[key] = build_tiny_llama(tmp_path_factory.mktemp(name), **kwargs)
    return _BUILT[key]


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the tiny model whose tokenizer has no chat template (plain completion)."""
    return _cached(tmp_path_factory, "tiny_llm")


@pytest.fixture(scope="session")
def tiny_chat_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model with a chat template on its tokenizer."""
    return _cached(tmp_path_factory, "tiny_chat_llm", chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_vllm_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Head size 64 (hidden 128, 2 heads): vLLM's attention kernels do not take head size 8."""
    return _cached(tmp_path_factory, "tiny_vllm_llm", hidden=128, heads=2, kv_heads=2)
