//! The client verbs: talk to the REST API at `AIRLOCK_URL` with the bearer
//! token in `AIRLOCK_TOKEN`, print what came back, and exit non-zero on errors.
//! An `https://` server's certificate is checked against `AIRLOCK_CA_FILE`
//! when it is set; the token goes over `http://` only to this machine, unless
//! `AIRLOCK_CLEARTEXT_OFF_LOOPBACK=true`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Subcommand)]
pub enum ConnectionsCommand {
    /// List connections.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one connection.
    Get { connection: String },
    /// Register a connection from a JSON file (`-` for standard input).
    Add { file: PathBuf },
    /// Replace a connection's settings from a JSON file.
    Update { connection: String, file: PathBuf },
    /// Remove a connection.
    Remove { connection: String },
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Apply a policy document (YAML).
    Apply { file: PathBuf },
    /// Print the current policy document.
    Get,
}

#[derive(Subcommand)]
pub enum IssuersCommand {
    List,
    /// Trust an OIDC issuer's tokens.
    Add {
        name: String,
        #[arg(long)]
        issuer_url: String,
        #[arg(long)]
        audience: String,
        #[arg(long)]
        subject_claim: Option<String>,
        #[arg(long)]
        groups_claim: Option<String>,
        /// human or workload.
        #[arg(long)]
        kind: Option<String>,
    },
    Remove {
        issuer: String,
    },
}

#[derive(Subcommand)]
pub enum TenantsCommand {
    List,
    /// Create a tenant; prints its admin token once.
    Create {
        name: String,
    },
}

#[derive(Args)]
pub struct TokenArgs {
    #[arg(long)]
    subject: String,
    /// A group (repeat for several).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// Lifetime, e.g. 15m or 1h.
    #[arg(long, default_value = "15m")]
    ttl: String,
}

#[derive(Args)]
pub struct GrantArgs {
    /// Connection name or id.
    connection: String,
    /// The principal's subject.
    #[arg(long)]
    subject: String,
    #[arg(long)]
    role: String,
    /// Lifetime, e.g. 15m or 1h.
    #[arg(long, default_value = "15m")]
    ttl: String,
    #[arg(long, default_value = "")]
    reason: String,
    /// The issuer that must vouch for the subject (default: any the tenant trusts).
    #[arg(long)]
    issuer: Option<String>,
}

#[derive(Args)]
pub struct RequestArgs {
    /// Connection name or id.
    connection: String,
    #[arg(long)]
    role: String,
    /// Lifetime, e.g. 15m or 1h (policy sets the maximum).
    #[arg(long, default_value = "15m")]
    ttl: String,
    #[arg(long, default_value = "")]
    reason: String,
    /// When the request needs review, wait for the decision.
    #[arg(long)]
    wait: bool,
}

#[derive(Args)]
pub struct DecideArgs {
    /// The review's id (an access request's review has the request's id).
    review: String,
    #[arg(long, default_value = "")]
    comment: String,
    /// For a held statement: approve identical statements for the rest of the grant.
    #[arg(long)]
    for_grant: bool,
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn from_env() -> anyhow::Result<Self> {
        let base = std::env::var("AIRLOCK_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
        let token = std::env::var("AIRLOCK_TOKEN").context(
            "set AIRLOCK_TOKEN to an access token (airlock up writes an admin token to DATA_DIR/admin.token)",
        )?;
        let http = http_client(&base)?;
        Ok(Self { http, base: base.trim_end_matches('/').to_owned(), token: token.trim().to_owned() })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response =
            request.bearer_auth(&self.token).send().await.with_context(|| format!("reaching {}", self.base))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(text);
            anyhow::bail!("{} {}", status.as_u16(), message);
        }
        if text.is_empty() { Ok(Value::Null) } else { Ok(serde_json::from_str(&text)?) }
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body)).await
    }

    async fn put_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body)).await
    }

    async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.delete(format!("{}{path}", self.base))).await
    }
}

