//! Unmodified system programs, checkpointed mid-run and restored, must produce exactly what an
//! uninterrupted run produces: CPython running `workloads/python/compute.py`, `gzip` of a few
//! hundred MiB from stdin, `sha256sum` of a 1 GiB file, and two process trees: a shell
//! pipeline and `make -j2` building a small C project.

mod support;

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::*;

/// LEN bytes of text-like data: words from a 4096-word vocabulary, numbers, punctuation and
/// line breaks in PRNG order. It compresses (about 2:1 with gzip), but not trivially.
fn text_file(path: PathBuf, len: u64) -> BigFile {
    let mut rng = Rng(0x7e47);
    let vocab: Vec<Vec<u8>> = (0..4096)
        .map(|_| {
            let n = 2 + rng.next() % 9;
            (0..n).map(|_| b'a' + (rng.next() % 26) as u8).collect()
        })
        .collect();
    let file = File::create(&path).expect("creating the input file");
    let big = BigFile { path, len };
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut written = 0u64;
    let mut col = 0;
    while written < len {
        let r = rng.next();
        let word: &[u8] = &vocab[(r & 4095) as usize];
        let mut piece = Vec::with_capacity(24);
        match (r >> 12) % 16 {
            0 => piece.extend_from_slice(format!("{} ", (r >> 20) % 100_000).as_bytes()),
            1 => {
                piece.extend_from_slice(word);
                piece.extend_from_slice(b", ");
            }
            _ => {
                piece.extend_from_slice(word);
                piece.push(b' ');
            }
        }
        col += piece.len();
        if col > 72 {
            piece.push(b'\n');
            col = 0;
        }
        let take = piece.len().min((len - written) as usize);
        w.write_all(&piece[..take]).expect("writing the input file");
        written += take as u64;
    }
    w.flush().expect("writing the input file");
    big
}

/// Polls the file position of PROC's fd FD until it reaches 5% of LEN; returns it. Panics if
/// the process ends first.
fn wait_for_position(proc: &mut Proc, fd: impl Fn(i32) -> Option<i32>, len: u64) -> u64 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(pos) = fd(proc.raw_pid()).and_then(|n| fd_pos(proc.raw_pid(), n))
            && pos >= len / 20
        {
            return pos;
        }
        if let Ok(Some(exit)) = proc.try_exit() {
            panic!(
                "{} ended ({exit}) before reading 5% of its input\n{}",
                proc.label,
                proc.diagnostics()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} did not get to 5% of its input in {TIMEOUT:?}\n{}",
            proc.label,
            proc.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Reference run, then a run checkpointed once the input position is between 5% and 80% of
/// the input, restored attached; both outputs must be identical.
fn checkpoint_mid_file(
    label: &str,
    scratch: &Scratch,
    input: &BigFile,
    launch: impl Fn(&str, &Path) -> Launch,
    fd: impl Fn(i32) -> Option<i32>,
) {
    let timeout = Duration::from_secs(180);
    let ref_dir = scratch.subdir("reference");
    let mut reference = launch("reference", &ref_dir).spawn();
    let ref_exit = reference.wait(timeout);
    assert_eq!(ref_exit, Exit::Code(0), "{}", reference.diagnostics());
    let ref_out = reference.stdout.clone().expect("stdout path");

    let dir = scratch.subdir("run");
    let image = scratch.join("image");
    let mut proc = launch("run", &dir).spawn();
    let pos = wait_for_position(&mut proc, &fd, input.len);
    assert!(
        pos <= input.len / 100 * 80,
        "{label}: checkpoint wanted between 5% and 80% of the input, but it was already at \
         {pos} of {} bytes",
        input.len
    );
    let ckpt = checkpoint_and_kill(scratch, &mut proc, &image);
    let out = proc.stdout.clone().expect("stdout path");
    let partial = fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let full = fs::metadata(&ref_out).map(|m| m.len()).unwrap_or(0);
    let context = format!(
        "{}--- input position before the checkpoint: {pos} of {} bytes ({}%)\n",
        ckpt.describe(),
        input.len,
        pos * 100 / input.len
    );
    assert!(
        partial < full,
        "{label}: the output was already complete at the checkpoint\n{context}"
    );

    let run = restore_attached(scratch, &image, timeout);
    let context = format!("{context}{}{}", run.describe(), proc.diagnostics());
    assert_eq!(
        run.code(),
        0,
        "{label}: the restored process must exit 0\n{context}"
    );
    assert_same_file(&format!("{label}: output"), &out, &ref_out, &context);
    let stderr = fs::read(proc.stderr.as_deref().expect("stderr path")).unwrap_or_default();
    assert_same(&format!("{label}: stderr"), &stderr, b"", &context);
}

#[test]
fn python_compute() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "python-compute",
        system_program("python3"),
        Marker::Text("step 3:"),
    )
    .args(&[Arg::Lit(
        python_workload("compute.py").to_string_lossy().into_owned(),
    )])
    .run();
}

