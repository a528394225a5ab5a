//! deploy/ as CI sees it: every file there is linted, validated against its schema and checked
//! for what the rest of keygate promises (ports, probes, grace periods, the config itself), with
//! the tools operators use. Offline: the tools come from scripts/test.sh.
//!
//! The running side (a real Prometheus scraping keygate, the image's runtime contract without
//! Docker, the seccomp profile) is in tests/deploy_runtime.rs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::tools::{dashboard_queries, repo, run_ok, tool};
use keygate::config::Config;
use serde_json::Value as Json;
use serde_yaml_ng::Value;

const OVERLAYS: &[&str] = &["native-sidecar", "classic-sidecar", "redis"];

/// The Kubernetes versions the manifests must validate against: the oldest with native
/// sidecars on by default, and (no `-k`) the newest kubernetes-validate ships.
const KUBERNETES_VERSIONS: &[Option<&str>] = &[Some("1.29.0"), None];

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml(rel: &str) -> Value {
    serde_yaml_ng::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(v, path)?.as_str()
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn list<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a Value> {
    get(v, path)
        .and_then(Value::as_sequence)
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

/// `kubectl kustomize DIR`, parsed.
fn kustomize(kubectl: &Path, dir: &Path) -> (String, Vec<Value>) {
    let out = run_ok(Command::new(kubectl).arg("kustomize").arg(dir));
    let text = String::from_utf8(out.stdout).unwrap();
    let docs = yaml_docs(&text);
    (text, docs)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| s(d, &["kind"]) == Some(kind) && s(d, &["metadata", "name"]) == Some(name))
}

/// A deploy/ config, validated. A Redis password file it names (a Secret mounted in the
/// container) is put in place first, as the container has it.
fn config_from(text: &str, origin: &str) -> Config {
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "not-the-real-password\n").unwrap();
    let text = match password_file(text) {
        Some(path) => text.replace(path, secret.path().to_str().unwrap()),
        None => text.to_owned(),
    };
    Config::from_toml(&text, Path::new(origin), std::iter::empty())
        .unwrap_or_else(|e| panic!("{origin}: {e}"))
}

/// `[store] password_file` as written.
fn password_file(toml: &str) -> Option<&str> {
    toml.lines()
        .find_map(|l| l.trim().strip_prefix("password_file = "))?
        .split('"')
        .nth(1)
}

/// A folder checkov will look into: it skips hidden ones, like tempfile's default `.tmp…`.
fn visible_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("keygate-deploy-")
        .tempdir()
        .unwrap()
}

/// Runs checkov with deploy/.checkov.yaml; returns whether it passed, after making sure it
/// checked something (a path it skips would pass with nothing checked).
fn checkov(checkov: &Path, framework: &str, target: (&str, &Path)) -> bool {
    let out = Command::new(checkov)
        .arg("--config-file")
        .arg(repo().join("deploy/.checkov.yaml"))
        .args(["--framework", framework, target.0])
        .arg(target.1)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let counted: u64 = stdout
        .lines()
        .filter_map(|l| l.split("Passed checks: ").nth(1))
        .filter_map(|rest| rest.split(',').next()?.trim().parse::<u64>().ok())
        .sum();
    assert!(
        counted > 0,
        "checkov checked nothing in {:?}:\n{stdout}",
        target.1
    );
    if !out.status.success() {
        eprintln!("checkov {framework} {:?}:\n{stdout}", target.1);
    }
    out.status.success()
}

