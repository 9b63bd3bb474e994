#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! Per-session roles against the Postgres on this machine. Each test has its
//! own database; roles are cluster-wide, so templates are named `tpl_<uuid>`
//! and each test's worker id is unique, and a guard sweeps both at the end
//! (even when the test fails).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_data_plane::postgres::roles::{
    ADMIN_CONNECTIONS, RoleError, RoleManager, SessionRole, SessionRoleSpec, TlsChoice, is_session_role_name,
    session_role_name,
};
use airlock_testkit::pg::TestDb;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use tokio_postgres::{Client, NoTls};

// ---- harness ----

fn config(db: &TestDb) -> tokio_postgres::Config {
    db.url().parse().unwrap()
}

async fn admin(db: &TestDb) -> Client {
    let (client, conn) = tokio_postgres::connect(db.url(), NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

async fn manager(db: &TestDb) -> RoleManager {
    RoleManager::connect(config(db), TlsChoice::Disable).await.unwrap()
}

/// Logs in to the test database as `role` with `password`.
async fn login(db: &TestDb, role: &SessionRole) -> Result<Client, tokio_postgres::Error> {
    let mut cfg = config(db);
    cfg.user(&role.name).password(&role.password);
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn spec(worker: &str, template: &str) -> SessionRoleSpec {
    SessionRoleSpec {
        session_id: uuid::Uuid::new_v4(),
        worker_id: worker.to_owned(),
        template_role: template.to_owned(),
        valid_until: SystemTime::now() + Duration::from_millis(3_600_789),
        run: String::new(),
    }
}

/// Cleans up what a test made outside its database: the session roles of its
/// worker id(s) and its template roles. Runs in Drop, on a thread with its own
/// runtime, like TestDb's own cleanup; declare it after the TestDb so it runs
/// first (the templates hold privileges in that database).
struct Cleanup {
    url: String,
    workers: Vec<String>,
    templates: Vec<String>,
}

impl Cleanup {
    fn new(db: &TestDb) -> Cleanup {
        Cleanup { url: db.url().to_owned(), workers: Vec::new(), templates: Vec::new() }
    }

    fn worker(&mut self) -> String {
        let w = unique("test-worker");
        self.workers.push(w.clone());
        w
    }

    /// Creates a NOLOGIN template role (with extra `attributes`) and records it.
    async fn template(&mut self, admin: &Client, attributes: &str) -> String {
        let name = unique("tpl");
        self.template_named(admin, &name, attributes).await;
        name
    }

    async fn template_named(&mut self, admin: &Client, name: &str, attributes: &str) {
        admin.batch_execute(&format!("CREATE ROLE {} NOLOGIN {attributes}", quote(name))).await.unwrap();
        self.templates.push(name.to_owned());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (url, workers, templates) = (self.url.clone(), self.workers.clone(), self.templates.clone());
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let mut cfg: tokio_postgres::Config = url.parse().unwrap();
                cfg.connect_timeout(Duration::from_secs(5));
                if let Ok(m) = RoleManager::connect(cfg, TlsChoice::Disable).await {
                    for w in &workers {
                        let _ = m.sweep(w, "").await;
                    }
                }
                if let Ok((client, conn)) = tokio_postgres::connect(&url, NoTls).await {
                    tokio::spawn(conn);
                    for t in templates.iter().rev() {
                        let q = quote(t);
                        let _ = client.batch_execute(&format!("DROP OWNED BY {q}; DROP ROLE IF EXISTS {q}")).await;
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// The target's backends whose client names itself `application`.
async fn connections_of(admin: &Client, application: &str) -> i64 {
    admin
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", &[&application])
        .await
        .unwrap()
        .get(0)
}

async fn role_exists(admin: &Client, name: &str) -> bool {
    admin.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name]).await.unwrap().is_some()
}

/// The roles `name` is directly a member of.
async fn memberships(admin: &Client, name: &str) -> Vec<String> {
    admin
        .query(
            "SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid \
             JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = $1 ORDER BY 1",
            &[&name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn airlock_roles(admin: &Client) -> Vec<String> {
    admin
        .query("SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'airlock\\_%'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

// ---- SCRAM-SHA-256 verification (RFC 5802 / 7677), from sha2 alone ----

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new().chain_update(&ipad).chain_update(message).finalize();
    Sha256::new().chain_update(&opad).chain_update(inner).finalize().into()
}

/// PBKDF2-HMAC-SHA256 with one output block (SCRAM's `Hi`).
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut salt1 = salt.to_vec();
    salt1.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac_sha256(password, &salt1);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac_sha256(password, &u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

/// Whether `password` matches Postgres's stored verifier
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
fn scram_verifies(verifier: &str, password: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let rest = verifier.strip_prefix("SCRAM-SHA-256$").expect("a SCRAM verifier");
    let (params, keys) = rest.split_once('$').unwrap();
    let (iterations, salt) = params.split_once(':').unwrap();
    let (stored_key, server_key) = keys.split_once(':').unwrap();
    let salted = hi(password.as_bytes(), &b64.decode(salt).unwrap(), iterations.parse().unwrap());
    let client_key = hmac_sha256(&salted, b"Client Key");
    let computed_stored: [u8; 32] = Sha256::digest(client_key).into();
    let computed_server = hmac_sha256(&salted, b"Server Key");
    computed_stored.as_slice() == b64.decode(stored_key).unwrap().as_slice()
        && computed_server.as_slice() == b64.decode(server_key).unwrap().as_slice()
}

#[test]
fn scram_check_matches_postgres_protocol() {
    let verifier = postgres_protocol::password::scram_sha_256(b"pencil");
    assert!(scram_verifies(&verifier, "pencil"));
    assert!(!scram_verifies(&verifier, "pencil2"));
}

// ---- tests ----

#[tokio::test]
async fn created_role_has_exactly_the_template_and_a_client_computed_scram_password() {
    let db = TestDb::create().await.unwrap();
    let mut cleanup = Cleanup::new(&db);
    let admin = admin(&db).await;
    // If the gateway sent the plaintext, this database's sessions would store it
    // as md5; a SCRAM verifier in pg_authid proves it was computed client-side.
    admin.batch_execute(&format!("ALTER DATABASE {} SET password_encryption = 'md5'", quote(db.name()))).await.unwrap();
    let template = cleanup.template(&admin, "").await;
    let worker = cleanup.worker();
    let roles = manager(&db).await;
    let check: String = {
        let (c, conn) = tokio_postgres::connect(db.url(), NoTls).await.unwrap();
        tokio::spawn(conn);
        c.query_one("SHOW password_encryption", &[]).await.unwrap().get(0)
    };
    assert_eq!(check, "md5", "the database setting is in effect for new sessions");

    let spec = spec(&worker, &template);
    let role = roles.create_session_role(&spec).await.unwrap();
    assert_eq!(role.name, session_role_name(spec.session_id));
    assert!(is_session_role_name(&role.name));
    assert_eq!(role.password.len(), 43);
    assert!(!format!("{role:?}").contains(&role.password), "Debug redacts the password");

    let row = admin
        .query_one(
            "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication, rolinherit, \
                    rolconnlimit, extract(epoch FROM rolvaliduntil)::float8, rolpassword, \
                    shobj_description(oid, 'pg_authid') \
             FROM pg_authid WHERE rolname = $1",
            &[&role.name],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "LOGIN");
    for (i, attr) in [(1, "SUPERUSER"), (2, "CREATEROLE"), (3, "CREATEDB"), (4, "BYPASSRLS"), (5, "REPLICATION")] {
        assert!(!row.get::<_, bool>(i), "must not be {attr}");
    }
    assert!(row.get::<_, bool>(6), "INHERIT, so the template's privileges apply without SET ROLE");
    assert_eq!(row.get::<_, i32>(7), 1, "CONNECTION LIMIT 1");
    let valid_until: f64 = row.get(8);
    let grant_end = spec.valid_until.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(valid_until, grant_end as f64, "VALID UNTIL is the grant's end, to the second");
    let verifier: String = row.get(9);
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "stored as a SCRAM verifier");
    assert!(scram_verifies(&verifier, &role.password), "the returned password matches the stored verifier");
    assert!(!scram_verifies(&verifier, "not the password"));
    assert!(!verifier.contains(&role.password));
    let comment: String = row.get(10);
    assert!(comment.contains(&format!("worker={worker} ")), "{comment}");
    assert!(comment.contains(&format!("session={}", spec.session_id)), "{comment}");

    assert_eq!(memberships(&admin, &role.name).await, vec![template.clone()], "member of exactly the template");

    // It can log in, and only once at a time.
    let session = login(&db, &role).await.unwrap();
    let who: String = session.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(who, role.name);
    let Err(second) = login(&db, &role).await else { panic!("a second login is refused") };
    assert_eq!(second.code(), Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS));

    // Creating the same session's role twice is refused, not silently reused.
    assert!(matches!(roles.create_session_role(&spec).await, Err(RoleError::AlreadyExists(_))));

    roles.drop_session_role(&role.name).await.unwrap();
    assert!(!role_exists(&admin, &role.name).await);
    assert!(session.is_closed() || session.simple_query("SELECT 1").await.is_err(), "its backend was terminated");
}

#[tokio::test]
async fn session_role_reads_what_the_template_reads_and_cannot_write() {
    let db = TestDb::create().await.unwrap();
    let mut cleanup = Cleanup::new(&db);
    let admin = admin(&db).await;
    let template = cleanup.template(&admin, "").await;
    admin
        .batch_execute(&format!(
            "CREATE TABLE accounts (id int, owner text); INSERT INTO accounts VALUES (1, 'ada'), (2, 'bob'); \
             CREATE TABLE secrets (k text); GRANT SELECT ON accounts TO {}",
            quote(&template)
        ))
        .await
        .unwrap();
    let roles = manager(&db).await;
    let role = roles.create_session_role(&spec(&cleanup.worker(), &template)).await.unwrap();

    let session = login(&db, &role).await.unwrap();
    let rows = session.query("SELECT id FROM accounts ORDER BY id", &[]).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(), vec![1, 2]);
    let denied = session.execute("INSERT INTO accounts VALUES (3, 'eve')", &[]).await.unwrap_err();
    assert_eq!(denied.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE));
    let denied = session.query("SELECT * FROM secrets", &[]).await.unwrap_err();
    assert_eq!(denied.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE));
    let denied = session.batch_execute("CREATE TABLE mine (x int)").await.unwrap_err();
    assert_eq!(denied.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE));

    drop(session);
    roles.drop_session_role(&role.name).await.unwrap();
    assert!(!role_exists(&admin, &role.name).await);
}

#[tokio::test]
async fn templates_that_confer_power_are_refused() {
    let db = TestDb::create().await.unwrap();
    let mut cleanup = Cleanup::new(&db);
    let admin = admin(&db).await;
    let roles = manager(&db).await;
    let worker = cleanup.worker();

    let superuser = cleanup.template(&admin, "SUPERUSER").await;
    let createrole = cleanup.template(&admin, "CREATEROLE").await;
    let bypassrls = cleanup.template(&admin, "BYPASSRLS").await;
    let replication = cleanup.template(&admin, "REPLICATION").await;
    let createdb = cleanup.template(&admin, "CREATEDB").await;
    // Member of a superuser role, two levels up.
    let middle = cleanup.template(&admin, &format!("IN ROLE {}", quote(&superuser))).await;
    let indirect = cleanup.template(&admin, &format!("IN ROLE {}", quote(&middle))).await;
    // Member of a predefined role that runs programs on the server.
    let programs = cleanup.template(&admin, "IN ROLE pg_execute_server_program").await;
    // Able to grant a role to others (WITH ADMIN OPTION), itself or through a
    // role it is a member of: such a grant would outlive the session.
    let data = cleanup.template(&admin, "").await;
    let delegating = cleanup.template(&admin, "").await;
    admin.batch_execute(&format!("GRANT {} TO {} WITH ADMIN OPTION", quote(&data), quote(&delegating))).await.unwrap();
    let through = cleanup.template(&admin, &format!("IN ROLE {}", quote(&delegating))).await;

    for (template, expect) in [
        (&superuser, "SUPERUSER"),
        (&createrole, "CREATEROLE"),
        (&bypassrls, "BYPASSRLS"),
        (&replication, "REPLICATION"),
        (&createdb, "CREATEDB"),
        (&middle, "SUPERUSER"),
        (&indirect, "SUPERUSER"),
        (&programs, "server's files or programs"),
        (&delegating, "WITH ADMIN OPTION"),
        (&through, "WITH ADMIN OPTION"),
    ] {
        let spec = spec(&worker, template);
        let err = roles.create_session_role(&spec).await.unwrap_err();
        assert!(matches!(err, RoleError::TemplateTooPowerful { .. }), "{template}: {err}");
        let message = err.to_string();
        assert!(message.contains(expect) && message.contains(template.as_str()), "{message}");
        assert!(!role_exists(&admin, &session_role_name(spec.session_id)).await, "nothing created for {template}");
    }
    // The refusal names the role that confers the power.
    let err = roles.create_session_role(&spec(&worker, &indirect)).await.unwrap_err().to_string();
    assert!(err.contains(&format!("membership in \"{superuser}\"")), "{err}");

    // The manager's connection is still usable after the rolled-back attempts.
    let ok = cleanup.template(&admin, "").await;
    let role = roles.create_session_role(&spec(&worker, &ok)).await.unwrap();
    roles.drop_session_role(&role.name).await.unwrap();
}

#[tokio::test]
async fn drop_reassigns_owned_objects_and_ends_live_connections() {
    let db = TestDb::create().await.unwrap();
    let mut cleanup = Cleanup::new(&db);
    let admin = admin(&db).await;
    let template = cleanup.template(&admin, "").await;
    admin.batch_execute(&format!("GRANT CREATE ON SCHEMA public TO {}", quote(&template))).await.unwrap();
    let roles = manager(&db).await;
    let role = roles.create_session_role(&spec(&cleanup.worker(), &template)).await.unwrap();

    let session = login(&db, &role).await.unwrap();
    session
        .batch_execute(
            "CREATE TABLE made_in_session (x int); INSERT INTO made_in_session VALUES (42); \
             CREATE TEMP TABLE scratch (y int)",
        )
        .await
        .unwrap();
    session.batch_execute("BEGIN; INSERT INTO made_in_session VALUES (43)").await.unwrap();
    let owner: String = admin
        .query_one("SELECT tableowner::text FROM pg_tables WHERE tablename = 'made_in_session'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, role.name);

    // The session is live, mid-transaction, holding a lock on the table it owns.
    tokio::time::timeout(Duration::from_secs(20), roles.drop_session_role(&role.name)).await.unwrap().unwrap();
    assert!(!role_exists(&admin, &role.name).await);
    assert!(session.simple_query("SELECT 1").await.is_err(), "the live connection was terminated");
    let still_there: i64 = admin
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", &[&role.name])
        .await
        .unwrap()
        .get(0);
    assert_eq!(still_there, 0);

    // The table it made survives, owned by the template (never the admin, a
    // superuser here); the open transaction was rolled back.
    let row = admin
        .query_one(
            "SELECT tableowner::text, (SELECT array_agg(x ORDER BY x) FROM made_in_session) FROM pg_tables \
             WHERE tablename = 'made_in_session'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), template);
    assert_eq!(row.get::<_, Vec<i32>>(1), vec![42]);

    // Idempotent.
    roles.drop_session_role(&role.name).await.unwrap();
    roles.drop_session_role(&session_role_name(uuid::Uuid::new_v4())).await.unwrap();
}

/// A session that may create functions defines ones named like the built-ins
/// the admin's catalog queries call, typed to match their arguments better
/// (an aggregate over `text`, a `text` where the built-in takes `name`, an
/// `int4` where it takes `int8`). The admin's connection searches only the
/// system catalog: the drop and the sweep run none of them.
#[tokio::test]
async fn the_admin_runs_no_function_a_session_defined() {
    let db = TestDb::create().await.unwrap();
    let mut cleanup = Cleanup::new(&db);
    let admin = admin(&db).await;
    let template = cleanup.template(&admin, "").await;
    let worker = cleanup.worker();
    admin
        .batch_execute(&format!(
            "GRANT CREATE ON SCHEMA public TO {t}; CREATE TABLE ran_as (who text); \
             GRANT INSERT ON ran_as TO PUBLIC",
            t = quote(&template)
        ))
        .await
        .unwrap();
    let roles = manager(&db).await;
    let role = roles.create_session_role(&spec(&worker, &template)).await.unwrap();
    let session = login(&db, &role).await.unwrap();
    session
        .batch_execute(
            "CREATE FUNCTION public.shobj_description(oid, text) RETURNS text LANGUAGE plpgsql AS \
               $$ BEGIN INSERT INTO public.ran_as VALUES (current_user); RETURN NULL; END $$; \
             CREATE FUNCTION public.pg_terminate_backend(integer, integer) RETURNS boolean LANGUAGE plpgsql AS \
               $$ BEGIN INSERT INTO public.ran_as VALUES (current_user); RETURN false; END $$; \
             CREATE FUNCTION public.collect(text[], text) RETURNS text[] LANGUAGE plpgsql AS \
               $$ BEGIN INSERT INTO public.ran_as VALUES (current_user); RETURN $1 || $2; END $$; \
             CREATE AGGREGATE public.array_agg(text) (SFUNC = public.collect, STYPE = text[])",
        )
        .await
        .unwrap();
    // Defined where the admin's own default search path would find them.
    let defined: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'public' AND p.proname IN ('shobj_description', 'pg_terminate_backend', 'array_agg')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(defined, 3);

    let ran = async || -> Vec<String> {
        admin.query("SELECT who FROM ran_as", &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
    };
    // A drop with the session live...
    tokio::time::timeout(Duration::from_secs(20), roles.drop_session_role(&role.name)).await.unwrap().unwrap();
    assert!(!role_exists(&admin, &role.name).await);
    assert_eq!(ran().await, Vec::<String>::new(), "the drop ran the session's functions");
    // ...and a sweep of a role left behind, which reads the roles' comments.
    let left = manager(&db).await.create_session_role(&spec(&worker, &template)).await.unwrap();
    assert_eq!(manager(&db).await.sweep(&worker, "").await.unwrap(), vec![left.name.clone()]);
    assert_eq!(ran().await, Vec::<String>::new(), "the sweep ran the session's functions");
    drop(session);
}

/// An admin with CREATEROLE and no more: it makes, ends and clears session
/// roles. What a session left behind, a SECURITY DEFINER function among it,
/// runs with the template's power afterwards, not the admin's.
#[tokio::test]
async fn an_admin_without_superuser_drops_a_live_role_and_hands_its_objects_to_the_template() {
    let db = TestDb::create().await.unwrap();
    let mut cleanup = Cleanup::new(&db);
    let admin = admin(&db).await;
    let template = cleanup.template(&admin, "").await;
    admin.batch_execute(&format!("GRANT CREATE ON SCHEMA public TO {}", quote(&template))).await.unwrap();
    let creator = unique("admin");
    admin.batch_execute(&format!("CREATE ROLE {} LOGIN CREATEROLE", quote(&creator))).await.unwrap();
    cleanup.templates.push(creator.clone());
    let mut cfg = config(&db);
    cfg.user(&creator);
    let roles = RoleManager::connect(cfg, TlsChoice::Disable).await.unwrap();
    let role = roles.create_session_role(&spec(&cleanup.worker(), &template)).await.unwrap();

    let session = login(&db, &role).await.unwrap();
    session
        .batch_execute(
            "CREATE TABLE left_behind (x int); INSERT INTO left_behind VALUES (7); \
             CREATE FUNCTION whose_power() RETURNS text LANGUAGE sql SECURITY DEFINER AS 'SELECT current_user::text'",
        )
        .await
        .unwrap();
    session.batch_execute("BEGIN; INSERT INTO left_behind VALUES (8)").await.unwrap();

    tokio::time::timeout(Duration::from_secs(20), roles.drop_session_role(&role.name))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("an admin with CREATEROLE could not drop the role: {e}"));
    assert!(!role_exists(&admin, &role.name).await);
    assert!(session.simple_query("SELECT 1").await.is_err(), "the live connection was terminated");
    let row = admin
        .query_one(
            "SELECT tableowner::text, (SELECT array_agg(x) FROM left_behind), whose_power() FROM pg_tables \
             WHERE tablename = 'left_behind'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), template, "the table went to the template");
    assert_eq!(row.get::<_, Vec<i32>>(1), vec![7]);
    assert_eq!(row.get::<_, String>(2), template, "the function runs as the template, not the admin");
    let admin_is_member: bool = admin
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member \
             WHERE r.rolname = $1)",
            &[&creator],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!admin_is_member, "the admin's membership went with the role");
}

/// A session role that joined a second role (its template may grant one)
/// still hands what it owns to the template its comment names, and goes. One
/// whose comment names none (made before comments did) and that has two
/// memberships has no one template: it is left NOLOGIN, and the error says why.
#[tokio::test]
async fn a_role_with_two_memberships_goes_to_the_template_it_was_made_for() {
    let db = TestDb::create().await.unwrap();
    let mut cleanup = Cleanup::new(&db);
    let admin = admin(&db).await;
    let template = cleanup.template(&admin, "").await;
    let other = cleanup.template(&admin, "").await;
    admin.batch_execute(&format!("GRANT CREATE ON SCHEMA public TO {}", quote(&other))).await.unwrap();
    let roles = manager(&db).await;
    let role = roles.create_session_role(&spec(&cleanup.worker(), &template)).await.unwrap();
    admin.batch_execute(&format!("GRANT {} TO {}", quote(&other), quote(&role.name))).await.unwrap();
    login(&db, &role).await.unwrap().batch_execute("CREATE TABLE joined (x int)").await.unwrap();
    roles.drop_session_role(&role.name).await.unwrap();
    assert!(!role_exists(&admin, &role.name).await);
    let owner: String =
        admin.query_one("SELECT tableowner::text FROM pg_tables WHERE tablename = 'joined'", &[]).await.unwrap().get(0);
    assert_eq!(owner, template);

    let unnamed = roles.create_session_role(&spec(&cleanup.worker(), &template)).await.unwrap();
    admin.batch_execute(&format!("GRANT {} TO {}", quote(&other), quote(&unnamed.name))).await.unwrap();
    admin.batch_execute(&format!("COMMENT ON ROLE {} IS NULL", quote(&unnamed.name))).await.unwrap();
    let err = roles.drop_session_role(&unnamed.name).await.unwrap_err();
    assert!(matches!(err, RoleError::NoSingleTemplate { found: 2, .. }), "{err}");
    assert!(err.to_string().contains("member of 2 roles"), "{err}");
    let can_login: bool =
        admin.query_one("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", &[&unnamed.name]).await.unwrap().get(0);
    assert!(!can_login, "left NOLOGIN");
    admin.batch_execute(&format!("REVOKE {} FROM {}", quote(&other), quote(&unnamed.name))).await.unwrap();
    roles.drop_session_role(&unnamed.name).await.unwrap();
    assert!(!role_exists(&admin, &unnamed.name).await);
}

/// A template dropped by hand leaves its session roles members of no role:
/// one that owns nothing still goes (the sweep is not stuck on it forever),
/// one that owns objects stays NOLOGIN with its objects, saying what to do.
#[tokio::test]
async fn a_role_whose_template_was_dropped_goes_unless_it_owns_objects() {
    let db = TestDb::create().await.unwrap();
    let mut cleanup = Cleanup::new(&db);
    let admin = admin(&db).await;
    let template = cleanup.template(&admin, "").await;
    admin.batch_execute(&format!("GRANT CREATE ON SCHEMA public TO {}", quote(&template))).await.unwrap();
    let worker = cleanup.worker();
    let roles = manager(&db).await;
    let idle = roles.create_session_role(&spec(&worker, &template)).await.unwrap();
    let maker = roles.create_session_role(&spec(&worker, &template)).await.unwrap();
    let session = login(&db, &maker).await.unwrap();
    session.batch_execute("CREATE TABLE left_behind (x int); INSERT INTO left_behind VALUES (7)").await.unwrap();
    // Default privileges count as owned in the catalog, though only DROP
    // OWNED clears them: no reason to keep a role.
    let idle_session = login(&db, &idle).await.unwrap();
    idle_session.batch_execute("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC").await.unwrap();
    // The template goes, by hand: its privileges first, then the role (which
    // takes its members' memberships with it).
    admin
        .batch_execute(&format!("REVOKE CREATE ON SCHEMA public FROM {0}; DROP ROLE {0}", quote(&template)))
        .await
        .unwrap();
    assert!(memberships(&admin, &idle.name).await.is_empty());

    let err = roles.sweep(&worker, "").await.unwrap_err();
    let RoleError::SweepIncomplete { dropped, failed } = &err else { panic!("expected SweepIncomplete, got {err}") };
    assert_eq!(dropped, &vec![idle.name.clone()], "the role that owns nothing goes: {err}");
    assert_eq!(failed.len(), 1, "{err}");
    assert_eq!(failed[0].0, maker.name);
    assert!(failed[0].1.contains("member of no role") && failed[0].1.contains("REASSIGN OWNED BY"), "{err}");
    assert!(!role_exists(&admin, &idle.name).await);
    assert!(idle_session.simple_query("SELECT 1").await.is_err(), "its session was ended before it went");
    assert!(session.simple_query("SELECT 1").await.is_err(), "its session was ended all the same");
    let can_login: bool =
        admin.query_one("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", &[&maker.name]).await.unwrap().get(0);
    assert!(!can_login, "left NOLOGIN");
    let kept: i32 = admin.query_one("SELECT x FROM left_behind", &[]).await.unwrap().get(0);
    assert_eq!(kept, 7, "its objects are kept");

    // Given an owner, as the error says, the role goes at the next try.
    let heir = cleanup.template(&admin, "").await;
    admin.batch_execute(&format!("REASSIGN OWNED BY {} TO {}", quote(&maker.name), quote(&heir))).await.unwrap();
    roles.drop_session_role(&maker.name).await.unwrap();
    assert!(!role_exists(&admin, &maker.name).await);
    let owner: String = admin
        .query_one("SELECT tableowner::text FROM pg_tables WHERE tablename = 'left_behind'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, heir);
}

#[tokio::test]
async fn drop_refuses_names_that_are_not_session_roles() {
    let db = TestDb::create().await.unwrap();
    let admin = admin(&db).await;
    let roles = manager(&db).await;
    for name in [
        "postgres",
        "airlock_",
        "airlock_xyz",
        "AIRLOCK_0123456789ABCDEF0123456789ABCDEF",
        "airlock_0123456789abcdef0123456789abcdef\"; DROP ROLE postgres; --",
        "pg_read_all_data",
    ] {
        let err = roles.drop_session_role(name).await.unwrap_err();
        assert!(matches!(err, RoleError::NotASessionRole(_)), "{name}: {err}");
    }
    assert!(role_exists(&admin, "postgres").await);
}

#[tokio::test]
async fn sweep_after_a_crash_drops_this_workers_roles_and_leaves_another_workers() {
    let db = TestDb::create().await.unwrap();
    let mut cleanup = Cleanup::new(&db);
    let admin = admin(&db).await;
    let template = cleanup.template(&admin, "").await;
    let (me, other) = (cleanup.worker(), cleanup.worker());

    // A worker makes roles, one with a live session, and then dies without
    // dropping anything (its admin connection simply goes away).
    let crashed = manager(&db).await;
    let mine_a = crashed.create_session_role(&spec(&me, &template)).await.unwrap();
    let mine_b = crashed.create_session_role(&spec(&me, &template)).await.unwrap();
    let theirs = crashed.create_session_role(&spec(&other, &template)).await.unwrap();
    let live = login(&db, &mine_a).await.unwrap();
    drop(crashed);

    // Restarted with the same worker id, it sweeps.
    let restarted = manager(&db).await;
    let mut expected = vec![mine_a.name.clone(), mine_b.name.clone()];
    expected.sort();
    assert_eq!(restarted.sweep(&me, "").await.unwrap(), expected);
    assert!(!role_exists(&admin, &mine_a.name).await);
    assert!(!role_exists(&admin, &mine_b.name).await);
    assert!(live.simple_query("SELECT 1").await.is_err(), "the leftover session was ended");
    assert!(role_exists(&admin, &theirs.name).await, "another worker's role is left alone");
    assert!(login(&db, &theirs).await.is_ok(), "and still usable");

    // Sweeping again finds nothing; the other worker's own sweep finds its role.
    assert!(restarted.sweep(&me, "").await.unwrap().is_empty());
    assert_eq!(restarted.sweep(&other, "").await.unwrap(), vec![theirs.name.clone()]);
    assert!(!airlock_roles(&admin).await.iter().any(|r| [&mine_a.name, &mine_b.name, &theirs.name].contains(&r)));
}

/// A worker sweeps a target when it first needs it, while it serves: the
/// roles of its own run (live sessions) are left, an earlier run's go.
#[tokio::test]
async fn a_sweep_leaves_the_roles_of_its_own_run() {
    let db = TestDb::create().await.unwrap();
    let mut cleanup = Cleanup::new(&db);
    let admin = admin(&db).await;
    let template = cleanup.template(&admin, "").await;
    let me = cleanup.worker();
    let roles = manager(&db).await;
    let in_run = |run: &str| {
        let mut spec = spec(&me, &template);
        run.clone_into(&mut spec.run);
        spec
    };
    let earlier = roles.create_session_role(&in_run("0a")).await.unwrap();
    let unmarked = roles.create_session_role(&in_run("")).await.unwrap();
    let now = roles.create_session_role(&in_run("0b")).await.unwrap();

    let mut expected = vec![earlier.name.clone(), unmarked.name.clone()];
    expected.sort();
    assert_eq!(roles.sweep(&me, "0b").await.unwrap(), expected);
    assert!(role_exists(&admin, &now.name).await, "this run's role is left");
    assert_eq!(roles.sweep(&me, "0c").await.unwrap(), vec![now.name.clone()], "a later run sweeps it");
    assert!(matches!(roles.create_session_role(&in_run("NOT-HEX")).await, Err(RoleError::InvalidWorkerId(_))));
}

#[tokio::test]
async fn sweep_expired_drops_roles_whose_grant_has_ended() {
    let db = TestDb::create().await.unwrap();
    let mut cleanup = Cleanup::new(&db);
    let admin = admin(&db).await;
    let template = cleanup.template(&admin, "").await;
    let worker = cleanup.worker();
    let roles = manager(&db).await;
    let ended = roles.create_session_role(&spec(&worker, &template)).await.unwrap();
    let current = roles.create_session_role(&spec(&worker, &template)).await.unwrap();
    // Past its first grant's end, a session going on under a later grant.
    let relayed = roles.create_session_role(&spec(&worker, &template)).await.unwrap();
    let live = login(&db, &relayed).await.unwrap();
    // Let the grants' end pass (VALID UNTIL in the past is refused at creation).
    for role in [&ended, &relayed] {
        admin
            .batch_execute(&format!("ALTER ROLE {} VALID UNTIL '2000-01-01T00:00:00Z'", quote(&role.name)))
            .await
            .unwrap();
    }

    let swept = roles.sweep_expired().await.unwrap();
    // Another starting worker (tests run in parallel) may have swept it first:
    // what matters is that it is gone and the current one is not.
    assert!(!swept.contains(&current.name), "{swept:?}");
    assert!(!swept.contains(&relayed.name), "a role with a live backend is its worker's: {swept:?}");
    assert!(!role_exists(&admin, &ended.name).await);
    assert!(role_exists(&admin, &current.name).await);
    assert!(role_exists(&admin, &relayed.name).await);
    live.simple_query("SELECT 1").await.expect("the live session goes on");

    // Once its connection is gone (its worker with it), the role is swept.
    drop(live);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while role_exists(&admin, &relayed.name).await {
        assert!(std::time::Instant::now() < deadline, "the expired role was never swept");
        let _ = roles.sweep_expired().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut past = spec(&worker, &template);
    past.valid_until = SystemTime::now() - Duration::from_secs(1);
    assert!(matches!(roles.create_session_role(&past).await, Err(RoleError::InvalidValidUntil(_))));
}

#[tokio::test]
async fn hostile_template_names_are_quoted_never_executed() {
    let db = TestDb::create().await.unwrap();
    let mut cleanup = Cleanup::new(&db);
    let admin = admin(&db).await;
    let roles = manager(&db).await;
    let worker = cleanup.worker();

    // A name that does not exist is refused as such, and nothing runs.
    let hostile = "x\"; DROP ROLE postgres; --";
    let spec1 = spec(&worker, hostile);
    let err = roles.create_session_role(&spec1).await.unwrap_err();
    assert!(matches!(err, RoleError::TemplateNotFound(ref t) if t == hostile), "{err}");
    assert!(role_exists(&admin, "postgres").await);
    assert!(!role_exists(&admin, &session_role_name(spec1.session_id)).await);

    // A role that really has such a name is used as exactly that role.
    let odd = format!("tpl_{}\"; DROP ROLE postgres; -- '\\", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    cleanup.template_named(&admin, &odd, "").await;
    let role = roles.create_session_role(&spec(&worker, &odd)).await.unwrap();
    assert_eq!(memberships(&admin, &role.name).await, vec![odd.clone()]);
    assert!(role_exists(&admin, "postgres").await);
    roles.drop_session_role(&role.name).await.unwrap();

    // Names Postgres would truncate or cannot carry are refused before any SQL.
    for bad in ["", "a\0b", &"t".repeat(64)] {
        let err = roles.create_session_role(&spec(&worker, bad)).await.unwrap_err();
        assert!(matches!(err, RoleError::InvalidTemplateName(_)), "{bad:?}: {err}");
    }
    // So are worker ids that would make the comment ambiguous.
    let mut s = spec("w 1", &odd);
    assert!(matches!(roles.create_session_role(&s).await, Err(RoleError::InvalidWorkerId(_))));
    s.worker_id = "w'1".into();
    assert!(matches!(roles.create_session_role(&s).await, Err(RoleError::InvalidWorkerId(_))));
    assert!(matches!(roles.sweep("", "").await, Err(RoleError::InvalidWorkerId(_))));
}

#[tokio::test]
async fn admin_connection_reconnects_after_it_is_terminated() {
    let db = TestDb::create().await.unwrap();
    let mut cleanup = Cleanup::new(&db);
    let admin = admin(&db).await;
    let template = cleanup.template(&admin, "").await;
    let roles = manager(&db).await;
    let worker = cleanup.worker();
    let role = roles.create_session_role(&spec(&worker, &template)).await.unwrap();
    // Kill the manager's backend (everything in this database but our own).
    admin
        .query(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND usename = 'postgres'",
            &[],
        )
        .await
        .unwrap();
    // Once the client has seen its connection end, the next call reconnects.
    tokio::time::sleep(Duration::from_millis(200)).await;
    roles.drop_session_role(&role.name).await.unwrap();
    assert!(!role_exists(&admin, &role.name).await);
}

/// Sessions arriving together get their roles made side by side, on up to
/// `ADMIN_CONNECTIONS` admin connections, not queued on one; and dropped so.
#[tokio::test]
async fn roles_for_sessions_arriving_together_are_made_side_by_side() {
    let db = TestDb::create().await.unwrap();
    let mut cleanup = Cleanup::new(&db);
    let admin = admin(&db).await;
    let template = cleanup.template(&admin, "").await;
    // Names the manager's connections in pg_stat_activity.
    let application = unique("admins");
    let mut cfg = config(&db);
    cfg.application_name(&application);
    let roles = RoleManager::connect(cfg, TlsChoice::Disable).await.unwrap();
    let worker = cleanup.worker();
    let specs: Vec<SessionRoleSpec> = (0..12).map(|_| spec(&worker, &template)).collect();
    let made = futures::future::try_join_all(specs.iter().map(|s| roles.create_session_role(s))).await.unwrap();
    let open = connections_of(&admin, &application).await;
    assert!(open > 1, "the roles were made over {open} admin connection");
    assert!(open <= ADMIN_CONNECTIONS as i64, "{open} admin connections");
    for role in &made {
        assert!(role_exists(&admin, &role.name).await, "{}", role.name);
    }
    futures::future::try_join_all(made.iter().map(|r| roles.drop_session_role(&r.name))).await.unwrap();
    for role in &made {
        assert!(!role_exists(&admin, &role.name).await, "{}", role.name);
    }
}

/// An admin role the target lets open only two connections: the calls
/// beyond them wait for one of those instead of failing, on a runtime of
/// several threads where calls look for a connection side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_role_with_a_connection_limit_is_kept_to_it() {
    let db = TestDb::create().await.unwrap();
    let mut cleanup = Cleanup::new(&db);
    let admin = admin(&db).await;
    let template = cleanup.template(&admin, "").await;
    // Not a superuser, whom the limit would not bind.
    let limited = unique("admin");
    admin.batch_execute(&format!("CREATE ROLE {} LOGIN CREATEROLE CONNECTION LIMIT 2", quote(&limited))).await.unwrap();
    cleanup.templates.push(limited.clone());
    let application = unique("limited");
    let mut cfg = config(&db);
    cfg.user(&limited).application_name(&application);
    let roles = Arc::new(RoleManager::connect(cfg, TlsChoice::Disable).await.unwrap());
    let worker = cleanup.worker();
    let calls = (0..12).map(|_| {
        let (roles, spec) = (roles.clone(), spec(&worker, &template));
        tokio::spawn(async move { roles.create_session_role(&spec).await })
    });
    for made in futures::future::join_all(calls).await {
        let role = made.unwrap().unwrap_or_else(|e| panic!("a call failed instead of waiting: {e}"));
        assert!(role_exists(&admin, &role.name).await);
    }
    let open = connections_of(&admin, &application).await;
    assert_eq!(open, 2);
}

/// TLS on the admin connection with rustls, verifying the server's certificate
/// (this machine's Postgres serves Debian's snakeoil certificate for
/// `localhost`). Skipped if that certificate is not there.
#[tokio::test]
async fn admin_connection_over_verified_tls() {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    let Ok(cert) = CertificateDer::from_pem_file("/etc/ssl/certs/ssl-cert-snakeoil.pem") else {
        eprintln!("no snakeoil certificate; skipping");
        return;
    };
    let db = TestDb::create().await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );

    let url = config(&db);
    // `host` is the name the certificate is checked against; `hostaddr` where to connect.
    let cfg = |host: &str| {
        let mut cfg = tokio_postgres::Config::new();
        cfg.user(url.get_user().unwrap())
            .dbname(db.name())
            .port(url.get_ports().first().copied().unwrap_or(5432))
            .host(host)
            .hostaddr("127.0.0.1".parse().unwrap())
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        cfg
    };
    let roles = RoleManager::connect(cfg("localhost"), TlsChoice::Rustls { config: tls.clone(), names_checked: true })
        .await
        .unwrap();
    assert!(roles.connection_uses_tls().await.unwrap());

    // A name the certificate does not cover is refused.
    let err =
        RoleManager::connect(cfg("not-localhost.invalid"), TlsChoice::Rustls { config: tls, names_checked: true })
            .await
            .unwrap_err();
    assert!(matches!(err, RoleError::Connect(ref m) if m.contains("certificate")), "{err}");

    // TLS required without a TLS implementation is refused, not downgraded.
    let err = RoleManager::connect(cfg("localhost"), TlsChoice::Disable).await.unwrap_err();
    assert!(matches!(err, RoleError::Connect(_)), "{err}");
}

/// REASSIGN/DROP OWNED act on one database: a role that made objects in
/// another database cannot be dropped from the connection's database. The
/// failure names the problem, the role stays NOLOGIN, the sweep still drops
/// the worker's other roles, and a manager on that other database finishes it.
#[tokio::test]
async fn objects_in_another_database_are_reported_and_do_not_block_the_sweep() {
    let db = TestDb::create().await.unwrap();
    let mut cleanup = Cleanup::new(&db);
    let other_db = TestDb::create().await.unwrap(); // dropped before `cleanup` runs
    let admin = admin(&db).await;
    let other_admin = self::admin(&other_db).await;
    let template = cleanup.template(&admin, "").await;
    other_admin.batch_execute(&format!("GRANT CREATE ON SCHEMA public TO {}", quote(&template))).await.unwrap();
    let worker = cleanup.worker();
    let roles = manager(&db).await;
    let stray = roles.create_session_role(&spec(&worker, &template)).await.unwrap();
    let plain = roles.create_session_role(&spec(&worker, &template)).await.unwrap();
    {
        let elsewhere = login(&other_db, &stray).await.unwrap();
        elsewhere.batch_execute("CREATE TABLE made_elsewhere (x int)").await.unwrap();
    }

    let err = roles.drop_session_role(&stray.name).await.unwrap_err();
    assert!(matches!(err, RoleError::StillReferenced { .. }), "{err}");
    assert!(err.to_string().contains(other_db.name()), "names the database: {err}");
    let can_login: bool =
        admin.query_one("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", &[&stray.name]).await.unwrap().get(0);
    assert!(!can_login, "left NOLOGIN");
    let members: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid WHERE r.rolname = $1",
            &[&stray.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(members, 0, "a failed drop leaves no one a member of the role (the admin took it only to drop it)");

    match roles.sweep(&worker, "").await.unwrap_err() {
        RoleError::SweepIncomplete { dropped, failed } => {
            assert_eq!(dropped, vec![plain.name.clone()]);
            assert_eq!(failed.len(), 1);
            assert_eq!(failed[0].0, stray.name);
        }
        other => panic!("expected SweepIncomplete, got {other}"),
    }
    assert!(!role_exists(&admin, &plain.name).await);

    let there = manager(&other_db).await;
    there.drop_session_role(&stray.name).await.unwrap();
    assert!(!role_exists(&admin, &stray.name).await);
}
