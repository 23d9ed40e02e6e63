//! Wrong input: usage errors (exit 2), a pid that does not exist and an image directory that
//! is not empty (exit 1), and images that are missing, truncated or corrupted (exit 4, with a
//! message naming the file and the problem, and no process created).

mod support;

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use support::*;

/// Words one of which a message about a damaged file should contain.
const PROBLEM_WORDS: &[&str] = &[
    "truncat",
    "short",
    "checksum",
    "hash",
    "corrupt",
    "mismatch",
    "magic",
    "length",
    "size",
    "invalid",
    "unexpected end",
    "eof",
    "damaged",
];

/// An image of a counter running under the name COMM (a copy of the counter binary, so that
/// processes of this test alone can be counted). Returns the image dir and the executable.
fn counter_image(scratch: &Scratch, comm: &str) -> (PathBuf, PathBuf) {
    assert!(comm.len() <= 15, "comm names are at most 15 bytes");
    let exe = scratch.join(comm);
    fs::copy(c_workload("counter"), &exe).expect("copying the counter binary");
    let dir = scratch.subdir("run");
    let mut proc = Launch::new(comm, &exe, &dir)
        .args(["200", "50"])
        .cwd(&dir)
        .spawn();
    wait_for_lines(&mut proc, 3);
    let image = scratch.join("image");
    let run = checkpoint_and_kill(scratch, &mut proc, &image);
    for f in ["core.img", "pages.img"] {
        assert!(
            image.join(f).is_file(),
            "the image should have {f}\n{}",
            run.describe()
        );
    }
    (image, exe)
}

/// Processes of this test still around: none may be (kills and reaps any before failing).
fn assert_no_process(comm: &str, exe: &Path, context: &str) {
    let left = processes_like(comm, exe);
    if left.is_empty() {
        return;
    }
    let states: Vec<String> = left
        .iter()
        .map(|&p| format!("{p} ({:?})", proc_stat(p).map(|s| s.state)))
        .collect();
    for &p in &left {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(p), None);
    }
    panic!("a failed restore left processes behind: {states:?}\n{context}");
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .unwrap_or_else(|e| panic!("truncating {}: {e}", path.display()));
}

fn flip_byte(path: &Path, at: usize) {
    let mut b = fs::read(path).expect("reading the image file");
    assert!(
        at < b.len(),
        "{} has only {} bytes",
        path.display(),
        b.len()
    );
    b[at] ^= 0x5a;
    fs::write(path, b).expect("writing the image file");
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// `ferry restore` of a damaged image: exit 4, stderr names FILE and the problem, no process.
fn assert_rejected(
    scratch: &Scratch,
    comm: &str,
    exe: &Path,
    image: &Path,
    file: &str,
    detach: bool,
) {
    assert_no_process(comm, exe, "before restoring (test setup)");
    let mut args = vec![os("restore"), os("--dir"), image.as_os_str()];
    if detach {
        args.push(os("--detach"));
    }
    let run = ferry(scratch, &args);
    let context = run.describe();
    assert_no_process(comm, exe, &context);
    assert_eq!(
        run.code(),
        4,
        "a damaged image must be refused with exit 4\n{context}"
    );
    assert!(
        run.stdout.trim().is_empty(),
        "nothing (no pid) may be printed on stdout\n{context}"
    );
    assert!(
        run.stderr.contains(file),
        "the message should name {file}\n{context}"
    );
    let lower = run.stderr.to_lowercase();
    assert!(
        PROBLEM_WORDS.iter().any(|w| lower.contains(w)),
        "the message should say what is wrong with {file} (one of {PROBLEM_WORDS:?})\n{context}"
    );
}

fn free_pid() -> i32 {
    let max: i32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (300..max)
        .rev()
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .expect("a free pid")
}

// --- checkpoint ------------------------------------------------------------------------------------

#[test]
fn checkpoint_pid_that_does_not_exist() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("bad-pid");
    let pid = free_pid().to_string();
    let image = scratch.join("image");
    let run = ferry(
        &scratch,
        &[os("checkpoint"), os(&pid), os("--dir"), image.as_os_str()],
    );
    assert_eq!(run.code(), 1, "{}", run.describe());
    let lower = run.stderr.to_lowercase();
    assert!(
        run.stderr.contains(&pid) || lower.contains("no such process"),
        "the message should name the pid\n{}",
        run.describe()
    );
    assert!(
        !image.join("core.img").exists(),
        "no image may be written for a missing process\n{}",
        run.describe()
    );
}