#[test]
fn dockerfile_passes_hadolint_and_keeps_the_runtime_contract() {
    let dockerfile = read("deploy/Dockerfile");
    if let Some(hadolint) = tool("hadolint") {
        run_ok(
            Command::new(hadolint)
                .args(["--failure-threshold", "info"])
                .arg(repo().join("deploy/Dockerfile")),
        );
    }
    let lines: Vec<&str> = dockerfile.lines().map(str::trim).collect();
    let has = |line: &str| lines.contains(&line);
    assert!(has("USER 65532:65532"), "runs as 65532");
    assert!(has("EXPOSE 8080 9090"), "public and admin ports");
    assert!(has("ENV KEYGATE_CONFIG=/etc/keygate/proxy.toml"));
    assert!(
        dockerfile.contains(r#"CMD ["/usr/local/bin/keygate", "health"]"#),
        "HEALTHCHECK asks keygate itself"
    );
    assert!(dockerfile.contains("FROM gcr.io/distroless/cc-debian12:nonroot"));
    for label in ["title", "version", "revision", "licenses"] {
        assert!(
            dockerfile.contains(&format!("org.opencontainers.image.{label}=")),
            "OCI label {label}"
        );
    }
    // The config baked into the image is valid and listens where the image says.
    let config = config_from(&read("deploy/image/proxy.toml"), "deploy/image/proxy.toml");
    assert_eq!(config.listen.public.to_string(), "0.0.0.0:8080");
    assert_eq!(config.listen.admin.to_string(), "0.0.0.0:9090");
    assert!(
        dockerfile.contains("COPY deploy/image/proxy.toml /out/etc/keygate/proxy.toml"),
        "the image's config is deploy/image/proxy.toml"
    );
    // Writes go to the image's volume only.
    match &config.store {
        keygate::config::StoreConfig::File { path, .. } => {
            assert!(path.starts_with("/var/lib/keygate"), "{path:?}")
        }
        other => panic!("the image's default store is the file store: {other:?}"),
    }
    assert!(has(r#"VOLUME ["/var/lib/keygate"]"#));

    // Everything the build COPYs is in the build context .dockerignore leaves, and the
    // large things are not.
    let ignore = read(".dockerignore");
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .collect();
    assert!(ignore.lines().any(|l| l.trim() == "*"), "an allowlist");
    for line in &lines {
        let Some(rest) = line.strip_prefix("COPY ") else {
            continue;
        };
        if rest.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = rest.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(repo().join(src).exists(), "COPY {src}: no such file");
            assert!(
                allowed
                    .iter()
                    .any(|a| src.starts_with(a.trim_end_matches('/'))),
                "COPY {src} is outside what .dockerignore lets in"
            );
        }
    }
}

#[test]
fn compose_file_follows_the_compose_spec_and_starts_in_order() {
    let path = repo().join("deploy/compose/compose.yaml");
    if let Some(check) = tool("check-jsonschema") {
        run_ok(
            Command::new(check)
                .args(["--builtin-schema", "vendor.compose-spec"])
                .arg(&path),
        );
    }
    let compose = yaml("deploy/compose/compose.yaml");
    let services = get(&compose, &["services"])
        .and_then(Value::as_mapping)
        .unwrap();
    let names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["upstream", "redis", "keygate", "prometheus", "grafana"])
    );
    for (name, service) in services {
        let name = name.as_str().unwrap();
        assert!(
            get(service, &["healthcheck", "test"]).is_some(),
            "{name} has a health check"
        );
        if let Some(deps) = get(service, &["depends_on"]).and_then(Value::as_mapping) {
            for (dep, how) in deps {
                assert_eq!(
                    s(how, &["condition"]),
                    Some("service_healthy"),
                    "{name} waits for {dep:?} to be healthy"
                );
            }
        }
        // Every file a service mounts from the repository is there.
        for volume in list(service, &["volumes"]) {
            let spec = volume.as_str().unwrap();
            if spec.starts_with('.') {
                let host = spec.split(':').next().unwrap();
                let file = repo().join("deploy/compose").join(host);
                assert!(file.exists(), "{name} mounts {host}, which is missing");
            }
        }
    }
    let keygate = &services["keygate"];
    let deps = get(keygate, &["depends_on"])
        .and_then(Value::as_mapping)
        .unwrap();
    assert!(deps.contains_key("upstream") && deps.contains_key("redis"));
    let opts: Vec<&str> = list(keygate, &["security_opt"])
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let profile = opts
        .iter()
        .find_map(|o| o.strip_prefix("seccomp="))
        .expect("keygate runs with deploy/seccomp/keygate.json");
    assert!(repo().join("deploy/compose").join(profile).is_file());
    assert_eq!(
        get(&compose, &["secrets", "redis_password", "file"]).and_then(Value::as_str),
        Some("./redis-password")
    );

    // keygate's config there is valid, points at the upstream service and at Redis.
    let config = config_from(
        &read("deploy/compose/proxy.toml"),
        "deploy/compose/proxy.toml",
    );
    assert_eq!(config.upstream.url.host(), Some("upstream"));
    assert!(matches!(
        config.store,
        keygate::config::StoreConfig::Redis(_)
    ));
    let grace = humantime::parse_duration(s(keygate, &["stop_grace_period"]).unwrap()).unwrap();
    assert!(
        grace >= config.server.drain_period + config.server.shutdown_timeout,
        "stop_grace_period covers drain_period + shutdown_timeout"
    );
    // Prometheus' config scrapes keygate's admin port.
    let prometheus = yaml("deploy/compose/prometheus.yml");
    let targets = list(&prometheus, &["scrape_configs"])
        .iter()
        .flat_map(|c| list(c, &["static_configs"]))
        .flat_map(|c| list(c, &["targets"]))
        .filter_map(|t| t.as_str())
        .collect::<Vec<_>>();
    assert_eq!(targets, [format!("keygate:{}", config.listen.admin.port())]);
    if let Some(promtool) = tool("promtool") {
        run_ok(
            Command::new(promtool)
                .args(["check", "config", "--syntax-only"])
                .arg(repo().join("deploy/compose/prometheus.yml")),
        );
    }
}

