"""What a bad config raises and exits with, importable without the protocol registry: the hub and other
tools with configs of their own use these without loading every installed protocol's adapter."""

from __future__ import annotations

import difflib
import typing
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pydantic is imported when an error is formatted: `collector hub --help` needs none
    from pydantic import BaseModel, ValidationError

EXIT_BAD_CONFIG = 2


class ConfigError(Exception):
    """A config that does not validate; `lines` holds one message per problem, each naming its path."""

    def __init__(self, source: str, lines: list[str], data: Any = None) -> None:
        super().__init__("\n".join(lines))
        self.source = source
        self.lines = lines
        self.data = data  # what was read, for `partial_config`


def _keys_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys the model accepts at `loc` (its nested models followed by field name; lists skipped)."""
    from pydantic import BaseModel

    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = next((a for a in (field.annotation, *typing.get_args(field.annotation))
                        if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def plain_errors(exc: ValidationError, model: type[BaseModel] | None = None) -> list[str]:
    """One `path: message` line per error of a model that is not the collector's (`format_errors` knows the
    collector's own model: its protocol unions); an unknown key suggests the near miss among `model`'s."""
    lines = []
    for err in exc.errors():
        path = ""
        for part in err["loc"]:
            path += f"[{part}]" if isinstance(part, int) else ("." if path else "") + str(part)
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            known = _keys_at(model, tuple(err["loc"][:-1])) if model is not None else []
            guess = difflib.get_close_matches(str(err["loc"][-1]), known, n=1, cutoff=0.6)
            msg = f"unknown key; did you mean '{guess[0]}'?" if guess else "unknown key (check the spelling)"
        lines.append(f"{path or '(top level)'}: {msg}")
    return lines
