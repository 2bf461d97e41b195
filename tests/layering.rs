//! The import graph of a crate's `src/`, checked against its layer table: every module lies in
//! a layer, imports nothing from a layer above its own, and no set of modules imports each
//! other in a loop. Shared by the pipeline and trainer integration tests (`#[path]`).
//!
//! A module's imports are the `crate::`, `super::` and `self::` paths in its code (comments and
//! string literals removed; `use crate::{a::b, c}` groups expanded), each resolved to the
//! longest module path it starts with. Re-exports from a `mod.rs` count as imports of that
//! `mod.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A crate's modules (`a::b` for `src/a/b.rs` or `src/a/b/mod.rs`, `""` for the root) and the
/// modules each one imports.
pub struct Graph {
    pub edges: BTreeMap<String, BTreeSet<String>>,
}

/// What [`check`] found.
pub struct Report {
    /// `from -> to (layer a -> b)` for every import of a higher layer.
    pub upward: Vec<String>,
    /// Sets of modules that import each other in a loop.
    pub cycles: Vec<Vec<String>>,
    /// Modules matched by no layer.
    pub unassigned: Vec<String>,
    /// The longest chain of imports, first module first.
    pub longest_chain: Vec<String>,
    /// Files per folder (`.` for the crate root).
    pub files_per_folder: BTreeMap<String, usize>,
}

/// Reads `src/` of a crate (`main.rs` left out: the binary imports the library by name).
pub fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    collect(src, src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut edges = BTreeMap::new();
    for (module, text) in &files {
        let mut targets = BTreeSet::new();
        for path in imported_paths(module, text) {
            let target = resolve(&path, &modules);
            if target != *module && !target.is_empty() {
                targets.insert(target);
            }
        }
        edges.insert(module.clone(), targets);
    }
    Graph { edges }
}

/// Checks `graph` against `layers`: `(module prefix, layer)`, the longest matching prefix
/// deciding (`"model"` covers `model` and `model::vit`).
pub fn check(graph: &Graph, layers: &[(&str, u32)]) -> Report {
    let layer_of = |m: &str| -> Option<u32> {
        layers
            .iter()
            .filter(|(p, _)| m == *p || m.starts_with(&format!("{p}::")))
            .max_by_key(|(p, _)| p.len())
            .map(|&(_, l)| l)
    };
    let mut upward = Vec::new();
    let mut unassigned = Vec::new();
    for (from, tos) in &graph.edges {
        if from.is_empty() {
            continue;
        }
        let Some(lf) = layer_of(from) else {
            unassigned.push(from.clone());
            continue;
        };
        for to in tos {
            if let Some(lt) = layer_of(to) {
                if lt > lf {
                    upward.push(format!("{from} -> {to} (layer {lf} imports layer {lt})"));
                }
            }
        }
    }
    let files_per_folder = graph
        .edges
        .keys()
        .filter(|m| !m.is_empty())
        .fold(BTreeMap::new(), |mut acc, m| {
            let folder = m.rsplit_once("::").map_or(".".to_string(), |(f, _)| f.to_string());
            // A folder's mod.rs is a file of that folder.
            let folder = if graph.edges.keys().any(|k| k.starts_with(&format!("{m}::"))) {
                m.clone()
            } else {
                folder
            };
            *acc.entry(folder).or_insert(0) += 1;
            acc
        });
    Report {
        upward,
        cycles: cycles(graph),
        unassigned,
        longest_chain: longest_chain(graph),
        files_per_folder,
    }
}

fn collect(src: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(src, &p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let module = match parts.as_slice() {
                [only] if only == "main" => continue,
                [only] if only == "lib" => String::new(),
                [dirs @ .., last] if last == "mod" => dirs.join("::"),
                all => all.join("::"),
            };
            out.push((module, std::fs::read_to_string(&p).unwrap()));
        }
    }
}