/// What every rendered overlay must satisfy; `docs` is `kubectl kustomize`'s output.
fn check_overlay(name: &str, docs: &[Value], keygate_bin: &Path) {
    let deployment = find(docs, "Deployment", "api").expect("the Deployment");
    let pod = get(deployment, &["spec", "template"]).unwrap();
    let spec = get(pod, &["spec"]).unwrap();
    let native = name != "classic-sidecar";
    let section = if native {
        "initContainers"
    } else {
        "containers"
    };
    let keygate = list(spec, &[section])
        .into_iter()
        .find(|c| s(c, &["name"]) == Some("keygate"))
        .unwrap_or_else(|| panic!("{name}: keygate in {section}"));
    if native {
        assert_eq!(s(keygate, &["restartPolicy"]), Some("Always"), "{name}");
    }

    // The restricted Pod Security Standard.
    assert_eq!(
        get(spec, &["securityContext", "runAsNonRoot"]).and_then(Value::as_bool),
        Some(true)
    );
    let pod_seccomp = s(spec, &["securityContext", "seccompProfile", "type"]);
    assert!(matches!(pod_seccomp, Some("RuntimeDefault" | "Localhost")));
    assert_ne!(
        get(spec, &["hostNetwork"]).and_then(Value::as_bool),
        Some(true)
    );
    for c in list(spec, &["containers"])
        .into_iter()
        .chain(list(spec, &["initContainers"]))
    {
        let who = format!("{name}: container {}", s(c, &["name"]).unwrap());
        let sc = get(c, &["securityContext"]).unwrap_or_else(|| panic!("{who}"));
        assert_eq!(
            get(sc, &["allowPrivilegeEscalation"]).and_then(Value::as_bool),
            Some(false),
            "{who}"
        );
        assert_eq!(
            get(sc, &["readOnlyRootFilesystem"]).and_then(Value::as_bool),
            Some(true),
            "{who}"
        );
        assert_ne!(
            get(sc, &["privileged"]).and_then(Value::as_bool),
            Some(true)
        );
        let drop: Vec<&str> = list(sc, &["capabilities", "drop"])
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(drop, ["ALL"], "{who}");
        assert!(get(sc, &["capabilities", "add"]).is_none(), "{who}");
        for k in ["requests", "limits"] {
            for r in ["cpu", "memory"] {
                assert!(
                    get(c, &["resources", k, r]).is_some(),
                    "{who}: resources.{k}.{r}"
                );
            }
        }
    }
    for v in list(spec, &["volumes"]) {
        assert!(get(v, &["hostPath"]).is_none(), "{name}: no hostPath");
    }

    // Probes on the admin port, which the config opens to the pod IP.
    let port = |port_name: &str| {
        list(keygate, &["ports"])
            .into_iter()
            .find(|p| s(p, &["name"]) == Some(port_name))
            .and_then(|p| get(p, &["containerPort"]))
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("{name}: port {port_name}"))
    };
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        assert_eq!(
            s(keygate, &[probe, "httpGet", "path"]),
            Some(path),
            "{name}"
        );
        assert_eq!(
            s(keygate, &[probe, "httpGet", "port"]),
            Some("keygate-admin"),
            "{name}"
        );
    }

    // The config in the ConfigMap: valid, listening where the container says, admin on every
    // address (probes and Prometheus come to the pod IP), upstream on loopback.
    let configmap = find(docs, "ConfigMap", "keygate-config").expect("the ConfigMap");
    let toml = s(configmap, &["data", "proxy.toml"]).unwrap();
    let config = config_from(toml, &format!("{name}: ConfigMap keygate-config"));
    assert_eq!(u64::from(config.listen.public.port()), port("keygate-http"));
    assert_eq!(u64::from(config.listen.admin.port()), port("keygate-admin"));
    assert!(config.listen.admin.ip().is_unspecified(), "{name}");
    assert_eq!(config.upstream.url.host(), Some("127.0.0.1"));
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("password");
    std::fs::write(&secret, "not-the-real-password\n").unwrap();
    let runnable = match password_file(toml) {
        Some(path) => toml.replace(path, secret.to_str().unwrap()),
        None => toml.to_owned(),
    };
    std::fs::write(dir.path().join("proxy.toml"), runnable).unwrap();
    run_ok(
        Command::new(keygate_bin)
            .args(["check-config", "-c"])
            .arg(dir.path().join("proxy.toml")),
    );
    let args: Vec<&str> = list(keygate, &["args"])
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let config_path = args[args.iter().position(|a| *a == "-c").unwrap() + 1];
    let mounts = list(keygate, &["volumeMounts"]);
    let mounted = |path: &str| {
        mounts.iter().any(|m| {
            let at = s(m, &["mountPath"]).unwrap();
            path.starts_with(&format!("{at}/"))
                && get(m, &["readOnly"]).and_then(Value::as_bool) == Some(true)
        })
    };
    assert!(mounted(config_path), "{name}: {config_path} is mounted");

    // SIGTERM: the drain and the in-flight requests fit in the grace period, with 10 s left
    // for the app's own shutdown (a native sidecar stops after the app).
    let grace = get(spec, &["terminationGracePeriodSeconds"])
        .and_then(Value::as_u64)
        .unwrap();
    let needed = config.server.drain_period + config.server.shutdown_timeout;
    assert!(
        Duration::from_secs(grace) >= needed + Duration::from_secs(10),
        "{name}: terminationGracePeriodSeconds {grace} < {needed:?} + 10 s"
    );

    match &config.store {
        keygate::config::StoreConfig::File { path, .. } => {
            assert!(mounted(path.to_str().unwrap()), "{name}: keys file mounted");
            let secret = find(docs, "Secret", "keygate-keys").expect("keys Secret");
            assert!(get(secret, &["data", "keys.json"]).is_some());
        }
        keygate::config::StoreConfig::Redis(_) => {
            assert!(find(docs, "Secret", "keygate-keys").is_none(), "{name}");
            let password_file = password_file(toml).expect("the Redis password comes from a file");
            assert!(mounted(password_file), "{name}: {password_file} mounted");
        }
    }

    // The Service reaches keygate's public port only; the budget and the PodMonitor select
    // these pods.
    let labels = get(pod, &["metadata", "labels"])
        .and_then(Value::as_mapping)
        .unwrap();
    let selects = |selector: &Value| {
        selector
            .as_mapping()
            .unwrap()
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    };
    let service = find(docs, "Service", "api").unwrap();
    let targets: Vec<&str> = list(service, &["spec", "ports"])
        .iter()
        .filter_map(|p| s(p, &["targetPort"]))
        .collect();
    assert_eq!(targets, ["keygate-http"], "{name}");
    assert!(selects(get(service, &["spec", "selector"]).unwrap()));
    let pdb = find(docs, "PodDisruptionBudget", "api").unwrap();
    assert!(selects(
        get(pdb, &["spec", "selector", "matchLabels"]).unwrap()
    ));
    let monitor = yaml("deploy/prometheus/podmonitor.yaml");
    assert!(selects(
        get(&monitor, &["spec", "selector", "matchLabels"]).unwrap()
    ));
    let endpoint = list(&monitor, &["spec", "podMetricsEndpoints"])[0];
    assert_eq!(s(endpoint, &["port"]), Some("keygate-admin"));
    let policy = find(docs, "NetworkPolicy", "api").unwrap();
    assert!(selects(
        get(policy, &["spec", "podSelector", "matchLabels"]).unwrap()
    ));
}

