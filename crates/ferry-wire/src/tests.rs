//! Tests over real loopback TCP connections: handshake, hostile peers, framing, modes,
//! concurrency, close, and bulk transfers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::frame::FrameHeader;
use crate::handshake::{PREAMBLE_LEN, preamble, prologue};
use crate::*;

/// The tests' own control messages (the daemon defines the real ones).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum TestMsg {
    Hello { from: String, n: u32 },
    Fault { id: u64, addr: u64, pages: u32 },
    Blob(Vec<u8>),
    Done,
}

const T: Duration = Duration::from_secs(5);

fn secret() -> ClusterSecret {
    ClusterSecret::from_bytes([7; 32])
}

fn other_secret() -> ClusterSecret {
    ClusterSecret::from_bytes([8; 32])
}

/// Deterministic bytes (splitmix64).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn listener() -> (TcpListener, std::net::SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// Accepts one connection with `config` in a task.
fn spawn_accept(
    l: TcpListener,
    secret: ClusterSecret,
    config: AcceptConfig,
) -> tokio::task::JoinHandle<Result<Connection, WireError>> {
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        Connection::accept(s, &secret, &config).await
    })
}

/// An authenticated pair: (initiator "src", responder "dst").
async fn pair(mode: Mode, role: Role) -> (Connection, Connection) {
    let (l, addr) = listener().await;
    let acc = spawn_accept(l, secret(), AcceptConfig::new("dst"));
    let c = Connection::connect(addr, &secret(), role, mode, "src", T)
        .await
        .unwrap();
    (c, acc.await.unwrap().unwrap())
}

#[tokio::test]
async fn handshake_tells_both_sides_names_role_and_mode() {
    for mode in [Mode::Encrypted, Mode::Plain] {
        for role in [Role::Control, Role::Pages, Role::Store, Role::Cluster] {
            let (c, r) = pair(mode, role).await;
            let ci = c.info();
            let ri = r.info();
            assert_eq!(
                (
                    ci.local_node.as_str(),
                    ci.peer_node.as_str(),
                    ci.role,
                    ci.mode
                ),
                ("src", "dst", role, mode)
            );
            assert_eq!(
                (ri.local_node.as_str(), r.peer_node(), r.role(), r.mode()),
                ("dst", "src", role, mode)
            );
            assert!(ci.initiator && !ri.initiator);
        }
    }
}

#[tokio::test]
async fn listener_accepts_concurrently_and_reports_failures() {
    let mut l = Listener::bind("127.0.0.1:0", secret(), AcceptConfig::new("dst"))
        .await
        .unwrap();
    let addr = l.local_addr().unwrap();
    // A silent peer first: it must not hold up the good one behind it.
    let _silent = TcpStream::connect(addr).await.unwrap();
    let good = tokio::spawn(async move {
        let mut c = Connection::connect(addr, &secret(), Role::Control, Mode::Encrypted, "src", T)
            .await
            .unwrap();
        c.send_msg(&TestMsg::Done).await.unwrap();
        c
    });
    // Handshakes run side by side: the good one completes first (were they sequential, the
    // silent peer's timeout would be the first result).
    let mut conn = l.accept().await.unwrap();
    assert_eq!(conn.peer_node(), "src");
    assert_eq!(conn.recv_msg::<TestMsg>().await.unwrap(), TestMsg::Done);
    drop(good.await.unwrap());

    // A peer with another secret is reported with its address; no connection comes of it.
    let bad = tokio::spawn(async move {
        Connection::connect(addr, &other_secret(), Role::Control, Mode::Plain, "evil", T).await
    });
    match l.accept().await {
        Err(AcceptError::Handshake { peer, source }) => {
            assert!(peer.ip().is_loopback());
            assert!(
                matches!(source, WireError::AuthenticationFailed { .. }),
                "{source}"
            );
        }
        other => panic!("expected a handshake failure, got {other:?}"),
    }
    assert!(bad.await.unwrap().is_err());
}

