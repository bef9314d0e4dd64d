"""transformers, imported once per process under a lock.

The API imports transformers on first use (it keeps start-up fast), from whichever thread
needs it first, and transformers resolves its names lazily (`transformers.pipeline`
imports `transformers.pipelines` on first access). That first access is not thread-safe:
two threads making it at once can find the module half-imported ("cannot import name
'pipeline' from 'transformers'": a 500 seen with 16 tenants loading models at once). So
the first access, which imports the pipelines and with them the auto classes and
tokenizers, happens here, one thread at a time; later accesses find them imported.
"""

import threading
from types import ModuleType

_LOCK = threading.Lock()
_ready = False


def transformers() -> ModuleType:
    """The transformers module, its pipelines (and auto classes) imported."""
    global _ready
    import transformers as module

    if not _ready:
        with _LOCK:
            if not _ready:
                module.pipeline  # noqa: B018 (the lazy import this module is for)
                _ready = True
    return module
