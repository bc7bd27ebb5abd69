"""The subset of CloudTrail Lake SQL the emulator answers, parsed and translated to SQLite.

CloudTrail Lake runs Trino-flavoured SQL over event data stores. Operators use a small
part of it; this module parses that part with a recursive-descent parser into a tree
(`parse`) and translates the tree into one SQLite statement over the emulator's
`audit_events` table (`translate`). Every literal and every JSON path becomes a bound
parameter: nothing from the statement is pasted into the SQL text.

Supported: `SELECT [DISTINCT] item[, ...] FROM <event data store id or ARN>
[WHERE cond] [GROUP BY expr|ordinal[, ...]] [HAVING cond] [ORDER BY expr|alias|ordinal
[ASC|DESC][, ...]] [LIMIT n]`, where items are `*`, top-level columns (`eventTime`,
`eventID`, `awsRegion`, `metadata.channelARN`, ...), `eventData.<field>[.<sub>...]`
(names case-insensitive, as in Lake), literals and `COUNT(*)`, `COUNT([DISTINCT] x)`,
`MIN(x)`, `MAX(x)`; conditions use `= <> != < <= > >=`, `AND`, `OR`, `NOT`, `[NOT] LIKE`,
`[NOT] IN (...)`, `IS [NOT] NULL`, `[NOT] BETWEEN`, with `eventTime` compared to
timestamp strings (`'2026-12-01 00:00:00'`, ISO 8601 with `T`/`Z`, or `TIMESTAMP '...'`).

Anything else raises `QueryError` with the error CloudTrail gives
(`InvalidQueryStatementException`), never a different answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

INVALID_QUERY = "InvalidQueryStatementException"


class QueryError(Exception):
    """A statement CloudTrail Lake would refuse: `code` is the AWS error type."""

    def __init__(self, message: str, code: str = INVALID_QUERY) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---- the tree ------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A column reference as written: ("eventData", "userIdentity", "principalId")."""

    path: tuple[str, ...]

    @property
    def key(self) -> tuple[str, ...]:
        return tuple(part.lower() for part in self.path)


@dataclass(frozen=True)
class Literal:
    value: str | int | float | bool | None
    timestamp: bool = False  # written as TIMESTAMP '...'


@dataclass(frozen=True)
class Aggregate:
    name: str  # count, min, max
    argument: Any  # an expression, or None for COUNT(*)
    distinct: bool = False


@dataclass(frozen=True)
class Compare:
    op: str
    left: Any
    right: Any


@dataclass(frozen=True)
class Logical:
    op: str  # AND, OR
    items: tuple[Any, ...]


@dataclass(frozen=True)
class Not:
    item: Any


@dataclass(frozen=True)
class Like:
    item: Any
    pattern: Any
    negated: bool = False


@dataclass(frozen=True)
class InList:
    item: Any
    values: tuple[Any, ...]
    negated: bool = False


@dataclass(frozen=True)
class IsNull:
    item: Any
    negated: bool = False


@dataclass(frozen=True)
class Between:
    item: Any
    low: Any
    high: Any
    negated: bool = False


@dataclass(frozen=True)
class Star:
    pass


@dataclass(frozen=True)
class SelectItem:
    expr: Any
    alias: str | None = None


@dataclass(frozen=True)
class OrderItem:
    expr: Any
    descending: bool = False


@dataclass
class Statement:
    items: list[SelectItem]
    source: str
    distinct: bool = False
    where: Any = None
    group_by: list[Any] = field(default_factory=list)
    having: Any = None
    order_by: list[OrderItem] = field(default_factory=list)
    limit: int | None = None


