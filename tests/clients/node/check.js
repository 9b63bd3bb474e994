// node-postgres through the Airlock Postgres gateway (run by tests/pg_clients.rs).
//
// Usage: node check.js   with PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE set.
// Prints one JSON object with what it saw; exits 2 when `pg` is not installed.

let pg;
try {
  pg = require('pg');
} catch (e) {
  console.log(JSON.stringify({ missing: 'pg', error: String(e.message) }));
  process.exit(2);
}

async function main() {
  const client = new pg.Client({ ssl: false });
  await client.connect();
  const out = {};
  try {
    out.current_user = (await client.query('SELECT current_user AS u')).rows[0].u;

    // Parameters (node-postgres sends them with the extended protocol).
    out.param = (await client.query('SELECT name FROM people WHERE id = $1', [2])).rows[0].name;
    const r = await client.query('SELECT $1::text || $2::text AS s, $3::int + 1 AS n', ['a', 'b', 41]);
    out.params_many = [r.rows[0].s, r.rows[0].n];

    // A named prepared statement: parsed once, then bound and executed again.
    out.prepared = [];
    for (let i = 0; i < 5; i++) {
      const res = await client.query({ name: 'double', text: 'SELECT $1::int * 2 AS d', values: [i] });
      out.prepared.push(res.rows[0].d);
    }
    out.prepared_on_server = Number(
      (await client.query("SELECT count(*) AS n FROM pg_prepared_statements WHERE name = 'double'")).rows[0].n,
    );

    // A large result.
    const big = await client.query("SELECT g, repeat('x', 100) AS x FROM generate_series(1, 100000) g");
    out.large_rows = big.rowCount;
    out.large_last = big.rows[big.rows.length - 1].g;
    out.large_width = big.rows[0].x.length;

    // Several queries issued at once (queued by the client).
    out.concurrent = (
      await Promise.all([1, 2, 3, 4, 5].map((i) => client.query('SELECT $1::int AS i', [i])))
    ).map((res) => res.rows[0].i);

    // A transaction rolled back.
    await client.query('BEGIN');
    await client.query('INSERT INTO people VALUES ($1, $2)', [200, 'rolled back']);
    await client.query('ROLLBACK');
    out.after_rollback = Number((await client.query('SELECT count(*) AS n FROM people WHERE id = 200')).rows[0].n);

    // An error, then the connection goes on.
    try {
      await client.query('SELECT * FROM nowhere');
      out.error = null;
    } catch (e) {
      out.error = e.code;
    }
    try {
      await client.query({ name: 'broken', text: 'SELECT * FROM nowhere WHERE x = $1', values: [1] });
    } catch (e) {
      out.error_prepared = e.code;
    }
    out.after_error = Number((await client.query('SELECT count(*) AS n FROM people')).rows[0].n);
    out.prepared_after_error = (await client.query({ name: 'double', text: 'SELECT $1::int * 2 AS d', values: [21] })).rows[0].d;
  } finally {
    await client.end();
  }
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.log(JSON.stringify({ failed: String(e.message), code: e.code || null }));
  process.exit(1);
});