#[test]
fn checkpoint_into_a_directory_that_is_not_empty() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("bad-dir");
    let sc = Scenario::new("busy-dir", c_workload("counter"), Marker::Text("\n3\n"))
        .args(&[Arg::Lit("30".into()), Arg::Lit("100".into())]);
    let reference = sc.reference(&scratch);
    let image = scratch.subdir("image");
    fs::write(image.join("precious.txt"), "keep me\n").expect("writing a file");
    let dir = scratch.subdir("run");
    let mut proc = sc.launch("run", &dir).spawn();
    sc.wait_marker(&mut proc);
    let pid = proc.raw_pid().to_string();
    let run = ferry(
        &scratch,
        &[os("checkpoint"), os(&pid), os("--dir"), image.as_os_str()],
    );
    let context = format!("{}{}", run.describe(), proc.diagnostics());
    assert_eq!(run.code(), 1, "DIR must not exist or be empty\n{context}");
    let names: Vec<_> = fs::read_dir(&image)
        .expect("reading the image dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        names.len(),
        1,
        "the directory was changed: {names:?}\n{context}"
    );
    assert_eq!(
        fs::read_to_string(image.join("precious.txt"))
            .ok()
            .as_deref(),
        Some("keep me\n")
    );
    // The process was not touched: it finishes like an uninterrupted run.
    let exit = proc.wait(TIMEOUT);
    assert_eq!(exit, reference.exit, "{context}");
    assert_same("counter", &proc.output_bytes(), &reference.stdout, &context);
}

#[test]
fn usage_errors_exit_2() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("usage");
    let cases: &[&[&str]] = &[
        &[],
        &["checkpoint"],
        &["checkpoint", "123"],
        &["checkpoint", "not-a-pid", "--dir", "x"],
        &["restore"],
        &["inspect"],
        &["no-such-command"],
    ];
    for args in cases {
        let args: Vec<_> = args.iter().map(|a| os(a)).collect();
        let run = ferry(&scratch, &args);
        assert_eq!(run.code(), 2, "usage error\n{}", run.describe());
        assert!(
            !run.stderr.is_empty(),
            "say what is wrong\n{}",
            run.describe()
        );
    }
}

// --- restore ---------------------------------------------------------------------------------------

#[test]
fn restore_from_a_missing_directory() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("missing-dir");
    let image = scratch.join("no-such-image");
    let run = ferry(&scratch, &[os("restore"), os("--dir"), image.as_os_str()]);
    // An error (1) or an unreadable image (4): the contract allows reading it either way.
    assert!(
        matches!(run.code(), 1 | 4),
        "restore from a missing directory must fail with 1 or 4\n{}",
        run.describe()
    );
    assert!(
        run.stderr.contains("no-such-image"),
        "the message should name the directory\n{}",
        run.describe()
    );
}

#[test]
fn restore_truncated_core_img() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("core-truncated");
    let comm = "fb-core-trunc";
    let (image, exe) = counter_image(&scratch, comm);
    let core = image.join("core.img");
    truncate(&core, file_len(&core) / 2);
    assert_rejected(&scratch, comm, &exe, &image, "core.img", false);
}

#[test]
fn restore_core_img_with_a_flipped_byte() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("core-flipped");
    let comm = "fb-core-flip";
    let (image, exe) = counter_image(&scratch, comm);
    let core = image.join("core.img");
    flip_byte(&core, (file_len(&core) / 2) as usize);
    assert_rejected(&scratch, comm, &exe, &image, "core.img", false);
}

#[test]
fn restore_detached_core_img_with_a_flipped_byte() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("core-flipped-detach");
    let comm = "fb-core-flip-d";
    let (image, exe) = counter_image(&scratch, comm);
    let core = image.join("core.img");
    flip_byte(&core, (file_len(&core) - 3) as usize);
    assert_rejected(&scratch, comm, &exe, &image, "core.img", true);
}

#[test]
fn restore_core_img_with_a_bad_magic() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("core-magic");
    let comm = "fb-core-magic";
    let (image, exe) = counter_image(&scratch, comm);
    flip_byte(&image.join("core.img"), 0);
    assert_rejected(&scratch, comm, &exe, &image, "core.img", false);
}

#[test]
fn restore_truncated_pages_img() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("pages-truncated");
    let comm = "fb-pages-trunc";
    let (image, exe) = counter_image(&scratch, comm);
    let pages = image.join("pages.img");
    let len = file_len(&pages);
    assert!(len > 4096, "pages.img has no page data ({len} bytes)");
    truncate(&pages, len - 4096);
    assert_rejected(&scratch, comm, &exe, &image, "pages.img", false);
}

