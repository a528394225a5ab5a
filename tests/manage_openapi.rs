//! The management API's OpenAPI document (`openapi/keygate.json`): valid OpenAPI 3.1 by
//! openapi-spec-validator, and true of the live server by schemathesis (no 5xx, every status
//! code, content type, body and `Allow` header as documented, stateful links followed), in a
//! bounded run. That the served document is the committed one is in tests/manage.rs, and that
//! it lists exactly the routes served is a unit test in `api`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn the_document_passes_openapi_spec_validator() {
    let Some(validator) = tools::tool("openapi-spec-validator") else {
        return;
    };
    let out =
        tools::run_ok(Command::new(validator).arg(tools::repo().join("openapi/keygate.json")));
    assert!(text(&out.stdout).contains("OK"), "{}", text(&out.stdout));
}

#[tokio::test]
async fn schemathesis_finds_the_live_server_as_documented() {
    let Some(schemathesis) = tools::tool("schemathesis") else {
        return;
    };
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), "");
    let (_, admin) = ws.create_key(&["--owner", "ops", "--scopes", "*,keygate:*"]);
    let kg = ws.serve_with_env(&[("KEYGATE_LISTEN__MANAGE", "127.0.0.1:0")]);
    let url = kg.manage_url("");
    let doc = tools::repo().join("openapi/keygate.json");
    // Its cache of found crashes goes in a scratch folder, not the repository.
    let scratch = tempfile::tempdir().unwrap();
    let cwd = scratch.path().to_owned();
    let run = tokio::task::spawn_blocking(move || {
        Command::new(schemathesis)
            .current_dir(cwd)
            .arg("run")
            .arg(doc)
            .args(["--url", &url])
            .args(["-H", &format!("Authorization: Bearer {admin}")])
            // Bounded: a few hundred requests, one at a time, in well under a minute here.
            .args(["--max-examples", "25", "--workers", "1"])
            .args(["--request-timeout", "10"])
            .args([
                "-c",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_schema_conformance,allow_header_conformance",
            ])
            .output()
            .unwrap()
    });
    let out = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("schemathesis ran over 10 minutes")
        .unwrap();
    let report = text(&out.stdout);
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("generated") || l.contains("passed") || l.contains("failure"))
        .collect();
    eprintln!("schemathesis: {summary:?}");
    assert!(
        out.status.success(),
        "schemathesis found the server unlike its document:\n{report}\n{}",
        text(&out.stderr)
    );
    assert!(
        !kg.all_logs().contains("panicked"),
        "the server panicked under schemathesis"
    );
}