#[tokio::test]
async fn different_secret_fails_on_both_sides() {
    for mode in [Mode::Encrypted, Mode::Plain] {
        let (l, addr) = listener().await;
        let acc = spawn_accept(l, secret(), AcceptConfig::new("dst"));
        let e = Connection::connect(addr, &other_secret(), Role::Control, mode, "evil", T)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "peer closed the connection during the handshake (waiting for the responder's \
             reply): it does not accept us (different cluster secret, refused, or not a ferry \
             daemon)"
        );
        let e = acc.await.unwrap().unwrap_err();
        assert_eq!(
            e.to_string(),
            "peer failed authentication (first handshake message): it does not hold this \
             cluster's secret, or the handshake was replayed or corrupted"
        );
    }
}

/// A hand-driven initiator: `psk` for msg1, then whatever the test sends.
fn noise_initiator(psk: &ClusterSecret) -> snow::HandshakeState {
    snow::Builder::new(NOISE_PATTERN.parse().unwrap())
        .psk(0, psk.as_bytes())
        .unwrap()
        .prologue(&prologue())
        .unwrap()
        .build_initiator()
        .unwrap()
}

fn msg1(hs: &mut snow::HandshakeState, role: Role, mode: Mode) -> Vec<u8> {
    let mut buf = vec![0u8; 65535];
    let n = hs
        .write_message(&[role as u8, mode as u8], &mut buf)
        .unwrap();
    let mut out = preamble().to_vec();
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&buf[..n]);
    out
}

/// A frame that would be a valid control message on a Plain connection.
fn plain_frame(msg: &TestMsg) -> Vec<u8> {
    let payload = postcard::to_allocvec(msg).unwrap();
    let mut f = FrameHeader::control(payload.len())
        .unwrap()
        .encode()
        .to_vec();
    f.extend_from_slice(&payload);
    f
}

#[tokio::test]
async fn attacker_without_the_secret_gets_nothing_delivered() {
    let (l, addr) = listener().await;
    let acc = spawn_accept(l, secret(), AcceptConfig::new("dst"));
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hs = noise_initiator(&other_secret());
    let mut bytes = msg1(&mut hs, Role::Control, Mode::Plain);
    // Without waiting: a fake confirmation and a valid-looking plain frame.
    bytes.extend_from_slice(&19u16.to_le_bytes());
    bytes.extend_from_slice(&[0x55; 19]);
    bytes.extend_from_slice(&plain_frame(&TestMsg::Hello {
        from: "evil".into(),
        n: 1,
    }));
    s.write_all(&bytes).await.unwrap();
    let e = acc.await.unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            WireError::AuthenticationFailed {
                stage: "first handshake message"
            }
        ),
        "{e}"
    );
    // The responder sent nothing back and dropped the connection.
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back).await;
    assert!(back.is_empty(), "responder answered {back:02x?}");
}

