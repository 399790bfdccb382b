//! Runs APOLLO's fuzz targets on stable Rust, without libFuzzer.
//!
//! For each target: its seeds (plus files in `--corpus DIR/<target>/`) are
//! mutated at random (bit flips, interesting bytes, insertions, deletions,
//! duplications, splices with another corpus entry, truncation) and run in
//! this process under `catch_unwind`. An input whose outcome class the
//! target has not returned before joins the corpus, which steers the search
//! towards new error paths (there is no coverage instrumentation). A panic
//! or an input slower than `--slow` is written to
//! `--artifacts DIR/<target>/` and makes the run fail (exit 1).
//!
//! ```text
//! apollo-fuzz [--seconds 30] [--seed N] [--max-len 65536] [--corpus DIR]
//!             [--artifacts DIR] [--slow 2s] [TARGET...]
//! apollo-fuzz --reproduce TARGET FILE
//! apollo-fuzz --list
//! ```

#![forbid(unsafe_code)]

use std::{
    collections::HashSet,
    hash::{Hash as _, Hasher as _},
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, Rng as _, SeedableRng as _};

struct Options {
    seconds: f64,
    seed: u64,
    max_len: usize,
    corpus: Option<PathBuf>,
    artifacts: PathBuf,
    slow: Duration,
    targets: Vec<String>,
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("apollo-fuzz: {msg} (see the header of fuzz/src/bin/apollo-fuzz.rs)");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let all = apollo_fuzz::targets();
    if args.first().map(String::as_str) == Some("--list") {
        for (name, _, _) in &all {
            println!("{name}");
        }
        return ExitCode::SUCCESS;
    }
    if args.first().map(String::as_str) == Some("--reproduce") {
        let (Some(name), Some(file)) = (args.get(1), args.get(2)) else {
            return usage("--reproduce needs TARGET FILE");
        };
        let Some((_, target, _)) = all.iter().find(|(n, _, _)| n == name) else {
            return usage(&format!("no target {name:?}"));
        };
        let data = match std::fs::read(file) {
            Ok(d) => d,
            Err(e) => return usage(&format!("cannot read {file}: {e}")),
        };
        println!("{}", target(&data));
        return ExitCode::SUCCESS;
    }
    let mut o = Options {
        seconds: 30.0,
        seed: 0x00A9_0110,
        max_len: 65_536,
        corpus: None,
        artifacts: PathBuf::from("fuzz/artifacts"),
        slow: Duration::from_secs(2),
        targets: Vec::new(),
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        let parsed: Result<(), String> = match a.as_str() {
            "--seconds" => value("--seconds").and_then(|v| {
                o.seconds = v.parse().map_err(|_| format!("--seconds {v:?}"))?;
                Ok(())
            }),
            "--seed" => value("--seed").and_then(|v| {
                o.seed = v.parse().map_err(|_| format!("--seed {v:?}"))?;
                Ok(())
            }),
            "--max-len" => value("--max-len").and_then(|v| {
                o.max_len = v.parse().map_err(|_| format!("--max-len {v:?}"))?;
                Ok(())
            }),
            "--slow" => value("--slow").and_then(|v| {
                let secs: f64 = v
                    .trim_end_matches('s')
                    .parse()
                    .map_err(|_| format!("--slow {v:?}"))?;
                o.slow = Duration::from_secs_f64(secs);
                Ok(())
            }),
            "--corpus" => value("--corpus").map(|v| o.corpus = Some(v.into())),
            "--artifacts" => value("--artifacts").map(|v| o.artifacts = v.into()),
            s if s.starts_with('-') => Err(format!("unknown flag {s}")),
            _ => {
                o.targets.push(a);
                Ok(())
            }
        };
        if let Err(msg) = parsed {
            return usage(&msg);
        }
    }
    for t in &o.targets {
        if !all.iter().any(|(n, _, _)| n == t) {
            return usage(&format!("no target {t:?} (--list names them)"));
        }
    }
    // Panics are reported per input below (with where they happened), not
    // printed by the default hook.
    std::panic::set_hook(Box::new(|info| {
        if let Some(l) = info.location() {
            *LAST_PANIC_AT.lock().unwrap_or_else(|e| e.into_inner()) =
                format!("{}:{}", l.file(), l.line());
        }
    }));
    let mut failed = false;
    for (name, target, seeds) in all {
        if !o.targets.is_empty() && !o.targets.iter().any(|t| t == name) {
            continue;
        }
        let report = run_target(name, target, seeds, &o);
        println!(
            "{name:<28} {:>9} runs {:>8.0}/s  corpus {:>4}  classes {:>4}  {}",
            report.runs,
            report.runs as f64 / report.elapsed.as_secs_f64().max(1e-9),
            report.corpus,
            report.classes,
            if report.findings.is_empty() {
                "ok".to_string()
            } else {
                format!("FOUND {}", report.findings.len())
            }
        );
        for f in &report.findings {
            println!("  {f}");
        }
        failed |= !report.findings.is_empty();
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Where the last panic happened (`file:line`).
static LAST_PANIC_AT: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

struct Report {
    runs: u64,
    elapsed: Duration,
    corpus: usize,
    classes: usize,
    findings: Vec<String>,
}

fn run_target(name: &str, target: apollo_fuzz::Target, seeds: Vec<Vec<u8>>, o: &Options) -> Report {
    let mut rng = StdRng::seed_from_u64(o.seed ^ fnv(name.as_bytes()));
    let mut corpus = seeds;
    if let Some(dir) = &o.corpus {
        if let Ok(entries) = std::fs::read_dir(dir.join(name)) {
            for e in entries.flatten() {
                if let Ok(d) = std::fs::read(e.path()) {
                    corpus.push(d);
                }
            }
        }
    }
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let mut classes = HashSet::new();
    let mut findings = Vec::new();
    let mut seen_findings = HashSet::new();
    let started = Instant::now();
    let budget = Duration::from_secs_f64(o.seconds);
    let mut runs = 0u64;
    // Every seed once as it is, then mutants until the time is up.
    let mut pending: Vec<Vec<u8>> = corpus.clone();
    while started.elapsed() < budget && findings.len() < 5 {
        let input = pending
            .pop()
            .unwrap_or_else(|| mutate(&mut rng, &corpus, o.max_len));
        runs += 1;
        let t = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| target(&input)));
        let took = t.elapsed();
        let finding = match &outcome {
            Err(panic) => Some(format!(
                "panic: {} at {}",
                panic_message(panic.as_ref()),
                LAST_PANIC_AT.lock().unwrap_or_else(|e| e.into_inner())
            )),
            Ok(_) if took > o.slow => Some(format!("slow: {took:?} for {} bytes", input.len())),
            Ok(_) => None,
        };
        if let Some(what) = finding {
            if seen_findings.insert(what.clone()) {
                let path = save(&o.artifacts.join(name), &input);
                findings.push(format!("{what}; input {}", path.display()));
            }
            continue;
        }
        if let Ok(class) = outcome {
            if classes.insert(class) && !corpus.contains(&input) {
                corpus.push(input);
            }
        }
    }
    Report {
        runs,
        elapsed: started.elapsed(),
        corpus: corpus.len(),
        classes: classes.len(),
        findings,
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "non-string panic".into())
}

