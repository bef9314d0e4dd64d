"""Loads exported models from object storage into a small in-process cache.

Only exports are loaded (config.json, model.safetensors, tokenizer files); transformers
reads safetensors, so nothing from storage is unpickled.
"""

import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.storage import ObjectStore


class ModelCache:
    """Keeps the most recently used `capacity` models loaded; loads each one only once."""

    def __init__(self, *, store: ObjectStore, cache_dir: Path, capacity: int) -> None:
        self.store, self.cache_dir, self.capacity = store, cache_dir, capacity
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

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

    def get(self, model_id: str, build: Callable[[], Any]) -> Any:
        with self._lock:
            if model_id in self._loaded:
                self._loaded.move_to_end(model_id)
                return self._loaded[model_id]
            loading = self._loading.setdefault(model_id, threading.Lock())
        with loading:  # one load per model, others wait for it
            with self._lock:
                if model_id in self._loaded:
                    return self._loaded[model_id]
            value = build()
            with self._lock:
                self._loaded[model_id] = value
                while len(self._loaded) > self.capacity:
                    self._loaded.popitem(last=False)
            return value