#[test]
fn kustomize_overlays_render_validate_and_keep_their_promises() {
    let Some(kubectl) = tool("kubectl") else {
        return;
    };
    let validate = tool("kubernetes-validate");
    let checkov_bin = tool("checkov");
    let rendered = visible_tempdir();
    let keygate = PathBuf::from(env!("CARGO_BIN_EXE_keygate"));
    let base = repo().join("deploy/kubernetes");

    // The overlays, and the native sidecar with the seccomp component as the README shows
    // (in a copy: kustomize takes relative paths only).
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&base, copy.path());
    let with_component = copy.path().join("overlays/with-seccomp");
    std::fs::create_dir(&with_component).unwrap();
    std::fs::write(
        with_component.join("kustomization.yaml"),
        "resources:\n  - ../native-sidecar\ncomponents:\n  - ../../components/seccomp-io-uring\n",
    )
    .unwrap();
    let mut cases: Vec<(String, PathBuf)> = OVERLAYS
        .iter()
        .map(|o| (o.to_string(), base.join("overlays").join(o)))
        .collect();
    cases.push(("native-sidecar+seccomp-io-uring".into(), with_component));
    for (name, dir) in &cases {
        let (text, docs) = kustomize(&kubectl, dir);
        let file = rendered.path().join(format!("{name}.yaml"));
        std::fs::write(&file, &text).unwrap();
        if let Some(validate) = &validate {
            for version in KUBERNETES_VERSIONS {
                let mut cmd = Command::new(validate);
                cmd.arg("--strict");
                if let Some(v) = version {
                    cmd.args(["-k", v]);
                }
                run_ok(cmd.arg(&file));
            }
        }
        let short = name.split('+').next().unwrap();
        check_overlay(short, &docs, &keygate);
        if name.contains("seccomp") {
            let deployment = find(&docs, "Deployment", "api").unwrap();
            let keygate = list(deployment, &["spec", "template", "spec", "initContainers"])[0];
            assert_eq!(
                s(
                    keygate,
                    &["securityContext", "seccompProfile", "localhostProfile"]
                ),
                Some("profiles/keygate.json")
            );
        }
    }
    // The Prometheus Operator's objects render too.
    let (text, docs) = kustomize(&kubectl, &repo().join("deploy/prometheus"));
    assert!(find(&docs, "PodMonitor", "keygate").is_some());
    assert!(find(&docs, "PrometheusRule", "keygate").is_some());
    std::fs::write(rendered.path().join("prometheus.yaml"), text).unwrap();
    if let Some(validate) = &validate {
        // The headless Service beside the ServiceMonitor is plain Kubernetes.
        run_ok(
            Command::new(validate)
                .arg("--strict")
                .arg(repo().join("deploy/prometheus/servicemonitor.yaml")),
        );
    }

    if let Some(path) = checkov_bin {
        assert!(checkov(&path, "kubernetes", ("-d", rendered.path())));
        let dockerfile = repo().join("deploy/Dockerfile");
        assert!(checkov(&path, "dockerfile", ("-f", &dockerfile)));
    }
}

