//! Seeded structure-aware mutation of real files, and the loop that runs a target on the
//! mutants (the engine of `make test`; `make fuzz` runs libFuzzer on the same targets).
//!
//! Byte mutations are AFL's and libFuzzer's usual ones (bit flips, interesting integers,
//! deletions, duplications, splices, truncation) plus text-aware ones (a number replaced by an
//! extreme one, delimiters and quotes inserted), so line- and CSV-based formats get past their
//! first field. JSON inputs also get value mutations (a node replaced by another type or an
//! extreme value, a key removed, an array element duplicated), which reach the adapters'
//! checks behind the JSON syntax.

use std::panic::{catch_unwind, AssertUnwindSafe};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::targets::Target;

const INTERESTING_BYTES: &[u8] = &[0x00, 0x01, 0x7f, 0x80, 0xff, b'\n', b'"', b',', b'0', b'9'];
const INTERESTING_INTS: &[i64] = &[
    0,
    1,
    -1,
    127,
    128,
    255,
    256,
    -129,
    0x7fff,
    0x8000,
    0xffff,
    0x10000,
    0x7fff_ffff,
    -0x8000_0000,
    0xffff_ffff,
    i64::MAX,
    i64::MIN,
];
const TOKENS: &[&str] = &[
    "\"",
    ",",
    "\n",
    "\r\n",
    " ",
    "\t",
    "/",
    "../",
    "-1",
    "0",
    "1e308",
    "-1e308",
    "NaN",
    "99999999999999999999999",
    "null",
    "[]",
    "{}",
    "\\u0000",
    "\u{feff}",
    "\u{ffff}",
    "é",
    "\0",
];
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "-0",
    "2147483648",
    "-2147483649",
    "4294967296",
    "9223372036854775808",
    "1e400",
    "0.5",
    "65536",
    "",
];

/// One mutant of `base`. With `selector`, the first byte (which layout file the rest replaces)
/// is changed only now and then; with `json`, half the mutants change a JSON value instead of
/// bytes. `others` are the corpus, for splicing.
pub fn mutate(rng: &mut impl Rng, base: &[u8], others: &[Vec<u8>], selector: bool, json: bool) -> Vec<u8> {
    let (head, body) = match (selector, base.split_first()) {
        (true, Some((&s, rest))) => (Some(s), rest),
        _ => (None, base),
    };
    let mut body = body.to_vec();
    if json && rng.random_bool(0.5) {
        if let Ok(mut v) = serde_json::from_slice::<Value>(&body) {
            for _ in 0..rng.random_range(1..=3) {
                mutate_value(rng, &mut v);
            }
            body = serde_json::to_vec(&v).expect("serializable");
        } else {
            mutate_bytes(rng, &mut body, others);
        }
    } else {
        for _ in 0..1 + rng.random_range(0..4u32).pow(2) / 3 {
            mutate_bytes(rng, &mut body, others);
        }
    }
    let mut out = Vec::with_capacity(body.len() + 1);
    if let Some(s) = head {
        out.push(if rng.random_bool(0.05) { rng.random() } else { s });
    }
    out.extend(body);
    out
}

