//! The command line: clap definitions and what each command does. `main.rs` only parses and
//! reports errors; everything here returns a typed [`CliError`].

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, LogFormat};
use crate::keys::audit::{Actor, AuditQuery, Trail};
use crate::keys::{self, Change, KeyPolicy, KeySpec, KeyStore, manage};
use crate::limits::QuotaStore;
use crate::metrics::Metrics;
use crate::server::{self, Server, ServerError};
use crate::vocab::{Environment, KeyType, StoreError};

mod demo;
mod health;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("{0}")]
    Usage(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("not healthy: {0}")]
    Unhealthy(String),
}

impl CliError {
    /// Process exit status: 1 for errors, 3 when a limit (the per-owner key cap) refused the
    /// change, so scripts can tell "try later / revoke one" from "fix the command".
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Store(StoreError::OwnerCap { .. }) => 3,
            _ => 1,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "keygate",
    version = crate::VERSION,
    about = "A reverse-proxy sidecar that enforces API keys"
)]
pub struct Cli {
    /// Config file. Every value can be overridden with KEYGATE_<SECTION>__<KEY>.
    #[arg(
        short = 'c',
        long = "config",
        env = "KEYGATE_CONFIG",
        default_value = "proxy.toml",
        global = true
    )]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve,
    /// One process: a built-in echo upstream, the proxy, and a fresh sandbox key with curl
    /// lines to paste. Needs no config and no Redis.
    Demo,
    /// Validate the config and print the effective values; exit 1 on error.
    CheckConfig,
    /// Manage keys in the configured store.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// List management actions (CLI and API) from the store's audit trail, oldest first, one
    /// JSON object per line.
    Audit {
        /// Only actions on this key.
        #[arg(long)]
        key: Option<String>,
        /// Only actions at or after this time (RFC 3339), or within this long (1h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// At most this many (the most recent).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Exit 0 if a running keygate's admin listener answers 200 (the image's HEALTHCHECK:
    /// distroless images have no curl). Asks the config's `[listen] admin` for /healthz.
    Health(HealthArgs),
    /// The demo's echo upstream on its own: answers every request with JSON describing it
    /// (method, path, headers). For trying a deployment before pointing keygate at a service.
    Echo {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: std::net::SocketAddr,
    },
    /// Print a shell completion script: `keygate completions bash > /etc/bash_completion.d/keygate`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or with --dir write one page per command there.
    Man {
        /// Write keygate.1 and a page per subcommand (keygate-keys-create.1, ...) here.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The admin path to ask: /healthz (alive) or /readyz (ready for traffic).
    #[arg(long, default_value = "/healthz", conflicts_with = "url")]
    pub path: String,
    /// Ask this http:// URL instead of the config's admin listener (e.g. `keygate echo`).
    #[arg(long)]
    pub url: Option<String>,
    /// How long to wait for the answer.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; prints JSON with its "id" and the full "key" (shown this once only).
    Create(Box<CreateArgs>),
    /// List keys, oldest first (never the secret): a table on a terminal, else a JSON array.
    List(ListArgs),
    /// Show one key as JSON (never the secret).
    Show { id: String },
    /// Change a key's settings (only the flags given); prints the key as JSON. A new expiry
    /// for an expired key takes a slot under `[keys] max_per_owner`, as `create` does.
    Update(UpdateArgs),
    /// Revoke a key: requests with it get 401 invalid_api_key from then on. Final.
    Revoke { id: String },
    /// Delete a revoked key's record for good (its id is then unknown; the audit trail keeps
    /// its history). Only revoked keys: revoke first.
    Delete { id: String },
    /// Suspend a key: requests get 403 key_suspended until it is resumed.
    Suspend { id: String },
    /// Resume a suspended key.
    Resume { id: String },
    /// Show a key's hourly, daily and monthly counters and when it was last used.
    Usage {
        id: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Issue a new key with the same settings; the old one keeps working for --grace, then
    /// expires. Prints JSON with the new "key".
    Rotate {
        id: String,
        /// How long the old key keeps working: 1h, 7d, 0s (expire now).
        #[arg(long, default_value = "1h", allow_hyphen_values = true)]
        grace: String,
    },
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    pub id: String,
    #[arg(long)]
    pub name: Option<String>,
    /// Replaces the key's scopes (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub scopes: Option<Vec<String>>,
    /// A plan of the config's `[plans]`.
    #[arg(long)]
    pub plan: Option<String>,
    /// A new lifetime from now (30d, 12h), or `never` to remove the expiry.
    #[arg(long, conflicts_with = "expires_at", allow_hyphen_values = true)]
    pub expires_in: Option<String>,
    /// A new expiry (RFC 3339).
    #[arg(long)]
    pub expires_at: Option<String>,
    /// Replaces the key's IP allowlist with these CIDRs (repeatable); `any` lets every
    /// address in again.
    #[arg(long = "allow-ip", value_name = "CIDR")]
    pub allow_ip: Vec<String>,
    /// Public keys: replaces the browser origins the key may be called from (repeatable);
    /// `default` goes back to `[cors] allow_origins`. Open WebSockets from an origin no
    /// longer allowed are closed.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origin: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this owner's keys.
    #[arg(long)]
    pub owner: Option<String>,
    /// Only keys due for rotation: past `[keys] max_age`, or within `[keys] warn_before`
    /// of it or of their expiry (revoked keys never are).
    #[arg(long)]
    pub rotation_due: bool,
    /// Only keys with this effective status (an active key past its expiry is `expired`).
    #[arg(long, value_enum)]
    pub status: Option<StatusArg>,
    /// Only keys of this environment: live, test, or one of `[environments.<tag>]`.
    #[arg(long)]
    pub env: Option<String>,
    /// Only keys not used for this long (30d, 12h): last used before then, or never used and
    /// created before then.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub unused_for: Option<Duration>,
    /// At most this many keys (a page; the next starts with --after the last id printed).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Start after the key with this id (the last of the previous page).
    #[arg(long, value_name = "KEY_ID")]
    pub after: Option<String>,
    /// table (default on a terminal), json (a pretty array: the default otherwise, as
    /// scripts read it) or jsonl (one object per line).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    Active,
    Expired,
    Suspended,
    Revoked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Table,
    Json,
    Jsonl,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A human-readable name ("billing service").
    #[arg(long)]
    pub name: String,
    /// Comma-separated scopes, e.g. content:read,analytics:read or *.
    #[arg(long, value_delimiter = ',', required = true)]
    pub scopes: Vec<String>,
    #[arg(long = "type", value_enum, default_value = "secret")]
    pub key_type: TypeArg,
    /// The key's environment: live, test, or one of `[environments.<tag>]`.
    #[arg(long, default_value = "live")]
    pub env: String,
    /// The team or workspace that owns the key.
    #[arg(long, default_value = "default")]
    pub owner: String,
    /// Rate-limit plan, one of the config's [plans.*].
    #[arg(long)]
    pub plan: Option<String>,
    /// Override one of the plan's limits for this key: per_second=50, per_hour=5000, …
    /// (repeatable).
    #[arg(long = "limit", value_name = "NAME=N")]
    pub limit: Vec<String>,
    /// Lifetime: 30d, 90d, 12h, … or never.
    // Hyphen values reach our own check, which names the flag and the fix: otherwise clap
    // reads `-5d` as an unknown flag `-5`.
    #[arg(long, conflicts_with = "expires_at", allow_hyphen_values = true)]
    pub expires_in: Option<String>,
    /// Absolute expiry, RFC 3339 (2027-01-01T00:00:00Z).
    #[arg(long)]
    pub expires_at: Option<String>,
    /// Allow only clients from this CIDR (repeatable). Default: any address.
    #[arg(long = "allow-ip")]
    pub allow_ip: Vec<String>,
    /// Bind the key to one workspace: routes with a {workspace} parameter admit only it.
    #[arg(long)]
    pub workspace: Option<String>,
    /// Bind the key to one project: routes with a {project} parameter admit only it.
    #[arg(long)]
    pub project: Option<String>,
    /// Accept the key only in this header (repeatable): authorization (as Bearer), x-api-key
    /// or project-access-token. Default: any of `[auth] credential_headers`.
    #[arg(long = "header", value_name = "HEADER")]
    pub header: Vec<String>,
    /// Public keys: a browser origin the key may be called from (repeatable), e.g.
    /// https://app.example.com, or https://*.example.com for its subdomains. Default:
    /// `[cors] allow_origins`.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origin: Vec<String>,
    /// Create this many keys with the same settings, printed one JSON object per line.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub count: u32,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TypeArg {
    Secret,
    Public,
}

/// How many threads the command's main runtime wants: `[server] workers` for `serve` (one
/// when `[server] sharded`: the other shards bring their own), else tokio's own
/// `TOKIO_WORKER_THREADS`, else the runtime's default (one per CPU). An unreadable config is
/// reported later by [`execute`].
pub fn workers(cli: &Cli) -> Option<usize> {
    match cli.command {
        Command::Serve => Config::load(&cli.config)
            .ok()
            .and_then(|c| c.server.main_workers())
            .or_else(|| std::env::var("TOKIO_WORKER_THREADS").ok()?.parse().ok()),
        _ => None,
    }
}

/// Runs a parsed command line. `init_logging` is called once the log settings are known.
pub async fn execute(cli: Cli, init_logging: impl FnOnce(LogFormat, &str)) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Command::Demo => {
            init_logging(LogFormat::Text, "warn,keygate::access=info");
            let shutdown = CancellationToken::new();
            let trigger = shutdown.clone();
            let signal = server::shutdown_signal();
            tokio::spawn(async move {
                signal.await;
                trigger.cancel();
            });
            demo::run(shutdown, stdout).await
        }
        Command::Serve => {
            let config = Config::load(&cli.config)?;
            init_logging(config.log.format, &config.log.level);
            let server = Server::bind(config).await?.reload_from(cli.config.clone());
            let shutdown = CancellationToken::new();
            let trigger = shutdown.clone();
            let signal = server::shutdown_signal();
            tokio::spawn(async move {
                signal.await;
                tracing::info!("shutdown requested");
                trigger.cancel();
            });
            server.run(shutdown).await;
            Ok(())
        }
        Command::CheckConfig => {
            let config = Config::load(&cli.config)?;
            writeln!(
                stdout,
                "# {}: OK\n{}",
                cli.config.display(),
                config.to_toml()
            )?;
            Ok(())
        }
        Command::Health(args) => {
            let target = match args.url {
                Some(url) => health::Target::from_url(&url).map_err(CliError::Usage)?,
                None => {
                    let config = Config::load(&cli.config)?;
                    health::Target::admin(config.listen.admin, &args.path)
                }
            };
            match health::check(&target, args.timeout).await {
                Ok(()) => Ok(()),
                Err(why) => Err(CliError::Unhealthy(format!("{target}: {why}"))),
            }
        }
        Command::Echo { listen } => {
            init_logging(LogFormat::Json, "info");
            let listener = tokio::net::TcpListener::bind(listen).await?;
            tracing::info!(listen = %listener.local_addr()?, "echo upstream listening");
            let shutdown = CancellationToken::new();
            let serve = tokio::spawn(crate::echo::serve(listener, shutdown.clone()));
            server::shutdown_signal().await;
            shutdown.cancel();
            let _ = serve.await;
            Ok(())
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // Into memory first: clap_complete panics on a failed write (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "keygate", &mut script);
            stdout.write_all(&script)?;
            Ok(())
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            match dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)?;
                    clap_mangen::generate_to(Cli::command(), &dir)?;
                }
                None => clap_mangen::Man::new(Cli::command()).render(&mut stdout)?,
            }
            Ok(())
        }
        Command::Keys(command) => {
            // The audit trail's log line for each action, as the server logs the API's.
            init_logging(LogFormat::Text, "warn,keygate::audit=info");
            let config = Config::load(&cli.config)?;
            let store = keys::open_for_management(&config.store, Arc::new(Metrics::new()))?;
            let quotas = store.clone().quotas();
            keys_command(command, &config, store.as_ref(), quotas, &mut stdout).await
        }
        Command::Audit { key, since, limit } => {
            init_logging(LogFormat::Text, "warn");
            let config = Config::load(&cli.config)?;
            let store = keys::open_for_management(&config.store, Arc::new(Metrics::new()))?;
            let since = since.as_deref().map(parse_since).transpose()?;
            let query = AuditQuery {
                key_id: key,
                owner: None,
                since,
                limit,
            };
            for event in store.audit_events(&query).await? {
                writeln!(
                    stdout,
                    "{}",
                    serde_json::to_string(&event).expect("events serialize")
                )?;
            }
            Ok(())
        }
    }
}