/// The HTTP client for the REST API at `base`: see the module's comment.
fn http_client(base: &str) -> anyhow::Result<reqwest::Client> {
    let url = reqwest::Url::parse(base).with_context(|| format!("AIRLOCK_URL is not a URL: {base}"))?;
    match url.scheme() {
        "https" => {}
        "http" => {
            let host = url.host_str().unwrap_or_default();
            let allowed = std::env::var("AIRLOCK_CLEARTEXT_OFF_LOOPBACK").is_ok_and(|v| v == "true");
            anyhow::ensure!(
                airlock_proto::transport::is_loopback_ip(host) || allowed,
                "AIRLOCK_URL is {base}: over http:// to another machine, AIRLOCK_TOKEN would cross the network \
                 readable; use https://, or set AIRLOCK_CLEARTEXT_OFF_LOOPBACK=true where the network encrypts on \
                 its own (only a loopback address, such as 127.0.0.1, counts as this machine)"
            );
        }
        _ => anyhow::bail!("AIRLOCK_URL must be an http:// or https:// URL: {base}"),
    }
    // No redirects: one could take the token, or a connection's credentials,
    // to where the checks above were not made.
    let mut builder =
        reqwest::Client::builder().timeout(Duration::from_secs(60)).redirect(reqwest::redirect::Policy::none());
    if let Some(path) = std::env::var_os("AIRLOCK_CA_FILE").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        // Checked first, for errors that name the file and what is wrong with it.
        airlock_proto::transport::ca_file_roots(&path).context("AIRLOCK_CA_FILE")?;
        let pem = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("AIRLOCK_CA_FILE: parsing {}", path.display()))?;
        // Only the given CA: a server of Airlock's is certified by the operator's CA.
        builder = builder.tls_built_in_root_certs(false);
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().context("setting up the HTTP client")
}

fn read_input(file: &PathBuf) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    }
}

fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }
        })
        .collect()
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// Prints rows as aligned columns.
fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row);
    }
}