fn mutate_bytes(rng: &mut impl Rng, b: &mut Vec<u8>, others: &[Vec<u8>]) {
    let pos = |rng: &mut dyn RngCore, len: usize| if len == 0 { 0 } else { rng.random_range(0..len) };
    match rng.random_range(0..11) {
        0 if !b.is_empty() => {
            let i = pos(rng, b.len());
            b[i] ^= 1 << rng.random_range(0..8);
        }
        1 if !b.is_empty() => {
            let i = pos(rng, b.len());
            b[i] = INTERESTING_BYTES[rng.random_range(0..INTERESTING_BYTES.len())];
        }
        2 if b.len() >= 8 => {
            let v = INTERESTING_INTS[rng.random_range(0..INTERESTING_INTS.len())];
            let width = [1usize, 2, 4, 8][rng.random_range(0..4)];
            let bytes = if rng.random_bool(0.5) {
                v.to_le_bytes()[..width].to_vec()
            } else {
                v.to_be_bytes()[8 - width..].to_vec()
            };
            let i = pos(rng, b.len() - width);
            b[i..i + width].copy_from_slice(&bytes);
        }
        3 if !b.is_empty() => {
            let i = pos(rng, b.len());
            let n = rng.random_range(1..=(b.len() - i).min(256));
            b.drain(i..i + n);
        }
        4 if !b.is_empty() => {
            let i = pos(rng, b.len());
            let n = rng.random_range(1..=(b.len() - i).min(256));
            let chunk = b[i..i + n].to_vec();
            let at = pos(rng, b.len());
            b.splice(at..at, chunk);
        }
        5 => {
            let t = TOKENS[rng.random_range(0..TOKENS.len())].as_bytes();
            let at = pos(rng, b.len() + 1);
            b.splice(at..at, t.iter().copied());
        }
        6 if !b.is_empty() => {
            let at = pos(rng, b.len());
            b.truncate(at);
        }
        7 if !others.is_empty() => {
            let o = &others[rng.random_range(0..others.len())];
            let (i, j) = (pos(rng, b.len()), pos(rng, o.len()));
            b.truncate(i);
            b.extend_from_slice(&o[j..]);
        }
        8 => {
            // A decimal number somewhere in the text, replaced by an extreme one.
            let starts: Vec<usize> = (0..b.len())
                .filter(|&i| b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit()))
                .collect();
            if let Some(&s) = starts.get(pos(rng, starts.len())) {
                let e = (s..b.len()).find(|&i| !b[i].is_ascii_digit()).unwrap_or(b.len());
                let n = NUMBERS[rng.random_range(0..NUMBERS.len())].as_bytes();
                b.splice(s..e, n.iter().copied());
            }
        }
        9 => {
            let n = rng.random_range(1..=16);
            let at = pos(rng, b.len() + 1);
            let noise: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            b.splice(at..at, noise);
        }
        _ if !b.is_empty() => {
            // A whole line (or record) duplicated or dropped.
            let lines: Vec<usize> = std::iter::once(0)
                .chain((0..b.len()).filter(|&i| b[i] == b'\n').map(|i| i + 1))
                .filter(|&i| i < b.len())
                .collect();
            let s = lines[pos(rng, lines.len())];
            let e = (s..b.len()).find(|&i| b[i] == b'\n').map_or(b.len(), |i| i + 1);
            if rng.random_bool(0.5) {
                let line = b[s..e].to_vec();
                b.splice(s..s, line);
            } else {
                b.drain(s..e);
            }
        }
        _ => b.push(rng.random()),
    }
}

/// JSON pointers of the nodes of `v` (at most `limit`, the first ones in document order).
fn pointers(v: &Value, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), v)];
    while let Some((p, v)) = stack.pop() {
        if out.len() >= limit {
            break;
        }
        match v {
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate().rev() {
                    stack.push((format!("{p}/{i}"), x));
                }
            }
            Value::Object(o) => {
                for (k, x) in o.iter() {
                    stack.push((format!("{p}/{}", k.replace('~', "~0").replace('/', "~1")), x));
                }
            }
            _ => {}
        }
        out.push(p);
    }
    out
}

fn extreme(rng: &mut impl Rng, other: Option<Value>) -> Value {
    match rng.random_range(0..12) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => INTERESTING_INTS[rng.random_range(0..INTERESTING_INTS.len())].into(),
        3 => u64::MAX.into(),
        4 => serde_json::json!(1e308),
        5 => serde_json::json!(-0.5),
        6 => "".into(),
        7 => "x".repeat(rng.random_range(1..4096)).into(),
        8 => "../../\u{0}é/".into(),
        9 => Value::Array(Vec::new()),
        10 => Value::Object(Default::default()),
        _ => other.unwrap_or(Value::Null),
    }
}