/// `quotas`: the store's shared quota counters, if it keeps any (Redis).
async fn keys_command(
    command: KeysCommand,
    config: &Config,
    store: &dyn KeyStore,
    quotas: Option<Arc<dyn QuotaStore>>,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let policy = KeyPolicy::from(&config.keys);
    let trail = Trail {
        store,
        policy: &policy,
        actor: Actor::cli(),
    };
    match command {
        KeysCommand::Create(args) => {
            let now = SystemTime::now();
            let count = args.count as usize;
            let spec = spec_from(*args, config, now)?;
            let created = trail.create_many(spec, count, now).await?;
            if let [one] = created.as_slice() {
                writeln!(out, "{}", pretty(one))?;
            } else {
                for c in &created {
                    writeln!(out, "{}", serde_json::to_string(c).expect("serializable"))?;
                }
            }
        }
        KeysCommand::List(args) => {
            let rotation = config.keys.rotation();
            if args.rotation_due && rotation.is_off() {
                return Err(CliError::Usage(
                    "--rotation-due: set [keys] max_age and/or warn_before in the config first"
                        .into(),
                ));
            }
            let env = match args.env.as_deref() {
                None => None,
                Some(tag) => Some(
                    Environment::parse(tag)
                        .filter(|e| config.environments.contains(e))
                        .ok_or_else(|| {
                            let known: Vec<&str> =
                                config.environments.iter().map(|e| e.as_str()).collect();
                            CliError::Usage(format!(
                                "--env {tag:?}: use one of {} (more with [environments.<tag>])",
                                known.join(", ")
                            ))
                        })?,
                ),
            };
            let now = SystemTime::now();
            let page = select(store, &args, env, &rotation, now).await?;
            let format = args.format.unwrap_or_else(|| {
                use std::io::IsTerminal;
                if std::io::stdout().is_terminal() {
                    FormatArg::Table
                } else {
                    FormatArg::Json
                }
            });
            write_list(out, &page, format, now)?;
        }
        KeysCommand::Show { id } => {
            let (_, record) = store.by_id(&id).await?.ok_or(StoreError::NotFound(id))?;
            writeln!(out, "{}", pretty(&manage::view(&record, SystemTime::now())))?;
        }
        KeysCommand::Update(args) => {
            let now = SystemTime::now();
            let id = args.id.clone();
            let edit = edit_from(args, config, now)?;
            // What only the key's record can tell (origins on a secret key) is told by flag.
            let record = trail.edit(&id, edit, now).await.map_err(|e| match e {
                StoreError::InvalidSpec(message) => CliError::Usage(as_flags(&message)),
                e => e.into(),
            })?;
            writeln!(out, "{}", pretty(&manage::view(&record, now)))?;
        }
        KeysCommand::Revoke { id } => {
            let record = trail.change(&id, Change::Revoke).await?;
            writeln!(out, "{}", pretty(&manage::view(&record, SystemTime::now())))?;
        }
        KeysCommand::Delete { id } => {
            let record = trail.delete(&id).await?;
            let deleted = serde_json::json!({"id": record.id, "deleted": true});
            writeln!(out, "{}", pretty(&deleted))?;
        }
        KeysCommand::Suspend { id } => {
            let record = trail.change(&id, Change::Suspend).await?;
            writeln!(out, "{}", pretty(&manage::view(&record, SystemTime::now())))?;
        }
        KeysCommand::Resume { id } => {
            let record = trail.change(&id, Change::Resume).await?;
            writeln!(out, "{}", pretty(&manage::view(&record, SystemTime::now())))?;
        }
        KeysCommand::Rotate { id, grace } => {
            let grace = manage::grace(&grace).map_err(|e| match e {
                StoreError::InvalidSpec(message) => CliError::Usage(as_flags(&message)),
                e => e.into(),
            })?;
            let created = trail.rotate(&id, grace, SystemTime::now()).await?;
            writeln!(out, "{}", pretty(&created))?;
        }
        KeysCommand::Usage { id, json } => {
            let (hash, record) = store.by_id(&id).await?.ok_or(StoreError::NotFound(id))?;
            let usage = crate::keys::usage::read(
                &config.limits,
                hash,
                &record,
                quotas.as_deref(),
                SystemTime::now(),
            )
            .await?;
            if json {
                writeln!(out, "{}", pretty(&usage))?;
            } else {
                write!(out, "{}", usage.to_text())?;
            }
        }
    }
    Ok(())
}

