"""transformers' first import is made once, under a lock: threads loading models at once
in a fresh API process must not see it half-imported (a 500, "cannot import name
'pipeline' from 'transformers'", in the 16-tenant soak)."""

import subprocess
import sys

from tests.stack import ROOT

RACE = """
import sys, threading
from service.transformers_import import transformers
barrier, errors = threading.Barrier(8), []
def first_use():
    barrier.wait()
    try:
        transformers().pipeline, transformers().AutoTokenizer, transformers().AutoConfig
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=first_use) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(errors)
sys.exit(1 if errors else 0)
"""


def test_threads_making_the_first_import_at_once_all_get_transformers():
    for _ in range(3):  # a fresh process each time: the race is on the first import
        done = subprocess.run([sys.executable, "-c", RACE], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr[-2000:]