#[test]
fn kubernetes_validate_and_checkov_refuse_a_broken_manifest() {
    // The checks above can fail: a Deployment with a misspelt field and a privileged
    // container is refused by both.
    let (Some(validate), Some(checkov_bin)) = (tool("kubernetes-validate"), tool("checkov")) else {
        return;
    };
    let dir = visible_tempdir();
    let bad = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: bad\nspec:\n  \
               selector:\n    matchLabels: {app: bad}\n  template:\n    metadata:\n      \
               labels: {app: bad}\n    spec:\n      containers:\n        - name: c\n          \
               image: x:1\n          securityContext: {privileged: true}\n          \
               imagePullPolicey: Always\n";
    std::fs::write(dir.path().join("bad.yaml"), bad).unwrap();
    let out = Command::new(validate)
        .args(["--strict", "-k", "1.29.0"])
        .arg(dir.path().join("bad.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "kubernetes-validate took a typo");
    assert!(
        !checkov(&checkov_bin, "kubernetes", ("-d", dir.path())),
        "checkov took a privileged container"
    );
}

#[test]
fn alert_rules_pass_promtool_fire_in_unit_tests_and_match_the_prometheusrule() {
    let rules = yaml("deploy/prometheus/rules.yaml");
    let operator = yaml("deploy/prometheus/prometheusrule.yaml");
    assert_eq!(
        get(&operator, &["spec", "groups"]),
        get(&rules, &["groups"]),
        "prometheusrule.yaml carries exactly rules.yaml's groups"
    );
    let alerts: BTreeSet<&str> = list(&rules, &["groups"])
        .iter()
        .flat_map(|g| list(g, &["rules"]))
        .filter_map(|r| s(r, &["alert"]))
        .collect();
    for wanted in [
        "KeygateDown",
        "KeygateSidecarNotReady",
        "KeygateKeyStoreDown",
        "KeygateQuotaFallback",
        "KeygateQuotaDecidedAlone",
        "KeygateRevocationPropagationSlow",
        "KeygateUpstreamFailures",
        "KeygateInvalidKeyFlood",
        "KeygateRateLimitRefusalsSpike",
        "KeygateReloadFailed",
    ] {
        assert!(alerts.contains(wanted), "{wanted} is missing");
    }
    // Every alert fires in at least one unit test.
    let tests = yaml("deploy/prometheus/rules.test.yaml");
    let fired: BTreeSet<&str> = list(&tests, &["tests"])
        .iter()
        .flat_map(|t| list(t, &["alert_rule_test"]))
        .filter(|a| !list(a, &["exp_alerts"]).is_empty())
        .filter_map(|a| s(a, &["alertname"]))
        .collect();
    assert_eq!(fired, alerts, "every alert is fired by rules.test.yaml");

    let Some(promtool) = tool("promtool") else {
        return;
    };
    let dir = repo().join("deploy/prometheus");
    run_ok(
        Command::new(&promtool)
            .args(["check", "rules", "rules.yaml"])
            .current_dir(&dir),
    );
    run_ok(
        Command::new(&promtool)
            .args(["test", "rules", "rules.test.yaml"])
            .current_dir(&dir),
    );
}

#[test]
fn dashboard_is_well_formed_and_its_queries_parse() {
    let dashboard: Json = serde_json::from_str(&read("deploy/grafana/keygate.json")).unwrap();
    assert_eq!(dashboard["uid"], "keygate");
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        let pos = &p["gridPos"];
        assert!(pos["x"].as_u64().unwrap() + pos["w"].as_u64().unwrap() <= 24);
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "{}",
                p["title"]
            );
        }
    }
    // What the issue asks the dashboard to show, by the metrics that show it.
    let queries = dashboard_queries();
    let all = queries
        .iter()
        .map(|(_, q)| q.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for metric in [
        "keygate_requests_total",
        "keygate_request_duration_seconds_bucket",
        "keygate_key_cache_lookups_total",
        "keygate_key_store_up",
        "keygate_key_change_propagation_seconds_bucket",
        "keygate_quota_lease_refills_total",
        "keygate_quota_decided_alone_total",
        "keygate_open_connections",
        "keygate_tls_handshakes_total",
        "keygate_upstream_failures_total",
        "keygate_plan_requests_total",
        "keygate_owner_requests_total",
        "process_resident_memory_bytes",
        "keygate_build_info",
    ] {
        assert!(all.contains(metric), "the dashboard shows {metric}");
    }
    // Every query is valid PromQL: promtool checks them as recording rules.
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, q)) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(q).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.yaml"), rules).unwrap();
    run_ok(
        Command::new(promtool)
            .args(["check", "rules"])
            .arg(dir.path().join("dashboard.yaml")),
    );
}