/// The flags of `keys create` as a [`manage::Draft`], validated as the API's bodies are.
fn spec_from(args: CreateArgs, config: &Config, now: SystemTime) -> Result<KeySpec, CliError> {
    let mut limits = std::collections::BTreeMap::new();
    for item in &args.limit {
        let (name, value) = item.split_once('=').ok_or_else(|| {
            CliError::Usage(format!("--limit {item:?}: use NAME=N, e.g. per_hour=5000"))
        })?;
        let value: u64 = value
            .parse()
            .map_err(|_| CliError::Usage(format!("--limit {item:?}: {value:?} is not a number")))?;
        limits.insert(name.to_owned(), value);
    }
    let draft = manage::Draft {
        name: args.name,
        scopes: args.scopes,
        key_type: Some(match args.key_type {
            TypeArg::Secret => KeyType::Secret,
            TypeArg::Public => KeyType::Public,
        }),
        env: Some(
            Environment::parse(&args.env)
                .filter(|e| config.environments.contains(e))
                .ok_or_else(|| {
                    let known: Vec<&str> = config.environments.iter().map(|e| e.as_str()).collect();
                    CliError::Usage(format!(
                        "--env {:?}: use one of {} (more with [environments.<tag>])",
                        args.env,
                        known.join(", ")
                    ))
                })?,
        ),
        owner: Some(args.owner),
        plan: args.plan,
        limits,
        expires_in: args.expires_in,
        expires_at: args.expires_at,
        allowed_cidrs: args.allow_ip,
        workspace: args.workspace,
        project: args.project,
        headers: args.header,
        allowed_origins: args.allow_origin,
    };
    let spec = draft
        .into_spec(&config.limits, &config.auth.credential_headers, now)
        .map_err(|e| match e {
            StoreError::InvalidSpec(message) => CliError::Usage(as_flags(&message)),
            e => e.into(),
        })?;
    Ok(spec)
}

