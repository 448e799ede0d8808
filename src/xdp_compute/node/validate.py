"""Check a dataset's source against its manifest declaration, reporting counts only.

``validate_source(manifest, dataset)`` never raises on bad data and never returns a data value
(not even an example): only counts of violations per column, plus messages about structural
problems that name columns (``"column 'age' missing"``) and nothing else. Engine error messages
are not passed on, because DuckDB quotes the offending line of a CSV in them.

Report shape::

    {"dataset": "people", "source_kind": "csv" | "parquet" | "postgresql" | "spark", "ok": bool,
     "rows": int | None, "malformed_lines": int (CSV only), "files": int (folder or glob only),
     "problems": ["column 'age' missing", ...],
     "warnings": ["the database role can INSERT on the table; ...", ...],  (do not affect ok)
     "columns": {"age": {"present": bool, "nulls": n, "type_violations": n,
                         "out_of_bounds": n, "undeclared_values": n}, ...},
     "lookup": {"capacity": n, "label_bytes": n, "rows": n, "entries": n, "repeated_keys": n,
                "repeated_rows": n, "beyond_capacity": n, "labels_too_long": n, "left_out": n}}
                (only for a dataset with ``[datasets.lookup]``)

(counts are None for a column that could not be checked.)

* ``type_violations`` — non-NULL values that do not cast to the declared type (an int column
  also rejects non-integral numbers; a bool column accepts what the engine casts to BOOLEAN);
* ``out_of_bounds`` — castable values outside [min, max] (NaN and infinities included);
* ``undeclared_values`` — non-NULL category values not in the declared list;
* ``lookup`` — what a hidden-lookup table of the dataset would leave out
  (``crypto.pir.table.select_records``): every row of a key that several rows have, the keys
  beyond the declared ``capacity`` (the last in key order), records longer than ``label_bytes``
  (measured with all the lookup columns). Each is a problem: lookups of those keys answer "not
  found". Only the holder reads this (the node's answer to the analyst is the same either way);
* ``ok`` — no structural problem and every violation count is zero (NULLs are allowed).
"""

from __future__ import annotations

from typing import Any

from sqlglot import exp

from xdp_compute.domain.manifest import ColumnSpec, DatasetSpec, Manifest
from xdp_compute.errors import XdpError
from xdp_compute.node.sources import DuckDBSource, LocalSource, PostgresSource, SourceError, open_source

_COUNT_KEYS = ("nulls", "type_violations", "out_of_bounds", "undeclared_values")

# PostgreSQL native types that hold each declared type without conversion.
_PG_INT = {"smallint", "integer", "bigint"}
_PG_NUMERIC = _PG_INT | {"real", "double precision", "numeric"}
_PG_TEXT = {"text", "character varying", "character", "varchar", "char", "name", "bpchar"}
# Conservative text forms (a text column holding declared numbers/bools); the guarded CASTs
# below only ever see strings these accept, so a bad value cannot make the query fail.
_PG_RE_INT = r"^\s*[+-]?[0-9]{1,18}\s*$"
_PG_RE_FLOAT = r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,4})?\s*$|^\s*[+-]?(nan|inf|infinity)\s*$"
_PG_RE_BOOL = r"^\s*(t|true|f|false|y|yes|n|no|on|off|1|0)\s*$"


def _empty_column() -> dict[str, Any]:
    """Counts stay None for a column that could not be checked (missing, unreadable source)."""
    return {"present": False, **{k: None for k in _COUNT_KEYS}}


def _report(dataset: DatasetSpec, kind: str) -> dict[str, Any]:
    return {
        "dataset": dataset.name,
        "source_kind": kind,
        "ok": False,
        "rows": None,
        "problems": [],
        "warnings": [],
        "columns": {c.name: _empty_column() for c in dataset.columns},
    }


def _finish(report: dict[str, Any]) -> dict[str, Any]:
    bad = any(col[k] for col in report["columns"].values() for k in _COUNT_KEYS if k != "nulls" and col[k])
    report["ok"] = not report["problems"] and not bad and not report.get("malformed_lines")
    return report


def _count_if(cond: exp.Expression) -> exp.Expression:
    return exp.Sum(this=exp.Case(ifs=[exp.If(this=cond, true=exp.Literal.number(1))],
                                 default=exp.Literal.number(0)))


