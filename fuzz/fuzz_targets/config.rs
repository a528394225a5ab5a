//! The config loader (`Config::from_toml`): `proxy.toml` text plus `KEYGATE_*` overrides.
//!
//! Input: TOML text, optionally followed by a NUL byte and override lines `SECTION__KEY=value`
//! (read as `KEYGATE_SECTION__KEY`).
//!
//! Any text gives a config or an error, never a panic (or a hang: the runs are bounded by a
//! timeout). A config that loads renders as TOML (`to_toml`, what `check-config` prints), and
//! loading the same text again gives the same config.

#![no_main]

use std::path::Path;

use keygate::Config;
use libfuzzer_sys::fuzz_target;

/// Whether a key in `value`, at any depth, names a file the loader would read
/// (`store.password_file`): the fuzzer could point it at /dev/zero or a FIFO, which only tells
/// that an operator can make keygate read a file forever.
fn reads_a_file(value: &toml::Value) -> bool {
    match value {
        toml::Value::Table(t) => t
            .iter()
            .any(|(k, v)| k.to_ascii_lowercase().contains("password_file") || reads_a_file(v)),
        toml::Value::Array(a) => a.iter().any(reads_a_file),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (text, overrides) = input.split_once('\0').unwrap_or((input, ""));
    let env: Vec<(String, String)> = overrides
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (format!("KEYGATE_{k}"), v.to_owned()))
        .collect();
    let file_in_table = text
        .parse::<toml::Table>()
        .is_ok_and(|t| reads_a_file(&toml::Value::Table(t)));
    if file_in_table
        || env
            .iter()
            .any(|(k, _)| k.to_ascii_lowercase().contains("password_file"))
    {
        return;
    }

    let origin = Path::new("fuzz.toml");
    let env_again = env.clone();
    let Ok(config) = Config::from_toml(text, origin, env) else {
        return;
    };
    let printed = config.to_toml();
    assert!(
        printed.parse::<toml::Table>().is_ok() && !printed.starts_with("# cannot render"),
        "check-config cannot print a config that loaded: {printed}"
    );
    let again = Config::from_toml(text, origin, env_again).expect("loaded once");
    assert_eq!(again.to_toml(), printed, "the same text loaded differently");
});
