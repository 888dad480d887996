"""A tiny LLaMA-architecture model with random weights and a tokenizer trained here, saved to a
directory: what the LLM backends load through the same ``from_pretrained(dir)`` path as real models.
``memorize`` trains it on one prompt -> answer pair first, so that a test knows what a real engine
must produce for that prompt (a random model's text always fails validation).

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
    chat_template: str | None = None, seed: int = 0, memorize: tuple[str, str] | None = None,
) -> Path:
    """Train a byte-level BPE on CORPUS, wrap it as a fast tokenizer, build a random LlamaForCausalLM
    (then teach it ``memorize``'s answer to its prompt)."""
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
    model = LlamaForCausalLM(config)
    if memorize:
        _memorize(model, tok, *memorize)
    model.save_pretrained(out)
    return out


def _memorize(model, tok, prompt: str, answer: str, steps: int = 300) -> None:
    """Fit the answer (then EOS) after the prompt as the engine will render it (through the chat
    template when there is one) until each answer token is the model's first choice with p > 0.9,
    then scale the output layer until every other token is e^-20 of it: sampled at any usual
    temperature, with any seed, in bfloat16, the model then says exactly ``answer`` (in a tenth
    of the training that p ~ 1 would take). One thread: on a busy 2-core box two threads of this
    tiny model spin-wait on each other, 30x slower."""
    import torch

    if tok.chat_template:
        prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    head = tok(prompt, add_special_tokens=False)["input_ids"]
    tail = torch.tensor([*tok(answer, add_special_tokens=False)["input_ids"], tok.eos_token_id])
    ids = torch.cat([torch.tensor(head), tail])[None]
    labels = torch.cat([torch.full((len(head),), -100), tail])[None]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.train()
    for _ in range(steps):
        out = model(input_ids=ids, labels=labels)
        logits = out.logits[0, len(head) - 1 : -1].detach()
        if (logits.log_softmax(-1).gather(1, tail[:, None]) > -0.1).all():
            break
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    else:
        raise AssertionError(f"the tiny model did not learn its answer in {steps} steps")
    torch.set_num_threads(threads)
    model.eval()
    margin = (logits.gather(1, tail[:, None])[:, 0] - logits.scatter(1, tail[:, None], -torch.inf).amax(-1))
    with torch.no_grad():
        model.lm_head.weight.mul_(max(1.0, 20 / margin.min().item()))


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


VLLM_SHAPE = {"hidden": 128, "heads": 2, "kv_heads": 2}
"""Head size 64: vLLM's attention kernels (CPU ones included) reject head sizes 8 and 16."""


@pytest.fixture(scope="session")
def tiny_vllm_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random model in vLLM's shape, no chat template (plain completion)."""
    return _cached(tmp_path_factory, "tiny_vllm_llm", **VLLM_SHAPE)


def tiny_vllm_chat_llm(tmp_path_factory: pytest.TempPathFactory, prompt: str, answer: str) -> Path:
    """vLLM's shape with a chat template, taught to answer ``prompt`` (rendered as a chat) with ``answer``."""
    return _cached(tmp_path_factory, "tiny_vllm_chat_llm", chat_template=CHAT_TEMPLATE,
                   memorize=(prompt, answer), **VLLM_SHAPE)
