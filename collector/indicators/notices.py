"""Warnings that an assessor reads in the report's language.

Warnings travel as plain strings (logs, `collector indicators` on stderr, the JSON package, the chain), in
English. A `Notice` is such a string that also carries its Chinese twin, so the zh report can show 提示 in
Chinese without a second list to keep in step; a warning from elsewhere (a plain str) shows as it is.
"""

from __future__ import annotations


class Notice(str):
    """English text (what str() and JSON give) with the Chinese text beside it."""

    zh: str

    def __new__(cls, en: str, zh: str) -> Notice:
        obj = super().__new__(cls, en)
        obj.zh = zh
        return obj


def in_lang(warning: str, lang: str) -> str:
    """The warning in `lang` ("zh" or "en"); a plain string has only the one text."""
    return getattr(warning, "zh", warning) if lang == "zh" else str(warning)