#[test]
fn restore_pages_img_with_a_flipped_byte() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("pages-flipped");
    let comm = "fb-pages-flip";
    let (image, exe) = counter_image(&scratch, comm);
    let pages = image.join("pages.img");
    let len = file_len(&pages);
    assert!(len > 4096, "pages.img has no page data ({len} bytes)");
    // In the page data, past the 4 KiB header.
    flip_byte(&pages, (4096 + (len - 4096) / 2) as usize);
    assert_rejected(&scratch, comm, &exe, &image, "pages.img", false);
}

// --- inspect ---------------------------------------------------------------------------------------

#[test]
fn inspect_corrupted_core_img() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("inspect-corrupt");
    let (image, _) = counter_image(&scratch, "fb-inspect");
    let core = image.join("core.img");
    flip_byte(&core, (file_len(&core) / 2) as usize);
    for json in [false, true] {
        let mut args = vec![os("inspect"), image.as_os_str()];
        if json {
            args.push(os("--json"));
        }
        let run = ferry(&scratch, &args);
        assert_eq!(run.code(), 4, "{}", run.describe());
        assert!(run.stderr.contains("core.img"), "{}", run.describe());
    }
}

#[test]
fn inspect_missing_directory() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("inspect-missing");
    let image = scratch.join("no-such-image");
    let run = ferry(&scratch, &[os("inspect"), image.as_os_str()]);
    assert!(matches!(run.code(), 1 | 4), "{}", run.describe());
    assert!(run.stderr.contains("no-such-image"), "{}", run.describe());
}

/// Rewrites IMAGE/core.img with `edit` applied to the model, with a valid checksum: a
/// hand-crafted image that only validation (or the platform check) can catch.
fn craft(image: &Path, edit: impl FnOnce(&mut ferry_image::ProcessImage)) {
    let path = image.join("core.img");
    let bytes = fs::read(&path).expect("reading core.img");
    let mut model = ferry_image::decode_core(&bytes).expect("decoding a real image");
    edit(&mut model);
    fs::write(&path, ferry_image::encode_core(&model).expect("encoding"))
        .expect("writing core.img");
}

/// Restores IMAGE and requires exit 4, a message containing WANT, and no process created.
fn assert_refused_image(scratch: &Scratch, comm: &str, exe: &Path, image: &Path, want: &str) {
    let run = ferry(scratch, &[os("restore"), os("--dir"), image.as_os_str()]);
    let context = run.describe();
    assert_no_process(comm, exe, &context);
    assert_eq!(run.code(), 4, "exit 4 expected\n{context}");
    assert!(
        run.stderr.contains(want),
        "the message should say {want:?}\n{context}"
    );
}

#[test]
fn restore_image_from_another_kernel() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("other-kernel");
    let (image, exe) = counter_image(&scratch, "ferry-okernel");
    craft(&image, |m| {
        m.origin.platform.kernel_release = "5.10.0-other".into()
    });
    assert_refused_image(
        &scratch,
        "ferry-okernel",
        &exe,
        &image,
        "cannot restore on this host: the image was taken on kernel 5.10.0-other",
    );
    craft(&image, |m| {
        m.origin.platform.kernel_release = ferry_sys::host::uname().1;
        if let Some(v) = m.origin.platform.vdso.as_mut() {
            v.code_hash ^= 1;
        }
    });
    assert_refused_image(&scratch, "ferry-okernel", &exe, &image, "vDSO");
}

