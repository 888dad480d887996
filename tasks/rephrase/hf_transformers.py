"""Hugging Face transformers backend: ``generate`` on CPU or GPU from a hub id or a local directory.

For small runs and for the OpenAI-compatible test server. Sampling is done by SeededSampler, whose
noise is a function of (prompt seed, step, token), so a prompt's text depends on its own seed and
not on which prompts share its batch (HF's own sampling draws the whole batch from one stream).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

from schemas.captions import RephraseSettings
from tasks.rephrase.base import BackendUnavailable, Generated, Generation, RephraseBackend

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoadedLM:
    """A causal LM, its tokenizer (left padding, a pad token) and whether it has a chat template."""

    model: Any
    tokenizer: Any
    device: torch.device
    chat: bool


def load_lm(path: str, device: str = "auto", dtype: str = "auto") -> LoadedLM:
    """Load through ``from_pretrained(path)``, the same call users make; errors become BackendUnavailable."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    torch_dtype = _DTYPES.get(dtype) or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise BackendUnavailable(f"cannot load model {path!r}: {exc}") from exc
    model.to(dev).eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise BackendUnavailable(f"tokenizer of {path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedLM(model, tokenizer, dev, chat=bool(getattr(tokenizer, "chat_template", None)))


_M32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (xorshift-multiply) on int64 tensors; multipliers below 2**31 keep
    every product inside int64."""
    x = x & _M32
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & _M32
    x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & _M32
    return x ^ (x >> 16)


class SeededSampler(LogitsProcessor):
    """Temperature sampling where each row's draw depends only on its own seed and the step.

    Gumbel-max with counter-based noise: token v of row r at step t gets the noise of
    hash(seed_r, t, v), so a prompt's text does not depend on which prompts share its batch, and
    the whole batch is sampled with a few vectorised ops (no per-row generator loop, which costs a
    kernel launch per row per step on a GPU). Leaves only the drawn token finite, so greedy
    decoding downstream picks exactly it. Temperature 0 is argmax.
    """

    def __init__(self, seeds: list[int], temperature: float, device: torch.device) -> None:
        self.seeds = torch.tensor(seeds, dtype=torch.int64, device=device)
        self.temperature = temperature
        self.step = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.temperature == 0:
            choice = scores.argmax(dim=-1)
        else:
            row = _hash32(self.seeds ^ _hash32(torch.full_like(self.seeds, self.step * 0x9E3779B + 1)))
            vocab = torch.arange(scores.shape[-1], device=scores.device, dtype=torch.int64)
            bits = _hash32(row[:, None] + vocab[None, :] * 0x6C8E9CF5)
            u = ((bits >> 8).float() + 0.5) / float(1 << 24)  # uniform in (0, 1), never 0 or 1
            choice = (scores.float() / self.temperature - torch.log(-torch.log(u))).argmax(dim=-1)
        self.step += 1
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, choice[:, None], 0.0)


def render_prompt(lm: LoadedLM, prompt: str, chat: bool) -> str:
    """The text the model sees: the chat template around a user turn, or the bare prompt."""
    if not chat:
        return prompt
    return lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def generate_texts(
    lm: LoadedLM, prompts: list[str], seeds: list[int], temperature: float, max_tokens: int,
    batch_size: int, chat: bool,
) -> list[Generated]:
    """Completions of ``prompts`` in order, in length-sorted batches (less padding)."""
    tok = lm.tokenizer
    eos = {tok.eos_token_id, tok.pad_token_id} - {None}
    out: list[Generated | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        enc = tok([render_prompt(lm, prompts[i], chat) for i in chunk], return_tensors="pt", padding=True,
                  add_special_tokens=not chat).to(lm.device)
        sampler = SeededSampler([seeds[i] for i in chunk], temperature, lm.device)
        with torch.inference_mode():
            ids = lm.model.generate(
                **enc, max_new_tokens=max_tokens, do_sample=False,
                logits_processor=LogitsProcessorList([sampler]),
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            )
        for i, row in zip(chunk, ids[:, enc["input_ids"].shape[1] :].tolist(), strict=True):
            n = next((k for k, t in enumerate(row) if t in eos), len(row))
            out[i] = Generated(tok.decode(row[:n], skip_special_tokens=True), tokens=min(n + 1, len(row)))
    return [g for g in out if g is not None]


class TransformersBackend(RephraseBackend):
    """HF generate; the chat template when the tokenizer has one, plain completion otherwise."""

    name = "transformers"

    def __init__(self, settings: RephraseSettings) -> None:
        super().__init__(settings)
        self.lm = load_lm(settings.model, settings.transformers.device, settings.transformers.dtype)

    def _generate(self, jobs: list[Generation]) -> list[Generated]:
        return generate_texts(
            self.lm, [j.prompt for j in jobs], [j.seed for j in jobs], self.settings.temperature,
            self.settings.max_tokens, self.settings.transformers.batch_size, chat=self.lm.chat,
        )