# ---- tokens --------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|--[^\n]*)
  | (?P<string>'(?:[^']|'')*')
  | (?P<quoted>"(?:[^"]|"")*")
  | (?P<number>\d+(?:\.\d+)?(?![A-Za-z_]))
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*|\d[A-Za-z0-9_]*)
  | (?P<op><=|>=|<>|!=|[=<>(),.*;/:-])
    """,
    re.VERBOSE,
)

KEYWORDS = {
    "select", "distinct", "from", "where", "group", "by", "having", "order", "asc", "desc", "limit",
    "and", "or", "not", "like", "in", "is", "null", "between", "as", "true", "false", "timestamp",
}  # fmt: skip
UNSUPPORTED = {
    "join", "union", "intersect", "except", "with", "insert", "update", "delete", "create", "drop",
    "alter", "offset", "over", "case", "cast", "escape", "fetch", "values",
}  # fmt: skip


@dataclass(frozen=True)
class Token:
    kind: str  # string, quoted, number, name, op, end
    text: str
    start: int
    end: int

    def is_word(self, *words: str) -> bool:
        return self.kind == "name" and self.text.lower() in words


def tokenize(text: str) -> list[Token]:
    tokens = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise QueryError(f"Syntax error at position {position + 1}: unexpected {text[position]!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(Token(kind, match.group(), match.start(), match.end()))
        position = match.end()
    tokens.append(Token("end", "", len(text), len(text)))
    return tokens


# ---- parser --------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0

    @property
    def token(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def fail(self, expected: str) -> QueryError:
        token = self.token
        found = "end of statement" if token.kind == "end" else repr(token.text)
        return QueryError(f"Syntax error at position {token.start + 1}: expected {expected}, found {found}")

    def accept_word(self, *words: str) -> bool:
        if self.token.is_word(*words):
            self.advance()
            return True
        return False

    def expect_word(self, word: str) -> None:
        if not self.accept_word(word):
            raise self.fail(word.upper())

    def accept_op(self, op: str) -> bool:
        if self.token.kind == "op" and self.token.text == op:
            self.advance()
            return True
        return False

    def expect_op(self, op: str) -> None:
        if not self.accept_op(op):
            raise self.fail(repr(op))

    def check_unsupported(self) -> None:
        if self.token.kind == "name" and self.token.text.lower() in UNSUPPORTED:
            raise QueryError(f"Unsupported keyword {self.token.text.upper()} at position {self.token.start + 1}")

    # statement

    def statement(self) -> Statement:
        self.check_unsupported()
        if not self.token.is_word("select"):
            raise QueryError("Only SELECT statements are supported by CloudTrail Lake queries")
        self.advance()
        distinct = self.accept_word("distinct")
        items = [self.select_item()]
        while self.accept_op(","):
            items.append(self.select_item())
        self.check_unsupported()
        self.expect_word("from")
        statement = Statement(items, self.source(), distinct)
        self.check_unsupported()
        if (self.token.kind in ("name", "quoted") and not self.token.is_word(*KEYWORDS)) or self.token.text == ",":
            raise QueryError("Query one event data store, without an alias or a JOIN")
        if self.accept_word("where"):
            statement.where = self.expression()
        self.check_unsupported()
        if self.accept_word("group"):
            self.expect_word("by")
            statement.group_by = [self.expression()]
            while self.accept_op(","):
                statement.group_by.append(self.expression())
        if self.accept_word("having"):
            statement.having = self.expression()
        self.check_unsupported()
        if self.accept_word("order"):
            self.expect_word("by")
            statement.order_by = [self.order_item()]
            while self.accept_op(","):
                statement.order_by.append(self.order_item())
        self.check_unsupported()
        if self.accept_word("limit"):
            token = self.advance()
            if token.kind != "number" or not token.text.isdigit():
                raise QueryError(f"LIMIT must be a non-negative integer, not {token.text!r}")
            statement.limit = int(token.text)
        self.accept_op(";")
        self.check_unsupported()
        if self.token.kind != "end":
            raise self.fail("end of statement")
        return statement

    def source(self) -> str:
        """The event data store: an id or ARN, written as adjacent tokens (it may start with a digit)."""
        first = self.token
        if first.kind not in ("name", "number", "quoted") or first.is_word(*KEYWORDS - {"timestamp"}):
            raise self.fail("an event data store id after FROM")
        if first.kind == "quoted":
            self.advance()
            return first.text[1:-1].replace('""', '"')
        end = first.start
        while self.token.kind in ("name", "number", "op") and self.token.start == end:
            if self.token.kind == "op" and self.token.text not in "-:/.":
                break
            end = self.advance().end
        return self.text[first.start : end]

    def select_item(self) -> SelectItem:
        if self.accept_op("*"):
            return SelectItem(Star())
        expr = self.expression()
        alias = None
        bare = self.token.kind in ("name", "quoted") and not self.token.is_word(*KEYWORDS, *UNSUPPORTED)
        if self.accept_word("as") or bare:
            alias = self.identifier()
        return SelectItem(expr, alias)

    def order_item(self) -> OrderItem:
        expr = self.expression()
        if self.accept_word("desc"):
            return OrderItem(expr, True)
        self.accept_word("asc")
        return OrderItem(expr)

    def identifier(self) -> str:
        token = self.token
        if token.kind == "quoted":
            self.advance()
            return token.text[1:-1].replace('""', '"')
        if token.kind == "name" and token.text.lower() not in KEYWORDS:
            self.advance()
            return token.text
        raise self.fail("a name")

    # expressions, lowest precedence first

    def expression(self) -> Any:
        items = [self.conjunction()]
        while self.accept_word("or"):
            items.append(self.conjunction())
        return items[0] if len(items) == 1 else Logical("OR", tuple(items))

    def conjunction(self) -> Any:
        items = [self.negation()]
        while self.accept_word("and"):
            items.append(self.negation())
        return items[0] if len(items) == 1 else Logical("AND", tuple(items))

    def negation(self) -> Any:
        if self.accept_word("not"):
            return Not(self.negation())
        return self.predicate()

    def predicate(self) -> Any:
        left = self.primary()
        token = self.token
        if token.kind == "op" and token.text in ("=", "<>", "!=", "<", "<=", ">", ">="):
            self.advance()
            return Compare("<>" if token.text == "!=" else token.text, left, self.primary())
        if self.accept_word("is"):
            negated = self.accept_word("not")
            self.expect_word("null")
            return IsNull(left, negated)
        negated = self.accept_word("not")
        if self.accept_word("like"):
            pattern = self.primary()
            self.check_unsupported()
            return Like(left, pattern, negated)
        if self.accept_word("in"):
            self.expect_op("(")
            self.check_unsupported()
            if self.token.is_word("select"):
                raise QueryError("Subqueries are not supported")
            values = [self.primary()]
            while self.accept_op(","):
                values.append(self.primary())
            self.expect_op(")")
            return InList(left, tuple(values), negated)
        if self.accept_word("between"):
            low = self.primary()
            self.expect_word("and")
            return Between(left, low, self.primary(), negated)
        if negated:
            raise self.fail("LIKE, IN or BETWEEN after NOT")
        return left

    def primary(self) -> Any:
        self.check_unsupported()
        token = self.token
        if token.kind == "string":
            self.advance()
            return Literal(token.text[1:-1].replace("''", "'"))
        if token.kind == "number":
            self.advance()
            return Literal(float(token.text) if "." in token.text else int(token.text))
        if token.kind == "op" and token.text == "-" and self.tokens[self.index + 1].kind == "number":
            self.advance()
            number = self.advance().text
            return Literal(-(float(number) if "." in number else int(number)))
        if token.kind == "op" and token.text == "(":
            self.advance()
            if self.token.is_word("select"):
                raise QueryError("Subqueries are not supported")
            inner = self.expression()
            self.expect_op(")")
            return inner
        if token.is_word("null"):
            self.advance()
            return Literal(None)
        if token.is_word("true", "false"):
            self.advance()
            return Literal(token.text.lower() == "true")
        if token.is_word("timestamp") and self.tokens[self.index + 1].kind == "string":
            self.advance()
            return Literal(self.advance().text[1:-1].replace("''", "'"), timestamp=True)
        if token.kind in ("name", "quoted") and not token.is_word(*KEYWORDS):
            name = self.identifier()
            if token.kind == "name" and self.token.kind == "op" and self.token.text == "(":
                return self.function(name)
            path = [name]
            while self.accept_op("."):
                if self.token.kind == "op" and self.token.text == "*":
                    raise QueryError(f"{'.'.join(path)}.* is not supported; name the fields")
                path.append(self.identifier())
            return Column(tuple(path))
        raise self.fail("a column, a literal or '('")

    def function(self, name: str) -> Any:
        lowered = name.lower()
        if lowered not in ("count", "min", "max"):
            raise QueryError(f"Function {name} is not supported (COUNT, MIN and MAX are)")
        self.expect_op("(")
        if lowered == "count" and self.accept_op("*"):
            self.expect_op(")")
            return Aggregate("count", None)
        distinct = self.accept_word("distinct")
        argument = self.expression()
        self.expect_op(")")
        return Aggregate(lowered, argument, distinct)


def parse(text: str) -> Statement:
    """The statement's tree; QueryError (InvalidQueryStatementException) when it is not in the subset."""
    if not text.strip():
        raise QueryError("The query statement is empty")
    return _Parser(text).statement()