fn fnv(data: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

fn save(dir: &Path, data: &[u8]) -> PathBuf {
    let path = dir.join(format!("crash-{:016x}", fnv(data)));
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&path, data)) {
        eprintln!("cannot write {}: {e}", path.display());
    }
    path
}

/// Bytes that often sit on a boundary of a parser.
const INTERESTING: &[&[u8]] = &[
    b"\0",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"-",
    b"+",
    b".",
    b",",
    b"\n",
    b"\r\n",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b"%",
    b"%zz",
    b"NaN",
    b"inf",
    b"-inf",
    b"1e309",
    b"-1",
    b"0",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"18446744073709551616",
    b"4294967296",
    b"1e-400",
    b"\xef\xbf\xbd",
    b"#",
    b"{}",
    b"null",
    b"true",
    b"Ki",
    b"Ei",
    b"m",
    b"e",
];

fn mutate(rng: &mut StdRng, corpus: &[Vec<u8>], max_len: usize) -> Vec<u8> {
    let mut d = corpus[rng.random_range(0..corpus.len())].clone();
    for _ in 0..rng.random_range(1..=4) {
        let len = d.len();
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                d[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                d[i] = rng.random();
            }
            2 => {
                let i = rng.random_range(0..=len);
                let s = INTERESTING[rng.random_range(0..INTERESTING.len())];
                d.splice(i..i, s.iter().copied());
            }
            3 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=16)).min(len);
                d.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=64)).min(len);
                let chunk = d[a..b].to_vec();
                let at = rng.random_range(0..=len);
                d.splice(at..at, chunk);
            }
            5 => {
                let other = &corpus[rng.random_range(0..corpus.len())];
                if !other.is_empty() {
                    let a = rng.random_range(0..other.len());
                    let b = rng.random_range(a..=other.len());
                    let at = rng.random_range(0..=len);
                    d.splice(at..at, other[a..b].iter().copied());
                }
            }
            6 if len > 0 => d.truncate(rng.random_range(0..len)),
            _ => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..=8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                d.splice(i..i, bytes);
            }
        }
    }
    d.truncate(max_len);
    d
}
