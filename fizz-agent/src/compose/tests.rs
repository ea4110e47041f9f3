//! Data-driven tests: each directory under `fizz-agent/tests/compose/` is a case.
//!
//! A case holds Compose files (`docker-compose.yml` unless `args.txt` names others), maybe
//! `.env` and env files, and the expectation: `expected.yml` (the project as `to_yaml` prints
//! it) or `expected-error.txt` (the error message), and `expected-warnings.txt` (one warning a
//! line; absent means none). The case directory is written `$CASE` (and the directory of all
//! cases `$CASES`) in `expected.yml`, and left out of file names in messages.
//!
//! `args.txt` lines, each optional: `-f FILE`, `-p NAME`, `--profile NAME`, `--env-file FILE`,
//! `env KEY=VALUE` (the process environment, empty otherwise); `#` starts a comment.
//!
//! Every project that loads is also printed and loaded again, and must come back the same.
//!
//! `UPDATE_EXPECT=1 cargo test -p fizz-agent --lib compose` rewrites the expectations.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use super::{load, to_json, to_yaml, LoadOptions};

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compose")
}

fn options(dir: &Path) -> Result<LoadOptions, String> {
    let mut opts = LoadOptions::default();
    let args = fs::read_to_string(dir.join("args.txt")).unwrap_or_default();
    for line in args
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (flag, value) = line
            .split_once(' ')
            .ok_or_else(|| format!("args.txt: bad line {line:?}"))?;
        let value = value.trim();
        match flag {
            "-f" => opts.files.push(dir.join(value)),
            "-p" => opts.project_name = Some(value.to_string()),
            "--profile" => opts.profiles.push(value.to_string()),
            "--env-file" => opts.env_file = Some(dir.join(value)),
            "env" => {
                let (k, v) = value
                    .split_once('=')
                    .ok_or_else(|| format!("args.txt: bad env {value:?}"))?;
                opts.env.insert(k.to_string(), v.to_string());
            }
            other => return Err(format!("args.txt: unknown flag {other:?}")),
        }
    }
    if opts.files.is_empty() {
        opts.files.push(dir.join("docker-compose.yml"));
    }
    Ok(opts)
}

/// A line diff of `want` and `got` (longest common subsequence), `-` for expected lines that
/// are missing and `+` for lines that are new.
fn diff(want: &str, got: &str) -> String {
    let a: Vec<&str> = want.lines().collect();
    let b: Vec<&str> = got.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            let _ = writeln!(out, "  {}", a[i]);
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            let _ = writeln!(out, "+ {}", b[j]);
            j += 1;
        } else {
            let _ = writeln!(out, "- {}", a[i]);
            i += 1;
        }
    }
    out
}

/// Compares `got` with the file `name` of the case (absent: empty), or rewrites it.
fn check_file(dir: &Path, name: &str, got: &str, update: bool, failures: &mut Vec<String>) {
    let path = dir.join(name);
    let want = fs::read_to_string(&path).unwrap_or_default();
    if want == got {
        return;
    }
    if update {
        if got.is_empty() {
            let _ = fs::remove_file(&path);
        } else {
            fs::write(&path, got)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
        return;
    }
    failures.push(format!(
        "{name} differs (- expected, + got):\n{}",
        diff(&want, got)
    ));
}

/// Whether the printed project, loaded as a Compose file, gives the same project.
fn reads_back(opts: &LoadOptions, project: &super::Project) -> Result<(), String> {
    let printed = to_yaml(project);
    let file = opts.files[0].with_file_name("printed.yml");
    let read = |p: &Path| -> std::io::Result<String> {
        if p == file {
            Ok(printed.clone())
        } else {
            Err(std::io::ErrorKind::NotFound.into())
        }
    };
    let again = LoadOptions {
        files: vec![file.clone()],
        project_name: None,
        env_file: None,
        ..opts.clone()
    };
    match super::load_with(&again, &read) {
        Ok(loaded) if loaded.project == *project => Ok(()),
        Ok(loaded) => Err(format!(
            "the printed project reads back differently:\n{}",
            diff(&printed, &to_yaml(&loaded.project))
        )),
        Err(e) => Err(format!(
            "the printed project does not read back: {e}\n{printed}"
        )),
    }
}

fn run_case(dir: &Path, update: bool) -> Vec<String> {
    let mut failures = Vec::new();
    let opts = match options(dir) {
        Ok(o) => o,
        Err(e) => return vec![e],
    };
    let case = dir.display().to_string();
    let root = cases_dir().display().to_string();
    let scrub_path = |s: &str| s.replace(&case, "$CASE").replace(&root, "$CASES");
    let scrub = |s: &str| scrub_path(&s.replace(&format!("{case}/"), ""));
    let (yaml, error, warnings) = match load(&opts) {
        Ok(loaded) => {
            let yaml = scrub_path(&to_yaml(&loaded.project));
            let json: serde_json::Value =
                serde_json::from_str(&to_json(&loaded.project)).expect("to_json prints valid JSON");
            assert_eq!(json["name"], loaded.project.name.as_str());
            if let Err(e) = reads_back(&opts, &loaded.project) {
                return vec![e];
            }
            let warnings: String = loaded
                .warnings
                .iter()
                .map(|w| format!("{}\n", scrub(&w.to_string())))
                .collect();
            (yaml, String::new(), warnings)
        }
        Err(e) => (
            String::new(),
            format!("{}\n", scrub(&e.to_string())),
            String::new(),
        ),
    };
    check_file(dir, "expected.yml", &yaml, update, &mut failures);
    check_file(dir, "expected-error.txt", &error, update, &mut failures);
    check_file(
        dir,
        "expected-warnings.txt",
        &warnings,
        update,
        &mut failures,
    );
    failures
}

#[test]
fn compose_cases() {
    let update = std::env::var("UPDATE_EXPECT").is_ok_and(|v| v == "1");
    let mut dirs: Vec<PathBuf> = fs::read_dir(cases_dir())
        .expect("tests/compose exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no cases under {}", cases_dir().display());
    let mut report = BTreeMap::new();
    for dir in &dirs {
        let failures = run_case(dir, update);
        if !failures.is_empty() {
            let name = dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            report.insert(name, failures.join("\n"));
        }
    }
    if !report.is_empty() {
        let mut msg = format!(
            "{} of {} compose cases failed (UPDATE_EXPECT=1 rewrites expectations)\n",
            report.len(),
            dirs.len()
        );
        for (name, failures) in &report {
            let _ = write!(msg, "\n=== {name}\n{failures}");
        }
        panic!("{msg}");
    }
}

#[test]
fn diff_marks_missing_and_new_lines() {
    assert_eq!(diff("a\nb\nc\n", "a\nx\nc\n"), "  a\n+ x\n- b\n  c\n");
}

#[test]
fn reading_goes_through_the_given_function() {
    let files: BTreeMap<&str, &str> = [
        (
            "/p/app/compose.yml",
            "services:\n  web:\n    image: nginx:${TAG}\n",
        ),
        ("/p/app/.env", "TAG=1.25\n"),
    ]
    .into_iter()
    .collect();
    let read = |p: &Path| -> std::io::Result<String> {
        files
            .get(p.to_str().unwrap_or_default())
            .map(|s| s.to_string())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    };
    let opts = LoadOptions {
        files: vec!["/p/app/compose.yml".into()],
        ..LoadOptions::default()
    };
    let loaded = super::load_with(&opts, &read).unwrap();
    assert_eq!(loaded.project.name, "app");
    assert_eq!(loaded.project.services["web"].image, "nginx:1.25");
    assert!(loaded.warnings.is_empty());
}