#[test]
fn gzip_from_stdin() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("gzip");
    let input = text_file(scratch.join("input.txt"), 256 << 20);
    let gzip = system_program("gzip");
    checkpoint_mid_file(
        "gzip",
        &scratch,
        &input,
        |run, dir| {
            Launch::new(&format!("gzip-{run}"), &gzip, dir)
                .args(["-n", "-c"])
                .stdin(Input::File(input.path.clone()))
                .cwd(dir)
        },
        |_| Some(0),
    );
}

#[test]
fn sha256sum_of_a_file() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("sha256sum");
    let input = repeated_block_file(scratch.join("input.bin"), 1024);
    let path = fs::canonicalize(&input.path).expect("canonical input path");
    let sha = system_program("sha256sum");
    checkpoint_mid_file(
        "sha256sum",
        &scratch,
        &input,
        |run, dir| {
            Launch::new(&format!("sha256sum-{run}"), &sha, dir)
                .arg(&path)
                .cwd(dir)
        },
        |pid| fd_of(pid, &path),
    );
}

/// A shell pipeline, `cat | gzip | sha256sum` under `sh -c`, whose shell took the input as
/// its stdin (so the shell and `cat` share one open file description, and its offset): the
/// whole tree (sh, cat, gzip, sha256sum, two pipes with data in flight) is checkpointed
/// mid-file and restored with its pids; the shell must still know its children.
#[test]
fn shell_pipeline() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("shell-pipeline");
    let input = text_file(scratch.join("input.txt"), 192 << 20);
    let path = fs::canonicalize(&input.path).expect("canonical input path");
    let sh = system_program("sh");
    checkpoint_mid_file(
        "shell-pipeline",
        &scratch,
        &input,
        |run, dir| {
            Launch::new(&format!("pipeline-{run}"), &sh, dir)
                .args([
                    "-c",
                    "exec < \"$1\"; cat | gzip -n -1 | sha256sum; echo \"pipeline done\"",
                    "sh",
                ])
                .arg(&path)
                .cwd(dir)
        },
        |_| Some(0),
    );
}

/// A small C project generated in DIR: 8 units of generated arithmetic (each takes gcc -O2
/// a good fraction of a second), a main printing the result, and a Makefile.
/// `make -j2` building a small C project, checkpointed while two compilers run (make, its
/// jobserver pipe, gcc drivers and their cc1 children: a tree of five or more) and restored;
/// the build must finish with the same output and a program that prints the same number.
#[test]
fn make_j2_build() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("make-j2");
    let src = scratch.join("src");
    c_project(&src);
    let sh = system_program("sh");
    let script = "cp \"$1\"/* . && make -s -j2 && ./prog && echo \"build done\"";
    let launch = |run: &str, dir: &Path| {
        Launch::new(&format!("make-{run}"), &sh, dir)
            .args(["-c", script, "sh"])
            .arg(&src)
            .cwd(dir)
    };
    let timeout = Duration::from_secs(180);
    let ref_dir = scratch.subdir("reference");
    let mut reference = launch("reference", &ref_dir).spawn();
    assert_eq!(
        reference.wait(timeout),
        Exit::Code(0),
        "{}",
        reference.diagnostics()
    );

    let dir = scratch.subdir("run");
    let image = scratch.join("image");
    let mut proc = launch("run", &dir).spawn();
    // Mid-build: two compilers at work.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let compilers = descendants(proc.raw_pid())
            .into_iter()
            .filter(|&p| {
                fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "cc1")
            })
            .count();
        if compilers >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline && !matches!(proc.try_exit(), Ok(Some(_))),
            "make never ran two compilers at once\n{}",
            proc.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let tree = descendants(proc.raw_pid()).len();
    let ckpt = checkpoint_and_kill(&scratch, &mut proc, &image);
    let context = format!(
        "{}--- {tree} processes at the checkpoint\n",
        ckpt.describe()
    );
    assert!(
        !dir.join("prog").exists(),
        "the build was already linked at the checkpoint\n{context}"
    );
    let run = restore_attached(&scratch, &image, timeout);
    let context = format!("{context}{}{}", run.describe(), proc.diagnostics());
    assert_eq!(run.code(), 0, "the restored build must exit 0\n{context}");
    assert_same(
        "make: stdout",
        &proc.output_bytes(),
        &reference.output_bytes(),
        &context,
    );
}
