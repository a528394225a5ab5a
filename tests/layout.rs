//! The source tree's shape, checked on every run: every file under `src/` is compiled (a file
//! no `mod` reaches is dead code whose tests never run), and the top-level modules form no
//! import cycle (`use crate::…` and `crate::…` paths outside tests), so the dependency graph
//! stays a layering a reader can follow from `src/lib.rs`'s `# Layout`.

use std::collections::{BTreeMap, BTreeSet};
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

/// The code of a file without comments and without its `#[cfg(test)]` tail.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => &text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
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

#[test]
fn top_level_modules_form_no_import_cycle() {
    let root = src();
    let mut all = Vec::new();
    rust_files(&root, &mut all);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &all {
        let rel = file.strip_prefix(&root).unwrap();
        let mut parts = rel.iter().map(|p| p.to_str().unwrap().to_owned());
        let first = parts.next().unwrap();
        let me = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
        if me == "lib" || me == "main" || rel.ends_with("tests.rs") {
            continue;
        }
        let text = code(file);
        for (at, _) in text.match_indices("crate::") {
            let name: String = text[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != me {
                edges.entry(me.clone()).or_default().insert(name);
            }
        }
    }
    // Any cycle shows as a path back to where it started.
    let mut cycles = Vec::new();
    for start in edges.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for next in edges.get(&node).into_iter().flatten() {
                if next == start {
                    let mut cycle = path.clone();
                    cycle.push(start.clone());
                    cycles.push(cycle.join(" -> "));
                } else if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    cycles.sort_by_key(String::len);
    cycles.dedup();
    assert!(
        cycles.is_empty(),
        "top-level modules import each other in a cycle; move the shared piece down a layer:\n{}",
        cycles.join("\n")
    );
}