#[tokio::test]
async fn replayed_first_message_is_rejected_before_any_data() {
    // msg1 made with the right secret, as if recorded from a real initiator, but the attacker
    // does not have the ephemeral key, so it cannot produce msg3.
    let (l, addr) = listener().await;
    let acc = spawn_accept(l, secret(), AcceptConfig::new("dst"));
    let mut s = TcpStream::connect(addr).await.unwrap();
    let recorded = msg1(&mut noise_initiator(&secret()), Role::Control, Mode::Plain);
    s.write_all(&recorded).await.unwrap();
    let mut reply = [0u8; PREAMBLE_LEN + 2];
    s.read_exact(&mut reply).await.unwrap();
    let len = u16::from_le_bytes([reply[8], reply[9]]) as usize;
    let mut msg2 = vec![0u8; len];
    s.read_exact(&mut msg2).await.unwrap();
    let mut bytes = 19u16.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0x55; 19]);
    bytes.extend_from_slice(&plain_frame(&TestMsg::Done));
    s.write_all(&bytes).await.unwrap();
    let e = acc.await.unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            WireError::AuthenticationFailed {
                stage: "handshake confirmation"
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn garbage_is_rejected() {
    for garbage in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        pattern(3, 4096),
        // A valid frame header instead of a preamble.
        plain_frame(&TestMsg::Done),
    ] {
        let (l, addr) = listener().await;
        let acc = spawn_accept(l, secret(), AcceptConfig::new("dst"));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&garbage).await.unwrap();
        let e = acc.await.unwrap().unwrap_err();
        assert!(matches!(e, WireError::BadPreamble { .. }), "{e}");
    }
    // A correct preamble followed by garbage.
    let (l, addr) = listener().await;
    let acc = spawn_accept(l, secret(), AcceptConfig::new("dst"));
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut bytes = preamble().to_vec();
    bytes.extend_from_slice(&100u16.to_le_bytes());
    bytes.extend_from_slice(&pattern(4, 100));
    s.write_all(&bytes).await.unwrap();
    let e = acc.await.unwrap().unwrap_err();
    assert!(matches!(e, WireError::AuthenticationFailed { .. }), "{e}");

    // The initiator's view of a responder that answers garbage.
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        tokio::time::sleep(T).await;
    });
    let e = Connection::connect(addr, &secret(), Role::Control, Mode::Plain, "src", T)
        .await
        .unwrap_err();
    assert!(matches!(e, WireError::BadPreamble { .. }), "{e}");
}

#[tokio::test]
async fn silent_peers_time_out() {
    let short = Duration::from_millis(200);
    // Silent initiator.
    let (l, addr) = listener().await;
    let mut config = AcceptConfig::new("dst");
    config.timeout = short;
    let acc = spawn_accept(l, secret(), config.clone());
    let _s = TcpStream::connect(addr).await.unwrap();
    let e = acc.await.unwrap().unwrap_err();
    assert_eq!(
        e.to_string(),
        "handshake timed out after 200ms (waiting for the preamble)"
    );

    // An initiator that stops after its preamble and a length.
    let (l, addr) = listener().await;
    let acc = spawn_accept(l, secret(), config);
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut bytes = preamble().to_vec();
    bytes.extend_from_slice(&50u16.to_le_bytes());
    s.write_all(&bytes).await.unwrap();
    let e = acc.await.unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            WireError::HandshakeTimeout {
                stage: "waiting for the first handshake message",
                ..
            }
        ),
        "{e}"
    );

    // Silent responder.
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        let (_s, _) = l.accept().await.unwrap();
        tokio::time::sleep(T).await;
    });
    let e = Connection::connect(addr, &secret(), Role::Control, Mode::Plain, "src", short)
        .await
        .unwrap_err();
    assert!(matches!(e, WireError::HandshakeTimeout { .. }), "{e}");
}

#[tokio::test]
async fn other_wire_versions_are_named_on_both_sides() {
    // An initiator of version 2.
    let (l, addr) = listener().await;
    let acc = spawn_accept(l, secret(), AcceptConfig::new("dst"));
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut p = preamble();
    p[6] = 2;
    s.write_all(&p).await.unwrap();
    let e = acc.await.unwrap().unwrap_err();
    assert_eq!(
        e.to_string(),
        "peer speaks ferry wire protocol version 2, this node speaks version 1"
    );
    let mut answer = [0u8; PREAMBLE_LEN];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer, preamble());

    // A responder of version 2.
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let _ = s.write_all(&p).await;
        tokio::time::sleep(T).await;
    });
    let e = Connection::connect(addr, &secret(), Role::Control, Mode::Plain, "src", T)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "peer speaks ferry wire protocol version 2, this node speaks version 1"
    );
}

