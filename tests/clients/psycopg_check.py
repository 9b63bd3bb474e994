"""psycopg 3 through the Airlock Postgres gateway (run by tests/pg_clients.rs).

Usage: python3 psycopg_check.py CONNINFO   (or the conninfo in AIRLOCK_CONNINFO)

Prints one JSON object with what it saw; exits 2 when psycopg is missing.
"""

import json
import os
import sys

try:
    import psycopg
    from psycopg import errors
except ImportError as e:  # the Rust test turns this into "run scripts/test"
    print(json.dumps({"missing": "psycopg", "error": str(e)}))
    sys.exit(2)


def main():
    conninfo = sys.argv[1] if len(sys.argv) > 1 else os.environ["AIRLOCK_CONNINFO"]
    out = {"psycopg": psycopg.__version__}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        out["current_user"] = conn.execute("SELECT current_user").fetchone()[0]

        # Parameters (server-side binding: the extended protocol).
        row = conn.execute("SELECT name FROM people WHERE id = %s", (1,)).fetchone()
        out["param"] = row[0]
        row = conn.execute("SELECT %s::text || %s::text, %s::int + 1", ("a", "b", 41)).fetchone()
        out["params_many"] = [row[0], row[1]]

        # A prepared statement executed several times (named statement on the server).
        sums = []
        for i in range(5):
            sums.append(conn.execute("SELECT %s::int * 2", (i,), prepare=True).fetchone()[0])
        out["prepared"] = sums
        out["prepared_on_server"] = conn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE from_sql = false"
        ).fetchone()[0]

        # A large result, streamed from a server-side cursor.
        rows = 0
        width = 0
        with conn.transaction():
            with conn.cursor(name="big") as cur:
                cur.itersize = 5000
                cur.execute("SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g")
                for g, x in cur:
                    rows += 1
                    width = max(width, len(x))
                    last = g
        out["server_cursor_rows"] = rows
        out["server_cursor_last"] = last
        out["server_cursor_width"] = width
        # And the same as one client-side result.
        out["large_rows"] = len(
            conn.execute("SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g").fetchall()
        )

        # A transaction rolled back leaves nothing behind.
        with conn.transaction(force_rollback=True):
            conn.execute("INSERT INTO people VALUES (%s, %s)", (100, "rolled back"))
            out["inside_tx"] = conn.execute("SELECT count(*) FROM people WHERE id = 100").fetchone()[0]
        out["after_rollback"] = conn.execute("SELECT count(*) FROM people WHERE id = 100").fetchone()[0]
        # And a committed one stays.
        with conn.transaction():
            conn.execute("INSERT INTO people VALUES (%s, %s)", (101, "committed"))
        out["after_commit"] = conn.execute("SELECT name FROM people WHERE id = 101").fetchone()[0]

        # An error, then the connection still works.
        try:
            conn.execute("SELECT * FROM nowhere")
            out["error"] = None
        except errors.UndefinedTable as e:
            out["error"] = e.sqlstate
        # An error inside a transaction: the transaction is aborted, then rolled back.
        try:
            with conn.transaction():
                conn.execute("SELECT 1/0")
        except errors.DivisionByZero as e:
            out["error_in_tx"] = e.sqlstate
        out["after_error"] = conn.execute("SELECT count(*) FROM people").fetchone()[0]
        out["status_idle"] = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    print(json.dumps(out))


if __name__ == "__main__":
    main()
