"""Search, sort and distinct values over the indexed fields (protocol.md section 2).

Every filter becomes an indexed condition on `files f`: column fields compare the
column (indexed with team_id and state), the other fields are
`f.id IN (SELECT file_id FROM attrs WHERE team_id = ? AND name = ? AND ...)` on the
attrs indexes, and the words of text fields go through the FTS5 trigram table.
Nothing reads the metadata JSON, so a query costs the same with 100,000 files.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .errors import APIError, bad_request
from .fields import FIELDS
from .timeutil import normalize_iso

METADATA_PREFIX = "metadata."
RANGE_OPS = {"gte": ">=", "gt": ">", "lte": "<=", "lt": "<"}
MIN_TRIGRAM = 3  # shorter words cannot use the trigram index: LIKE instead
# Conditions (text words included) in one search: SQLite's expression depth is finite.
MAX_CONDITIONS = 100
NULLABLE_COLUMNS = frozenset({"f.checksum", "f.upload_ip"})


def invalid(message: str, **extra: Any) -> APIError:
    return bad_request(message, code="INVALID_FILTER", **extra)


def unknown_field(key: str) -> APIError:
    valid = list(FIELDS)
    return bad_request(
        f"unknown field {key!r}; indexed fields: {', '.join(valid)};"
        " custom metadata keys as metadata.<key>",
        code="UNKNOWN_FIELD",
        field=key,
        valid_fields=valid,
    )


@dataclass(frozen=True)
class Target:
    """What a filter or sort names: an indexed field or a custom metadata key."""

    name: str  # the field or key: attrs.name, and the fts column of text fields
    type: str | None  # None: a custom key, typed by each value
    column: str | None = None  # SQL expression on `files f`; None: in attrs


def resolve(conn: sqlite3.Connection, team_id: str, key: str) -> Target:
    if key.startswith(METADATA_PREFIX) and len(key) > len(METADATA_PREFIX):
        name = key[len(METADATA_PREFIX) :]
        known = FIELDS.get(name)
        # System fields are never in the metadata: `metadata.size` is a custom key.
        return Target(name, known.type if known and known.column is None else None)
    known = FIELDS.get(key)
    if known is not None:
        return Target(key, known.type, known.column)
    used = conn.execute(
        "SELECT 1 FROM attrs WHERE team_id = ? AND name = ? LIMIT 1", (team_id, key)
    ).fetchone()
    if used is None:
        raise unknown_field(key)
    return Target(key, None)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _custom_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if _is_number(value):
        return "double"
    if isinstance(value, str):
        return "keyword"
    raise invalid(f"filter values must be strings, numbers or booleans, not {value!r}")


def operand(t: Target, value: Any) -> tuple[str, Any]:
    """The attrs slot (vtext or vnum) and the bound value of a filter value on `t`."""
    kind = t.type or _custom_kind(value)
    if kind in ("keyword", "text") and isinstance(value, str):
        return "vtext", value
    if kind in ("long", "double") and _is_number(value):
        try:
            return "vnum", float(value)
        except OverflowError:
            raise invalid(f"number out of range on {t.name!r}") from None
    if kind == "boolean" and isinstance(value, bool):
        return "vtext", "true" if value else "false"
    if kind == "date" and isinstance(value, str):
        try:
            return "vtext", normalize_iso(value)
        except ValueError:
            raise invalid(f"{value!r} on {t.name!r} is not an ISO 8601 date") from None
    raise invalid(f"filter on {t.name!r} needs a {kind} value, not {value!r}", field=t.name)


def like_pattern(word: str) -> str:
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def fts_phrase(column: str, word: str) -> str:
    quoted = word.replace('"', '""')
    return f'{column} : "{quoted}"'


@dataclass
class Where:
    """The WHERE clause of one team's stored files, built one filter at a time."""

    team_id: str
    terms: list[str] = field(default_factory=lambda: ["f.team_id = ?", "f.state = 'stored'"])
    args: list[Any] = field(default_factory=list)
    conditions: int = 0

    def __post_init__(self) -> None:
        self.args.append(self.team_id)

    @property
    def sql(self) -> str:
        return " AND ".join(self.terms)

    def add(self, term: str, *args: Any, weight: int = 1) -> None:
        self.conditions += weight
        if self.conditions > MAX_CONDITIONS:
            raise invalid(f"too many conditions: at most {MAX_CONDITIONS} in one search")
        self.terms.append(term)
        self.args.extend(args)

    def compare(self, t: Target, slot: str, cond: str, *args: Any) -> None:
        """`cond` names the compared value `{v}`: the column, or the attrs slot."""
        if t.column is not None:
            self.add(cond.format(v=t.column), *args)
        else:
            self.add(
                "f.id IN (SELECT file_id FROM attrs WHERE team_id = ? AND name = ?"
                f" AND {cond.format(v=slot)})",
                self.team_id,
                t.name,
                *args,
            )

    def absent(self, t: Target) -> None:
        if t.column is not None:
            self.add(f"{t.column} IS NULL")
        else:
            self.add(
                "f.id NOT IN (SELECT file_id FROM attrs WHERE team_id = ? AND name = ?)",
                self.team_id,
                t.name,
            )

    def text(self, t: Target, value: Any) -> None:
        """Every word, case-insensitive, anywhere in the text."""
        # NUL ends an FTS5 query string: it separates words like whitespace.
        words = value.replace("\0", " ").split() if isinstance(value, str) else []
        if not words:
            raise invalid(f"text filter on {t.name!r} needs a string of words", field=t.name)
        long_words = [w for w in words if len(w) >= MIN_TRIGRAM]
        if long_words:
            query = " AND ".join(fts_phrase(t.name, w) for w in long_words)
            self.add(
                "f.id IN (SELECT rowid FROM fts WHERE fts MATCH ?)", query, weight=len(long_words)
            )
        for word in words:
            if len(word) < MIN_TRIGRAM:
                self.compare(t, "vtext", "{v} LIKE ? ESCAPE '\\'", like_pattern(word))

    def equal(self, t: Target, value: Any) -> None:
        if isinstance(value, dict | list):
            raise invalid(f"list items on {t.name!r} must be scalars", field=t.name)
        if t.type == "text":
            self.text(t, value)
            return
        slot, bound = operand(t, value)
        self.compare(t, slot, "{v} = ?", bound)

    def range(self, t: Target, bounds: dict[str, Any]) -> None:
        if not bounds or not set(bounds) <= RANGE_OPS.keys():
            raise invalid(
                f"a range on {t.name!r} takes one or more of {', '.join(RANGE_OPS)}",
                field=t.name,
            )
        kinds = {t.type or _custom_kind(v) for v in bounds.values()}
        rangeable = {"date", "long", "double"} if t.type else {"double", "keyword"}
        if len(kinds) != 1 or not kinds <= rangeable:
            raise invalid(
                f"range filters apply to date and numeric fields, not to {t.name!r}",
                field=t.name,
            )
        operands = [operand(t, v) for v in bounds.values()]
        cond = " AND ".join(f"{{v}} {RANGE_OPS[op]} ?" for op in bounds)
        self.compare(t, operands[0][0], cond, *(bound for _, bound in operands))

    def filter(self, conn: sqlite3.Connection, key: str, value: Any) -> None:
        t = resolve(conn, self.team_id, key)
        if value is None:
            self.absent(t)
        elif isinstance(value, dict):
            self.range(t, value)
        elif isinstance(value, list):
            if not value:
                raise invalid(f"empty list on {t.name!r}", field=t.name)
            for item in value:  # contains all
                self.equal(t, item)
        else:
            self.equal(t, value)


