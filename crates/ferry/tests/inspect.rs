//! `ferry inspect DIR [--json]` on a real image: a human summary and JSON that mentions the
//! mappings and the open files; reading the image changes nothing.

mod support;

use std::fs;
use std::path::Path;

use serde_json::Value;
use support::*;

/// Every (key, value) pair anywhere in V.
fn walk<'a>(v: &'a Value, out: &mut Vec<(&'a str, &'a Value)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                out.push((k, x));
                walk(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
        _ => {}
    }
}

fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Object(m) => m.values().for_each(|x| strings(x, out)),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        _ => {}
    }
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .expect("reading the image dir")
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).expect("reading an image file"),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn inspect_a_real_image() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("inspect");
    let dir = scratch.subdir("run");
    let mut proc = Launch::new("counter", c_workload("counter"), &dir)
        .args(["200", "50"])
        .cwd(&dir)
        .spawn();
    wait_for_lines(&mut proc, 3);
    let image = scratch.join("image");
    checkpoint_and_kill(&scratch, &mut proc, &image);
    let before = snapshot(&image);

    let plain = ferry(&scratch, &[os("inspect"), image.as_os_str()]);
    assert_eq!(plain.code(), 0, "{}", plain.describe());
    assert!(
        plain.stdout.contains("counter"),
        "the summary should name the process (counter)\n{}",
        plain.describe()
    );

    let json = ferry(&scratch, &[os("inspect"), image.as_os_str(), os("--json")]);
    assert_eq!(json.code(), 0, "{}", json.describe());
    let v: Value = serde_json::from_str(&json.stdout)
        .unwrap_or_else(|e| panic!("inspect --json is not JSON: {e}\n{}", json.describe()));
    let mut pairs = Vec::new();
    walk(&v, &mut pairs);
    let non_empty_array = |pred: &dyn Fn(&str) -> bool| {
        pairs
            .iter()
            .any(|(k, x)| pred(&k.to_lowercase()) && x.as_array().is_some_and(|a| !a.is_empty()))
    };
    assert!(
        non_empty_array(&|k| k.contains("vma") || k.contains("mapping")),
        "the JSON should list the mappings (VMAs)\n{}",
        json.describe()
    );
    assert!(
        non_empty_array(&|k| k == "fds" || k.contains("fd") || k.contains("files")),
        "the JSON should list the open fds\n{}",
        json.describe()
    );
    let stdout_path = fs::canonicalize(proc.stdout.as_deref().expect("stdout path"))
        .expect("canonical stdout path");
    let mut all = Vec::new();
    strings(&v, &mut all);
    assert!(
        all.iter().any(|s| Path::new(s) == stdout_path),
        "the JSON should mention the file fd 1 is open on ({})\n{}",
        stdout_path.display(),
        json.describe()
    );

    // Read-only and repeatable.
    let again = ferry(&scratch, &[os("inspect"), image.as_os_str(), os("--json")]);
    assert_eq!(again.code(), 0, "{}", again.describe());
    assert_eq!(
        again.stdout, json.stdout,
        "inspect --json gave different output twice"
    );
    assert!(
        snapshot(&image) == before,
        "ferry inspect modified the image directory"
    );
}
