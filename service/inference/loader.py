"""Loads exported models from object storage into a small in-process cache.

Only exports are loaded (config.json, model.safetensors, tokenizer files); transformers
reads safetensors, so nothing from storage is unpickled.
"""

import shutil
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.storage import ObjectStore


class ModelTooLarge(Exception):
    """A model needs more memory than the whole cache may hold."""

    def __init__(self, needed: int, limit: int) -> None:
        super().__init__(f"the model needs {needed} bytes loaded; at most {limit} may be")
        self.needed, self.limit = needed, limit


# A loaded fast tokenizer takes about this many bytes of memory per byte of its
# tokenizer.json (measured with tokenizers 0.22: 21x for BERT's 466 kB WordPiece, 16x for a
# 250k-entry one, 9x for a 50k byte-level BPE); the estimate errs high.
TOKENIZER_MEMORY_PER_FILE_BYTE = 24


def tokenizer_bytes(model_dir: Path) -> int:
    """Memory the model's tokenizer will hold once loaded, estimated from its file (a
    vocabulary can weigh as much as a small model's weights)."""
    path = model_dir / "tokenizer.json"
    return path.stat().st_size * TOKENIZER_MEMORY_PER_FILE_BYTE if path.is_file() else 0


# Every cache of this process, so a deleted model can be dropped from all of them.
_CACHES: "weakref.WeakSet[ModelCache]" = weakref.WeakSet()


def evict(model_id: str, cache_dir: Path) -> None:
    """Forget a (deleted) model in this process: unload it from every cache and remove its
    local copy under cache_dir. Other processes keep theirs in memory until it is dropped
    as least recently used; they no longer serve it, as each request looks the model up."""
    for cache in list(_CACHES):
        cache.evict(model_id)
    shutil.rmtree(cache_dir / "models" / model_id, ignore_errors=True)


class ModelCache:
    """Keeps the most recently used models loaded, at most `capacity` of them and at most
    `max_bytes` of their weights together (least recently used dropped first); loads each
    one only once. `size` tells the bytes a loaded value holds; `close` is called on a value
    the cache drops (it stops the model's batching thread, which would else keep it alive)."""

    def __init__(self, *, store: ObjectStore, cache_dir: Path, capacity: int,
                 max_bytes: int, size: Callable[[Any], int],
                 close: Callable[[Any], None] = lambda value: None) -> None:
        self.store, self.cache_dir, self.capacity = store, cache_dir, capacity
        self.max_bytes, self._size, self._close = max_bytes, size, close
        self._loaded: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        _CACHES.add(self)

    @property
    def loaded_bytes(self) -> int:
        with self._lock:
            return sum(nbytes for _, nbytes in self._loaded.values())

    def loaded(self) -> list[str]:
        """Model ids in the cache, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def peek(self, model_id: str) -> Any | None:
        """The loaded value (marked as just used), or None when it is not loaded."""
        with self._lock:
            if model_id not in self._loaded:
                return None
            self._loaded.move_to_end(model_id)
            return self._loaded[model_id][0]

    def _drop_oldest(self) -> int:
        """Drop the least recently used value (under the lock); its bytes."""
        _, (value, dropped) = self._loaded.popitem(last=False)
        self._close(value)
        return dropped

    def evict(self, model_id: str) -> None:
        """Unload the model (each of its entries: "model_id" and "model_id#...") and
        remove its local copy."""
        with self._lock:
            for key in [k for k in self._loaded if k.split("#", 1)[0] == model_id]:
                self._close(self._loaded.pop(key)[0])
        shutil.rmtree(self.cache_dir / "models" / model_id, ignore_errors=True)

    def local_dir(self, model_id: str, prefix: str) -> Path:
        """The export on local disk, downloaded once (atomically, via a temp folder)."""
        target = self.cache_dir / "models" / model_id
        if not target.exists():
            tmp = target.with_name(f".{model_id}.{threading.get_ident()}")
            shutil.rmtree(tmp, ignore_errors=True)
            self.store.get_dir(prefix, tmp)
            try:
                tmp.rename(target)
            except OSError:  # another thread or process got there first
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    def make_room(self, local: Path) -> None:
        """Before loading a model: refuse it when its weight files and tokenizer alone are
        over the limit, else drop the least recently used models until they fit beside the
        others (so the cache holds no more than its limit even while the new one loads)."""
        on_disk = sum(f.stat().st_size for f in local.rglob("*.safetensors") if f.is_file())
        on_disk += tokenizer_bytes(local)
        if on_disk > self.max_bytes:
            raise ModelTooLarge(on_disk, self.max_bytes)
        with self._lock:
            total = sum(n for _, n in self._loaded.values())
            while self._loaded and total + on_disk > self.max_bytes:
                total -= self._drop_oldest()

    def get(self, model_id: str, build: Callable[[], Any]) -> Any:
        with self._lock:
            if model_id in self._loaded:
                self._loaded.move_to_end(model_id)
                return self._loaded[model_id][0]
            loading = self._loading.setdefault(model_id, threading.Lock())
        with loading:  # one load per model, others wait for it
            with self._lock:
                if model_id in self._loaded:
                    return self._loaded[model_id][0]
            value = build()
            nbytes = self._size(value)
            if nbytes > self.max_bytes:  # e.g. weights a config asked for but the files lack
                self._close(value)
                raise ModelTooLarge(nbytes, self.max_bytes)
            with self._lock:
                self._loaded[model_id] = (value, nbytes)
                total = sum(n for _, n in self._loaded.values())
                while len(self._loaded) > self.capacity or total > self.max_bytes:
                    total -= self._drop_oldest()
            return value