/// The flags of `keys update` as a [`manage::EditDraft`], validated as `PATCH /v1/keys/{id}`'s
/// body is.
fn edit_from(args: UpdateArgs, config: &Config, now: SystemTime) -> Result<manage::Edit, CliError> {
    let usage = |e: StoreError| match e {
        StoreError::InvalidSpec(message) => CliError::Usage(as_flags(&message)),
        e => e.into(),
    };
    let expires_at = match (args.expires_in.as_deref(), args.expires_at) {
        (Some(lifetime), _) => Some(
            manage::lifetime_of(lifetime)
                .map_err(usage)?
                .map(|d| humantime::format_rfc3339(now + d).to_string()),
        ),
        (None, Some(at)) => Some(Some(at)),
        (None, None) => None,
    };
    // A list flag replaces the list; its one word alone empties it.
    let replacing = |values: Vec<String>, empty: &str| match values.as_slice() {
        [] => None,
        [only] if only == empty => Some(Vec::new()),
        _ => Some(values),
    };
    let draft = manage::EditDraft {
        name: args.name,
        scopes: args.scopes,
        expires_at,
        allowed_cidrs: replacing(args.allow_ip, "any"),
        plan: args.plan.map(Some),
        limits: None,
        allowed_origins: replacing(args.allow_origin, "default"),
    };
    if draft.name.is_none()
        && draft.scopes.is_none()
        && draft.expires_at.is_none()
        && draft.plan.is_none()
        && draft.allowed_cidrs.is_none()
        && draft.allowed_origins.is_none()
    {
        return Err(CliError::Usage(
            "nothing to change: give --name, --scopes, --plan, --expires-in, --expires-at, \
             --allow-ip or --allow-origin"
                .into(),
        ));
    }
    draft.into_edit(&config.limits, now).map_err(usage)
}