# ---- the stored record ----------------------------------------------------------------

# Top-level columns of an integration event (the "integrations event schema"): name -> SQL
# expression over audit_events. CloudTrail adds all but eventData after ingestion.
TOP_LEVEL: dict[str, tuple[str, str]] = {
    "eventversion": ("eventVersion", "json_extract(envelope, '$.eventVersion')"),
    "eventcategory": ("eventCategory", "json_extract(envelope, '$.eventCategory')"),
    "eventtype": ("eventType", "json_extract(envelope, '$.eventType')"),
    "eventid": ("eventID", "event_id"),
    "eventtime": ("eventTime", "event_time"),
    "awsregion": ("awsRegion", "json_extract(envelope, '$.awsRegion')"),
    "recipientaccountid": ("recipientAccountId", "json_extract(envelope, '$.recipientAccountId')"),
    "addendum": ("addendum", "json_extract(envelope, '$.addendum')"),
    "metadata": ("metadata", "json_extract(envelope, '$.metadata')"),
    "eventdata": ("eventData", "event_data"),
}
METADATA_FIELDS = {"ingestiontime": "ingestionTime", "channelarn": "channelARN"}
ADDENDUM_FIELDS = {
    "reason": "reason",
    "updatedfields": "updatedFields",
    "originaluid": "originalUID",
    "originaleventid": "originalEventID",
}
# eventData fields (PutAuditEvents' schema) as stored; the object-valued ones take any sub-path.
EVENT_DATA_FIELDS = {
    "version": "version",
    "useridentity": "userIdentity",
    "useragent": "userAgent",
    "eventsource": "eventSource",
    "eventname": "eventName",
    "eventtime": "eventTime",
    "uid": "UID",
    "requestparameters": "requestParameters",
    "responseelements": "responseElements",
    "errorcode": "errorCode",
    "errormessage": "errorMessage",
    "sourceipaddress": "sourceIPAddress",
    "recipientaccountid": "recipientAccountId",
    "additionaleventdata": "additionalEventData",
}
USER_IDENTITY_FIELDS = {"type": "type", "principalid": "principalId", "details": "details"}
FREE_FORM = {"requestParameters", "responseElements", "additionalEventData"}
TIMESTAMP_COLUMNS = {("eventtime",), ("metadata", "ingestiontime")}
STAR_COLUMNS = ("eventversion", "eventcategory", "eventtype", "eventid", "eventtime", "awsregion",
                "recipientaccountid", "addendum", "metadata", "eventdata")  # fmt: skip


