"""Every configuration key is listed in ingestd.example.toml (README says so)."""

import re
from pathlib import Path
from typing import Any

import msgspec

from ingestd import config

EXAMPLE = Path(__file__).resolve().parents[1] / "ingestd.example.toml"


def _sections(text: str) -> dict[str, str]:
    """Section name -> its lines, headers commented out or not."""
    found: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        m = re.match(r"#?\s*\[\[?([\w.]+)\]\]?\s*(#.*)?$", line)
        if m:
            name = m.group(1)
        found[name] = found.get(name, "") + line + "\n"
    return found


def _missing(struct: Any, prefix: str, sections: dict[str, str]) -> list[str]:
    missing = []
    for field in msgspec.structs.fields(struct):
        key = prefix + field.name
        if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):
            missing += _missing(field.type, key + ".", sections)
        elif not (
            any(s == key or s.startswith(key + ".") for s in sections)
            or re.search(
                rf"^#?\s*{field.name}\s*=", sections.get(prefix[:-1], ""), re.M
            )
        ):
            missing.append(key)
    return missing


def test_example_config_lists_every_key() -> None:
    sections = _sections(EXAMPLE.read_text())
    assert _missing(config.Config, "", sections) == []
