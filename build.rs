//! Embeds the git commit the binary is built from, so a running sidecar (`keygate --version`,
//! `keygate_build_info` in /metrics) and an image can be traced to its source.
//!
//! `KEYGATE_COMMIT` set in the build's environment wins: an image build has no `.git` (the
//! Dockerfile passes the commit as a build argument). Otherwise `git rev-parse` in the source
//! tree; `unknown` when neither is there (a source tarball).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=KEYGATE_COMMIT");
    let commit = std::env::var("KEYGATE_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KEYGATE_COMMIT={}", commit.trim());
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
