"""psycopg 3 reading masked columns through the Airlock Postgres gateway (run
by tests/pg_masking.rs): text and binary results, a statement prepared on the
server, and the refusals. Prints one JSON object with what it saw."""

import json
import sys

try:
    import psycopg
except ImportError as e:
    print(json.dumps({"missing": "psycopg", "error": str(e)}))
    sys.exit(2)


def sqlstate(conn, sql, params=(), binary=False):
    try:
        conn.cursor(binary=binary).execute(sql, params).fetchall()
        return "ran"
    except psycopg.Error as e:
        return e.sqlstate


def main():
    out = {}
    select = "SELECT id, email, ssn, card FROM customers WHERE id = %s"
    with psycopg.connect(sys.argv[1], autocommit=True) as conn:
        out["text"] = list(conn.execute(select, (1,)).fetchone())
        out["binary"] = list(conn.cursor(binary=True).execute(select, (1,)).fetchone())
        out["prepared"] = [
            conn.execute("SELECT email FROM customers WHERE id = %s", (i,), prepare=True).fetchone()[0]
            for i in (1, 2, 1)
        ]
        out["binary_array"] = sqlstate(conn, "SELECT array_agg(notes) FROM customers", binary=True)
        out["filter"] = sqlstate(conn, "SELECT id FROM customers WHERE ssn = %s", ("123-45-6789",))
        out["after"] = conn.execute("SELECT name FROM customers WHERE id = 1").fetchone()[0]
    print(json.dumps(out))


main()