def lake_timestamp(text: str) -> str:
    """A timestamp string in the stored form `YYYY-MM-DD HH:MM:SS.mmm` (UTC); ValueError if not one."""
    value = text.strip().replace("T", " ").removesuffix("Z").removesuffix("+00:00")
    for pattern in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            parsed = datetime.strptime(value, pattern).replace(tzinfo=UTC)
        except ValueError:
            continue
        return parsed.strftime("%Y-%m-%d %H:%M:%S.") + f"{parsed.microsecond // 1000:03d}"
    raise ValueError(f"not a timestamp: {text!r}")


def _json_path(parts: list[str]) -> str:
    for part in parts:
        if '"' in part or "\\" in part:
            raise QueryError(f"Field name {part!r} is not supported")
    return "$" + "".join(f'."{part}"' for part in parts)


# ---- translation ---------------------------------------------------------------------


@dataclass
class Translation:
    """One SQLite statement with its parameters, the output column names, and what the
    eventTime conditions of the WHERE clause limit the scan to (for the statistics)."""

    sql: str
    params: list[Any]
    columns: list[str]
    scan_sql: str
    scan_params: list[Any]
    matched_sql: str
    matched_params: list[Any]


class _Translator:
    def __init__(self, statement: Statement) -> None:
        self.statement = statement
        self.params: list[Any] = []

    def bind(self, value: Any) -> str:
        self.params.append(value)
        return "?"

    def column(self, column: Column) -> str:
        key = column.key
        if key[0] not in TOP_LEVEL:
            raise QueryError(f"Column '{'.'.join(column.path)}' cannot be resolved")
        name, sql = TOP_LEVEL[key[0]]
        if len(key) == 1:
            return sql
        if name == "metadata" and len(key) == 2 and key[1] in METADATA_FIELDS:
            return f"json_extract(envelope, {self.bind(_json_path(['metadata', METADATA_FIELDS[key[1]]]))})"
        if name == "addendum" and len(key) == 2 and key[1] in ADDENDUM_FIELDS:
            return f"json_extract(envelope, {self.bind(_json_path(['addendum', ADDENDUM_FIELDS[key[1]]]))})"
        if name == "eventData" and key[1] in EVENT_DATA_FIELDS:
            stored = EVENT_DATA_FIELDS[key[1]]
            parts = [stored]
            rest = list(column.path[2:])
            if stored == "userIdentity" and rest:
                if rest[0].lower() not in USER_IDENTITY_FIELDS:
                    raise QueryError(f"Column '{'.'.join(column.path)}' cannot be resolved")
                parts.append(USER_IDENTITY_FIELDS[rest[0].lower()])
                rest = rest[1:]
                if rest and parts[-1] != "details":
                    raise QueryError(f"Column '{'.'.join(column.path)}' cannot be resolved")
            elif rest and stored not in FREE_FORM:
                raise QueryError(f"Column '{'.'.join(column.path)}' cannot be resolved")
            parts += rest
            return f"json_extract(event_data, {self.bind(_json_path(parts))})"
        raise QueryError(f"Column '{'.'.join(column.path)}' cannot be resolved")

    def is_timestamp(self, expr: Any) -> bool:
        return isinstance(expr, Column) and expr.key in TIMESTAMP_COLUMNS

    def value(self, expr: Any, timestamp: bool = False) -> str:
        """An operand; string literals compared with a timestamp column become stored timestamps."""
        if isinstance(expr, Literal):
            # Trino refuses to compare a timestamp with anything but a timestamp (or a string that is one).
            if expr.timestamp and not timestamp:
                raise QueryError("A TIMESTAMP literal can only be compared with eventTime or metadata.ingestionTime")
            if timestamp and expr.value is not None and not isinstance(expr.value, str):
                raise QueryError(f"Cannot compare a timestamp with {expr.value!r}")
            if (timestamp or expr.timestamp) and isinstance(expr.value, str):
                try:
                    return self.bind(lake_timestamp(expr.value))
                except ValueError as exc:
                    raise QueryError(f"Cannot compare a timestamp with {expr.value!r}: {exc}") from exc
            if isinstance(expr.value, bool):
                return self.bind(int(expr.value))
            return self.bind(expr.value)
        return self.expr(expr)

    def expr(self, expr: Any, allow_aggregate: bool = True) -> str:
        if isinstance(expr, Column):
            return self.column(expr)
        if isinstance(expr, Literal):
            return self.value(expr)
        if isinstance(expr, Aggregate):
            if not allow_aggregate:
                raise QueryError("Aggregate functions are not allowed in WHERE or GROUP BY")
            if expr.argument is None:
                return "count(*)"
            if _has_aggregate(expr.argument):
                raise QueryError("Aggregate functions cannot be nested")
            inner = self.expr(expr.argument, allow_aggregate=False)
            return f"{expr.name}({'DISTINCT ' if expr.distinct else ''}{inner})"
        if isinstance(expr, Compare):
            timestamp = self.is_timestamp(expr.left) or self.is_timestamp(expr.right)
            left = self.value(expr.left, timestamp)
            right = self.value(expr.right, timestamp)
            return f"({left} {expr.op} {right})"
        if isinstance(expr, Logical):
            return "(" + f" {expr.op} ".join(self.expr(item, allow_aggregate) for item in expr.items) + ")"
        if isinstance(expr, Not):
            return f"(NOT {self.expr(expr.item, allow_aggregate)})"
        if isinstance(expr, Like):
            if not isinstance(expr.pattern, Literal) or not isinstance(expr.pattern.value, str):
                raise QueryError("LIKE needs a string pattern")
            # GLOB keeps Trino's case-sensitive LIKE (SQLite's LIKE ignores ASCII case).
            glob = _like_to_glob(expr.pattern.value)
            return f"({'NOT ' if expr.negated else ''}{self.expr(expr.item, allow_aggregate)} GLOB {self.bind(glob)})"
        if isinstance(expr, InList):
            timestamp = self.is_timestamp(expr.item)
            item = self.expr(expr.item, allow_aggregate)
            values = ", ".join(self.value(value, timestamp) for value in expr.values)
            return f"({item} {'NOT IN' if expr.negated else 'IN'} ({values}))"
        if isinstance(expr, IsNull):
            return f"({self.expr(expr.item, allow_aggregate)} IS {'NOT ' if expr.negated else ''}NULL)"
        if isinstance(expr, Between):
            timestamp = self.is_timestamp(expr.item)
            item = self.expr(expr.item, allow_aggregate)
            low, high = self.value(expr.low, timestamp), self.value(expr.high, timestamp)
            return f"({item} {'NOT ' if expr.negated else ''}BETWEEN {low} AND {high})"
        raise QueryError(f"Unsupported expression {expr!r}")


