"""Zero-shot spatial attribute classification (ELSA Table 2): "A sound coming from <attribute>".

Each attribute's classes are the words of DESIGN.md's table, and a test sample's true class is
the word its measured labels map to through tasks.descriptors (the same function that wrote the
captions), so a model is scored on exactly the vocabulary it was trained with. Samples whose
value lies between two bands have no word and are left out, as in the captions.

The headline number is per-sample accuracy: each audio embedding takes the class whose prompt
embedding is the most similar (CLIP-style zero-shot). The paper's wording ("correct if the
attribute in the closest test sample matches the attribute in the template") is also recorded
as ``query_top1``: per class prompt, whether its nearest test audio has that class.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.captions import SLOT_WORDS, DescriptorConfig
from tasks.descriptors import DEFAULT_DESCRIPTOR_CONFIG, describe_arrays
from training.metrics import CountMismatchError, check_embeddings

# Table 2's five tasks, named by the descriptor field they score.
ATTRIBUTES: tuple[str, ...] = ("distance", "direction", "elevation", "size", "reverb")
ATTRIBUTE_TITLES = {
    "distance": "Distance",
    "direction": "Direction",
    "elevation": "Elevation",
    "size": "Room area",
    "reverb": "Reverberation",
}
DEFAULT_PHRASES: dict[str, dict[str, str]] = {
    "distance": {"near": "near", "far": "far away"},
    "direction": {"front": "the front", "left": "the left", "right": "the right", "back": "the back"},
    "elevation": {"up": "above", "down": "below"},
    "size": {"small": "a small room", "large": "a large room"},
    "reverb": {
        "acoustically dampened": "an acoustically dampened room",
        "highly reverberant": "a highly reverberant room",
    },
}


class ZeroShotConfig(BaseModel):
    """The template and, per attribute, descriptor word → the phrase put into the template."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    template: str = "A sound coming from {}"
    phrases: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_PHRASES.items()}
    )
    descriptors: DescriptorConfig = DEFAULT_DESCRIPTOR_CONFIG

    @model_validator(mode="after")
    def _phrases_name_the_table_words(self) -> ZeroShotConfig:
        """Classes are the descriptor table's words (schemas.captions.SLOT_WORDS); a phrase may only
        reword one, so a typo cannot make a class no sample ever has."""
        for attr in ATTRIBUTES:
            if set(self.phrases.get(attr, {})) != set(SLOT_WORDS[attr]):
                raise ValueError(f"phrases[{attr!r}] must give exactly the words {list(SLOT_WORDS[attr])}")
        return self


class ZeroShotResult(BaseModel):
    """One attribute: accuracy over the test samples that have a word, and what it rests on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attribute: str
    classes: list[str]
    prompts: list[str]
    n: int = Field(description="test samples with a word for this attribute")
    n_per_class: dict[str, int]
    accuracy: float | None = Field(description="None when no test sample has a word")
    balanced_accuracy: float | None
    chance: float
    recall_per_class: dict[str, float | None]
    confusion: list[list[int]] = Field(description="rows: true class, columns: predicted class")
    query_top1: float | None = Field(
        description="the paper's reading: share of class prompts whose nearest test audio has that class"
    )


def prompts(cfg: ZeroShotConfig | None = None) -> dict[str, tuple[list[str], list[str]]]:
    """attribute → (class words, prompt texts), in Table 2's order."""
    cfg = cfg or ZeroShotConfig()
    out = {}
    for attr in ATTRIBUTES:
        words = list(SLOT_WORDS[attr])
        out[attr] = (words, [cfg.template.format(cfg.phrases[attr][w]) for w in words])
    return out


