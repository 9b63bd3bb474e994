//! The `airlock` binary: parses arguments and hands them to the crates.

mod client;
mod config;
mod run;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "airlock", version, about = "Just-in-time access gateway for agents, CI jobs and people")]
struct Cli {
    /// Configuration file (TOML). Environment variables `AIRLOCK_<SECTION>__<KEY>` override it.
    #[arg(long, global = true, env = "AIRLOCK_CONFIG")]
    config: Option<PathBuf>,
    /// Runtime threads; 1 runs everything on one thread, which costs the least CPU per
    /// relayed message (no cross-thread wake-ups). Default: one per core.
    #[arg(long, global = true, env = "AIRLOCK_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in one process on the embedded default: SQLite, in-process bus, local recordings.
    Up {
        /// Where the database, keys and the admin token live.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        listen: Listen,
    },
    /// Run the control plane alone (against Postgres and NATS from the config).
    ControlPlane {
        #[command(flatten)]
        listen: Listen,
        /// `postgres://...` or `sqlite://...`.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Run a data-plane worker alone.
    Gateway {
        /// The control plane's gRPC URL.
        #[arg(long)]
        control_plane_url: Option<String>,
        /// Health, readiness and metrics.
        #[arg(long)]
        admin_addr: Option<SocketAddr>,
        /// The Postgres gateway's address.
        #[arg(long)]
        pg_addr: Option<SocketAddr>,
        #[arg(long)]
        nats_url: Option<String>,
    },
    /// Run the session recorder alone.
    Recorder {
        #[arg(long)]
        addr: Option<SocketAddr>,
    },
    /// Connections: list, show, add, update, remove.
    #[command(subcommand)]
    Connections(client::ConnectionsCommand),
    /// The tenant's policy.
    #[command(subcommand)]
    Policy(client::PolicyCommand),
    /// Trusted token issuers.
    #[command(subcommand)]
    Issuers(client::IssuersCommand),
    /// Tenants (platform admins).
    #[command(subcommand)]
    Tenants(client::TenantsCommand),
    /// Mint a short-lived Airlock token for a workload.
    Token(client::TokenArgs),
    /// Ask for a role on a connection; policy grants it or opens a review.
    Request(client::RequestArgs),
    /// Approve a review (an access request or a held statement).
    Approve(client::DecideArgs),
    /// Deny a review.
    Deny(client::DecideArgs),
    /// Reviews waiting for you (or all you may see, with --all).
    Reviews {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Grant a principal a role on a connection now, without a request (tenant admins).
    Grant(client::GrantArgs),
    /// List grants.
    Grants,
    /// End a grant now; sessions it admitted end with it.
    Revoke {
        grant: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Print the tenant's event log.
    Events {
        #[arg(long, default_value_t = 0)]
        from_seq: u64,
        /// Keep printing new events as they are appended.
        #[arg(long)]
        follow: bool,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Sessions through the gateways, newest first.
    Sessions(client::SessionsArgs),
    /// Print a session's timeline: statements, decisions, rows as the client saw them, errors.
    Replay {
        session: String,
        /// Print JSON lines (one timeline entry per line).
        #[arg(long)]
        json: bool,
    },
    /// Check the tenant's event chain (exits non-zero naming the first bad seq), or
    /// with SESSION, that session's recording (naming the first bad chunk).
    Verify { session: Option<String> },
}

#[derive(Args)]
struct Listen {
    /// REST API and web UI.
    #[arg(long)]
    api_addr: Option<SocketAddr>,
    /// gRPC API.
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// The Postgres gateway.
    #[arg(long)]
    pg_addr: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match cli.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread().worker_threads(n.max(1)).enable_all().build(),
        None => tokio::runtime::Runtime::new(),
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli));
    // What is left (a blocking call that hangs, after a stop that gave up on
    // it) does not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = cli.config.as_deref();
    match cli.command {
        Command::Up { data_dir, listen } => {
            let mut config = config::Config::load(path)?;
            if let Some(dir) = data_dir {
                config.data_dir = dir;
            }
            listen.apply(&mut config);
            run::up(config).await
        }
        Command::ControlPlane { listen, database_url } => {
            let mut config = config::Config::load(path)?;
            listen.apply(&mut config);
            if let Some(url) = database_url {
                config.database.url = url;
            }
            run::control_plane(config).await
        }
        Command::Gateway { control_plane_url, admin_addr, pg_addr, nats_url } => {
            let mut config = config::Config::load(path)?;
            if let Some(url) = control_plane_url {
                config.worker.control_plane_url = url;
            }
            if let Some(addr) = admin_addr {
                config.worker.admin_addr = addr;
            }
            if let Some(addr) = pg_addr {
                config.worker.pg_addr = addr;
            }
            if let Some(url) = nats_url {
                config.bus.nats_url = url;
            }
            run::gateway(config).await
        }
        Command::Recorder { addr } => {
            let mut config = config::Config::load(path)?;
            if let Some(addr) = addr {
                config.recorder.addr = addr;
            }
            run::recorder(config).await
        }
        Command::Connections(cmd) => client::connections(cmd).await,
        Command::Policy(cmd) => client::policy(cmd).await,
        Command::Issuers(cmd) => client::issuers(cmd).await,
        Command::Tenants(cmd) => client::tenants(cmd).await,
        Command::Token(args) => client::token(args).await,
        Command::Request(args) => client::request(args).await,
        Command::Approve(args) => client::decide(args, true).await,
        Command::Deny(args) => client::decide(args, false).await,
        Command::Reviews { all, json } => client::reviews(all, json).await,
        Command::Grant(args) => client::grant(args).await,
        Command::Grants => client::grants().await,
        Command::Revoke { grant, reason } => client::revoke(&grant, &reason).await,
        Command::Events { from_seq, follow, json } => client::events(from_seq, follow, json).await,
        Command::Sessions(args) => client::sessions(args).await,
        Command::Replay { session, json } => client::replay(&session, json).await,
        Command::Verify { session: None } => client::verify().await,
        Command::Verify { session: Some(session) } => client::verify_session(&session).await,
    }
}

impl Listen {
    fn apply(self, config: &mut config::Config) {
        if let Some(addr) = self.api_addr {
            config.api.addr = addr;
        }
        if let Some(addr) = self.grpc_addr {
            config.api.grpc_addr = addr;
        }
        if let Some(addr) = self.pg_addr {
            config.worker.pg_addr = addr;
        }
    }
}
