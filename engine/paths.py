"""Output paths derived from SKU ids, which are untrusted input."""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(sku_id: str, max_len: int = 80) -> str:
    """A file name for ``sku_id`` that can never leave its folder.

    Unsafe characters (``/``, ``..``, NUL, spaces, ...) become ``_`` and a hash of the exact id is
    appended, so two ids that clean up to the same text (``a/b`` and ``a_b``) still get different names.
    """
    clean = _UNSAFE.sub("_", sku_id).strip("._") or "sku"
    digest = hashlib.blake2b(sku_id.encode("utf-8", "surrogatepass"), digest_size=5).hexdigest()
    return f"{clean[:max_len]}-{digest}"