#[tokio::test]
async fn responder_may_refuse_plain_mode() {
    let (l, addr) = listener().await;
    let mut config = AcceptConfig::new("dst");
    config.allow_plain = false;
    let acc = spawn_accept(l, secret(), config.clone());
    let e = Connection::connect(addr, &secret(), Role::Pages, Mode::Plain, "src", T)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "peer refused the connection: it does not allow plain mode"
    );
    assert!(matches!(
        acc.await.unwrap().unwrap_err(),
        WireError::ModeRefused { mode: Mode::Plain }
    ));
    // Encrypted is accepted.
    let (l, addr) = listener().await;
    let acc = spawn_accept(l, secret(), config);
    let c = Connection::connect(addr, &secret(), Role::Pages, Mode::Encrypted, "src", T)
        .await
        .unwrap();
    assert_eq!(c.mode(), Mode::Encrypted);
    assert_eq!(acc.await.unwrap().unwrap().mode(), Mode::Encrypted);
}

#[tokio::test]
async fn bad_node_names_are_refused_before_connecting() {
    // Port 1 is closed: the name is checked before any connection is attempted.
    for name in ["", "a\tb", &"n".repeat(256)] {
        let e = Connection::connect(
            "127.0.0.1:1",
            &secret(),
            Role::Control,
            Mode::Plain,
            name,
            T,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, WireError::BadNodeName { .. }), "{e}");
    }
    assert!(matches!(
        Connection::connect(
            "127.0.0.1:1",
            &secret(),
            Role::Control,
            Mode::Plain,
            "ok",
            T
        )
        .await
        .unwrap_err(),
        WireError::Connect { .. }
    ));
}

#[tokio::test]
async fn messages_and_pages_round_trip_in_order_in_both_modes() {
    for mode in [Mode::Encrypted, Mode::Plain] {
        let (mut a, mut b) = pair(mode, Role::Control).await;
        let sizes = [
            0usize,
            1,
            24,
            4096,
            32 << 10,
            65519,
            65520,
            3 * 65519 + 7,
            200_000,
            MAX_PAGES_PAYLOAD,
        ];
        let big = TestMsg::Blob(pattern(9, 5 << 20));
        let sent_big = big.clone();
        let sender = tokio::spawn(async move {
            a.send_msg(&TestMsg::Hello {
                from: "src".into(),
                n: 0,
            })
            .await
            .unwrap();
            for (i, &len) in sizes.iter().enumerate() {
                let data = pattern(i as u64, len);
                if i % 2 == 0 {
                    a.queue_pages(0x1000 * i as u64, i as u32, &data)
                        .await
                        .unwrap();
                } else {
                    a.send_pages(0x1000 * i as u64, i as u32, &data)
                        .await
                        .unwrap();
                }
                a.send_msg(&TestMsg::Fault {
                    id: i as u64,
                    addr: u64::MAX - i as u64,
                    pages: len as u32,
                })
                .await
                .unwrap();
            }
            a.send_msg(&sent_big).await.unwrap();
            a.queue_pages(7, 7, b"tail").await.unwrap();
            a.flush().await.unwrap();
            a.close().await.unwrap();
        });
        let mut buf = vec![0u8; MAX_PAGES_PAYLOAD];
        assert_eq!(
            b.recv_msg::<TestMsg>().await.unwrap(),
            TestMsg::Hello {
                from: "src".into(),
                n: 0
            }
        );
        for (i, &len) in sizes.iter().enumerate() {
            match b.recv::<TestMsg>(&mut buf).await.unwrap() {
                Received::Pages(h) => {
                    assert_eq!(
                        h,
                        PageFrameHeader {
                            addr: 0x1000 * i as u64,
                            len: len as u32,
                            tag: i as u32
                        }
                    );
                    assert!(buf[..len] == pattern(i as u64, len)[..], "{mode} frame {i}");
                }
                other => panic!("expected pages, got {other:?}"),
            }
            assert_eq!(
                b.recv::<TestMsg>(&mut buf).await.unwrap(),
                Received::Msg(TestMsg::Fault {
                    id: i as u64,
                    addr: u64::MAX - i as u64,
                    pages: len as u32
                })
            );
        }
        assert!(b.recv_msg::<TestMsg>().await.unwrap() == big);
        let h = b.recv_pages(&mut buf).await.unwrap();
        assert_eq!(
            (h.addr, h.tag, &buf[..h.len as usize]),
            (7, 7, &b"tail"[..])
        );
        let e = b.recv_msg::<TestMsg>().await.unwrap_err();
        assert_eq!(e.to_string(), "connection closed by the peer");
        assert!(matches!(e, WireError::Closed { graceful: true }));
        // It stays closed.
        assert!(b.recv_msg::<TestMsg>().await.unwrap_err().is_closed());
        sender.await.unwrap();
    }
}

