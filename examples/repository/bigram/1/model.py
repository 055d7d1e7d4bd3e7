"""A character bigram language model: the next character depends only on the last one."""

from pathlib import Path

import numpy as np


class Model:
    task = "generation"
    context_len = 1                                      # the model sees the last token only

    def __init__(self, version_dir: Path):
        text = (version_dir / "corpus.txt").read_text(encoding="utf-8")
        self.vocabulary = sorted(set(text))              # token id -> its text (one character)
        self.ids = {ch: i for i, ch in enumerate(self.vocabulary)}
        v = len(self.vocabulary)
        counts = np.full((v + 1, v), 0.01)               # smoothing; row v: after PAD (no text yet)
        seq = [self.ids[ch] for ch in text]
        np.add.at(counts, (seq[:-1], seq[1:]), 1)        # counts[a, b] += 1 for each "ab" in the text
        np.add.at(counts[v], seq, 1)                     # first token: unigram frequencies
        self.table = np.log(counts / counts.sum(axis=1, keepdims=True))   # [V + 1, V] log-probabilities
        self.parameters = self.table.size

    def encode(self, prompt: str) -> list[int]:
        return [self.ids[ch] for ch in prompt if ch in self.ids]   # characters not in the corpus are dropped

    def logits(self, contexts: np.ndarray) -> np.ndarray:
        return self.table[contexts[:, -1]]               # [B, 1] -> [B, V]; PAD (= V) picks the last row
