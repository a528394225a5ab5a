//! Embeds the git commit the binary is built from, so a running sidecar (`keygate --version`,
//! `keygate_build_info` in /metrics) and an image can be traced to its source.
//!
//! `GIT_COMMIT` set in the build's environment wins (shortened to 12 characters): an image
//! build has no `.git` (the Dockerfile passes the commit as a build argument), and CI systems
//! such as Jenkins set it. Otherwise `git rev-parse` in the source tree; `unknown` when neither
//! is there (a source tarball).
//!
//! Neither name starts with `KEYGATE_`: cargo also sets `rustc-env` variables for `cargo run`
//! and `cargo test`, and keygate reads every `KEYGATE_*` variable as a config override.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=GIT_COMMIT");
    let commit = std::env::var("GIT_COMMIT")
        .ok()
        .map(|c| c.trim().chars().take(12).collect::<String>())
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BUILD_GIT_COMMIT={commit}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_owned())
}

fn git_commit() -> Option<String> {
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it points to (a commit),
    // and packed-refs (where `git gc` moves branch tips). `--git-path` resolves these for a
    // worktree too, whose HEAD lives apart from the shared refs.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            let path = PathBuf::from(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    Some(commit)
}
