//! The web console in headless Chromium against the real stack: an approver
//! approves a held statement from the inbox (psql then shows it ran), and an
//! auditor finds the psql session, reads its statements with the masked value
//! masked, and sees its recording intact; an approver signs in through the
//! tenant's OIDC provider (a stand-in on loopback) and approves. `tests/web/e2e.mjs`
//! drives the browser; these tests start everything around it and check what
//! psql saw.
//!
//! Needs Debian's `chromium` and `playwright-core` in `tests/web/node_modules`:
//! `scripts/test` installs both.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use airlock_core::{SessionId, TenantId};
use airlock_testkit::eventually;
use support::{Stack, admin_client};

const INSTALL: &str = "run scripts/test, which installs Chromium and playwright-core for the web tests";

/// DDL is held for the tenant's admin (the token the console signs in with)
/// or a DBA; contacts' emails are masked.
const POLICY: &str = r#"
version: 1
commands:
  - name: ddl-needs-approval
    match: { kinds: [ddl] }
    action: { review: { approvers: { subjects: ["api-key:admin"], groups: [dba] }, timeout: 10m } }
masking:
  - name: pii
    columns: ["public.contacts.email"]
    strategy: redact
"#;

const HELD: &str = "CREATE TABLE notes (id int)";
const EMAIL: &str = "ana@example.com";
const SUBJECT: &str = "agent-7";

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web")
}