def order_by(
    conn: sqlite3.Connection, team_id: str, sort_by: str, descending: bool
) -> tuple[str, list[Any]]:
    """ORDER BY with its args; files without the field come last, ties by id."""
    t = resolve(conn, team_id, sort_by)
    way = "DESC" if descending else "ASC"
    if t.column is not None:
        nulls = " NULLS LAST" if t.column in NULLABLE_COLUMNS else ""
        return f"{t.column} {way}{nulls}, f.id {way}", []
    # Arrays sort by their smallest element going up, their largest going down.
    pick = "MAX" if descending else "MIN"
    key = (
        f"(SELECT {pick}(COALESCE(a.vnum, a.vtext)) FROM attrs a"
        " WHERE a.file_id = f.id AND a.name = ?)"
    )
    return f"{key} {way} NULLS LAST, f.id {way}", [t.name]


@dataclass(frozen=True)
class Query:
    where: Where
    order: str
    order_args: list[Any]

    def count_sql(self) -> tuple[str, list[Any]]:
        return f"SELECT COUNT(*) FROM files f WHERE {self.where.sql}", self.where.args

    def page_sql(self, limit: int, offset: int) -> tuple[str, list[Any]]:
        """Ids only: skipped rows and the sort stay in the indexes (covering)."""
        sql = f"SELECT f.id FROM files f WHERE {self.where.sql} ORDER BY {self.order}"
        return f"{sql} LIMIT ? OFFSET ?", [*self.where.args, *self.order_args, limit, offset]


