//! The house rules that `ARCHITECTURE.md` states, checked on the source tree itself:
//!
//! - no import cycle between the modules of a crate (at each folder level: `gateway/src/*`,
//!   `adapters/src/*`, `adapters/src/ble/*`, `adapters/src/serial/*`, `sim/src/*`), read from the
//!   `crate::…` paths in non-test code;
//! - the pure decoders (`adapters/src/ble/decode/`, `adapters/src/serial/protocols/`, the SMP
//!   codec in `adapters/src/smp/` but `client.rs`, `serial.rs`, `channel.rs`, `source.rs` and
//!   `update.rs`, `framing.rs`, `exec/message.rs`, `exec/config.rs`) do no I/O:
//!   no tokio, btleplug, dbus, tokio-serial, nor the adapters' I/O modules;
//! - adapters never touch MQTT or SQLite; the simulated world (`wardgate-sim`) depends on
//!   `wardgate-adapters` only, never on the gateway it exercises;
//! - the gateway's library has `#![warn(missing_docs)]`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use wardgate_e2e::workspace_root;

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().map(Result::unwrap) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The code of a file (with its doc comments) without plain comments and `#[cfg(test)]` items (a unit-test module
/// may reach anywhere).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        let t = l.trim_start();
        if t.starts_with("#[cfg(test)]") {
            // Skip the item that follows: to the end of its braces.
            let mut depth = 0i32;
            let mut opened = false;
            for l in lines.by_ref() {
                for c in l.chars() {
                    match c {
                        '{' => {
                            depth += 1;
                            opened = true;
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                if (opened && depth <= 0) || (!opened && l.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        // Doc comments stay: a doc link (`[`crate::x`]`) is a dependency a reader follows too.
        if t.starts_with("//") && !t.starts_with("///") && !t.starts_with("//!") {
            continue;
        }
        out.push_str(l.split(" //").next().unwrap_or(""));
        out.push('\n');
    }
    out
}

/// The module path of a file relative to `src` (`ble/decode/uuid.rs` → `[ble, decode, uuid]`;
/// `mod.rs`, `lib.rs` and `main.rs` name their folder / the crate root).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The paths of this crate a piece of code names, made absolute: `crate::a::b`, and the
/// relative `super::…` / `self::…` forms resolved against `module` (the file's module path),
/// also inside groups (`use super::{a, b::c}`).
fn crate_paths_in(code: &str, module: &[String]) -> Vec<Vec<String>> {
    // `a::b::C` up to the first character that is neither part of an identifier nor `::`.
    let ident = |s: &str| -> Vec<String> {
        let s = s.trim_start();
        let end = s
            .char_indices()
            .find(|&(i, c)| {
                !(c.is_alphanumeric()
                    || c == '_'
                    || (c == ':' && (s[i..].starts_with("::") || s[..i].ends_with(':'))))
            })
            .map_or(s.len(), |(i, _)| i);
        s[..end]
            .split("::")
            .map(str::to_string)
            .take_while(|p| !p.is_empty() && p != "self")
            .collect()
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let Some((at, token)) = ["crate::", "super::", "self::"]
            .iter()
            .filter_map(|t| rest.find(t).map(|p| (p, *t)))
            .min()
        else {
            break;
        };
        let start = i + at;
        i = start + token.len();
        if code[..start]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
        {
            continue; // e.g. `wardgate_crate::`, `Self::`, or a path's inner `self::`
        }
        let mut base: Vec<String> = match token {
            "crate::" => Vec::new(),
            "self::" => module.to_vec(),
            _ => module[..module.len().saturating_sub(1)].to_vec(),
        };
        while code[i..].starts_with("super::") {
            base.pop();
            i += "super::".len();
        }
        let path = ident(&code[i..]);
        let mut prefix = base.clone();
        prefix.extend(path.iter().cloned());
        // A group after the path: `…::{a, b::c}`.
        let after: String = {
            let consumed = code[i..].trim_start();
            let skip = path.iter().map(|p| p.len() + 2).sum::<usize>();
            consumed.get(skip..).unwrap_or("").to_string()
        };
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let mut p = prefix.clone();
                p.extend(ident(item));
                if p.len() > base.len() || !base.is_empty() {
                    out.push(p);
                }
            }
        } else if !prefix.is_empty() {
            out.push(prefix);
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

/// [`crate_paths_in`] for code at the crate root.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    crate_paths_in(code, &[])
}

/// Module → the sibling modules it imports, at the level of the folder `prefix` (e.g. `[]` for
/// the crate's top level, `["ble"]` for the modules in `ble/`).
fn graph(src: &Path, prefix: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in rust_files(src) {
        let m = module_of(src, &f);
        if m.len() <= prefix.len() || m.iter().zip(prefix).any(|(a, b)| a != b) {
            continue;
        }
        let from = m[prefix.len()].clone();
        g.entry(from.clone()).or_default();
        for p in crate_paths_in(&code(&f), &m) {
            if p.len() <= prefix.len() || p.iter().zip(prefix).any(|(a, b)| a != b) {
                continue;
            }
            let to = &p[prefix.len()];
            let dir = src.join(prefix.join("/"));
            if *to != from && (dir.join(to).is_dir() || dir.join(format!("{to}.rs")).is_file()) {
                g.entry(from.clone()).or_default().insert(to.clone());
            }
        }
    }
    g
}

/// A cycle in `g`, if any, as the list of modules around it.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        n: &str,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let start = path.iter().position(|p| p == m).unwrap();
                    let mut c = path[start..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(g, m, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(g, n, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// Every folder of `src` (as a module prefix), the crate root included.
fn folders(src: &Path) -> Vec<Vec<String>> {
    let mut out = vec![vec![]];
    for f in rust_files(src) {
        let m = module_of(src, &f);
        for i in 1..m.len() {
            let prefix = m[..i].to_vec();
            if src.join(prefix.join("/")).is_dir() && !out.contains(&prefix) {
                out.push(prefix);
            }
        }
    }
    out
}

#[test]
fn no_import_cycle_between_modules() {
    let root = workspace_root();
    let mut problems = Vec::new();
    for krate in ["gateway", "adapters", "sim"] {
        let src = root.join(krate).join("src");
        for prefix in folders(&src) {
            let p: Vec<&str> = prefix.iter().map(String::as_str).collect();
            let g = graph(&src, &p);
            if let Some(c) = find_cycle(&g) {
                problems.push(format!(
                    "{krate}/src/{}: import cycle {}",
                    prefix.join("/"),
                    c.join(" → ")
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_a_cycle_and_grouped_imports() {
    // The checker itself must be able to fail.
    let paths = crate_paths(
        "use crate::{store::Store, config};\nlet x = crate::uplink::run();\nuse crate::a::B;\nuse std::x;",
    );
    let names: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(names, ["store::Store", "config", "uplink::run", "a::B"]);
    // Relative paths, from `store/schema.rs` (module store::schema) and `store/mod.rs` (store).
    let schema = ["store".to_string(), "schema".to_string()];
    let names = |code: &str, m: &[String]| -> Vec<String> {
        crate_paths_in(code, m)
            .iter()
            .map(|p| p.join("::"))
            .collect()
    };
    assert_eq!(
        names("use super::Synchronous;", &schema),
        ["store::Synchronous"]
    );
    assert_eq!(
        names("use super::super::uplink::LoopBeat;", &schema),
        ["uplink::LoopBeat"]
    );
    assert_eq!(names("use super::uplink::X;", &schema[..1]), ["uplink::X"]);
    assert_eq!(
        names("use super::{self, uplink::Y, config};", &schema[..1]),
        ["uplink::Y", "config"]
    );
    assert_eq!(
        names("use self::inner::Z; Self::new();", &schema),
        ["store::schema::inner::Z"]
    );
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&g).unwrap(),
        ["a", "b", "c", "a"].map(String::from)
    );
    assert!(code(&workspace_root().join("tests/tests/layout.rs")).contains("fn find_cycle"));
}

/// The words that mean I/O in a decoder's source.
const IO_WORDS: [&str; 6] = [
    "tokio",
    "btleplug",
    "dbus",
    "tokio_serial",
    "std::fs",
    "std::net",
];

#[test]
fn decoders_do_no_io() {
    let root = workspace_root();
    let mut problems = Vec::new();
    let mut seen = 0;
    // The SMP codec: every file of `adapters/src/smp/` but the client and its transports (serial
    // port, channels to an adapter), the image it reads in chunks (a file) and the update
    // sequence (timers, reconnects) built on it.
    let smp_io = [
        "client.rs",
        "serial.rs",
        "channel.rs",
        "source.rs",
        "update.rs",
    ];
    let smp: Vec<PathBuf> = rust_files(&root.join("adapters/src/smp"))
        .into_iter()
        .filter(|f| !smp_io.iter().any(|n| f.ends_with(n)))
        .collect();
    assert!(smp.len() >= 8, "only {} SMP codec files found", smp.len());
    let mut files = smp;
    // The bounded line framer and the plug-in line protocol are pure too (only exec's
    // adapter.rs starts processes).
    for f in [
        "adapters/src/framing.rs",
        "adapters/src/exec/message.rs",
        "adapters/src/exec/config.rs",
    ] {
        let f = root.join(f);
        assert!(f.is_file(), "{} is missing", f.display());
        files.push(f);
    }
    for dir in ["adapters/src/ble/decode", "adapters/src/serial/protocols"] {
        let dir = root.join(dir);
        assert!(dir.is_dir(), "{} is missing", dir.display());
        files.extend(rust_files(&dir));
    }
    for f in files {
        seen += 1;
        let c = code(&f);
        for w in IO_WORDS {
            if c.contains(&format!("{w}::")) || c.contains(&format!("use {w}")) {
                problems.push(format!("{}: uses {w}", f.display()));
            }
        }
        // `use std::{fs, net, …}`
        for group in c.split("std::{").skip(1) {
            let items = &group[..group.find('}').unwrap_or(group.len())];
            for w in ["fs", "net"] {
                if items
                    .split(',')
                    .any(|i| i.trim() == w || i.trim().starts_with(&format!("{w}::")))
                {
                    problems.push(format!("{}: uses std::{w}", f.display()));
                }
            }
        }
        let src = root.join("adapters/src");
        for p in crate_paths_in(&c, &module_of(&src, &f)) {
            // The adapters' I/O modules: BLE central (and its BlueZ calls), the serial run loop
            // and the module that opens ports.
            if p.iter().any(|s| s == "central" || s == "bluez")
                || (p.first().is_some_and(|s| s == "exec")
                    && p.get(1).is_some_and(|s| s == "adapter"))
                || (p.first().is_some_and(|s| s == "smp")
                    && p.get(1).is_some_and(|s| {
                        ["client", "serial", "channel", "source", "update"].contains(&s.as_str())
                    }))
                || (p.first().is_some_and(|s| s == "serial")
                    && p.get(1).is_some_and(|s| s == "adapter" || s == "line"))
            {
                problems.push(format!("{}: imports crate::{}", f.display(), p.join("::")));
            }
        }
    }
    assert!(seen > 10, "only {seen} decoder files found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn crate_boundaries_hold() {
    let root = workspace_root();
    let manifest =
        |krate: &str| std::fs::read_to_string(root.join(krate).join("Cargo.toml")).unwrap();
    let deps = |m: &str| -> String {
        // The [dependencies] table only (dev-dependencies may differ).
        let start = m.find("[dependencies]").unwrap();
        let rest = &m[start + 1..];
        rest[..rest.find("\n[").unwrap_or(rest.len())].to_string()
    };
    let adapters = deps(&manifest("adapters"));
    for forbidden in ["rusqlite", "rumqttc", "wardgate ", "wardgate-sim"] {
        assert!(
            !adapters.contains(forbidden),
            "adapters depend on {forbidden}"
        );
    }
    let sim = deps(&manifest("sim"));
    assert!(sim.contains("wardgate-adapters"));
    assert!(
        !sim.lines()
            .any(|l| l.starts_with("wardgate ") || l.starts_with("wardgate=")),
        "sim depends on the gateway"
    );
    let gateway = manifest("gateway");
    assert!(
        gateway.contains("wardgate-sim = { workspace = true, optional = true }"),
        "the gateway must link the simulators only through the optional `demo` feature"
    );
    let lib = std::fs::read_to_string(root.join("gateway/src/lib.rs")).unwrap();
    assert!(lib.contains("#![warn(missing_docs)]"));
}

/// ARCHITECTURE.md's code map names every source file and folder of the three crates (by file
/// or folder name): a new module that the map does not mention fails here.
#[test]
fn the_code_map_names_every_file() {
    let root = workspace_root();
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    for krate in ["gateway", "adapters", "sim"] {
        let src = root.join(krate).join("src");
        for f in rust_files(&src) {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let stem = match name.as_str() {
                "mod.rs" | "lib.rs" | "main.rs" => {
                    let dir = f.parent().unwrap();
                    if dir == src {
                        continue; // the crate itself
                    }
                    format!("{}/", dir.file_name().unwrap().to_string_lossy())
                }
                other => other.trim_end_matches(".rs").to_string(),
            };
            // As a word: `session.rs`, `session`, `{cms50,ansar_b}.rs`, `profiles/`.
            let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            let named = map.match_indices(&stem).any(|(i, _)| {
                !word(map[..i].chars().last())
                    && (stem.ends_with('/') || !word(map[i + stem.len()..].chars().next()))
            });
            if !named {
                missing.push(f.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md does not name: {missing:?}"
    );
}