fn chromium() -> PathBuf {
    std::env::var_os("AIRLOCK_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// `AIRLOCK_E2E_SCREENSHOTS`, or `web-screenshots` in the cargo target
/// directory (this test's executable is `<target>/<profile>/deps/web_ui-*`).
fn screenshots_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AIRLOCK_E2E_SCREENSHOTS") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).expect("the test runs from <target>/<profile>/deps");
    target.join("web-screenshots")
}

/// One phase of `e2e.mjs`, off the runtime's thread (the stack runs on this runtime).
async fn e2e(s: &Stack, phase: &str, shots: &Path, env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new("node");
    cmd.arg("e2e.mjs")
        .arg(phase)
        .current_dir(web_dir())
        .env("AIRLOCK_URL", &s.api)
        .env("AIRLOCK_TOKEN", &s.admin)
        .env("AIRLOCK_E2E_STATEMENT", HELD)
        .env("AIRLOCK_E2E_SUBJECT", SUBJECT)
        .env("AIRLOCK_E2E_MASKED", EMAIL)
        .env("AIRLOCK_E2E_SCREENSHOTS", shots)
        .env("AIRLOCK_CHROMIUM", chromium());
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): {INSTALL}"));
    assert!(
        out.status.success(),
        "e2e.mjs {phase} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn assert_screenshots(dir: &Path, names: &[&str]) {
    for name in names {
        let file = dir.join(format!("{name}.png"));
        let meta = std::fs::metadata(&file).unwrap_or_else(|e| panic!("no screenshot {}: {e}", file.display()));
        assert!(meta.len() > 1000, "{} is {} bytes", file.display(), meta.len());
    }
}

/// The tenant, and the session the log says was opened (there is one).
async fn the_session(s: &Stack) -> (TenantId, SessionId) {
    let (tenant, opened) = s.opened_sessions(1).await;
    assert_eq!(opened.len(), 1, "{opened:?}");
    (tenant, opened[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_approves_from_the_inbox_and_an_auditor_reads_the_session() {
    let shots = fresh_screenshots(check_browser());

    let s = Stack::start().await;
    let waiting = hold_a_statement(&s).await;

    // The approver, in the browser: the held statement in the inbox, approved.
    e2e(&s, "inbox", &shots, &[]).await;
    assert_psql_ran_it(waiting).await;
    let reviews = s.get_as("/v1/reviews", &s.admin).await;
    let review = &reviews.as_array().unwrap()[0];
    assert_eq!(review["state"], "approved");
    assert_eq!(review["decisions"][0]["by"], "api-key:admin");
    assert_eq!(review["decisions"][0]["comment"], "checked in the console");
    assert_screenshots(&shots, &["inbox", "inbox-approved", "config"]);

    // The auditor: the session in the list, its statements, the masked value
    // masked, the recording intact.
    let (tenant, session) = the_session(&s).await;
    eventually(Duration::from_secs(20), "the session's end to reach the log", || async {
        let page = s.get_as("/v1/events?from_seq=0", &s.admin).await;
        page["events"].as_array().unwrap().iter().any(|e| e["type"] == "session_closed")
    })
    .await;
    eventually(Duration::from_secs(20), "the session's recording to be signed", || async {
        matches!(s.recordings.manifest(tenant, session).await, Ok(Some(_)))
    })
    .await;
    e2e(&s, "sessions", &shots, &[("AIRLOCK_E2E_SESSION", session.to_string())]).await;
    assert_screenshots(&shots, &["sessions", "session"]);
}

/// `dir` without the screenshots of an earlier run (they must not count for
/// this one); other tests' folders inside it are left alone.
fn fresh_screenshots(dir: PathBuf) -> PathBuf {
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if entry.path().extension().is_some_and(|e| e == "png" || e == "jsonl") {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    dir
}

/// The web tests' screenshots folder, once Chromium and playwright-core are found.
fn check_browser() -> PathBuf {
    let chromium = chromium();
    assert!(chromium.is_file(), "Chromium is not installed at {}: {INSTALL}", chromium.display());
    assert!(
        web_dir().join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in {}: {INSTALL}",
        web_dir().display()
    );
    screenshots_dir()
}

/// A contacts table with a masked email, the policy, and one psql session as
/// [`SUBJECT`]: a masked read, [`HELD`] (held for review), and a read that
/// only works once it ran. Returns psql's output, once it ends.
async fn hold_a_statement(s: &Stack) -> tokio::task::JoinHandle<Output> {
    let admin = admin_client(s.db.url()).await;
    admin
        .batch_execute(&format!(
            "CREATE TABLE contacts (id int PRIMARY KEY, email text);
             INSERT INTO contacts VALUES (1, '{EMAIL}');
             GRANT SELECT ON contacts TO {t}_rw;
             GRANT CREATE ON SCHEMA public TO {t}_rw;",
            t = s.template
        ))
        .await
        .unwrap();
    s.apply_policy(POLICY).await;
    let token = s.token(SUBJECT).await;
    s.grant_role(SUBJECT, "readwrite", 900).await;

    // One psql session: a masked read, a statement held for review, and a read
    // that only works once the held statement ran.
    let mut psql = Command::new("psql");
    psql.arg(format!("host=127.0.0.1 port={} user=pg.readwrite dbname={} sslmode=require", s.pg.port(), s.db.name()))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-At"])
        .args(["-c", "SELECT id, email FROM contacts", "-c", HELD, "-c", "SELECT count(*) FROM notes"])
        .env("PGPASSWORD", &token);
    tokio::task::spawn_blocking(move || psql.output().unwrap())
}

/// psql ended once the held statement was approved, having run it.
async fn assert_psql_ran_it(waiting: tokio::task::JoinHandle<Output>) {
    let out = tokio::time::timeout(Duration::from_secs(60), waiting).await.expect("psql ends once approved").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "1|[redacted]\nCREATE TABLE\n0\n", "{stderr}");
    assert!(stderr.contains("statement held for review"), "{stderr}");
}

/// The console's client id at the stand-in provider.
const CLIENT_ID: &str = "airlock-console";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_signs_in_through_the_identity_provider_and_approves() {
    use airlock_control_plane::web::{ConsoleOidc, ConsoleOptions};
    use airlock_testkit::oidc::{OidcIssuer, TestUser};

    let shots = fresh_screenshots(check_browser().join("sso"));
    let idp = OidcIssuer::start().await.unwrap();
    let s = Stack::start_with_console(ConsoleOptions {
        oidc: Some(ConsoleOidc {
            issuer: idp.url().to_owned(),
            client_id: CLIENT_ID.into(),
            scopes: "openid profile email".into(),
        }),
    })
    .await;
    // The provider knows the console as a public client that comes back to its own page.
    idp.register_client(CLIENT_ID, &format!("{}/", s.api));
    // The tenant trusts the provider's ID tokens for the console.
    let (status, body) = s
        .post_as(
            "/v1/issuers",
            &s.admin,
            serde_json::json!({"name": "sso", "issuer_url": idp.url(), "audience": CLIENT_ID}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let waiting = hold_a_statement(&s).await;
    let idp_env = [("AIRLOCK_E2E_IDP", idp.url().to_owned())];

    // A forged state, then a changed code verifier: refused, not signed in.
    idp.sign_in_as(Some(TestUser { subject: "mallory".into(), groups: vec!["dba".into()], email: String::new() }));
    e2e(&s, "sso-refused", &shots, &idp_env).await;
    // The user refuses at the provider.
    idp.sign_in_as(None);
    e2e(&s, "sso-denied", &shots, &idp_env).await;
    let reviews = s.get_as("/v1/reviews", &s.admin).await;
    assert_eq!(reviews[0]["state"], "pending", "nothing was decided while refused: {reviews}");

    // Ana, a DBA at the provider, signs in and approves.
    idp.sign_in_as(Some(TestUser {
        subject: "ana".into(),
        groups: vec!["dba".into()],
        email: "ana@example.com".into(),
    }));
    e2e(&s, "sso", &shots, &idp_env).await;
    assert_psql_ran_it(waiting).await;
    let reviews = s.get_as("/v1/reviews", &s.admin).await;
    let review = &reviews.as_array().unwrap()[0];
    assert_eq!(review["state"], "approved");
    assert_eq!(review["decisions"][0]["by"], "ana", "{review}");
    assert_eq!(review["decisions"][0]["comment"], "approved after single sign-on");
    assert_eq!(idp.outstanding_codes(), 1, "the forged answer's code is never traded; every other one is");
    assert_screenshots(&shots, &["login-sso", "login-sso-state-mismatch", "sso-inbox", "sso-inbox-approved"]);
}
