"""The department catalog: the one place that says which units tickets can be routed to.

A catalog is a JSON file (``{"title": ..., "departments": [{"name", "group", "duties", "aliases"}]}``) or a CSV
file with the columns ``name,duties,aliases`` and optionally ``group`` (aliases separated by ``|``). ``duties`` is the
unit's 职责 text; the instant model reads it (with the aliases) as a seed example, so suggestions are sensible before
any label exists. ``group`` is the heading the unit is listed under on the annotator's screen (units without one are
listed under "其他 Other").
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_CATALOG = HERE / "catalog.json"
DEFAULT_LABELING_CONFIG = HERE / "labeling_config.xml"
SAMPLE_TICKETS = HERE / "sample_tickets.jsonl"

MAX_DEPARTMENTS = 2000
MAX_NAME_CHARS = 100


class CatalogError(ValueError):
    """The catalog file cannot be used; the message says which entry and why."""


@dataclass(frozen=True)
class Department:
    name: str
    duties: str = ""
    aliases: tuple[str, ...] = ()
    group: str = ""

    def seed_text(self) -> str:
        """What the instant model learns from before a human has labelled anything."""
        return "\n".join(part for part in (self.name, " ".join(self.aliases), self.duties) if part)


@dataclass(frozen=True)
class Catalog:
    title: str
    departments: tuple[Department, ...] = field(default_factory=tuple)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.departments)

    def seed_texts(self) -> dict[str, str]:
        return {d.name: d.seed_text() for d in self.departments}


def _clean_name(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(f"{where}: 'name' must be a non-empty string")
    name = value.strip()
    if len(name) > MAX_NAME_CHARS:
        raise CatalogError(f"{where}: name is longer than {MAX_NAME_CHARS} characters")
    if any(ch in name for ch in '<>&"') or any(ord(ch) < 32 for ch in name):
        raise CatalogError(f"{where}: name {name!r} contains a character not allowed in a label (< > & \" or a control character)")
    return name


def _department(entry: object, index: int) -> Department:
    where = f"department #{index + 1}"
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: expected an object with 'name', 'duties', 'aliases' (and optionally 'group')")
    name = _clean_name(entry.get("name"), where)
    duties = entry.get("duties", "") or ""
    if not isinstance(duties, str):
        raise CatalogError(f"{where} ({name}): 'duties' must be a string")
    group = entry.get("group", "") or ""
    if not isinstance(group, str) or len(group) > MAX_NAME_CHARS:
        raise CatalogError(f"{where} ({name}): 'group' must be a string of at most {MAX_NAME_CHARS} characters")
    aliases = entry.get("aliases", []) or []
    if isinstance(aliases, str):
        aliases = aliases.split("|")
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise CatalogError(f"{where} ({name}): 'aliases' must be a list of strings")
    aliases = tuple(dict.fromkeys(a.strip() for a in aliases if a.strip() and a.strip() != name))
    return Department(name=name, duties=duties.strip(), group=group.strip(), aliases=aliases)


def parse_catalog(data: object, title: str = "") -> Catalog:
    if isinstance(data, list):
        data = {"departments": data}
    if not isinstance(data, dict) or not isinstance(data.get("departments"), list):
        raise CatalogError("a catalog must be an object with a 'departments' list")
    entries = data["departments"]
    if not entries:
        raise CatalogError("the catalog has no departments")
    if len(entries) > MAX_DEPARTMENTS:
        raise CatalogError(f"the catalog has {len(entries)} departments; at most {MAX_DEPARTMENTS} are supported")
    departments = tuple(_department(e, i) for i, e in enumerate(entries))
    seen: dict[str, str] = {}
    for d in departments:
        for key in (d.name, *d.aliases):
            if key in seen:
                raise CatalogError(f"{key!r} is used twice (by {seen[key]} and by {d.name}); names and aliases must be unique")
            seen[key] = d.name
    return Catalog(title=str(data.get("title") or title), departments=departments)


def load_catalog(path: str | Path = DEFAULT_CATALOG) -> Catalog:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if rows and "name" not in rows[0]:
            raise CatalogError(f"{path}: a CSV catalog needs a header with the columns name,duties,aliases")
        return parse_catalog({"departments": rows}, title=path.stem)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from exc
    return parse_catalog(data, title=path.stem)