def _not_null(col: exp.Expression) -> exp.Expression:
    return exp.Not(this=exp.Is(this=col.copy(), expression=exp.Null()))


def _numlit(x: float) -> exp.Expression:
    lit = exp.Literal.number(repr(abs(x)))
    return exp.Neg(this=lit) if x < 0 else lit


def _duck_checks(spec: ColumnSpec, actual: str) -> list[exp.Expression]:
    """Four SUM(CASE ...) expressions: nulls, type violations, out of bounds, undeclared values."""
    col = exp.column(actual, quoted=True)
    nn = _not_null(col)
    zero = exp.Literal.number(0)
    dbl = exp.TryCast(this=col.copy(), to=exp.DataType.build("DOUBLE"))
    nulls = _count_if(exp.Is(this=col.copy(), expression=exp.Null()))
    type_bad: exp.Expression = zero.copy()
    oob: exp.Expression = zero.copy()
    undeclared: exp.Expression = zero.copy()
    if spec.type == "int":
        integral = exp.and_(
            _not_null(dbl),
            exp.Anonymous(this="isfinite", expressions=[dbl.copy()]),
            exp.EQ(this=dbl.copy(), expression=exp.Anonymous(this="round", expressions=[dbl.copy()])),
        )
        type_bad = _count_if(exp.and_(nn, exp.Not(this=exp.Paren(this=integral))))
    elif spec.type == "float":
        type_bad = _count_if(exp.and_(nn, exp.Is(this=dbl.copy(), expression=exp.Null())))
    elif spec.type == "bool":
        boo = exp.TryCast(this=col.copy(), to=exp.DataType.build("BOOLEAN"))
        type_bad = _count_if(exp.and_(nn, exp.Is(this=boo, expression=exp.Null())))
    if spec.numeric and spec.min is not None and spec.max is not None:
        inside = exp.and_(exp.GTE(this=dbl.copy(), expression=_numlit(float(spec.min))),
                          exp.LTE(this=dbl.copy(), expression=_numlit(float(spec.max))))
        oob = _count_if(exp.and_(_not_null(dbl), exp.Not(this=exp.Paren(this=inside))))
    if spec.type == "category" and spec.values:
        txt = exp.Cast(this=col.copy(), to=exp.DataType.build("VARCHAR"))
        undeclared = _count_if(exp.and_(nn, exp.Not(this=exp.In(
            this=txt, expressions=[exp.Literal.string(v) for v in spec.values]))))
    return [nulls, type_bad, oob, undeclared]


def _validate_duckdb(src: DuckDBSource, dataset: DatasetSpec, report: dict[str, Any]) -> None:
    if src.files is not None:
        report["files"] = len(src.files.files)
    if not src.present():
        report["problems"].append("source file not found")
        return
    # CSV: lines DuckDB cannot parse go to its reject_errors table, so one bad line does not hide
    # the counts for the rest of the file; we report how many lines, never their text.
    relation = src.relation_sql(extra={"store_rejects": True}) if src.kind == "csv" else src.relation_sql()
    try:
        names = [str(r[0]) for r in src.execute(f"DESCRIBE SELECT * FROM {relation}")]
    except SourceError:
        report["problems"].append(f"source file could not be read as {src.kind.upper()}")
        return
    _check_columns(dataset, names, report)
    present = [(c, _actual(names, c.name)) for c in dataset.columns if _actual(names, c.name) is not None]
    select: list[exp.Expression] = [exp.Count(this=exp.Star())]
    for spec, actual in present:
        assert actual is not None
        select += _duck_checks(spec, actual)
    sql = f"SELECT {', '.join(e.sql(dialect='duckdb') for e in select)} FROM {relation}"
    try:
        row = src.execute(sql)[0]
    except SourceError:
        report["problems"].append(f"source file could not be read as {src.kind.upper()}")
        return
    report["rows"] = int(row[0])
    for i, (spec, _) in enumerate(present):
        counts = row[1 + 4 * i: 5 + 4 * i]
        report["columns"][spec.name].update({k: int(v or 0) for k, v in zip(_COUNT_KEYS, counts, strict=True)})
    if src.kind == "csv":
        try:
            rej = src.execute("SELECT COUNT(DISTINCT line) FROM reject_errors")
            report["malformed_lines"] = int(rej[0][0] or 0)
        except SourceError:
            report["malformed_lines"] = 0
        if report["malformed_lines"]:
            report["problems"].append(f"{report['malformed_lines']} CSV line(s) could not be parsed "
                                      "(wrong number of fields, bad quoting or encoding)")