pub async fn connections(cmd: ConnectionsCommand) -> anyhow::Result<ExitCode> {
    let c = Client::from_env()?;
    match cmd {
        ConnectionsCommand::List { json } => {
            let list = c.get("/v1/connections").await?;
            if json {
                print_json(&list);
            } else {
                let rows = list
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|c| {
                                let roles = c
                                    .get("roles")
                                    .and_then(Value::as_object)
                                    .map(|r| r.keys().cloned().collect::<Vec<_>>().join(","))
                                    .unwrap_or_default();
                                vec![text(c, "name"), text(c, "kind"), text(c, "address"), text(c, "database"), roles]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                table(&["NAME", "KIND", "ADDRESS", "DATABASE", "ROLES"], rows);
            }
        }
        ConnectionsCommand::Get { connection } => {
            print_json(&c.get(&format!("/v1/connections/{}", path_segment(&connection))).await?)
        }
        ConnectionsCommand::Add { file } => {
            let body: Value = serde_json::from_str(&read_input(&file)?).context("the connection file is not JSON")?;
            let created = c.post("/v1/connections", &body).await?;
            println!("registered connection {} ({})", text(&created, "name"), text(&created, "id"));
        }
        ConnectionsCommand::Update { connection, file } => {
            let body: Value = serde_json::from_str(&read_input(&file)?).context("the connection file is not JSON")?;
            let updated = c.put_json(&format!("/v1/connections/{}", path_segment(&connection)), &body).await?;
            println!("updated connection {}", text(&updated, "name"));
        }
        ConnectionsCommand::Remove { connection } => {
            c.delete(&format!("/v1/connections/{}", path_segment(&connection))).await?;
            println!("removed connection {connection}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn policy(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    let c = Client::from_env()?;
    match cmd {
        PolicyCommand::Apply { file } => {
            let source = read_input(&file)?;
            let request = c
                .http
                .put(format!("{}/v1/policy", c.base))
                .header(reqwest::header::CONTENT_TYPE, "application/yaml")
                .body(source);
            let applied = c.send(request).await?;
            println!("applied policy version {} (seq {})", text(&applied, "version"), text(&applied, "seq"));
        }
        PolicyCommand::Get => print!("{}", text(&c.get("/v1/policy").await?, "source")),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn issuers(cmd: IssuersCommand) -> anyhow::Result<ExitCode> {
    let c = Client::from_env()?;
    match cmd {
        IssuersCommand::List => {
            let list = c.get("/v1/issuers").await?;
            let rows = list
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|i| {
                            vec![text(i, "name"), text(i, "issuer_url"), text(i, "audience"), text(i, "subject_claim")]
                        })
                        .collect()
                })
                .unwrap_or_default();
            table(&["NAME", "ISSUER", "AUDIENCE", "SUBJECT CLAIM"], rows);
        }
        IssuersCommand::Add { name, issuer_url, audience, subject_claim, groups_claim, kind } => {
            let body = serde_json::json!({
                "name": name, "issuer_url": issuer_url, "audience": audience,
                "subject_claim": subject_claim, "groups_claim": groups_claim, "principal_kind": kind,
            });
            let created = c.post("/v1/issuers", &body).await?;
            println!("trusting {} for audience {}", text(&created, "issuer_url"), text(&created, "audience"));
        }
        IssuersCommand::Remove { issuer } => {
            c.delete(&format!("/v1/issuers/{}", path_segment(&issuer))).await?;
            println!("removed issuer {issuer}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn tenants(cmd: TenantsCommand) -> anyhow::Result<ExitCode> {
    let c = Client::from_env()?;
    match cmd {
        TenantsCommand::List => {
            let list = c.get("/v1/tenants").await?;
            let rows = list
                .as_array()
                .map(|a| a.iter().map(|t| vec![text(t, "name"), text(t, "id"), text(t, "seq")]).collect())
                .unwrap_or_default();
            table(&["NAME", "ID", "SEQ"], rows);
        }
        TenantsCommand::Create { name } => {
            let created = c.post("/v1/tenants", &serde_json::json!({"name": name})).await?;
            let tenant = created.get("tenant").cloned().unwrap_or_default();
            eprintln!(
                "created tenant {} ({}); its admin token (shown once):",
                text(&tenant, "name"),
                text(&tenant, "id")
            );
            println!("{}", text(&created, "admin_token"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let c = Client::from_env()?;
    let ttl = airlock_core::duration::parse(&args.ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
    let body = serde_json::json!({"subject": args.subject, "groups": args.groups, "ttl_seconds": ttl.as_secs()});
    let minted = c.post("/v1/tokens", &body).await?;
    println!("{}", text(&minted, "token"));
    Ok(ExitCode::SUCCESS)
}

pub async fn grant(args: GrantArgs) -> anyhow::Result<ExitCode> {
    let c = Client::from_env()?;
    let ttl = airlock_core::duration::parse(&args.ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
    let body = serde_json::json!({
        "subject": args.subject, "issuer": args.issuer, "connection": args.connection, "role": args.role,
        "ttl_seconds": ttl.as_secs(), "reason": args.reason,
    });
    let g = c.post("/v1/grants", &body).await?;
    println!("{}", text(&g, "id"));
    eprintln!(
        "granted {} role {} on {} until {}",
        text(&g, "subject"),
        text(&g, "role"),
        text(&g, "connection"),
        format_unix(g.get("expires_at_unix").and_then(Value::as_i64).unwrap_or_default())
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn grants() -> anyhow::Result<ExitCode> {
    let c = Client::from_env()?;
    let list = c.get("/v1/grants").await?;
    let rows = list
        .as_array()
        .map(|a| {
            a.iter()
                .map(|g| {
                    let until = format_unix(g.get("expires_at_unix").and_then(Value::as_i64).unwrap_or_default());
                    vec![
                        text(g, "id"),
                        text(g, "subject"),
                        text(g, "connection"),
                        text(g, "role"),
                        until,
                        text(g, "state"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["ID", "SUBJECT", "CONNECTION", "ROLE", "UNTIL", "STATE"], rows);
    Ok(ExitCode::SUCCESS)
}

pub async fn revoke(grant: &str, reason: &str) -> anyhow::Result<ExitCode> {
    let c = Client::from_env()?;
    c.post(&format!("/v1/grants/{}/revoke", path_segment(grant)), &serde_json::json!({"reason": reason})).await?;
    println!("revoked grant {grant}");
    Ok(ExitCode::SUCCESS)
}

/// Asks for access; prints the request's id, then what happened to it on
/// stderr. Exits non-zero unless the grant is active (or, without `--wait`,
/// pending review).
pub async fn request(args: RequestArgs) -> anyhow::Result<ExitCode> {
    let c = Client::from_env()?;
    let ttl = airlock_core::duration::parse(&args.ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
    let body = serde_json::json!({
        "connection": args.connection, "role": args.role, "ttl_seconds": ttl.as_secs(), "reason": args.reason,
    });
    let mut q = c.post("/v1/access-requests", &body).await?;
    let id = text(&q, "id");
    println!("{id}");
    if text(&q, "state") == "pending" {
        let review = q.get("review").cloned().unwrap_or_default();
        eprintln!(
            "pending review by {} (quorum {}) under rule {}; approvers run: airlock approve {id}",
            approvers_text(&review),
            text(&review, "quorum"),
            text(&q, "rule"),
        );
        if !args.wait {
            return Ok(ExitCode::SUCCESS);
        }
        while text(&q, "state") == "pending" {
            q = c.get(&format!("/v1/access-requests/{}?wait_ms=25000", path_segment(&id))).await?;
        }
    }
    let state = text(&q, "state");
    if state == "active" {
        let grant = q.get("grant").cloned().unwrap_or_default();
        eprintln!(
            "granted role {} on {} until {} (rule {}, by {})",
            text(&q, "role"),
            text(&q, "connection"),
            format_unix(grant.get("expires_at_unix").and_then(Value::as_i64).unwrap_or_default()),
            text(&q, "rule"),
            text(&grant, "granted_by"),
        );
        return Ok(ExitCode::SUCCESS);
    }
    let why = q
        .get("review")
        .and_then(|r| r.get("decisions"))
        .and_then(Value::as_array)
        .and_then(|d| d.iter().find(|d| d.get("approve") == Some(&Value::Bool(false))))
        .map(|d| format!(" by {}: {}", text(d, "by"), text(d, "comment")))
        .unwrap_or_default();
    eprintln!("request {id} was {state}{why}");
    Ok(ExitCode::FAILURE)
}

fn approvers_text(review: &Value) -> String {
    let list = |key: &str| -> Vec<String> {
        review.get(key).and_then(Value::as_array).map(|a| a.iter().map(text_of).collect()).unwrap_or_default()
    };
    let mut parts = Vec::new();
    let groups = list("approver_groups");
    if !groups.is_empty() {
        parts.push(format!("a member of {}", groups.join(", ")));
    }
    let subjects = list("approver_subjects");
    if !subjects.is_empty() {
        parts.push(subjects.join(", "));
    }
    parts.join(" or ")
}

fn text_of(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

pub async fn decide(args: DecideArgs, approve: bool) -> anyhow::Result<ExitCode> {
    let c = Client::from_env()?;
    let scope = if args.for_grant { "grant" } else { "once" };
    let body = serde_json::json!({"approve": approve, "comment": args.comment, "scope": scope});
    let r = c.post(&format!("/v1/reviews/{}/decision", path_segment(&args.review)), &body).await?;
    println!(
        "review {} is {} ({} of {} approvals)",
        text(&r, "id"),
        text(&r, "state"),
        text(&r, "approvals"),
        text(&r, "quorum")
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn reviews(all: bool, json: bool) -> anyhow::Result<ExitCode> {
    let c = Client::from_env()?;
    let list = c.get(if all { "/v1/reviews" } else { "/v1/reviews?pending_for_me=true" }).await?;
    if json {
        print_json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = list
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    let what = if text(r, "kind") == "command" {
                        let statement = text(r, "statement");
                        let short: String = statement.chars().take(60).collect();
                        if short.len() < statement.len() { format!("{short}...") } else { short }
                    } else {
                        format!("role {} for {}", text(r, "role"), text(r, "ttl_seconds"))
                    };
                    vec![
                        text(r, "id"),
                        text(r, "state"),
                        text(r, "requester"),
                        text(r, "connection"),
                        what,
                        format!("{}/{}", text(r, "approvals"), text(r, "quorum")),
                        format_unix(r.get("expires_at_unix").and_then(Value::as_i64).unwrap_or_default()),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["ID", "STATE", "REQUESTER", "CONNECTION", "WHAT", "APPROVALS", "UNTIL"], rows);
    Ok(ExitCode::SUCCESS)
}

fn format_unix(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

pub async fn events(from_seq: u64, follow: bool, json: bool) -> anyhow::Result<ExitCode> {
    let c = Client::from_env()?;
    let mut next = from_seq.max(1);
    if !json {
        println!("{:>6}  {:<24}  {:<22}  {:<24}  HASH", "SEQ", "TYPE", "ACTOR", "OCCURRED AT");
    }
    loop {
        let wait = if follow { "&wait_ms=25000" } else { "" };
        let page = c.get(&format!("/v1/events?from_seq={next}{wait}")).await?;
        let events = page.get("events").and_then(Value::as_array).cloned().unwrap_or_default();
        for e in &events {
            if json {
                println!("{}", serde_json::to_string(e)?);
            } else {
                let hash = text(e, "hash");
                println!(
                    "{:>6}  {:<24}  {:<22}  {:<24}  {}",
                    text(e, "seq"),
                    text(e, "type"),
                    text(e, "actor"),
                    text(e, "occurred_at"),
                    hash.get(..16).unwrap_or(&hash)
                );
            }
            next = e.get("seq").and_then(Value::as_u64).map_or(next, |s| s + 1);
        }
        if events.is_empty() && !follow {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Recomputes the chain from the events the API returns: an edited, missing or
/// reordered event is named by its `seq`.
pub async fn verify() -> anyhow::Result<ExitCode> {
    let c = Client::from_env()?;
    let tenants = c.get("/v1/tenants").await?;
    let tenant_id = tenants
        .as_array()
        .and_then(|a| a.first())
        .map(|t| text(t, "id"))
        .context("the token's tenant is not visible")?;
    let mut verifier = airlock_core::chain::Verifier::new();
    let mut next = 1u64;
    let b64 = base64::engine::general_purpose::STANDARD;
    loop {
        let page = c.get(&format!("/v1/events?from_seq={next}&limit=10000")).await?;
        let events = page.get("events").and_then(Value::as_array).cloned().unwrap_or_default();
        if events.is_empty() {
            break;
        }
        for e in &events {
            let seq = e.get("seq").and_then(Value::as_u64).context("an event without seq")?;
            let header = airlock_core::chain::Header {
                tenant_id: &tenant_id,
                seq,
                stream: &text(e, "stream"),
                stream_version: e.get("stream_version").and_then(Value::as_u64).unwrap_or_default(),
                occurred_at_unix_ms: e.get("occurred_at_unix_ms").and_then(Value::as_i64).unwrap_or_default(),
                actor: &text(e, "actor"),
            };
            let payload =
                b64.decode(text(e, "payload")).with_context(|| format!("seq {seq}: payload is not base64"))?;
            let prev = hex::decode(text(e, "prev_hash")).with_context(|| format!("seq {seq}: prev_hash is not hex"))?;
            let hash = hex::decode(text(e, "hash")).with_context(|| format!("seq {seq}: hash is not hex"))?;
            if let Err(err) = verifier.check(&header, &payload, &prev, &hash) {
                eprintln!("chain broken at seq {}: {err}", err.seq());
                return Ok(ExitCode::FAILURE);
            }
            next = seq + 1;
        }
    }
    println!("chain intact: {} events verified", verifier.verified());
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct SessionsArgs {
    /// The principal's subject.
    #[arg(long)]
    principal: Option<String>,
    /// Connection name or id.
    #[arg(long)]
    connection: Option<String>,
    /// Opened at or after (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Opened at or before (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// open, completed (the client ended it) or terminated (Airlock ended it).
    #[arg(long)]
    outcome: Option<String>,
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

/// `key=value&...`, percent-encoded, of the values that are set.
fn query_string(pairs: &[(&str, Option<&str>)]) -> String {
    let mut q = form_urlencoded_pairs(pairs);
    if !q.is_empty() {
        q.insert(0, '?');
    }
    q
}

fn form_urlencoded_pairs(pairs: &[(&str, Option<&str>)]) -> String {
    pairs.iter().filter_map(|(k, v)| v.map(|v| format!("{k}={}", path_segment(v)))).collect::<Vec<_>>().join("&")
}

pub async fn sessions(args: SessionsArgs) -> anyhow::Result<ExitCode> {
    let c = Client::from_env()?;
    let limit = args.limit.to_string();
    let q = query_string(&[
        ("principal", args.principal.as_deref()),
        ("connection", args.connection.as_deref()),
        ("since", args.since.as_deref()),
        ("until", args.until.as_deref()),
        ("outcome", args.outcome.as_deref()),
        ("limit", Some(limit.as_str())),
    ]);
    let page = c.get(&format!("/v1/sessions{q}")).await?;
    let sessions = page.get("sessions").and_then(Value::as_array).cloned().unwrap_or_default();
    if args.json {
        for s in &sessions {
            println!("{}", serde_json::to_string(s)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rows = sessions
        .iter()
        .map(|s| {
            let duration = s.get("duration_ms").and_then(Value::as_u64).map(format_ms).unwrap_or_default();
            vec![
                text(s, "id"),
                text(s, "opened_at"),
                text(s, "subject"),
                text(s, "connection"),
                text(s, "target_role"),
                duration,
                text(s, "outcome"),
                text(s, "close_reason"),
            ]
        })
        .collect();
    table(&["ID", "OPENED", "PRINCIPAL", "CONNECTION", "ROLE", "DURATION", "OUTCOME", "REASON"], rows);
    Ok(ExitCode::SUCCESS)
}

fn format_ms(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
    }
}

/// Prints a session's timeline, a page at a time: what was run, what policy
/// decided, what came back.
pub async fn replay(session: &str, json: bool) -> anyhow::Result<ExitCode> {
    use airlock_recorder::timeline::Entry;
    let c = Client::from_env()?;
    let id = path_segment(session);
    let mut after = 0u64;
    loop {
        let page = c.get(&format!("/v1/sessions/{id}/timeline?after={after}&limit=500")).await?;
        let entries: Vec<Entry> =
            serde_json::from_value(page.get("entries").cloned().unwrap_or(Value::Array(Vec::new())))
                .context("reading the timeline")?;
        for entry in &entries {
            if json {
                println!("{}", serde_json::to_string(entry)?);
            } else {
                print!("{}", render_entry(entry));
            }
        }
        let live = page.get("live").and_then(Value::as_bool).unwrap_or(false);
        match page.get("next").and_then(Value::as_u64) {
            Some(next) if next != after || !entries.is_empty() => after = next,
            _ => {
                if live && !json {
                    println!("(the session is still open)");
                }
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

/// Rows shown per statement in the terminal.
const SHOWN_ROWS: usize = 10;

/// One timeline entry for a terminal: time, decision, rule, statement, a few rows, the outcome.
fn render_entry(e: &airlock_recorder::timeline::Entry) -> String {
    use airlock_recorder::timeline::Kind;
    use std::fmt::Write;
    let mut out = String::new();
    let time = e.at.get(11..23).unwrap_or(&e.at);
    let indent = " ".repeat(time.len() + 2);
    match e.kind {
        Kind::End => {
            let _ = writeln!(out, "{time}  END");
            return out;
        }
        Kind::Notice => {
            if let Some(n) = &e.error {
                let _ = writeln!(out, "{time}  {:<6}  {}", n.severity, n.message);
            }
            return out;
        }
        Kind::Statement => {}
    }
    let (badge, rule) = match &e.decision {
        Some(d) => (d.verdict.to_uppercase(), d.rule.clone()),
        None => ("-".to_owned(), String::new()),
    };
    let duration = e.duration_ms.map(|d| format!("  ({d:.1} ms)")).unwrap_or_default();
    let statement = e.statement.as_deref().unwrap_or("(statement not known)");
    let rule = if rule.is_empty() { String::new() } else { format!("[{rule}] ") };
    let _ = writeln!(out, "{time}  {badge:<6}  {rule}{}{duration}", statement.replace('\n', "\n  "));
    let repeated = |reason: &str| e.error.as_ref().is_some_and(|error| error.message.contains(reason));
    if let Some(d) = &e.decision
        && (!d.approver.is_empty() || (d.verdict == "deny" && !repeated(&d.reason)))
    {
        let who = if d.approver.is_empty() { String::new() } else { format!(" approved by {}", d.approver) };
        let _ = writeln!(out, "{indent}{}{who}", d.reason);
    }
    if let Some(params) = &e.parameters
        && !params.is_empty()
    {
        let shown: Vec<String> = params.iter().map(|p| p.clone().unwrap_or_else(|| "NULL".into())).collect();
        let _ = writeln!(out, "{indent}parameters: {}", shown.join(", "));
    }
    if let (Some(columns), Some(rows)) = (&e.columns, &e.rows) {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .take(SHOWN_ROWS)
            .map(|r| r.iter().map(|v| v.clone().unwrap_or_else(|| "NULL".into())).collect())
            .collect();
        let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
        for row in &cells {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count()).min(40);
            }
        }
        let line = |cells: &[String]| -> String {
            let parts: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| {
                    let c: String = c.chars().take(*w).collect();
                    format!("{c:<w$}")
                })
                .collect();
            format!("{indent}| {} |", parts.join(" | "))
        };
        let _ = writeln!(out, "{}", line(columns));
        for row in &cells {
            let _ = writeln!(out, "{}", line(row));
        }
        let total = e.row_count.unwrap_or(rows.len() as u64);
        if total > cells.len() as u64 {
            let _ = writeln!(out, "{indent}… {} more rows", total - cells.len() as u64);
        }
    }
    if let Some(error) = &e.error {
        let _ = writeln!(out, "{indent}{} {}: {}", error.severity, error.sqlstate, error.message);
    } else if let Some(tag) = &e.command_tag {
        let _ = writeln!(out, "{indent}{tag}");
    }
    out
}

/// Checks a session's recording; exits non-zero naming the first bad chunk.
pub async fn verify_session(session: &str) -> anyhow::Result<ExitCode> {
    let c = Client::from_env()?;
    let report = c.get(&format!("/v1/sessions/{}/verify", path_segment(session))).await?;
    let intact = report.get("intact").and_then(Value::as_bool).unwrap_or(false);
    let detail = text(&report, "detail");
    if intact {
        println!("recording intact: {detail}");
        return Ok(ExitCode::SUCCESS);
    }
    match report.get("first_bad_chunk").filter(|b| !b.is_null()) {
        Some(bad) => eprintln!(
            "recording damaged: first bad chunk {} ({}): {}",
            text(bad, "index"),
            text(bad, "key"),
            text(bad, "reason")
        ),
        None => eprintln!("recording not intact: {detail}"),
    }
    Ok(ExitCode::FAILURE)
}

#[cfg(test)]
mod tests {
    #[test]
    fn unix_times_print_as_utc() {
        assert_eq!(super::format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::format_unix(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(super::format_unix(951_782_400), "2000-02-29T00:00:00Z");
    }
}