def true_classes(
    azimuth_deg: np.ndarray,
    elevation_deg: np.ndarray,
    distance_m: np.ndarray,
    floor_area_m2: np.ndarray,
    t30_s: np.ndarray,
    cfg: DescriptorConfig = DEFAULT_DESCRIPTOR_CONFIG,
) -> dict[str, np.ndarray]:
    """attribute → object array of words (None between bands or where the label is NaN)."""
    desc = describe_arrays(azimuth_deg, elevation_deg, distance_m, floor_area_m2, t30_s, cfg)
    return {a: np.array([getattr(d, a) for d in desc], dtype=object) for a in ATTRIBUTES}


def classify(audio_emb: np.ndarray, class_emb: np.ndarray) -> np.ndarray:
    """Index of the most similar class prompt for every audio row (dot product of unit rows)."""
    a = check_embeddings(audio_emb, "audio_emb")
    c = check_embeddings(class_emb, "class_emb")
    if a.shape[1] != c.shape[1]:
        raise CountMismatchError(f"audio_emb is {a.shape[1]}-d but class_emb is {c.shape[1]}-d")
    return np.argmax(a @ c.T, axis=1)


def zero_shot_attribute(
    attribute: str,
    audio_emb: np.ndarray,
    truth: np.ndarray,
    classes: list[str],
    class_emb: np.ndarray,
    prompt_texts: list[str] | None = None,
) -> ZeroShotResult:
    """Score one attribute. ``truth`` holds each row's word or None (rows without a word are skipped)."""
    truth = np.asarray(truth, dtype=object)
    if truth.shape[0] != np.asarray(audio_emb).shape[0]:
        raise CountMismatchError(
            f"{attribute}: {truth.shape[0]} labels for {np.asarray(audio_emb).shape[0]} audio embeddings"
        )
    if len(classes) != np.asarray(class_emb).shape[0]:
        raise CountMismatchError(
            f"{attribute}: {len(classes)} classes but {np.asarray(class_emb).shape[0]} prompt embeddings"
        )
    k = len(classes)
    col = {c: i for i, c in enumerate(classes)}
    keep = np.array([t in col for t in truth], dtype=bool)
    y = np.array([col[t] for t in truth[keep]], dtype=np.int64)
    conf = np.zeros((k, k), dtype=np.int64)
    n_per = {c: int((y == i).sum()) for i, c in enumerate(classes)}
    recall: dict[str, float | None] = dict.fromkeys(classes)
    acc = bal = top1 = None
    if keep.any():
        a = np.asarray(audio_emb)[keep]
        pred = classify(a, class_emb)
        np.add.at(conf, (y, pred), 1)
        acc = float(np.mean(pred == y))
        recall = {
            c: (float(conf[i, i] / conf[i].sum()) if conf[i].sum() else None) for i, c in enumerate(classes)
        }
        present = [v for v in recall.values() if v is not None]
        bal = float(np.mean(present))
        nearest = np.argmax(np.asarray(class_emb, np.float32) @ check_embeddings(a, "audio_emb").T, axis=1)
        top1 = float(np.mean(y[nearest] == np.arange(k)))
    return ZeroShotResult(
        attribute=attribute,
        classes=list(classes),
        prompts=list(prompt_texts or []),
        n=int(keep.sum()),
        n_per_class=n_per,
        accuracy=acc,
        balanced_accuracy=bal,
        chance=1.0 / max(k, 1),
        recall_per_class=recall,
        confusion=conf.tolist(),
        query_top1=top1,
    )


def zero_shot_all(
    audio_emb: np.ndarray,
    truth: dict[str, np.ndarray],
    prompt_emb: dict[str, np.ndarray],
    cfg: ZeroShotConfig | None = None,
) -> dict[str, ZeroShotResult]:
    """Every Table 2 attribute; ``prompt_emb[attr]`` are the embeddings of ``prompts(cfg)[attr][1]``."""
    out = {}
    for attr, (classes, texts) in prompts(cfg).items():
        if not classes:
            continue
        out[attr] = zero_shot_attribute(attr, audio_emb, truth[attr], classes, prompt_emb[attr], texts)
    return out