/// The code of `text` with comments and the contents of string and char literals blanked.
fn code_only(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r'
            && (next == Some('#') || next == Some('"'))
            && !b[..i].last().is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // Raw string r"..." / r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|h| b.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('a', '\n', '\u{1F600}') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < b.len() && b[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Absolute module-relative paths (`model::vit::Vit`) of every `crate::` / `super::` /
/// `self::` path in `module`'s text. Inline `mod x { .. }` blocks shift what `super` means.
fn imported_paths(module: &str, text: &str) -> Vec<String> {
    let code = code_only(text);
    let chars: Vec<char> = code.chars().collect();
    let file_mod: Vec<String> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").map(str::to_string).collect()
    };
    // Inline modules open at a brace depth: (name, depth).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut pending_mod: Option<String> = None;
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            depth += 1;
            if let Some(name) = pending_mod.take() {
                inline.push((name, depth));
            }
            i += 1;
            continue;
        }
        if c == '}' {
            if inline.last().is_some_and(|(_, d)| *d == depth) {
                inline.pop();
            }
            depth = depth.saturating_sub(1);
            i += 1;
            continue;
        }
        if c == ';' {
            pending_mod = None;
        }
        if is_ident(c) && (i == 0 || !is_ident(chars[i - 1]) && chars[i - 1] != ':') {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word == "mod" {
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let s = j;
                while j < chars.len() && is_ident(chars[j]) {
                    j += 1;
                }
                pending_mod = Some(chars[s..j].iter().collect());
                continue;
            }
            if !matches!(word.as_str(), "crate" | "super" | "self") || !code[char_offset(&chars, i)..].starts_with("::")
            {
                continue;
            }
            let mut current: Vec<String> = file_mod.clone();
            current.extend(inline.iter().map(|(n, _)| n.clone()));
            let mut base: Vec<String> = match word.as_str() {
                "crate" => Vec::new(),
                "self" => current.clone(),
                _ => {
                    let mut p = current.clone();
                    p.pop();
                    p
                }
            };
            // Further `super::` segments.
            let mut j = i;
            let rest: String = chars[j..].iter().take(4000).collect();
            let mut rest = rest.as_str();
            while let Some(r) = rest.strip_prefix("::super") {
                base.pop();
                rest = r;
                j += "::super".len();
            }
            let tail = rest.strip_prefix("::").unwrap_or("");
            for p in expand(tail) {
                let mut full = base.clone();
                full.extend(
                    p.split("::")
                        .filter(|s| !s.is_empty() && *s != "self")
                        .map(str::to_string),
                );
                out.push(full.join("::"));
            }
            i = j;
            continue;
        }
        i += 1;
    }
    out
}

fn char_offset(chars: &[char], i: usize) -> usize {
    chars[..i].iter().map(|c| c.len_utf8()).sum()
}

/// The paths a `use` tail names: `a::b::C` -> `[a::b::C]`, `{a::b, c::{d, e}}` -> three.
fn expand(tail: &str) -> Vec<String> {
    let t = tail.trim_start();
    if let Some(inner) = t.strip_prefix('{') {
        let body = matching_group(inner);
        return split_top(body)
            .into_iter()
            .flat_map(|part| expand(part.trim()))
            .collect();
    }
    let mut path = String::new();
    let mut rest = t;
    loop {
        let seg: String = rest.chars().take_while(|&c| is_ident(c)).collect();
        if seg.is_empty() {
            break;
        }
        path.push_str(&seg);
        rest = &rest[seg.len()..];
        if let Some(r) = rest.strip_prefix("::") {
            if r.trim_start().starts_with('{') {
                let sub = expand(r);
                return sub.into_iter().map(|s| format!("{path}::{s}")).collect();
            }
            path.push_str("::");
            rest = r;
        } else {
            break;
        }
    }
    vec![path.trim_end_matches("::").to_string()]
}

/// The text up to the `}` closing a group whose `{` was just consumed.
fn matching_group(s: &str) -> &str {
    let mut depth = 1;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &s[..i];
                }
            }
            _ => {}
        }
    }
    s
}