/// A message naming a field of [`manage::Draft`] as the API does, naming its flag instead.
fn as_flags(message: &str) -> String {
    const FLAGS: &[(&str, &str)] = &[
        ("allowed_cidrs", "--allow-ip"),
        ("expires_in", "--expires-in"),
        ("expires_at", "--expires-at"),
        ("grace", "--grace"),
        ("limits", "--limit"),
        ("name", "--name"),
        ("owner", "--owner"),
        ("plan", "--plan"),
        ("scopes", "--scopes"),
        ("workspace", "--workspace"),
        ("project", "--project"),
        ("headers", "--header"),
        ("allowed_origins", "--allow-origin"),
    ];
    for (field, flag) in FLAGS {
        if let Some(rest) = message.strip_prefix(field)
            && (rest.starts_with(' ') || rest.starts_with(':'))
        {
            return format!("{flag}{rest}");
        }
    }
    message.to_owned()
}

/// `--since`: an RFC 3339 time, or a duration back from now (`1h`, `7d`).
fn parse_since(s: &str) -> Result<SystemTime, CliError> {
    if let Ok(ago) = humantime::parse_duration(s) {
        return Ok(SystemTime::now() - ago);
    }
    humantime::parse_rfc3339_weak(s).map_err(|e| {
        CliError::Usage(format!(
            "--since {s:?}: {e}; use RFC 3339 (2027-01-01T00:00:00Z) or a duration (1h, 7d)"
        ))
    })
}