def _actual(names: list[str], declared: str) -> str | None:
    return next((n for n in names if n.lower() == declared.lower()), None)


def _check_columns(dataset: DatasetSpec, names: list[str], report: dict[str, Any]) -> None:
    for c in dataset.columns:
        if _actual(names, c.name) is None:
            report["problems"].append(f"column '{c.name}' missing")
        else:
            report["columns"][c.name]["present"] = True


def _pg_checks(spec: ColumnSpec, actual: str, pg_type: str, report: dict[str, Any]) -> str | None:
    """SQL (psycopg ``sql.Composable``) for the four counts, or None with a problem recorded."""
    from psycopg import sql

    col = sql.Identifier(actual)
    base = pg_type.split("(")[0].strip().lower()
    is_text = base in _PG_TEXT
    nulls = sql.SQL("SUM(CASE WHEN {c} IS NULL THEN 1 ELSE 0 END)").format(c=col)
    zero = sql.SQL("0")
    type_bad, oob, undeclared = zero, zero, zero
    num: sql.Composable | None = None
    if spec.numeric:
        if base in _PG_NUMERIC:
            num = sql.SQL("CAST({c} AS NUMERIC)").format(c=col) if base == "numeric" else \
                sql.SQL("CAST({c} AS DOUBLE PRECISION)").format(c=col)
            if spec.type == "int" and base not in _PG_INT:
                type_bad = sql.SQL("SUM(CASE WHEN {c} IS NOT NULL AND {c} <> trunc({c}) THEN 1 ELSE 0 END)"
                                   ).format(c=col)
        elif is_text:
            pattern = _PG_RE_INT if spec.type == "int" else _PG_RE_FLOAT
            ok = sql.SQL("{c} ~* {p}").format(c=col, p=sql.Literal(pattern))
            type_bad = sql.SQL("SUM(CASE WHEN {c} IS NOT NULL AND NOT ({ok}) THEN 1 ELSE 0 END)").format(c=col, ok=ok)
            num = sql.SQL("(CASE WHEN {ok} THEN CAST(trim({c}) AS NUMERIC) END)").format(c=col, ok=ok)
        else:
            report["problems"].append(f"column '{spec.name}' has database type {base}, which cannot hold "
                                      f"{spec.type} values")
            return None
        assert spec.min is not None and spec.max is not None
        oob = sql.SQL("SUM(CASE WHEN {n} IS NOT NULL AND NOT ({n} >= {lo} AND {n} <= {hi}) THEN 1 ELSE 0 END)"
                      ).format(n=num, lo=sql.Literal(float(spec.min)), hi=sql.Literal(float(spec.max)))
    elif spec.type == "bool":
        if is_text:
            type_bad = sql.SQL("SUM(CASE WHEN {c} IS NOT NULL AND NOT ({c} ~* {p}) THEN 1 ELSE 0 END)").format(
                c=col, p=sql.Literal(_PG_RE_BOOL))
        elif base != "boolean":
            report["problems"].append(f"column '{spec.name}' has database type {base}, which cannot hold "
                                      "bool values")
            return None
    elif spec.type == "category" and spec.values:
        undeclared = sql.SQL("SUM(CASE WHEN {c} IS NOT NULL AND CAST({c} AS TEXT) NOT IN ({vals}) "
                             "THEN 1 ELSE 0 END)").format(
            c=col, vals=sql.SQL(", ").join(sql.Literal(v) for v in spec.values))
    return sql.SQL(", ").join([nulls, type_bad, oob, undeclared])  # type: ignore[return-value]