/// Splits a group body at its top-level commas.
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut parts) = (0, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// The longest module path `path` starts with (`""`, the root, when none).
fn resolve(path: &str, modules: &BTreeSet<String>) -> String {
    let segs: Vec<&str> = path.split("::").collect();
    for n in (1..=segs.len()).rev() {
        let candidate = segs[..n].join("::");
        if modules.contains(&candidate) {
            return candidate;
        }
    }
    String::new()
}

/// Strongly connected components of more than one module (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        if let Some(ws) = t.g.edges.get(v) {
            for w in ws {
                let w = w.as_str();
                if !t.g.edges.contains_key(w) {
                    continue;
                }
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// The longest import chain (in a graph with loops, chains stop where they would repeat).
fn longest_chain(g: &Graph) -> Vec<String> {
    fn from<'a>(
        g: &'a Graph,
        v: &'a str,
        memo: &mut BTreeMap<&'a str, Vec<String>>,
        path: &mut BTreeSet<&'a str>,
    ) -> Vec<String> {
        if let Some(c) = memo.get(v) {
            return c.clone();
        }
        path.insert(v);
        let mut best = Vec::new();
        for w in g.edges.get(v).into_iter().flatten() {
            if path.contains(w.as_str()) || !g.edges.contains_key(w) {
                continue;
            }
            let c = from(g, w, memo, path);
            if c.len() > best.len() {
                best = c;
            }
        }
        path.remove(v);
        let mut chain = vec![v.to_string()];
        chain.extend(best);
        memo.insert(v, chain.clone());
        chain
    }
    let mut memo = BTreeMap::new();
    let mut best = Vec::new();
    for v in g.edges.keys() {
        let c = from(g, v, &mut memo, &mut BTreeSet::new());
        if c.len() > best.len() {
            best = c;
        }
    }
    best
}

/// Fails with every violation listed; prints the crate's shape for the record.
pub fn assert_layered(crate_name: &str, src: &Path, layers: &[(&str, u32)]) {
    let g = graph(src);
    let r = check(&g, layers);
    eprintln!(
        "{crate_name}: {} modules, files per folder {:?}, longest import chain ({} modules): {}",
        g.edges.len(),
        r.files_per_folder,
        r.longest_chain.len(),
        r.longest_chain.join(" -> ")
    );
    let mut problems = Vec::new();
    if !r.unassigned.is_empty() {
        problems.push(format!(
            "modules in no layer (add them to the table): {:?}",
            r.unassigned
        ));
    }
    if !r.upward.is_empty() {
        problems.push(format!("imports of a higher layer:\n  {}", r.upward.join("\n  ")));
    }
    if !r.cycles.is_empty() {
        problems.push(format!("import loops: {:?}", r.cycles));
    }
    assert!(problems.is_empty(), "{crate_name}/src:\n{}", problems.join("\n"));
}

/// The checker itself, on a crate written in a temp dir: it must see `use` groups, inline
/// paths, `super::` from a nested test module, ignore comments and strings, and report an
/// upward import and a loop.
pub fn self_test() {
    let dir = std::env::temp_dir().join(format!("layering-self-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let write = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("lib.rs", "pub mod low; pub mod high; pub mod a; pub mod b;");
    write(
        "low/mod.rs",
        "pub mod x;\n// crate::high is only a comment\nconst S: &str = \"crate::high::y\";",
    );
    write(
        "low/x.rs",
        "use crate::{a::thing, high::{y::Y, z}};\n#[cfg(test)] mod tests { use super::*; fn f() { let _ = '\"'; } }",
    );
    write("high/mod.rs", "pub mod y; pub mod z; fn g() { crate::low::x::f(); }");
    write("high/y.rs", "use super::z;");
    write("high/z.rs", "");
    write("a.rs", "use crate::b::B;");
    write("b.rs", "fn h() -> crate::a::A { todo!() }");
    let g = graph(&dir);
    assert_eq!(
        g.edges["low::x"].iter().map(String::as_str).collect::<Vec<_>>(),
        ["a", "high::y", "high::z"],
        "groups expand; super:: in a test module is the file itself"
    );
    assert!(
        g.edges["low"].is_empty(),
        "comments and strings are not imports: {:?}",
        g.edges["low"]
    );
    assert_eq!(g.edges["high::y"].iter().collect::<Vec<_>>(), ["high::z"]);
    let r = check(&g, &[("low", 0), ("high", 1), ("a", 2), ("b", 2)]);
    assert_eq!(r.upward.len(), 3, "{:?}", r.upward);
    assert!(
        r.upward.iter().any(|u| u.starts_with("low::x -> high::y")),
        "{:?}",
        r.upward
    );
    assert_eq!(r.cycles, vec![vec!["a".to_string(), "b".to_string()]]);
    let r = check(&g, &[("low", 0), ("a", 2), ("b", 2)]);
    assert_eq!(r.unassigned, ["high", "high::y", "high::z"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The functions of every file under `src` (`main.rs` included) whose body has more than
/// `limit` lines of code (blank and comment-only lines not counted, as clippy's
/// `too_many_lines` counts), as `file: name (n lines)`. Test code is left out: a block opened
/// after `#[cfg(test)]` and the body of a `backend_tests!` invocation.
pub fn long_functions(src: &Path, limit: usize) -> Vec<String> {
    let mut files = Vec::new();
    collect_all(src, &mut files);
    let mut long = Vec::new();
    for path in files {
        let text = code_only(&std::fs::read_to_string(&path).unwrap());
        let rel = path.strip_prefix(src).unwrap().display().to_string();
        for (name, lines) in function_lengths(&text) {
            if lines > limit {
                long.push(format!("{rel}: {name} ({lines} lines)"));
            }
        }
    }
    long
}

/// The limit clippy holds the workspace to: `too-many-lines-threshold` in `clippy.toml`.
pub fn clippy_line_limit() -> usize {
    let toml = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clippy.toml");
    let text = std::fs::read_to_string(&toml).unwrap_or_else(|e| panic!("{}: {e}", toml.display()));
    text.lines()
        .find_map(|l| {
            l.strip_prefix("too-many-lines-threshold")?
                .trim()
                .strip_prefix('=')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{}: no too-many-lines-threshold", toml.display()))
}

/// Fails naming every function of `src` over clippy's line limit.
pub fn assert_short_functions(crate_name: &str, src: &Path) {
    let limit = clippy_line_limit();
    let long = long_functions(src, limit);
    assert!(
        long.is_empty(),
        "{crate_name}/src: functions over {limit} lines (split them):\n  {}",
        long.join("\n  ")
    );
}

fn collect_all(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_all(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `(name, body lines of code)` of every `fn` with a body in `code` (comments and literals
/// already blanked), outside test blocks.
fn function_lengths(code: &str) -> Vec<(String, usize)> {
    let skipped = test_blocks(code);
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = find_word(code, "fn", from) {
        from = at + 2;
        if skipped.iter().any(|&(a, b)| (a..=b).contains(&at)) {
            continue;
        }
        let rest = &code[from..];
        let name: String = rest.trim_start().chars().take_while(|&c| is_ident(c)).collect();
        let Some(open) = rest.find(['{', ';']).map(|i| from + i) else {
            break;
        };
        if name.is_empty() || code.as_bytes()[open] == b';' {
            continue;
        }
        let close = matching_brace(code, open);
        let lines = code[open..close]
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .count();
        out.push((name, lines));
    }
    out
}

/// Byte ranges of the blocks after `#[cfg(test)]` (when it marks an item with a body) and of
/// `backend_tests!` invocations.
fn test_blocks(code: &str) -> Vec<(usize, usize)> {
    let mut blocks = Vec::new();
    for marker in ["#[cfg(test)]", "backend_tests!"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(marker).map(|i| from + i) {
            from = i + marker.len();
            match code[from..].find(['{', ';']).map(|j| from + j) {
                Some(open) if code.as_bytes()[open] == b'{' => blocks.push((i, matching_brace(code, open))),
                _ => {}
            }
        }
    }
    blocks
}

/// The first occurrence of `word` at or after `from` with no identifier character either side.
fn find_word(code: &str, word: &str, mut from: usize) -> Option<usize> {
    while let Some(i) = code[from..].find(word).map(|i| from + i) {
        let before = code[..i].chars().next_back().is_some_and(is_ident);
        let after = code[i + word.len()..].chars().next().is_some_and(is_ident);
        if !before && !after {
            return Some(i);
        }
        from = i + word.len();
    }
    None
}

/// The byte offset of the `}` closing the `{` at `open` (the end of `code` if unbalanced).
fn matching_brace(code: &str, open: usize) -> usize {
    let mut depth = 0usize;
    for (i, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return open + i;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// The function-length check finds a long function, and only that one.
pub fn self_test_lengths() {
    let body = |n: usize| (0..n).map(|i| format!("    let x{i} = {i};\n")).collect::<String>();
    let code = format!(
        "// fn not_code() {{ }}\nfn long() {{\n{}\n\n    // a comment\n}}\nfn fits() {{\n{}}}\ntrait T {{ fn decl(&self); }}\n\
         #[cfg(test)]\nmod tests {{\n    fn long_test() {{\n{}    }}\n}}\nbackend_tests! {{\n    fn long_backend() {{\n{}    }}\n}}\n",
        body(101),
        body(100),
        body(150),
        body(150)
    );
    let lengths = function_lengths(&code_only(&code));
    assert_eq!(
        lengths,
        [("long".to_string(), 101), ("fits".to_string(), 100)],
        "{lengths:?}"
    );
}
