//! The source tree's shape, checked on every run: every file under `src/` is compiled (a file
//! no `mod` reaches is dead code whose tests never run).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `mod name;` declarations (any visibility, test modules included).
fn declared_modules(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("pub(crate) mod "))
                .or_else(|| line.strip_prefix("pub(super) mod "))
                .or_else(|| line.strip_prefix("mod "))?;
            let name = rest.strip_suffix(';')?;
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                .then(|| name.to_owned())
        })
        .collect()
}

/// Where `mod name;` in `file` lives: `dir/name.rs` or `dir/name/mod.rs`, `dir` being the
/// file's own folder for `lib.rs`, `main.rs` and `mod.rs`, else the folder named after it.
fn module_file(file: &Path, name: &str) -> Option<PathBuf> {
    let stem = file.file_stem().unwrap().to_str().unwrap();
    let parent = file.parent().unwrap();
    let dir = if matches!(stem, "lib" | "main" | "mod") {
        parent.to_path_buf()
    } else {
        parent.join(stem)
    };
    [
        dir.join(format!("{name}.rs")),
        dir.join(name).join("mod.rs"),
    ]
    .into_iter()
    .find(|p| p.exists())
}

#[test]
fn every_source_file_is_compiled() {
    let mut all = Vec::new();
    rust_files(&src(), &mut all);
    let mut reached = BTreeSet::new();
    let mut todo = vec![src().join("lib.rs"), src().join("main.rs")];
    while let Some(file) = todo.pop() {
        if !reached.insert(file.clone()) {
            continue;
        }
        for name in declared_modules(&file) {
            let found = module_file(&file, &name)
                .unwrap_or_else(|| panic!("{}: mod {name} has no file", file.display()));
            todo.push(found);
        }
    }
    let dead: Vec<_> = all.iter().filter(|f| !reached.contains(*f)).collect();
    assert!(
        dead.is_empty(),
        "files under src/ that no `mod` declares (delete them or declare them): {dead:?}"
    );
}
