//! Environment overrides (`KEYGATE_<SECTION>__<KEY>`) and the rule that secrets never sit in
//! the config file.

use std::path::Path;

use super::ConfigError;

/// Environment variables that configure the CLI itself rather than a config value.
pub(super) const NOT_OVERRIDES: &[&str] = &["KEYGATE_CONFIG", "KEYGATE_LOG"];

/// Secrets belong in the environment or a file of their own, where they can be mounted from
/// a secret manager and kept out of config repositories: a password written in the config file
/// is an error, not a warning.
pub(super) fn refuse_file_secrets(table: &toml::Table, origin: &Path) -> Result<(), ConfigError> {
    let Some(store) = table.get("store").and_then(toml::Value::as_table) else {
        return Ok(());
    };
    let urls = store.get("url").into_iter().chain(
        ["nodes", "sentinels"]
            .iter()
            .filter_map(|k| store.get(*k).and_then(toml::Value::as_array))
            .flatten(),
    );
    let in_urls = urls.filter_map(toml::Value::as_str).any(url_has_password);
    if store.contains_key("password") || in_urls {
        return Err(ConfigError::Parse {
            path: origin.to_owned(),
            message: "store: the Redis password must not be written in the config file; set \
                      KEYGATE_STORE__PASSWORD or store.password_file"
                .into(),
        });
    }
    Ok(())
}

/// `redis://user:secret@host` carries a password; `redis://user@host` does not.
fn url_has_password(url: &str) -> bool {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// `KEYGATE_UPSTREAM__URL=http://x` sets `upstream.url`. The value is read as a TOML value
/// (numbers, booleans, `["a","b"]`) unless the file already holds a string there or it is not
/// valid TOML, in which case it is taken verbatim as a string.
pub(super) fn apply_override(
    table: &mut toml::Table,
    var: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let env_err = |message: String| ConfigError::Env {
        var: var.to_owned(),
        message,
    };
    let path: Vec<String> = var["KEYGATE_".len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.len() < 2 || path.iter().any(String::is_empty) {
        return Err(env_err(
            "expected KEYGATE_<SECTION>__<KEY>, e.g. KEYGATE_UPSTREAM__URL".into(),
        ));
    }
    let (leaf, sections) = path.split_last().expect("checked len >= 2");
    let mut node = table;
    for section in sections {
        let entry = node
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| env_err(format!("[{section}] is not a table in the config file")))?;
    }
    let existing_is_string = matches!(node.get(leaf), Some(toml::Value::String(_)));
    let parsed = if existing_is_string {
        None
    } else {
        toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
    };
    node.insert(
        leaf.clone(),
        parsed.unwrap_or_else(|| toml::Value::String(value.to_owned())),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::url_has_password;

    #[test]
    fn passwords_in_urls() {
        assert!(url_has_password("redis://:pw@h:6379"));
        assert!(url_has_password("rediss://user:pw@h:6379/0"));
        assert!(!url_has_password("redis://user@h:6379"));
        assert!(!url_has_password("redis://h:6379"));
        assert!(!url_has_password("redis://h:6379/path@x:y"));
    }
}