def compile_query(
    conn: sqlite3.Connection,
    team_id: str,
    filters: dict[str, Any],
    sort_by: str,
    descending: bool,
) -> Query:
    where = Where(team_id)
    for key, value in filters.items():
        where.filter(conn, key, value)
    return Query(where, *order_by(conn, team_id, sort_by, descending))


@dataclass(frozen=True)
class Page:
    rows: list[sqlite3.Row]
    total: int


def find(
    conn: sqlite3.Connection,
    team_id: str,
    filters: dict[str, Any],
    sort_by: str,
    descending: bool,
    page: int,
    page_size: int,
) -> Page:
    query = compile_query(conn, team_id, filters, sort_by, descending)
    with snapshot(conn):
        total = int(conn.execute(*query.count_sql()).fetchone()[0])
        offset = (page - 1) * page_size
        if offset >= total:
            return Page([], total)
        ids = [r[0] for r in conn.execute(*query.page_sql(page_size, offset))]
        marks = ",".join("?" * len(ids))
        rows = conn.execute(f"SELECT * FROM files WHERE id IN ({marks})", ids)
        by_id = {r["id"]: r for r in rows}
    return Page([by_id[i] for i in ids], total)


@contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction: the total, the ids and the rows agree despite writers."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def _number(t: Target, value: float) -> float | int:
    return int(value) if t.type != "double" and value.is_integer() else value


def _text(t: Target, value: str) -> str | bool:
    return value == "true" if t.type == "boolean" else value


def distinct(conn: sqlite3.Connection, team_id: str, key: str) -> list[Any]:
    """Sorted distinct values of a field in the team's stored files (numbers first)."""
    t = resolve(conn, team_id, key)
    if t.column is not None:
        rows = conn.execute(
            f"SELECT DISTINCT {t.column} FROM files f WHERE f.team_id = ?"
            f" AND f.state = 'stored' AND {t.column} IS NOT NULL ORDER BY 1",
            (team_id,),
        )
        return [r[0] for r in rows]
    # attrs holds rows of stored files only (files.reindex / unindex).
    values: list[Any] = []
    for slot in ("vnum", "vtext"):
        rows = conn.execute(
            f"SELECT DISTINCT {slot} FROM attrs WHERE team_id = ? AND name = ?"
            f" AND {slot} IS NOT NULL ORDER BY {slot}",
            (team_id, t.name),
        )
        convert = _number if slot == "vnum" else _text
        values.extend(convert(t, r[0]) for r in rows)
    return values
