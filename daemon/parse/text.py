"""Text helpers light enough for the daemon process (rule checks import them, not the
normalisers' phone, e-mail and name libraries)."""

from __future__ import annotations

import unicodedata


def fold(text: str) -> str:
    """Lower case without accents, for comparing labels and names of places."""
    if text.isascii():  # NFKD leaves ASCII alone and it has no combining marks
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))
