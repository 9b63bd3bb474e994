"""psycopg 3 evicting prepared statements from its cache through the Airlock
Postgres gateway (run by tests/pg_clients.rs).

psycopg linked with a libpq before 17 evicts a statement with
`DEALLOCATE name`: a simple query, or in pipeline mode the extended protocol.
This script makes the driver take that path whatever libpq it has, keeps its
cache at three statements, and runs four in turn, then the three it still
holds again: those run by name, with no new Parse.

Usage: python3 psycopg_evict.py CONNINFO   (or the conninfo in AIRLOCK_CONNINFO)

Prints one JSON object with what it saw; exits 2 when psycopg is missing.
"""

import json
import os
import sys

try:
    import psycopg
    from psycopg import _connection_base
except ImportError as e:  # the Rust test turns this into "run scripts/test"
    print(json.dumps({"missing": "psycopg", "error": str(e)}))
    sys.exit(2)

# As with a libpq before 17: no protocol-level Close, DEALLOCATE instead.
_connection_base._HAS_SEND_CLOSE = False

QUERIES = [f"SELECT %s::int + {k}" for k in range(4)]


def run(conn, pipeline):
    seen = []

    def one(query, arg):
        if pipeline:
            with conn.pipeline():
                return conn.execute(query, (arg,)).fetchone()[0]
        return conn.execute(query, (arg,)).fetchone()[0]

    for query in QUERIES:
        seen.append(one(query, 100))
    # The first was evicted; the other three are still prepared, and run by name.
    for query in QUERIES[1:]:
        seen.append(one(query, 200))
    return seen


def main():
    conninfo = sys.argv[1] if len(sys.argv) > 1 else os.environ["AIRLOCK_CONNINFO"]
    out = {"psycopg": psycopg.__version__}
    for mode in ("plain", "pipeline"):
        with psycopg.connect(conninfo, autocommit=True, prepare_threshold=0) as conn:
            conn.prepared_max = 3
            try:
                out[mode] = run(conn, mode == "pipeline")
            except psycopg.Error as e:
                out[mode] = {"error": e.sqlstate, "message": str(e)}
            out[mode + "_prepared_on_server"] = conn.execute(
                "SELECT count(*) FROM pg_prepared_statements WHERE from_sql = false"
            ).fetchone()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
