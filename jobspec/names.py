"""The one rule for names (of jobs, sweeps, datasets and models), and the one way a name is
made from another (a sweep's from its base job's, a trial's from its sweep's, a
checkpoint's model from its job's, an import's from its file).

A name is shown everywhere (tables, terminals, SVG titles, logs) and stored in a
VARCHAR(255): at most MAX_NAME_CHARS characters, none of them a control character. Those
break what shows them: NUL is refused by Postgres, ESC and backspace rewrite a terminal,
most C0 characters make XML (metrics.svg) not well-formed, bidirectional overrides make a
name read as another.
"""

import unicodedata
from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

MAX_NAME_CHARS = 255  # the names columns (service/domain/tables.py)
# Unicode's "Other" categories: controls (C0, DEL, C1), format characters (bidirectional
# overrides, invisible ones), lone surrogates, private use and unassigned code points.
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
# Line and paragraph separators: control characters in effect (they break a line).
REFUSED_SEPARATORS = frozenset({"Zl", "Zp"})
# Format characters that spelling needs: the zero-width non-joiner and joiner (Persian,
# Indic scripts, emoji sequences).
ALLOWED_FORMAT = frozenset({"\u200c", "\u200d"})


def refused(char: str) -> bool:
    """Whether a name may not hold `char`."""
    if char in ALLOWED_FORMAT:
        return False
    category = unicodedata.category(char)
    return category in REFUSED_CATEGORIES or category in REFUSED_SEPARATORS


def problem(name: str) -> str | None:
    """Why `name` is not a name (without the field: the caller names it), else None."""
    if len(name) > MAX_NAME_CHARS:
        return f"at most {MAX_NAME_CHARS} characters (got {len(name)})"
    for at, char in enumerate(name):
        if refused(char):
            return (f"must not hold control or invisible characters (U+{ord(char):04X} at "
                    f"position {at})")
    return None


def _check(name: str) -> str:
    if (why := problem(name)) is not None:
        raise PydanticCustomError("invalid_name", why)
    return name


# A user's name field in a spec: the schema's error names the field ("name", "base.name").
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS), AfterValidator(_check)]


def derived(base: str, suffix: str = "") -> str:
    """A name made from `base` and `suffix` ("-sweep", "-trial-3", "-step-500"): characters
    a name may not hold left out of the base, then the base cut so that the suffix fits in
    MAX_NAME_CHARS. The result passes problem() (it may be empty when both are)."""
    kept = "".join(c for c in base if not refused(c))
    name = kept[:max(0, MAX_NAME_CHARS - len(suffix))] + suffix
    if (why := problem(name)) is not None:  # a suffix of ours is always plain
        raise ValueError(f"derived name {name[:40]!r}...: {why}")
    return name
