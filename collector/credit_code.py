"""统一社会信用代码 (unified social credit identifier, GB 32100-2015): the enterprise id an assessor looks up.

18 characters from 0-9 and A-Z without I, O, S, V, Z; the 18th is a check character over the first 17
(weights 3^(i-1) mod 31, check = 31 − Σ mod 31, 31 → 0). A typo in the report header would make the evidence
point at another enterprise, so the config refuses a code whose check character does not match.
"""

from __future__ import annotations

CHARSET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # 31 characters; the value of each is its position
WEIGHTS = tuple(pow(3, i, 31) for i in range(17))  # 1, 3, 9, 27, 19, 26, 16, …, 28 (GB 32100-2015, 4.2)


def check_char(first17: str) -> str:
    """The check character of the first 17 characters."""
    total = sum(CHARSET.index(c) * w for c, w in zip(first17, WEIGHTS, strict=True))
    return CHARSET[(31 - total % 31) % 31]


def credit_code_problem(code: str) -> str | None:
    """Why `code` is not a valid 统一社会信用代码, or None when it is."""
    if len(code) != 18:
        return f"has {len(code)} characters, a 统一社会信用代码 has 18"
    bad = sorted({c for c in code if c not in CHARSET})
    if bad:
        return (f"holds {', '.join(repr(c) for c in bad)}: only digits and capital letters other than I, O, S, V, "
                "Z are used")
    want = check_char(code[:17])
    if code[17] != want:
        return f"check character is '{code[17]}' but the first 17 characters give '{want}' (a typo?)"
    return None