/// One value mutation: a node replaced, an object key removed, or an array element duplicated
/// or removed.
pub fn mutate_value(rng: &mut impl Rng, v: &mut Value) {
    let ptrs = pointers(v, 50_000);
    let p = &ptrs[rng.random_range(0..ptrs.len())];
    let other = v.pointer(&ptrs[rng.random_range(0..ptrs.len())]).cloned();
    let choice = rng.random_range(0..4);
    let Some(node) = v.pointer_mut(p) else { return };
    match (choice, node) {
        (0, Value::Object(o)) if !o.is_empty() => {
            let k = o.keys().nth(rng.random_range(0..o.len())).cloned().expect("in range");
            o.remove(&k);
        }
        (1, Value::Array(a)) if !a.is_empty() => {
            let i = rng.random_range(0..a.len());
            if rng.random_bool(0.5) {
                let x = a[i].clone();
                a.insert(i, x);
            } else {
                a.remove(i);
            }
        }
        (_, node) => *node = extreme(rng, other),
    }
}

/// What [`run_cases`] found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Inputs run: the seeds, the regressions, then the mutants.
    pub executions: u64,
    /// Inputs that panicked, with the panic message.
    pub panics: Vec<(Vec<u8>, String)>,
}

/// Runs `target` on `inputs` (the seeds and kept regressions) and then on `cases` mutants of
/// the seeds drawn with `seed`; every panic is caught and returned with its input.
pub fn run_cases(target: &Target, inputs: &[Vec<u8>], seeds: &[Vec<u8>], cases: u64, seed: u64) -> Outcome {
    let mut out = Outcome::default();
    let mut check = |input: &[u8]| {
        out.executions += 1;
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| (target.run)(input))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".into());
            out.panics.push((input.to_vec(), msg));
        }
    };
    for input in inputs {
        check(input);
    }
    if seeds.is_empty() {
        return out;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for _ in 0..cases {
        let base = &seeds[rng.random_range(0..seeds.len())];
        let input = mutate(&mut rng, base, seeds, target.selector, target.json);
        check(&input);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutants_differ_from_their_seed_and_keep_the_selector_byte_mostly() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let base = b"\x01apple_pie/1005649\nbeignets/2\n".to_vec();
        let mutants: Vec<Vec<u8>> = (0..200).map(|_| mutate(&mut rng, &base, &[], true, false)).collect();
        assert!(mutants.iter().filter(|m| **m != base).count() > 180);
        assert!(mutants.iter().filter(|m| m.first() == Some(&1)).count() > 170);
    }

    #[test]
    fn json_mutants_are_mostly_still_json_with_a_changed_value() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let base = br#"{"images":[{"id":1,"file_name":"a.jpg"}],"annotations":[]}"#.to_vec();
        let parsed = (0..200)
            .map(|_| mutate(&mut rng, &base, &[], false, true))
            .filter(|m| *m != base && serde_json::from_slice::<Value>(m).is_ok())
            .count();
        assert!(parsed > 80, "{parsed}");
    }

    #[test]
    fn the_loop_reports_a_panicking_target_with_its_input() {
        fn fragile(b: &[u8]) {
            if b.len() > 3 && b[0] == b'x' {
                panic!("boom at {}", b.len());
            }
        }
        let t = Target {
            name: "fragile",
            about: "panics on inputs starting with x",
            seeds: Vec::new,
            run: fragile,
            json: false,
            selector: false,
        };
        let out = run_cases(&t, &[b"xyzw".to_vec(), b"abcd".to_vec()], &[b"abcd".to_vec()], 0, 0);
        assert_eq!(out.executions, 2);
        assert_eq!(out.panics.len(), 1);
        assert_eq!(out.panics[0].0, b"xyzw");
        assert!(out.panics[0].1.contains("boom at 4"));
    }
}