#[tokio::test]
async fn send_limits_are_enforced_and_leave_the_connection_usable() {
    for mode in [Mode::Encrypted, Mode::Plain] {
        let (mut a, mut b) = pair(mode, Role::Pages).await;
        let too_big = vec![0u8; MAX_PAGES_PAYLOAD + 1];
        let e = a.send_pages(0, 0, &too_big).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "page frame of 16777217 bytes exceeds the limit of 16777216 bytes"
        );
        let e = a
            .send_msg(&TestMsg::Blob(vec![0; MAX_CONTROL_PAYLOAD]))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                WireError::TooLarge {
                    kind: FrameKind::Control,
                    ..
                }
            ),
            "{e}"
        );
        a.send_msg(&TestMsg::Done).await.unwrap();
        assert_eq!(b.recv_msg::<TestMsg>().await.unwrap(), TestMsg::Done);
    }
}

#[tokio::test]
async fn received_limits_are_enforced_before_reading_the_payload() {
    for mode in [Mode::Encrypted, Mode::Plain] {
        for (kind, len) in [
            (FrameKind::Pages, MAX_PAGES_PAYLOAD as u32 + 1),
            (FrameKind::Control, MAX_CONTROL_PAYLOAD as u32 + 1),
            (FrameKind::Control, u32::MAX),
        ] {
            let (a, mut b) = pair(mode, Role::Pages).await;
            let (mut tx, _rx) = a.into_split();
            let mut hdr = FrameHeader::control(0).unwrap().encode();
            hdr[4..6].copy_from_slice(&(kind as u16).to_le_bytes());
            hdr[8..12].copy_from_slice(&len.to_le_bytes());
            match mode {
                Mode::Plain => tx.write_raw(&hdr).await.unwrap(),
                Mode::Encrypted => tx.write_record(&hdr).await.unwrap(),
            }
            let mut buf = vec![0u8; 4096];
            let e = b.recv::<TestMsg>(&mut buf).await.unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "{kind} frame of {len} bytes exceeds the limit of {} bytes",
                    kind.max_payload()
                )
            );
            // The stream cannot be trusted any more.
            assert!(matches!(
                b.recv::<TestMsg>(&mut buf).await.unwrap_err(),
                WireError::Poisoned
            ));
        }
    }
}

#[tokio::test]
async fn wrong_frames_and_types_are_errors() {
    for mode in [Mode::Encrypted, Mode::Plain] {
        let (mut a, mut b) = pair(mode, Role::Control).await;
        // A message of another type: decode error, the stream stays in step.
        a.send_msg(&(1u8, 2u8, 3u8)).await.unwrap();
        a.send_msg("a string, not a TestMsg").await.unwrap();
        a.send_msg(&TestMsg::Done).await.unwrap();
        a.send_pages(1, 2, &[9; 100]).await.unwrap();
        a.send_msg(&TestMsg::Done).await.unwrap();
        let e = b.recv_msg::<TestMsg>().await.unwrap_err();
        assert!(
            matches!(e, WireError::Decode(_) | WireError::TrailingBytes { .. }),
            "{e}"
        );
        assert!(b.recv_msg::<TestMsg>().await.is_err());
        assert_eq!(b.recv_msg::<TestMsg>().await.unwrap(), TestMsg::Done);
        // A page frame where a message was expected, and a buffer too small.
        let e = b.recv_msg::<TestMsg>().await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "expected a control frame, received a page frame"
        );
        assert!(matches!(
            b.recv_msg::<TestMsg>().await.unwrap_err(),
            WireError::Poisoned
        ));

        let (mut a, mut b) = pair(mode, Role::Control).await;
        a.send_pages(1, 2, &[9; 100]).await.unwrap();
        let mut small = [0u8; 99];
        let e = b.recv_pages(&mut small).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "page frame of 100 bytes does not fit the receive buffer of 99 bytes"
        );
    }
}

