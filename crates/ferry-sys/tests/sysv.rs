//! Real-kernel tests of SysV segments, in a private IPC namespace of the test's own thread.

mod common;

use common::root;

use ferry_sys::sysv;

/// Runs `f` on a thread of its own in a new IPC namespace (which ends with it).
fn in_new_namespace(f: impl FnOnce() + Send) {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWIPC).expect("unshare");
            f();
        })
        .join()
        .expect("the namespace's thread");
    });
}

#[test]
fn a_segment_comes_back_with_its_id_owner_mode_and_bytes() {
    if !root() {
        return;
    }
    in_new_namespace(|| {
        let seg = sysv::NewSegment {
            id: 3 * 32768 + 7,
            key: 0x5eed,
            size: 5 * 4096 + 100,
            mode: 0o640,
            uid: 1000,
            gid: 100,
        };
        let page = vec![0xabu8; 4096];
        let tail = vec![0x11u8; 100];
        sysv::create(&seg, &[(4096, &page), (5 * 4096, &tail)]).expect("create");
        let listed = sysv::segments().expect("segments");
        assert_eq!(
            listed,
            vec![sysv::SegmentInfo {
                key: 0x5eed,
                id: seg.id,
                mode: 0o640,
                removed: false,
                size: seg.size,
                attached: 0,
                uid: 1000,
                gid: 100,
                swapped: 0,
            }]
        );
        // Holes stay out; the last page is whole (zeros after the 100 bytes).
        let mut last = tail.clone();
        last.resize(4096, 0);
        assert_eq!(
            sysv::read(seg.id, seg.size, false).expect("read"),
            vec![(4096, page.clone()), (5 * 4096, last)]
        );
        // Its id and its key are taken now.
        let again = sysv::create(&sysv::NewSegment { key: 1, ..seg }, &[]);
        assert!(again.is_err(), "{again:?}");
        let same_key = sysv::create(&sysv::NewSegment { id: 9, ..seg }, &[]);
        assert!(same_key.is_err(), "{same_key:?}");
        assert_eq!(sysv::other_objects().expect("other objects"), (0, 0));
        sysv::remove(seg.id).expect("remove");
        assert_eq!(sysv::segments().expect("segments"), vec![]);
    });
}

#[test]
fn work_runs_in_another_process_namespace() {
    if !root() {
        return;
    }
    // This process's own namespace: nothing made there by the other test is visible.
    let me = nix::unistd::getpid();
    let ids = sysv::in_namespace_of(me, || {
        Ok(sysv::segments()?
            .into_iter()
            .map(|s| s.id)
            .collect::<Vec<_>>())
    })
    .expect("in the namespace");
    assert!(!ids.contains(&(3 * 32768 + 7)), "{ids:?}");
}