/// The page (ordered by creation) that `keys list`'s filters and cursor select, asked of the
/// store as one query so that a file store never holds more than the page.
async fn select(
    store: &dyn KeyStore,
    args: &ListArgs,
    env: Option<Environment>,
    rotation: &crate::keys::rotation::RotationPolicy,
    now: SystemTime,
) -> Result<Vec<keys::KeyRecord>, CliError> {
    let status = args.status.map(|s| match s {
        StatusArg::Active => "active",
        StatusArg::Expired => "expired",
        StatusArg::Suspended => "suspended",
        StatusArg::Revoked => "revoked",
    });
    let idle_since = args
        .unused_for
        .map(|d| now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH));
    let rotation_due = args.rotation_due;
    let wanted = move |r: &keys::KeyRecord| {
        status.is_none_or(|s| manage::effective_status(r, now) == s)
            && env.is_none_or(|e| r.env == e)
            && idle_since.is_none_or(|since| r.last_used_at.unwrap_or(r.created_at) < since)
            && (!rotation_due || rotation.record_due(r, now).is_some())
    };
    let after = args.after.as_deref();
    match store
        .list_page(args.owner.as_deref(), &wanted, after, args.limit)
        .await
    {
        Err(StoreError::NotFound(id)) if after == Some(id.as_str()) => {
            Err(CliError::Usage(format!(
                "--after {id:?}: no such key{}; give the last id of the previous page",
                args.owner
                    .as_deref()
                    .map(|o| format!(" of owner {o:?}"))
                    .unwrap_or_default()
            )))
        }
        page => Ok(page?),
    }
}