#[test]
fn restore_hand_crafted_image_with_a_valid_checksum() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("crafted");
    let (image, exe) = counter_image(&scratch, "ferry-crafted");
    let original = fs::read(image.join("core.img")).expect("reading core.img");
    craft(&image, |m| {
        let last = m.memory.vmas.len() - 1;
        m.memory.vmas[last].end = 0xffff_8000_0000_0000;
    });
    assert_refused_image(
        &scratch,
        "ferry-crafted",
        &exe,
        &image,
        "outside user space",
    );
    fs::write(image.join("core.img"), &original).expect("restoring core.img");
    craft(&image, |m| {
        m.signals.actions.push(ferry_image::SigAction {
            signo: 9,
            handler: 0x1000,
            flags: 0,
            restorer: 0,
            mask: 0,
        })
    });
    assert_refused_image(
        &scratch,
        "ferry-crafted",
        &exe,
        &image,
        "disposition for signal 9",
    );
    // A thread that claims the main thread's id, and a socket pair end without its peer.
    fs::write(image.join("core.img"), &original).expect("restoring core.img");
    craft(&image, |m| {
        m.threads.push(ferry_image::Thread {
            tid: m.control.pid,
            comm: "twin".into(),
            execution: m.execution.clone(),
            blocked: 0,
            pending: Vec::new(),
        })
    });
    assert_refused_image(&scratch, "ferry-crafted", &exe, &image, "twice");
    fs::write(image.join("core.img"), &original).expect("restoring core.img");
    craft(&image, |m| {
        m.files.fds.push(ferry_image::Fd {
            number: 9,
            cloexec: false,
            kind: ferry_image::FdKind::UnixPair {
                socket: 7,
                peer: 8,
                kind: ferry_image::SocketKind::Datagram,
                flags: 2,
                pass_credentials: false,
                send_buffer: 0,
                messages: vec![b"queued".to_vec()],
            },
            dup_of: None,
        })
    });
    assert_refused_image(
        &scratch,
        "ferry-crafted",
        &exe,
        &image,
        "is not an end of this image",
    );
    // A /proc file whose path climbs out of /proc.
    fs::write(image.join("core.img"), &original).expect("restoring core.img");
    craft(&image, |m| {
        m.files.fds.push(ferry_image::Fd {
            number: 9,
            cloexec: false,
            kind: ferry_image::FdKind::ProcFile {
                path: "self/../../etc/shadow".into(),
                directory: false,
                flags: 0,
                pos: 0,
            },
            dup_of: None,
        })
    });
    assert_refused_image(&scratch, "ferry-crafted", &exe, &image, "/proc path");
}

/// A process tree's manifest that is damaged or does not match its images: refused before any
/// process exists.
#[test]
fn restore_crafted_process_tree() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("crafted-tree");
    let (image, exe) = counter_image(&scratch, "ferry-ctree");
    let core = fs::read(image.join("core.img")).expect("reading core.img");
    let root = ferry_image::decode_core(&core).expect("decoding a real image");
    let pid = root.control.pid;
    let member = |pid: i32, ppid: i32| ferry_image::TreeMember {
        pid,
        ppid,
        pgid: root.control.pgid,
        sid: root.control.sid,
        exit_signal: 17,
        zombie: None,
        comm: "ferry-ctree".into(),
    };
    let write_tree = |tree: &ferry_image::TreeImage| {
        fs::write(
            image.join("tree.img"),
            ferry_image::encode_tree(tree).expect("encoding tree.img"),
        )
        .expect("writing tree.img");
    };
    // A child whose directory holds the root's image.
    let child = free_pid();
    let child_dir = image.join(format!("pid-{child}"));
    fs::create_dir_all(&child_dir).expect("member dir");
    for f in ["core.img", "pages.img"] {
        fs::copy(image.join(f), child_dir.join(f)).expect("copying the image");
    }
    let mut tree = ferry_image::TreeImage {
        members: vec![member(pid, 1), member(child, pid)],
        shared: Vec::new(),
        shared_memory: Vec::new(),
        split_pairs: Vec::new(),
    };
    write_tree(&tree);
    assert_refused_image(
        &scratch,
        "ferry-ctree",
        &exe,
        &image,
        &format!("holds the image of pid {pid}, the tree says pid {child}"),
    );
    // A shared file that is no fd of its holder's image.
    fs::remove_dir_all(&child_dir).expect("removing the member");
    tree.members.truncate(1);
    tree.members.push(ferry_image::TreeMember {
        zombie: Some(0),
        ..member(child, pid)
    });
    tree.shared.push(ferry_image::SharedFile {
        holders: vec![
            ferry_image::FdRef { pid, fd: 1 },
            ferry_image::FdRef { pid: child, fd: 1 },
        ],
    });
    write_tree(&tree);
    assert_refused_image(&scratch, "ferry-ctree", &exe, &image, "a zombie");
    // A child listed before its parent, and a damaged manifest.
    tree.shared.clear();
    tree.members.reverse();
    write_tree(&tree);
    assert_refused_image(&scratch, "ferry-ctree", &exe, &image, "tree.img");
    tree.members.reverse();
    write_tree(&tree);
    flip_byte(&image.join("tree.img"), 30);
    assert_refused_image(&scratch, "ferry-ctree", &exe, &image, "checksum");
}