#[test]
fn seccomp_profile_is_the_format_runtimes_read() {
    let profile: Json = serde_json::from_str(&read("deploy/seccomp/keygate.json")).unwrap();
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    let mut allowed = BTreeSet::new();
    for rule in profile["syscalls"].as_array().unwrap() {
        let action = rule["action"].as_str().unwrap();
        assert!(matches!(action, "SCMP_ACT_ALLOW" | "SCMP_ACT_ERRNO"));
        for name in rule["names"].as_array().unwrap() {
            let name = name.as_str().unwrap();
            if action == "SCMP_ACT_ALLOW" {
                assert!(allowed.insert(name), "{name} listed twice");
            }
        }
    }
    for needed in [
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "io_setup",
        "io_submit",
        "io_getevents",
        "io_destroy",
    ] {
        assert!(allowed.contains(needed), "{needed}");
    }
    // What a container must never do, whatever keygate needs.
    for never in [
        "mount",
        "umount2",
        "unshare",
        "setns",
        "ptrace",
        "bpf",
        "kexec_load",
        "init_module",
        "pivot_root",
        "chroot",
        "keyctl",
        "perf_event_open",
        "userfaultfd",
    ] {
        assert!(!allowed.contains(never), "{never} must stay forbidden");
    }
}

/// A shell command from a ```sh block of deploy/README.md, continuation lines joined.
fn readme_commands() -> Vec<Vec<String>> {
    let readme = read("deploy/README.md");
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_block = line == "```sh";
            continue;
        }
        if !in_block {
            continue;
        }
        let line = line.split(" # ").next().unwrap().trim_end();
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        pending.push_str(line);
        let words = shlex::split(&pending).unwrap_or_else(|| panic!("unparsable: {pending}"));
        commands.push(words);
        pending.clear();
    }
    commands
}

