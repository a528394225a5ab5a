//! `keygate demo`: the whole product in one process, with nothing to install or edit. A
//! built-in echo upstream, the proxy in front of it with a throw-away file store, and a
//! fresh sandbox key, printed with curl lines to paste.

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::CliError;
use crate::config::Config;
use crate::echo;
use crate::keys::file::FileStore;
use crate::keys::{self, KeyPolicy, KeySpec};
use crate::server::{Server, ServerError};
use crate::vocab::{Environment, KeyType};

/// The port the demo tries first, so the printed curl lines look familiar; any free port
/// is used when it is taken.
const PREFERRED_PORT: u16 = 8080;

pub async fn run(shutdown: CancellationToken, mut out: impl Write) -> Result<(), CliError> {
    let upstream = TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = upstream.local_addr()?;
    tokio::spawn(echo::serve(upstream, shutdown.child_token()));

    let dir = tempfile::Builder::new().prefix("keygate-demo-").tempdir()?;
    let keys_path = dir.path().join("keys.json");
    let config = |port: u16| demo_config(port, upstream_addr, &keys_path);

    let store = FileStore::open(&keys_path, std::time::Duration::from_millis(250))?;
    let spec = KeySpec {
        name: "demo sandbox key".into(),
        owner: "demo".into(),
        key_type: KeyType::Secret,
        env: Environment::TEST,
        scopes: vec!["*".into()],
        allowed_cidrs: Vec::new(),
        expires_at: None,
        plan: None,
        limits: Default::default(),
        workspace: None,
        project: None,
        headers: Vec::new(),
        allowed_origins: Vec::new(),
    };
    let policy = KeyPolicy {
        prefix: "kg".into(),
        max_per_owner: None,
    };
    let created = keys::manage::create(&store, &policy, spec, SystemTime::now()).await?;

    let server = match Server::bind(config(PREFERRED_PORT)?).await {
        Err(ServerError::Bind { .. }) => Server::bind(config(0)?).await?,
        other => other?,
    };
    let proxy = server.public_addr();
    writeln!(
        out,
        "\nkeygate demo is running\n\
         \n  upstream (built-in echo)  http://{upstream_addr}\
         \n  proxy                     http://{proxy}\
         \n  admin                     http://{admin}/readyz\
         \n  sandbox key ({id})  {key}\
         \n\nThis succeeds (200; the echo shows the identity headers keygate added, not the key):\
         \n\n  curl -i -H 'x-api-key: {key}' http://{proxy}/v1/hello\
         \n\nThis fails (401 with a JSON error: no key):\
         \n\n  curl -i http://{proxy}/v1/hello\
         \n\nThe demo's keys live in {store}, deleted on exit. Ctrl-C stops the demo.\n",
        admin = server.admin_addr(),
        id = created.record.id,
        key = created.key,
        store = keys_path.display(),
    )?;
    out.flush()?;
    server.run(shutdown).await;
    drop(dir);
    Ok(())
}

fn demo_config(
    port: u16,
    upstream: std::net::SocketAddr,
    keys: &Path,
) -> Result<Config, crate::config::ConfigError> {
    let toml = format!(
        "[listen]\npublic = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:0\"\n\
         [upstream]\nurl = \"http://{upstream}\"\nsandbox_url = \"http://{upstream}\"\n\
         [auth]\nunmatched = \"allow\"\n\
         [store]\nkind = \"file\"\npath = {keys:?}\n\
         [log]\nformat = \"text\"\n\
         [server]\ndrain_period = \"0s\"\n",
        keys = keys.display().to_string(),
    );
    // The demo ignores KEYGATE_* variables: it must work the same on every machine.
    Config::from_toml(&toml, Path::new("<demo>"), std::iter::empty())
}
