"""transformers, imported once per process under a lock.

The API imports transformers on first use (it keeps start-up fast), from whichever thread
needs it first, and neither step is thread-safe:
- transformers resolves its names lazily (`transformers.pipeline` imports
  `transformers.pipelines` on first access); two threads making that access at once can
  find the module half-imported ("cannot import name 'pipeline' from 'transformers'");
- its `__init__` replaces itself in sys.modules with that lazy module, so a thread whose
  `import transformers` overlapped another's (Python hands a half-initialised module over
  rather than deadlock) can keep the original, which never gets the lazy names
  ("module 'transformers' has no attribute 'pipeline'").
Each was a 500 on fill-mask in the 16-tenant soak (bench/soak_tenants.py). So the import
and the first access (the pipelines, and with them the auto classes and tokenizers)
happen here, one thread at a time, and every caller gets the module sys.modules ends with.
"""

import sys
import threading
from types import ModuleType

_LOCK = threading.Lock()
_module: ModuleType | None = None


def transformers() -> ModuleType:
    """The transformers module, its pipelines (and auto classes) imported."""
    global _module
    if _module is None:
        with _LOCK:
            if _module is None:
                import transformers  # noqa: F401 (the import this module is for)

                module = sys.modules["transformers"]  # the lazy module, not the original
                module.pipeline  # noqa: B018 (resolves the lazy pipelines import)
                _module = module
    return _module