/// Prints `keys list`'s page as `format` says.
fn write_list(
    out: &mut impl Write,
    page: &[keys::KeyRecord],
    format: FormatArg,
    now: SystemTime,
) -> Result<(), CliError> {
    match format {
        FormatArg::Json => {
            let list: Vec<serde_json::Value> = page.iter().map(|r| manage::view(r, now)).collect();
            writeln!(out, "{}", pretty(&list))?;
        }
        FormatArg::Jsonl => {
            for r in page {
                writeln!(out, "{}", manage::view(r, now))?;
            }
        }
        FormatArg::Table => {
            let time = |t: Option<SystemTime>| {
                t.map_or("-".to_owned(), |t| {
                    humantime::format_rfc3339_seconds(t).to_string()
                })
            };
            let rows: Vec<[String; 9]> = page
                .iter()
                .map(|r| {
                    [
                        r.id.clone(),
                        r.hint.clone().unwrap_or_else(|| "-".to_owned()),
                        r.name.clone(),
                        r.owner.clone(),
                        r.env.as_str().to_owned(),
                        manage::effective_status(r, now).to_owned(),
                        r.scopes.join(","),
                        time(r.expires_at),
                        time(r.last_used_at),
                    ]
                })
                .collect();
            let header = [
                "ID",
                "HINT",
                "NAME",
                "OWNER",
                "ENV",
                "STATUS",
                "SCOPES",
                "EXPIRES",
                "LAST USED",
            ];
            let mut widths = header.map(str::len);
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            let line = |cells: Vec<&str>| {
                let mut text = String::new();
                for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                    if i + 1 == cells.len() {
                        text.push_str(cell);
                    } else {
                        text.push_str(&format!("{cell:<w$}  "));
                    }
                }
                text
            };
            writeln!(out, "{}", line(header.to_vec()))?;
            for row in &rows {
                writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
            }
        }
    }
    Ok(())
}

/// The error as the CLI prints it: the message, then each cause in the chain that the text so
/// far does not already say. keygate's errors name their cause in their own message (log
/// lines print only that) and also return it as `source()` (for programs walking the chain),
/// so printing the chain as is (`{:#}`) would say every OS error twice.
pub fn report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let said = e.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = e.source();
    }
    text
}

fn pretty<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("key records always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_become_flags() {
        for (message, want) in [
            (
                "allowed_cidrs: \"x\" is not a CIDR",
                "--allow-ip: \"x\" is not a CIDR",
            ),
            ("expires_in \"soon\": bad", "--expires-in \"soon\": bad"),
            (
                "the expiry must be in the future",
                "the expiry must be in the future",
            ),
            ("names must", "names must"),
        ] {
            assert_eq!(as_flags(message), want);
        }
    }

    #[test]
    fn since_takes_a_time_or_a_duration() {
        assert!(parse_since("2027-01-01T00:00:00Z").is_ok());
        let hour_ago = parse_since("1h").unwrap();
        assert!(hour_ago < SystemTime::now());
        assert!(parse_since("yesterday").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
