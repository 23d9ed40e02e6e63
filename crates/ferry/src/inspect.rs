//! `ferry inspect`: what an image holds, for people (tables) and programs (`--json`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use ferry_checkpoint::LoadedImage;
use ferry_image::{
    Backing, ExitStatus, FdKind, PAGE_SIZE, ProcessImage, Registers, SocketKind, SocketName,
    TreeImage, TreeMember, UnnamedOrigin, Vma,
};
use serde_json::{Value, json};

use crate::units::bytes;

pub fn run(dir: &Path, as_json: bool) -> Result<ExitCode> {
    let loaded = LoadedImage::open(dir)?;
    let image = &loaded.image;
    let tree = ferry_checkpoint::imagedir::load_tree(dir)?;
    if as_json {
        let mut j = to_json(image);
        if let Some(tree) = &tree {
            j["tree"] = tree_json(tree);
        }
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        print_human(dir, image);
        if let Some(tree) = &tree {
            print_tree(tree);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What a member is: a zombie's status, or where its image is.
fn member_state(tree: &TreeImage, m: &TreeMember) -> String {
    match m.zombie.and_then(ExitStatus::from_wait) {
        Some(status) => format!("zombie, {status}"),
        None if m.pid == tree.root().pid => "image here".into(),
        None => format!("image in pid-{}/", m.pid),
    }
}

fn print_tree(tree: &TreeImage) {
    println!(
        "\nprocess tree: {} processes, {} open files shared between them",
        tree.members.len(),
        tree.shared.len()
    );
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header([
        "pid",
        "parent",
        "group",
        "session",
        "exit signal",
        "name",
        "state",
    ]);
    for m in &tree.members {
        t.add_row([
            m.pid.to_string(),
            m.ppid.to_string(),
            m.pgid.to_string(),
            m.sid.to_string(),
            m.exit_signal.to_string(),
            m.comm.clone(),
            member_state(tree, m),
        ]);
    }
    println!("{t}");
    for s in &tree.shared {
        let holders: Vec<String> = s
            .holders
            .iter()
            .map(|h| format!("pid {} fd {}", h.pid, h.fd))
            .collect();
        println!("shared     {}", holders.join(", "));
    }
}

fn tree_json(tree: &TreeImage) -> Value {
    json!({
        "members": tree.members.iter().map(|m| json!({
            "pid": m.pid,
            "ppid": m.ppid,
            "pgid": m.pgid,
            "sid": m.sid,
            "exit_signal": m.exit_signal,
            "comm": m.comm,
            "zombie_status": m.zombie,
            "state": member_state(tree, m),
        })).collect::<Vec<_>>(),
        "shared": tree.shared.iter().map(|s| s.holders.iter().map(|h| json!({"pid": h.pid, "fd": h.fd})).collect::<Vec<_>>()).collect::<Vec<_>>(),
    })
}

fn backing(v: &Vma) -> String {
    let mut s = match &v.backing {
        Backing::Anonymous => "anonymous".to_string(),
        Backing::Heap => "[heap]".into(),
        Backing::Stack => "[stack]".into(),
        Backing::SharedAnonymous => "shared anonymous".into(),
        Backing::File { path, offset, .. } => format!("{path} @{offset:#x}"),
        Backing::Vvar => "[vvar]".into(),
        Backing::VvarVclock => "[vvar_vclock]".into(),
        Backing::Vdso => "[vdso]".into(),
        Backing::SysvShm { id, read_only } => {
            format!(
                "SysV segment {id}{}",
                if *read_only { " (read-only)" } else { "" }
            )
        }
        Backing::UnnamedFile {
            offset,
            origin,
            data,
            ..
        } => {
            let what = match origin {
                UnnamedOrigin::MemFd { name, .. } => format!("memfd:{name}"),
                UnnamedOrigin::Deleted { path, .. } => format!("{path} (deleted)"),
            };
            if data.is_empty() {
                format!("{what} @{offset:#x}")
            } else {
                format!("{what} @{offset:#x}, {} carried", bytes(data.len() as u64))
            }
        }
    };
    if let Some(n) = &v.anon_name {
        s.push_str(&format!(" [anon:{n}]"));
    }
    s
}

fn prot(v: &Vma) -> String {
    format!(
        "{}{}{}{}",
        if v.prot.read { 'r' } else { '-' },
        if v.prot.write { 'w' } else { '-' },
        if v.prot.exec { 'x' } else { '-' },
        if v.shared { 's' } else { 'p' }
    )
}

/// Bytes of each mapping that travel in pages.img.
fn image_bytes_per_vma(image: &ProcessImage) -> Vec<u64> {
    let vmas = &image.memory.vmas;
    let mut out = vec![0u64; vmas.len()];
    let mut vi = 0;
    for r in &image.memory.pages.runs {
        while vi < vmas.len() && vmas[vi].end <= r.addr {
            vi += 1;
        }
        if let Some(b) = out.get_mut(vi) {
            *b += r.pages * PAGE_SIZE;
        }
    }
    out
}

fn fd_kind(k: &FdKind) -> &'static str {
    match k {
        FdKind::Regular { .. } => "file",
        FdKind::Directory { .. } => "directory",
        FdKind::CharDevice { .. } => "device",
        FdKind::Link { .. } => "link",
        FdKind::Pipe { .. } => "pipe",
        FdKind::EventFd { .. } => "eventfd",
        FdKind::TimerFd { .. } => "timerfd",
        FdKind::SignalFd { .. } => "signalfd",
        FdKind::Epoll { .. } => "epoll",
        FdKind::MemFd { .. } => "memfd",
        FdKind::DeletedFile { .. } => "deleted",
        FdKind::UnixStream { .. } | FdKind::UnixPair { .. } => "socket",
        FdKind::Fifo { .. } => "fifo",
        FdKind::ProcFile { .. } => "proc",
        FdKind::Inotify { .. } => "inotify",
        FdKind::UnixListener { .. } => "listener",
    }
}

fn fd_pos(k: &FdKind) -> Option<u64> {
    match k {
        FdKind::Regular { pos, .. }
        | FdKind::Directory { pos, .. }
        | FdKind::MemFd { pos, .. }
        | FdKind::ProcFile { pos, .. } => Some(*pos),
        _ => None,
    }
}

/// The path of a file, `@name` for a link (an abstract socket name), the state of a kernel
/// object.
fn fd_target(k: &FdKind) -> String {
    match k {
        FdKind::Link { socket, .. } => format!("@{socket}"),
        FdKind::Pipe {
            pipe, write, data, ..
        } => {
            let end = if *write { "write end" } else { "read end" };
            if data.is_empty() {
                format!("pipe:[{pipe}] {end}")
            } else {
                format!("pipe:[{pipe}] {end}, {} bytes in flight", data.len())
            }
        }
        FdKind::EventFd {
            count, semaphore, ..
        } => {
            let sem = if *semaphore { " (semaphore)" } else { "" };
            format!("count {count}{sem}")
        }
        FdKind::TimerFd {
            clock,
            value_ns,
            interval_ns,
            ticks,
            ..
        } => format!(
            "clock {clock}, next in {:.3} s, every {:.3} s, {ticks} unread",
            *value_ns as f64 / 1e9,
            *interval_ns as f64 / 1e9
        ),
        FdKind::SignalFd { mask, .. } => format!("signals {mask:#x}"),
        FdKind::Epoll { watches, .. } => {
            let fds: Vec<String> = watches.iter().map(|w| w.fd.to_string()).collect();
            format!("watches fds {}", fds.join(","))
        }
        FdKind::MemFd {
            name, seals, data, ..
        } => format!("memfd:{name}, {} bytes, seals {seals:#x}", data.len()),
        FdKind::DeletedFile { path, data, .. } => {
            format!("{path} (deleted), {} bytes carried", data.len())
        }
        FdKind::UnixStream {
            socket, peer, data, ..
        } => format!(
            "unix stream socket:[{socket}] paired with socket:[{peer}], {} bytes to read",
            data.len()
        ),
        FdKind::UnixPair {
            socket,
            peer,
            kind,
            pass_credentials,
            messages,
            ..
        } => {
            let bytes: usize = messages.iter().map(Vec::len).sum();
            let queued = match kind {
                SocketKind::Stream => format!("{bytes} bytes to read"),
                _ => format!("{} messages ({bytes} bytes) to read", messages.len()),
            };
            let cred = if *pass_credentials {
                ", SO_PASSCRED"
            } else {
                ""
            };
            format!(
                "unix {} socket:[{socket}] paired with socket:[{peer}], {queued}{cred}",
                kind.name()
            )
        }
        FdKind::Fifo { path, data, .. } => {
            if data.is_empty() {
                format!("{path} (FIFO)")
            } else {
                format!("{path} (FIFO), {} bytes in flight", data.len())
            }
        }
        FdKind::ProcFile { path, .. } => format!("/proc/{path}"),
        FdKind::Inotify { watches, .. } => {
            let w: Vec<String> = watches
                .iter()
                .map(|w| format!("{}={}", w.wd, w.path))
                .collect();
            format!("watches {}", w.join(", "))
        }
        FdKind::UnixListener {
            socket,
            kind,
            name,
            backlog,
            ..
        } => {
            let name = match name {
                SocketName::Abstract(bytes) => format!("@{}", String::from_utf8_lossy(bytes)),
                SocketName::Path { path, .. } => path.clone(),
            };
            format!(
                "unix {} socket:[{socket}] listening at {name}, backlog {backlog}",
                kind.name()
            )
        }
        other => other.path().to_string(),
    }
}

fn syscall_note(r: &Registers) -> String {
    if (r.orig_rax as i64) < 0 {
        return "running user code".into();
    }
    match -(r.rax as i64) {
        512..=514 => format!("in system call {} (restarts on resume)", r.orig_rax),
        4 => format!("in system call {} (returns EINTR on resume)", r.orig_rax),
        _ => format!("returning from system call {}", r.orig_rax),
    }
}

fn print_human(dir: &Path, image: &ProcessImage) {
    let o = &image.origin;
    let c = &image.control;
    let cr = &image.credentials;
    let e = &image.execution;
    println!("image      {}", dir.display());
    println!(
        "taken      {} on {} by ferry {}",
        crate::units::utc(o.created_unix_ms),
        o.hostname,
        o.ferry_version
    );
    println!(
        "platform   {} kernel {}, XSAVE features {:#x} ({} bytes)",
        o.platform.arch,
        o.platform.kernel_release,
        o.platform.xsave.features,
        o.platform.xsave.size
    );
    println!("process    pid {} \"{}\" {}", c.pid, c.comm, c.exe);
    if let Some(ns) = image.pid_namespace {
        println!(
            "namespace  init of a PID namespace of its own (pid {} on the host it came from): restored in a new one, ids kept",
            ns.host_pid
        );
    }
    if let Some(ipc) = &image.ipc_namespace {
        let carried: usize = ipc
            .segments
            .iter()
            .flat_map(|s| &s.runs)
            .map(|r| r.bytes.len())
            .sum();
        println!(
            "ipc        an IPC namespace of its own: {} SysV segment(s) (ids {:?}), {} carried",
            ipc.segments.len(),
            ipc.segments.iter().map(|s| s.id).collect::<Vec<_>>(),
            bytes(carried as u64)
        );
    }
    println!("command    {}", c.argv.join(" "));
    println!("cwd        {}  umask {:03o}", c.cwd, c.umask);
    println!(
        "identity   uid {}/{}/{} gid {}/{}/{} groups {:?}",
        cr.uid.real,
        cr.uid.effective,
        cr.uid.saved,
        cr.gid.real,
        cr.gid.effective,
        cr.gid.saved,
        cr.groups
    );
    println!(
        "registers  pc {:#x}  sp {:#x}  fs_base {:#x}  ({})",
        e.regs.rip,
        e.regs.rsp,
        e.regs.fs_base,
        syscall_note(&e.regs)
    );
    if !image.threads.is_empty() {
        let mut t = Table::new();
        t.load_preset(UTF8_BORDERS_ONLY);
        t.set_header(vec![
            "tid", "name", "pc", "sp", "blocked", "pending", "state",
        ]);
        for th in &image.threads {
            let r = &th.execution.regs;
            t.add_row(vec![
                th.tid.to_string(),
                th.comm.clone(),
                format!("{:#x}", r.rip),
                format!("{:#x}", r.rsp),
                format!("{:#x}", th.blocked),
                th.pending.len().to_string(),
                syscall_note(r),
            ]);
        }
        println!(
            "threads    {} besides the main one\n{t}",
            image.threads.len()
        );
    }
    let mapped: u64 = image.mapped_bytes();
    println!(
        "memory     {} mappings, {} mapped, {} in the image ({} runs)",
        image.memory.vmas.len(),
        bytes(mapped),
        bytes(image.memory.pages.bytes),
        image.memory.pages.runs.len()
    );
    let per_vma = image_bytes_per_vma(image);
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec!["start", "end", "size", "prot", "in image", "backing"]);
    for (v, b) in image.memory.vmas.iter().zip(per_vma) {
        t.add_row(vec![
            format!("{:#x}", v.start),
            format!("{:#x}", v.end),
            bytes(v.len()),
            prot(v),
            if b == 0 { "-".into() } else { bytes(b) },
            backing(v),
        ]);
    }
    println!("{t}");
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec!["fd", "kind", "flags", "offset", "path"]);
    for fd in &image.files.fds {
        t.add_row(vec![
            fd.number.to_string(),
            fd_kind(&fd.kind).to_string(),
            format!(
                "{:#o}{}",
                fd.kind.flags(),
                if fd.cloexec { " cloexec" } else { "" }
            ),
            fd_pos(&fd.kind).map(|p| p.to_string()).unwrap_or_default(),
            fd_target(&fd.kind),
        ]);
    }
    println!("files\n{t}");
    let s = &image.signals;
    println!(
        "signals    {} handlers, blocked {:#x}, {} pending [{}]",
        s.actions.len(),
        s.blocked,
        s.pending.len(),
        s.pending
            .iter()
            .map(|p| p.signo().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let tm = &image.timers;
    if tm.real.is_armed() || tm.virtual_.is_armed() || tm.prof.is_armed() {
        println!(
            "itimers    real {}µs/{}µs virtual {}µs/{}µs prof {}µs/{}µs",
            tm.real.value_us,
            tm.real.interval_us,
            tm.virtual_.value_us,
            tm.virtual_.interval_us,
            tm.prof.value_us,
            tm.prof.interval_us
        );
    }
}

fn to_json(image: &ProcessImage) -> Value {
    let per_vma = image_bytes_per_vma(image);
    let c = &image.control;
    let e = &image.execution;
    json!({
        "origin": {
            "created_unix_ms": image.origin.created_unix_ms,
            "hostname": image.origin.hostname,
            "ferry_version": image.origin.ferry_version,
            "arch": image.origin.platform.arch,
            "kernel_release": image.origin.platform.kernel_release,
            "xsave_features": image.origin.platform.xsave.features,
        },
        "process": {
            "pid": c.pid, "ppid": c.ppid, "comm": c.comm, "exe": c.exe, "argv": c.argv,
            "cwd": c.cwd, "umask": c.umask, "stopped": c.stopped,
            "pid_namespace": image.pid_namespace.map(|ns| serde_json::json!({"host_pid": ns.host_pid})),
            "ipc_namespace": image.ipc_namespace.as_ref().map(|ipc| serde_json::json!({
                "segments": ipc.segments.iter().map(|s| serde_json::json!({
                    "id": s.id, "key": s.key, "size": s.size, "mode": s.mode, "uid": s.uid,
                    "gid": s.gid, "removed": s.removed,
                    "carried": s.runs.iter().map(|r| r.bytes.len()).sum::<usize>(),
                })).collect::<Vec<_>>(),
            })),
        },
        "credentials": {
            "uid": [image.credentials.uid.real, image.credentials.uid.effective, image.credentials.uid.saved],
            "gid": [image.credentials.gid.real, image.credentials.gid.effective, image.credentials.gid.saved],
            "groups": image.credentials.groups,
        },
        "registers": {
            "pc": e.regs.rip, "sp": e.regs.rsp, "fs_base": e.regs.fs_base,
            "gs_base": e.regs.gs_base, "orig_rax": e.regs.orig_rax as i64, "rax": e.regs.rax as i64,
            "xstate_bytes": e.xstate.len(),
        },
        "memory": {
            "mapped_bytes": image.mapped_bytes(),
            "image_bytes": image.memory.pages.bytes,
            "page_runs": image.memory.pages.runs.len(),
            "vmas": image.memory.vmas.iter().zip(per_vma).map(|(v, b)| json!({
                "start": v.start, "end": v.end, "size": v.len(), "prot": prot(v),
                "backing": backing(v), "image_bytes": b,
            })).collect::<Vec<_>>(),
        },
        "fds": image.files.fds.iter().map(|fd| {
            let mut j = json!({
                "fd": fd.number, "kind": fd_kind(&fd.kind), "path": fd_target(&fd.kind),
                "flags": fd.kind.flags(), "cloexec": fd.cloexec, "offset": fd_pos(&fd.kind),
            });
            if let FdKind::Link { socket, hello } = &fd.kind {
                j["socket"] = json!(socket);
                j["hello_bytes"] = json!(hello.len());
            }
            j
        }).collect::<Vec<_>>(),
        "signals": {
            "handlers": image.signals.actions.iter().map(|a| json!({
                "signal": a.signo, "handler": a.handler, "flags": a.flags, "mask": a.mask,
            })).collect::<Vec<_>>(),
            "blocked": image.signals.blocked,
            "pending": image.signals.pending.iter().map(|p| json!({
                "signal": p.signo(), "shared": p.shared,
            })).collect::<Vec<_>>(),
        },
        "threads": image.threads.iter().map(|t| json!({
            "tid": t.tid, "comm": t.comm, "pc": t.execution.regs.rip, "sp": t.execution.regs.rsp,
            "fs_base": t.execution.regs.fs_base, "orig_rax": t.execution.regs.orig_rax as i64,
            "rax": t.execution.regs.rax as i64, "blocked": t.blocked,
            "pending": t.pending.iter().map(|p| p.signo()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "timers": {
            "real": [image.timers.real.value_us, image.timers.real.interval_us],
            "virtual": [image.timers.virtual_.value_us, image.timers.virtual_.interval_us],
            "prof": [image.timers.prof.value_us, image.timers.prof.interval_us],
        },
    })
}