def _like_to_glob(pattern: str) -> str:
    out = []
    for char in pattern:
        if char == "%":
            out.append("*")
        elif char == "_":
            out.append("?")
        elif char in "*?[]":
            out.append(f"[{char}]")
        else:
            out.append(char)
    return "".join(out)


def _has_aggregate(expr: Any) -> bool:
    if isinstance(expr, Aggregate):
        return True
    if isinstance(expr, Compare):
        return _has_aggregate(expr.left) or _has_aggregate(expr.right)
    if isinstance(expr, Logical):
        return any(_has_aggregate(item) for item in expr.items)
    if isinstance(expr, Not | Like | IsNull):
        return _has_aggregate(expr.item)
    if isinstance(expr, InList | Between):
        return _has_aggregate(expr.item)
    return False


def _columns_of(expr: Any) -> list[Column]:
    """Column references outside aggregates."""
    if isinstance(expr, Column):
        return [expr]
    if isinstance(expr, Aggregate | Literal):
        return []
    if isinstance(expr, Compare):
        return _columns_of(expr.left) + _columns_of(expr.right)
    if isinstance(expr, Logical):
        return [c for item in expr.items for c in _columns_of(item)]
    if isinstance(expr, Not | IsNull):
        return _columns_of(expr.item)
    if isinstance(expr, Like):
        return _columns_of(expr.item) + _columns_of(expr.pattern)
    if isinstance(expr, InList):
        return _columns_of(expr.item) + [c for v in expr.values for c in _columns_of(v)]
    if isinstance(expr, Between):
        return _columns_of(expr.item) + _columns_of(expr.low) + _columns_of(expr.high)
    return []