#[tokio::test]
async fn close_between_and_inside_frames() {
    for mode in [Mode::Encrypted, Mode::Plain] {
        // Dropped between frames, without a close frame.
        let (mut a, mut b) = pair(mode, Role::Control).await;
        a.send_msg(&TestMsg::Done).await.unwrap();
        drop(a);
        assert_eq!(b.recv_msg::<TestMsg>().await.unwrap(), TestMsg::Done);
        let e = b.recv_msg::<TestMsg>().await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "connection closed by the peer (without a close frame)"
        );
        assert!(e.is_closed());

        // Inside a header.
        let (a, mut b) = pair(mode, Role::Control).await;
        let (mut tx, rx) = a.into_split();
        tx.write_raw(b"FRY").await.unwrap();
        drop((tx, rx));
        let e = b.recv_msg::<TestMsg>().await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "connection closed in the middle of a frame (frame header): unexpected end of stream"
        );

        // Inside a payload.
        let (a, mut b) = pair(mode, Role::Pages).await;
        let (mut tx, rx) = a.into_split();
        let hdr = FrameHeader::pages(0, 0, 100_000).unwrap().encode();
        match mode {
            Mode::Plain => tx.write_raw(&hdr).await.unwrap(),
            Mode::Encrypted => tx.write_record(&hdr).await.unwrap(),
        }
        tx.write_raw(&[1; 30_000]).await.unwrap();
        drop((tx, rx));
        let mut buf = vec![0u8; 100_000];
        let e = b.recv_pages(&mut buf).await.unwrap_err();
        assert!(
            matches!(
                e,
                WireError::Truncated {
                    during: "page payload"
                }
            ),
            "{e}"
        );
    }
}

#[tokio::test]
async fn forged_records_fail_authentication_in_encrypted_mode() {
    let (a, mut b) = pair(Mode::Encrypted, Role::Control).await;
    let (mut tx, _rx) = a.into_split();
    // A correct plain frame injected into an encrypted stream.
    tx.write_raw(&plain_frame(&TestMsg::Done)[..])
        .await
        .unwrap();
    tx.write_raw(&[0; 40]).await.unwrap();
    let e = b.recv_msg::<TestMsg>().await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "received data failed authentication: corrupted or forged"
    );
}

/// Relays a TCP connection and flips one bit of the client-to-server stream at `offset`.
async fn tampering_relay(target: std::net::SocketAddr, offset: usize) -> std::net::SocketAddr {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        let (client, _) = l.accept().await.unwrap();
        let server = TcpStream::connect(target).await.unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut sr, &mut cw).await;
        });
        let mut seen = 0usize;
        let mut buf = vec![0u8; 65536];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if (seen..seen + n).contains(&offset) {
                buf[offset - seen] ^= 0x01;
            }
            seen += n;
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    addr
}