def _validate_postgres(src: PostgresSource, dataset: DatasetSpec, report: dict[str, Any]) -> None:
    from psycopg import sql

    try:
        types = src.column_types()
    except SourceError:
        report["problems"].append("table could not be read")
        return
    names = [n for n, _ in types]
    _check_columns(dataset, names, report)
    type_of = dict(types)
    parts: list[Any] = [sql.SQL("COUNT(*)")]
    checked: list[ColumnSpec] = []
    for spec in dataset.columns:
        actual = _actual(names, spec.name)
        if actual is None:
            continue
        checks = _pg_checks(spec, actual, type_of[actual], report)
        if checks is not None:
            parts.append(checks)
            checked.append(spec)
    query = sql.SQL("SELECT {parts} FROM {t}").format(parts=sql.SQL(", ").join(parts), t=sql.Identifier(src.table))
    try:
        row = src.execute(query.as_string(src._conn))
    except SourceError:
        report["problems"].append("table could not be read")
        return
    report["rows"] = int(row[0][0])
    for i, spec in enumerate(checked):
        counts = row[0][1 + 4 * i: 5 + 4 * i]
        report["columns"][spec.name].update({k: int(v or 0) for k, v in zip(_COUNT_KEYS, counts, strict=True)})


def _validate_lookup(src: LocalSource, dataset: DatasetSpec, report: dict[str, Any]) -> None:
    """The lookup table's left-outs, as counts and problems (the node's build leaves the same out)."""
    from xdp_compute.node.tasks.lookup import lookup_report

    spec = dataset.lookup
    assert spec is not None
    try:
        counts = lookup_report(src, dataset)
    except (XdpError, SourceError, ValueError):  # never echo engine messages
        report["problems"].append("the lookup table's rows could not be checked")
        return
    report["lookup"] = counts
    if counts["repeated_keys"]:
        report["problems"].append(f"{counts['repeated_keys']} value(s) of the lookup key '{spec.key}' are repeated "
                                  f"({counts['repeated_rows']} rows): a lookup table leaves every one of those rows "
                                  "out")
    if counts["beyond_capacity"]:
        report["problems"].append(f"{counts['beyond_capacity']} lookup key(s) beyond the declared capacity "
                                  f"{spec.capacity}: a lookup table leaves out the last in key order")
    if counts["labels_too_long"]:
        report["problems"].append(f"{counts['labels_too_long']} record(s) longer than the declared label_bytes "
                                  f"{spec.label_bytes} with all lookup columns: a lookup table leaves them out")


def validate_source(manifest: Manifest, dataset: DatasetSpec) -> dict[str, Any]:
    """Check ``dataset``'s source against its declaration; counts of violations only, never values.

    Never raises on bad data, a missing file or an unreachable database: each is a reported
    problem (``ok`` false).
    """
    ref = dataset.source_ref
    kind = ref.kind
    report = _report(dataset, kind)
    try:
        src = open_source(manifest, dataset)
    except SourceError as e:
        if kind == "postgresql":
            report["problems"].append("table not found" if "not found" in e.detail else "database unreachable")
        elif ref.layout in ("folder", "glob") or kind == "spark":
            # Listing problems (no files, a link out of the folder, mixed partition layouts) name
            # no value; say which.
            report["problems"].append(e.detail.split(": ", 1)[-1])
        else:
            report["problems"].append("source could not be opened")
        return _finish(report)
    try:
        if isinstance(src, DuckDBSource):
            _validate_duckdb(src, dataset, report)
        elif isinstance(src, PostgresSource):
            _validate_postgres(src, dataset, report)
            extra = src.write_privileges()
            if extra:
                report["warnings"].append(f"the database role can {', '.join(extra)} on the table; connect "
                                          "with a read-only role (GRANT SELECT only)")
        else:  # Spark (issue #18): the same counts, by one aggregate query in Spark SQL
            from xdp_compute.node.spark_source import SparkSource, validate_spark

            assert isinstance(src, SparkSource)
            validate_spark(src, dataset, report)
        if dataset.lookup is not None and not report["problems"]:
            _validate_lookup(src, dataset, report)
    except Exception:  # noqa: BLE001 - never raise on bad data; never echo engine messages
        report["problems"].append("source could not be validated (unexpected engine error)")
    finally:
        src.close()
    rows = report.get("rows")
    if isinstance(rows, int) and rows > dataset.max_rows:
        # max_rows is public and sizes every plan's worst case: more rows than declared could
        # overflow a total the planner promised could not.
        report["problems"].append(f"{rows} rows exceed the declared max_rows {dataset.max_rows}")
    return _finish(report)