#[test]
fn readme_commands_are_the_ones_ci_checks() {
    let commands = readme_commands();
    assert!(
        commands.len() >= 10,
        "deploy/README.md has its walk-throughs"
    );
    let compose = yaml("deploy/compose/compose.yaml");
    let services = get(&compose, &["services"])
        .and_then(Value::as_mapping)
        .unwrap();
    let kubectl = tool("kubectl");
    let keygate = env!("CARGO_BIN_EXE_keygate");
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    // Files an earlier command writes (`… > deploy/compose/redis-password`).
    let mut written: BTreeSet<String> = BTreeSet::new();
    // Files and folders a command names exist (relative to the repository root).
    let exists = |p: &str| {
        assert!(
            repo().join(p).exists(),
            "deploy/README.md names {p}, which is missing"
        );
    };
    for words in &commands {
        let line = words.join(" ");
        // Leading VAR=value assignments are the command's environment.
        let env: Vec<(&str, &str)> = words
            .iter()
            .map_while(|w| {
                w.split_once('=')
                    .filter(|(k, _)| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            })
            .collect();
        let words = &words[env.len()..];
        let program = words[0].as_str();
        *seen
            .entry(match program {
                "kubectl" | "docker" | "keygate" | "curl" | "openssl" | "kustomize" | "scp"
                | "ssh" | "sudo" | "cd" => program,
                other => panic!("deploy/README.md runs {other:?}, which no check covers: {line}"),
            })
            .or_default() += 1;
        for pair in words.windows(2) {
            if pair[0] == ">" {
                written.insert(pair[1].clone());
            }
        }
        for w in words.iter().filter(|w| w.starts_with("deploy/")) {
            let path = w.split(':').next().unwrap();
            if !written.contains(path) {
                exists(path);
            }
        }
        match program {
            "keygate" => {
                // Every keygate command line parses; `keys create` against the example's
                // Kubernetes config is run for real, and its key lands in the rendered Secret.
                let parsed = <keygate::cli::Cli as clap::Parser>::try_parse_from(words);
                assert!(parsed.is_ok(), "{line}: {}", parsed.unwrap_err());
                if words[1] == "keys" && words[2] == "create" {
                    let dir = tempfile::tempdir().unwrap();
                    let copy = dir.path().join("kubernetes");
                    copy_dir(&repo().join("deploy/kubernetes"), &copy);
                    let mut args: Vec<String> = words[1..].to_vec();
                    let c = args.iter().position(|a| a == "-c").unwrap();
                    let config = args[c + 1].replace("deploy/kubernetes", copy.to_str().unwrap());
                    args[c + 1] = config;
                    let out = run_ok(Command::new(keygate).args(&args).envs(env.iter().copied()));
                    let created: Json = serde_json::from_slice(&out.stdout).unwrap();
                    let key = created["key"].as_str().unwrap();
                    let keys = std::fs::read_to_string(copy.join("base/keys.json")).unwrap();
                    let hash = keygate::keys::KeyHash::of(key).to_hex();
                    assert!(keys.contains(&hash) && !keys.contains(key));
                    if let Some(kubectl) = &kubectl {
                        let (_, docs) = kustomize(kubectl, &copy.join("overlays/native-sidecar"));
                        let secret = find(&docs, "Secret", "keygate-keys").unwrap();
                        let data = s(secret, &["data", "keys.json"]).unwrap();
                        let decoded = base64_decode(data);
                        assert!(decoded.contains(&hash), "the new key is in the Secret");
                    }
                }
            }
            "kubectl" => {
                let dir = words
                    .iter()
                    .position(|w| w == "-k")
                    .map(|i| words[i + 1].as_str())
                    .or_else(|| (words[1] == "kustomize").then(|| words[2].as_str()));
                if let Some(dir) = dir {
                    let validated = OVERLAYS
                        .iter()
                        .map(|o| format!("deploy/kubernetes/overlays/{o}"))
                        .chain(["deploy/prometheus".to_owned()])
                        .any(|d| d == dir.trim_end_matches('/'));
                    assert!(
                        validated,
                        "{line}: {dir} is not among the checked directories"
                    );
                }
            }
            "docker" => {
                if words[1] == "build" {
                    let f = words.iter().position(|w| w == "-f").unwrap();
                    assert_eq!(words[f + 1], "deploy/Dockerfile", "{line}");
                    assert_eq!(words.last().unwrap(), ".", "built from the root: {line}");
                }
                if words[1] == "compose" {
                    let f = words.iter().position(|w| w == "-f").unwrap();
                    assert_eq!(words[f + 1], "deploy/compose/compose.yaml", "{line}");
                    if let Some(run) = words.iter().position(|w| w == "run") {
                        let rest: Vec<&String> = words[run + 1..]
                            .iter()
                            .skip_while(|w| w.starts_with('-'))
                            .collect();
                        let service = rest[0].as_str();
                        assert!(
                            services.contains_key(service),
                            "{line}: no service {service}"
                        );
                        // The service's entrypoint is keygate: what follows must parse.
                        let mut argv = vec!["keygate"];
                        argv.extend(rest[1..].iter().map(|s| s.as_str()));
                        let parsed = <keygate::cli::Cli as clap::Parser>::try_parse_from(&argv);
                        assert!(parsed.is_ok(), "{line}: {}", parsed.unwrap_err());
                    }
                }
            }
            _ => {}
        }
    }
    for needed in ["docker", "kubectl", "keygate", "curl"] {
        assert!(
            seen.contains_key(needed),
            "deploy/README.md shows a {needed} step"
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Standard base64, as Kubernetes writes Secret data (test-only; no crate for four lines).
fn base64_decode(text: &str) -> String {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let v = alphabet.iter().position(|a| *a == c).expect("base64") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8(out).unwrap()
}