#[tokio::test]
async fn tampering_on_the_path_is_detected_only_in_encrypted_mode() {
    // Handshake bytes from the initiator: 8 + 2 + 50 (msg1) + 2 + 20 (msg3 with "src").
    const HANDSHAKE: usize = 82;
    for mode in [Mode::Encrypted, Mode::Plain] {
        let (l, addr) = listener().await;
        let acc = spawn_accept(l, secret(), AcceptConfig::new("dst"));
        // Flip a bit in the payload of the first frame (after its 24- or 40-byte header).
        let relay = tampering_relay(addr, HANDSHAKE + 40 + 100).await;
        let mut a = Connection::connect(relay, &secret(), Role::Pages, mode, "src", T)
            .await
            .unwrap();
        let mut b = acc.await.unwrap().unwrap();
        let data = pattern(5, 4096);
        a.send_pages(0, 0, &data).await.unwrap();
        let mut buf = vec![0u8; 4096];
        match (mode, b.recv_pages(&mut buf).await) {
            (Mode::Encrypted, Err(WireError::Decrypt)) => {}
            // Documented: Plain mode authenticates the peer, not the data.
            (Mode::Plain, Ok(_)) => assert_ne!(buf, data),
            (m, r) => panic!("{m}: {r:?}"),
        }
    }
}