def _time_bounds(where: Any) -> list[Any]:
    """The top-level AND conditions of WHERE that only compare eventTime with literals."""
    if where is None:
        return []
    conditions = list(where.items) if isinstance(where, Logical) and where.op == "AND" else [where]
    bounds: list[Any] = []
    for condition in conditions:
        if isinstance(condition, Compare) and condition.op != "<>":
            sides = (condition.left, condition.right)
            if any(isinstance(s, Column) and s.key == ("eventtime",) for s in sides) and any(
                isinstance(s, Literal) for s in sides
            ):
                bounds.append(condition)
        elif (
            isinstance(condition, Between)
            and not condition.negated
            and isinstance(condition.item, Column)
            and condition.item.key == ("eventtime",)
        ):
            bounds.append(condition)
    return bounds


def output_name(item: SelectItem, position: int) -> str:
    """The result column's name: the alias, else the last name of a column path, else _colN (as Trino)."""
    if item.alias:
        return item.alias
    if isinstance(item.expr, Column):
        return item.expr.path[-1]
    return f"_col{position}"


def translate(statement: Statement) -> Translation:
    """The SQLite form of a parsed statement over `audit_events`; QueryError when it cannot be answered exactly."""
    translator = _Translator(statement)
    items: list[SelectItem] = []
    for item in statement.items:
        if isinstance(item.expr, Star):
            if len(statement.items) > 1 or statement.group_by:
                raise QueryError("SELECT * cannot be combined with other items or GROUP BY here")
            items += [SelectItem(Column((TOP_LEVEL[key][0],))) for key in STAR_COLUMNS]
        else:
            items.append(item)
    columns = [output_name(item, position) for position, item in enumerate(items)]

    group_by: list[Any] = []
    for expr in statement.group_by:
        if isinstance(expr, Literal) and isinstance(expr.value, int) and not isinstance(expr.value, bool):
            if not 1 <= expr.value <= len(items):
                raise QueryError(f"GROUP BY position {expr.value} is not in the select list")
            expr = items[expr.value - 1].expr
        if _has_aggregate(expr):
            raise QueryError("GROUP BY cannot contain aggregate functions")
        group_by.append(expr)
    aggregated = (
        bool(group_by)
        or any(_has_aggregate(item.expr) for item in items)
        or any(_has_aggregate(order.expr) for order in statement.order_by)
        or statement.having is not None
    )
    if aggregated:
        grouped_keys = {c.key for expr in group_by for c in _columns_of(expr)}
        for item in items:
            for column in _columns_of(item.expr):
                if item.expr not in group_by and column.key not in grouped_keys:
                    raise QueryError(
                        f"'{'.'.join(column.path)}' must be an aggregate expression or appear in GROUP BY clause"
                    )

    select_sql = ", ".join(translator.expr(item.expr) for item in items)
    select_params = translator.params
    translator.params = []
    where_sql = ""
    if statement.where is not None:
        if _has_aggregate(statement.where):
            raise QueryError("WHERE clause cannot contain aggregate functions")
        where_sql = " WHERE " + translator.expr(statement.where, allow_aggregate=False)
    where_params = translator.params
    translator.params = []
    group_sql = ""
    if group_by:
        group_sql = " GROUP BY " + ", ".join(translator.expr(expr, allow_aggregate=False) for expr in group_by)
    if statement.having is not None:
        group_sql += " HAVING " + translator.expr(statement.having)
    group_params = translator.params
    translator.params = []
    order_parts = []
    aliases = {name.lower(): position for position, name in enumerate(columns) if items[position].alias}
    for order in statement.order_by:
        expr = order.expr
        if isinstance(expr, Literal) and isinstance(expr.value, int) and not isinstance(expr.value, bool):
            if not 1 <= expr.value <= len(items):
                raise QueryError(f"ORDER BY position {expr.value} is not in the select list")
            sql = str(expr.value)  # an ordinal, as SQLite reads it too
        elif isinstance(expr, Column) and len(expr.path) == 1 and expr.path[0].lower() in aliases:
            sql = str(aliases[expr.path[0].lower()] + 1)
        else:
            if aggregated:
                for column in _columns_of(expr):
                    if expr not in group_by and column.key not in {c.key for g in group_by for c in _columns_of(g)}:
                        raise QueryError(f"ORDER BY '{'.'.join(column.path)}' must appear in GROUP BY clause")
            sql = translator.expr(expr)
        # Trino puts NULLs last in both directions; SQLite puts them first ascending.
        order_parts.append(f"{sql} {'DESC NULLS LAST' if order.descending else 'ASC NULLS LAST'}")
    order_params = translator.params
    translator.params = []
    order_sql = " ORDER BY " + ", ".join(order_parts) if order_parts else ""
    limit_sql = ""
    limit_params: list[Any] = []
    if statement.limit is not None:
        limit_sql = " LIMIT ?"
        limit_params = [statement.limit]

    sql = (
        f"SELECT {'DISTINCT ' if statement.distinct else ''}{select_sql} FROM audit_events"
        f"{where_sql}{group_sql}{order_sql}{limit_sql}"
    )
    params = select_params + where_params + group_params + order_params + limit_params

    bounds = _time_bounds(statement.where)
    scan_where = ""
    if bounds:
        scan_where = " WHERE " + " AND ".join(translator.expr(b, allow_aggregate=False) for b in bounds)
    scan_params = translator.params
    translator.params = []
    scan_sql = f"SELECT count(*), coalesce(sum(length(event_data) + length(envelope)), 0) FROM audit_events{scan_where}"
    matched_sql = f"SELECT count(*) FROM audit_events{where_sql}"
    return Translation(sql, params, columns, scan_sql, scan_params, matched_sql, list(where_params))