#[tokio::test]
async fn waiting_for_a_frame_is_cancel_safe_and_a_cancelled_payload_poisons() {
    for mode in [Mode::Encrypted, Mode::Plain] {
        let (a, mut b) = pair(mode, Role::Control).await;
        let (mut tx, _rx) = a.into_split();
        let mut buf = vec![0u8; 1 << 20];
        // Nothing sent yet: the timeout cancels the wait, nothing is lost.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.recv_pages(&mut buf))
                .await
                .is_err()
        );
        tx.send_pages(1, 1, &[1; 1000]).await.unwrap();
        assert_eq!(b.recv_pages(&mut buf).await.unwrap().len, 1000);

        // A header and part of the payload: cancelled mid-frame.
        let hdr = FrameHeader::pages(0, 0, 500_000).unwrap().encode();
        match mode {
            Mode::Plain => tx.write_raw(&hdr).await.unwrap(),
            Mode::Encrypted => tx.write_record(&hdr).await.unwrap(),
        }
        tx.write_raw(&[1; 1000]).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(100), b.recv_pages(&mut buf))
                .await
                .is_err()
        );
        assert!(matches!(
            b.recv_pages(&mut buf).await.unwrap_err(),
            WireError::Poisoned
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_halves_work_concurrently_from_separate_tasks() {
    const STREAM: u32 = 0;
    const FRAMES: u64 = 200;
    const FAULTS: u64 = 50;
    const FRAME: usize = 64 << 10;
    for mode in [Mode::Encrypted, Mode::Plain] {
        let (src, dst) = pair(mode, Role::Control).await;
        let (mut src_tx, mut src_rx) = src.into_split();
        let (mut dst_tx, mut dst_rx) = dst.into_split();
        let (req_tx, mut req_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();

        // Source: stream pages, answer faults in between.
        let source_send = tokio::spawn(async move {
            let reply = |id: u64, addr: u64| (addr, 1 | (id as u32) << 8, pattern(1000 + id, 4096));
            for i in 0..FRAMES {
                while let Ok((id, addr)) = req_rx.try_recv() {
                    let (a, tag, data) = reply(id, addr);
                    src_tx.send_pages(a, tag, &data).await.unwrap();
                }
                src_tx
                    .queue_pages(i * FRAME as u64, STREAM, &pattern(i, FRAME))
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
            src_tx.flush().await.unwrap();
            while let Some((id, addr)) = req_rx.recv().await {
                let (a, tag, data) = reply(id, addr);
                src_tx.send_pages(a, tag, &data).await.unwrap();
            }
            src_tx.send_msg(&TestMsg::Done).await.unwrap();
            src_tx
        });
        let source_recv = tokio::spawn(async move {
            loop {
                match src_rx.recv_msg::<TestMsg>().await.unwrap() {
                    TestMsg::Fault { id, addr, .. } => req_tx.send((id, addr)).unwrap(),
                    TestMsg::Done => break,
                    m => panic!("{m:?}"),
                }
            }
            src_rx
        });
        // Destination: ask for faults while receiving the stream.
        let dest_send = tokio::spawn(async move {
            for id in 0..FAULTS {
                dst_tx
                    .send_msg(&TestMsg::Fault {
                        id,
                        addr: 0x10_0000 + id * 4096,
                        pages: 1,
                    })
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            dst_tx.send_msg(&TestMsg::Done).await.unwrap();
            dst_tx
        });
        let dest_recv = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_PAGES_PAYLOAD];
            let mut next = 0u64;
            let mut faults = std::collections::BTreeSet::new();
            loop {
                match dst_rx.recv::<TestMsg>(&mut buf).await.unwrap() {
                    Received::Pages(h) if h.tag == STREAM => {
                        assert_eq!(h.addr, next * FRAME as u64);
                        assert!(buf[..FRAME] == pattern(next, FRAME)[..]);
                        next += 1;
                    }
                    Received::Pages(h) => {
                        let id = u64::from(h.tag >> 8);
                        assert_eq!(h.addr, 0x10_0000 + id * 4096);
                        assert!(buf[..4096] == pattern(1000 + id, 4096)[..]);
                        assert!(faults.insert(id));
                    }
                    Received::Msg(TestMsg::Done) => break,
                    Received::Msg(m) => panic!("{m:?}"),
                }
            }
            assert_eq!(next, FRAMES);
            assert_eq!(faults.len() as u64, FAULTS);
            dst_rx
        });
        let (a, b, c, d) = tokio::join!(source_send, source_recv, dest_send, dest_recv);
        drop((a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()));
    }
}

async fn bulk_transfer(mode: Mode) {
    const TOTAL: usize = 256 << 20;
    let src = Arc::new(pattern(77, 32 << 20));
    let (a, b) = pair(mode, Role::Pages).await;
    let (mut tx, _a_rx) = a.into_split();
    let (_b_tx, mut rx) = b.into_split();
    // Mostly 1 MiB frames, some 16 MiB ones and bursts of single 4 KiB pages.
    let frame = |i: usize| -> (usize, usize) {
        let len = match i % 16 {
            0 => MAX_PAGES_PAYLOAD,
            1..=4 => 4096,
            _ => 1 << 20,
        };
        let off = (i * 7919 * 4096) % ((32 << 20) - len + 1);
        (off, len)
    };
    let started = Instant::now();
    let sender = {
        let src = Arc::clone(&src);
        tokio::spawn(async move {
            let mut sent = 0;
            let mut i = 0;
            while sent < TOTAL {
                let (off, len) = frame(i);
                let len = len.min(TOTAL - sent);
                let data = &src[off..off + len];
                if len < 64 << 10 {
                    tx.queue_pages(off as u64, i as u32, data).await.unwrap();
                } else {
                    tx.send_pages(off as u64, i as u32, data).await.unwrap();
                }
                sent += len;
                i += 1;
            }
            tx.close().await.unwrap();
            i
        })
    };
    let mut buf = vec![0u8; MAX_PAGES_PAYLOAD];
    let mut got = 0usize;
    let mut i = 0usize;
    loop {
        match rx.recv_pages(&mut buf).await {
            Ok(h) => {
                let (off, _) = frame(i);
                let len = h.len as usize;
                assert_eq!((h.addr, h.tag), (off as u64, i as u32), "{mode} frame {i}");
                assert!(
                    buf[..len] == src[off..off + len],
                    "{mode} frame {i} differs"
                );
                got += len;
                i += 1;
            }
            Err(WireError::Closed { graceful: true }) => break,
            Err(e) => panic!("{mode}: {e}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(got, TOTAL);
    assert_eq!(sender.await.unwrap(), i);
    eprintln!(
        "ferry-wire loopback, {mode} mode: {} MiB in {i} frames, {secs:.3} s, {:.0} MB/s",
        TOTAL >> 20,
        TOTAL as f64 / secs / 1e6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_256_mib_plain() {
    bulk_transfer(Mode::Plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_256_mib_encrypted() {
    bulk_transfer(Mode::Encrypted).await;
}
