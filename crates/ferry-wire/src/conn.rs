//! Authenticated connections: connect, accept, and the two halves that move frames.
//!
//! A [`Connection`] exists only after a complete handshake ([`crate::handshake`]). It splits
//! into a [`Sender`] and a [`Receiver`] that two tasks use at the same time (the daemon
//! streams pages one way while it answers fault requests the other way).
//!
//! How a frame travels (see the crate docs for the header):
//!
//! - **Plain**: header, then payload, as bytes on the TCP stream. Small frames are gathered in
//!   a 256 KiB send buffer; a payload of 32 KiB or more goes straight from the caller's slice
//!   with one vectored write together with whatever is buffered (header included). The
//!   receiver reads through a 256 KiB buffer and reads large payloads directly into the
//!   caller's buffer.
//! - **Encrypted**: the 24-byte header is one Noise transport message (40 bytes on the wire),
//!   the payload follows in messages of at most 65519 plaintext bytes (65535 on the wire). The
//!   sizes follow from the header, so records carry no length of their own; the nonce is an
//!   implicit per-direction counter, so a dropped, replayed or reordered record fails
//!   authentication. Ciphertext is written into the send buffer and decrypted from the receive
//!   buffer straight into its destination: no allocation per frame or record.
//!
//! Flushing: `send_msg`, `send_pages` and `close` return after everything is handed to the
//! kernel; `queue_pages` may leave frames in the send buffer until the next `flush`, `send_*`
//! or a full buffer. Frames still queued when a [`Sender`] is dropped are lost.
//!
//! Cancellation: waiting for the next frame is cancel-safe (a receive future dropped before a
//! header has arrived completely loses nothing). A send, or a receive dropped after the header
//! arrived, leaves its half *poisoned*: every later call returns [`WireError::Poisoned`]. The
//! same holds after any error in the middle of a frame. Errors that leave the stream in step
//! (a message that does not decode, a frame too large to send) do not poison.

use std::fmt;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use snow::StatelessTransportState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::error::WireError;
use crate::frame::{FrameHeader, FrameKind, HEADER_LEN, PageFrameHeader};
use crate::handshake::{self, AcceptConfig, ConnInfo, Established, Mode, Role};
use crate::secret::ClusterSecret;

/// Send and receive buffer size, per half.
const BUF_LEN: usize = 256 << 10;
/// Plain payloads at least this large bypass the buffers.
const DIRECT_MIN: usize = 32 << 10;
/// ChaCha20-Poly1305 tag.
const TAG_LEN: usize = 16;
/// Largest plaintext of one Noise transport message.
pub(crate) const MAX_RECORD_PLAIN: usize = 65535 - TAG_LEN;
/// A control-message buffer grown beyond this is freed after use.
const KEEP_MSG_CAPACITY: usize = 1 << 20;

/// A message or a page frame, from [`Receiver::recv`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received<T> {
    /// A control message.
    Msg(T),
    /// A page frame; its payload is in the first `len` bytes of the caller's buffer.
    Pages(PageFrameHeader),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HalfState {
    Ready,
    /// In the middle of a frame; stays so if the future is dropped.
    Busy,
    Broken,
    Closed {
        graceful: bool,
    },
}

/// One direction of the Noise transport.
struct Crypto {
    transport: Arc<StatelessTransportState>,
    nonce: u64,
}

/// An authenticated connection to another ferry daemon.
pub struct Connection {
    tx: Sender,
    rx: Receiver,
}

/// The sending half of a [`Connection`].
pub struct Sender {
    wb: WriteBuf,
    crypto: Option<Crypto>,
    /// Reused encoding buffer for control messages.
    msg: Vec<u8>,
    state: HalfState,
    info: Arc<ConnInfo>,
}

/// The receiving half of a [`Connection`].
pub struct Receiver {
    rb: ReadBuf,
    crypto: Option<Crypto>,
    /// Reused payload buffer for control messages.
    msg: Vec<u8>,
    state: HalfState,
    info: Arc<ConnInfo>,
}

impl Connection {
    /// Connects to `addr`, authenticates with `secret` and declares `role`, the data `mode`
    /// and this node's name. `timeout` bounds the TCP connect and every handshake read.
    pub async fn connect<A: ToSocketAddrs + fmt::Display>(
        addr: A,
        secret: &ClusterSecret,
        role: Role,
        mode: Mode,
        node_name: &str,
        timeout: Duration,
    ) -> Result<Connection, WireError> {
        handshake::check_node_name(node_name)?;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(&addr)).await {
            Err(_) => {
                return Err(WireError::ConnectTimeout {
                    addr: addr.to_string(),
                    timeout,
                });
            }
            Ok(Err(source)) => {
                return Err(WireError::Connect {
                    addr: addr.to_string(),
                    source,
                });
            }
            Ok(Ok(s)) => s,
        };
        Self::connect_stream(stream, secret, role, mode, node_name, timeout).await
    }

    /// The initiator's handshake on an already connected TCP stream.
    pub async fn connect_stream(
        stream: TcpStream,
        secret: &ClusterSecret,
        role: Role,
        mode: Mode,
        node_name: &str,
        timeout: Duration,
    ) -> Result<Connection, WireError> {
        let est = handshake::initiate(stream, secret, role, mode, node_name, timeout).await?;
        Ok(Connection::from_established(est))
    }

    /// The responder's handshake on an accepted TCP stream. Returns only once the peer has
    /// been authenticated completely; nothing it sent is delivered before that.
    pub async fn accept(
        stream: TcpStream,
        secret: &ClusterSecret,
        config: &AcceptConfig,
    ) -> Result<Connection, WireError> {
        let est = handshake::respond(stream, secret, config).await?;
        Ok(Connection::from_established(est))
    }

    fn from_established(est: Established) -> Connection {
        let Established {
            stream,
            transport,
            send_nonce,
            recv_nonce,
            info,
        } = est;
        let info = Arc::new(info);
        let (send_crypto, recv_crypto) = match info.mode {
            Mode::Plain => (None, None),
            Mode::Encrypted => {
                let t = Arc::new(transport);
                (
                    Some(Crypto {
                        transport: Arc::clone(&t),
                        nonce: send_nonce,
                    }),
                    Some(Crypto {
                        transport: t,
                        nonce: recv_nonce,
                    }),
                )
            }
        };
        let (r, w) = stream.into_split();
        Connection {
            tx: Sender {
                wb: WriteBuf {
                    io: w,
                    buf: vec![0u8; BUF_LEN].into_boxed_slice(),
                    filled: 0,
                },
                crypto: send_crypto,
                msg: Vec::new(),
                state: HalfState::Ready,
                info: Arc::clone(&info),
            },
            rx: Receiver {
                rb: ReadBuf {
                    io: r,
                    buf: vec![0u8; BUF_LEN].into_boxed_slice(),
                    start: 0,
                    end: 0,
                },
                crypto: recv_crypto,
                msg: Vec::new(),
                state: HalfState::Ready,
                info,
            },
        }
    }

    /// Peer, role and mode of this connection.
    pub fn info(&self) -> &ConnInfo {
        &self.tx.info
    }

    /// The name the authenticated peer declared.
    pub fn peer_node(&self) -> &str {
        &self.tx.info.peer_node
    }

    /// The role the initiator declared.
    pub fn role(&self) -> Role {
        self.tx.info.role
    }

    /// The agreed data mode.
    pub fn mode(&self) -> Mode {
        self.tx.info.mode
    }

    /// Independent halves for two tasks.
    pub fn into_split(self) -> (Sender, Receiver) {
        (self.tx, self.rx)
    }

    /// See [`Sender::send_msg`].
    pub async fn send_msg<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<(), WireError> {
        self.tx.send_msg(msg).await
    }

    /// See [`Sender::send_pages`].
    pub async fn send_pages(&mut self, addr: u64, tag: u32, bytes: &[u8]) -> Result<(), WireError> {
        self.tx.send_pages(addr, tag, bytes).await
    }

    /// See [`Sender::queue_pages`].
    pub async fn queue_pages(
        &mut self,
        addr: u64,
        tag: u32,
        bytes: &[u8],
    ) -> Result<(), WireError> {
        self.tx.queue_pages(addr, tag, bytes).await
    }

    /// See [`Sender::flush`].
    pub async fn flush(&mut self) -> Result<(), WireError> {
        self.tx.flush().await
    }

    /// See [`Receiver::recv`].
    pub async fn recv<T: DeserializeOwned>(
        &mut self,
        pages: &mut [u8],
    ) -> Result<Received<T>, WireError> {
        self.rx.recv(pages).await
    }

    /// See [`Receiver::recv_msg`].
    pub async fn recv_msg<T: DeserializeOwned>(&mut self) -> Result<T, WireError> {
        self.rx.recv_msg().await
    }

    /// See [`Receiver::recv_pages`].
    pub async fn recv_pages(&mut self, buf: &mut [u8]) -> Result<PageFrameHeader, WireError> {
        self.rx.recv_pages(buf).await
    }

    /// See [`Sender::close`].
    pub async fn close(self) -> Result<(), WireError> {
        self.tx.close().await
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("info", &self.tx.info)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// Peer, role and mode of this connection.
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// Sends a control message (postcard-encoded, at most 64 MiB) and flushes.
    pub async fn send_msg<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<(), WireError> {
        self.check_ready()?;
        let mut buf = std::mem::take(&mut self.msg);
        buf.clear();
        let buf = postcard::to_extend(msg, buf).map_err(WireError::Encode)?;
        let header = match FrameHeader::control(buf.len()) {
            Ok(h) => h,
            Err(e) => {
                self.msg = buf;
                return Err(e);
            }
        };
        self.state = HalfState::Busy;
        let mut r = self.write_frame(&header, &buf).await;
        if r.is_ok() {
            r = self.wb.flush().await;
        }
        if buf.capacity() <= KEEP_MSG_CAPACITY {
            self.msg = buf;
        }
        self.finish(r)
    }

    /// Sends a page frame (at most 16 MiB of raw bytes; `addr` and `tag` are the caller's)
    /// and flushes.
    pub async fn send_pages(&mut self, addr: u64, tag: u32, bytes: &[u8]) -> Result<(), WireError> {
        self.pages(addr, tag, bytes, true).await
    }

    /// Like [`send_pages`](Self::send_pages), but small frames may stay in the send buffer
    /// until the next flush: for streams of many small frames. Call [`flush`](Self::flush)
    /// when the batch is complete.
    pub async fn queue_pages(
        &mut self,
        addr: u64,
        tag: u32,
        bytes: &[u8],
    ) -> Result<(), WireError> {
        self.pages(addr, tag, bytes, false).await
    }

    async fn pages(
        &mut self,
        addr: u64,
        tag: u32,
        bytes: &[u8],
        flush: bool,
    ) -> Result<(), WireError> {
        self.check_ready()?;
        let header = FrameHeader::pages(addr, tag, bytes.len())?;
        self.state = HalfState::Busy;
        let mut r = self.write_frame(&header, bytes).await;
        if r.is_ok() && flush {
            r = self.wb.flush().await;
        }
        self.finish(r)
    }

    /// Hands every queued frame to the kernel.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        self.check_ready()?;
        self.state = HalfState::Busy;
        let r = self.wb.flush().await;
        self.finish(r)
    }

    /// Sends a Close frame, flushes and shuts the sending direction down. The peer's receiver
    /// then reports [`WireError::Closed`] `{ graceful: true }`.
    pub async fn close(mut self) -> Result<(), WireError> {
        self.check_ready()?;
        self.write_frame(&FrameHeader::close(), &[]).await?;
        self.wb.flush().await?;
        self.wb
            .io
            .shutdown()
            .await
            .map_err(WireError::io("closing the connection"))
    }

    fn check_ready(&mut self) -> Result<(), WireError> {
        match self.state {
            HalfState::Ready => Ok(()),
            HalfState::Closed { graceful } => Err(WireError::Closed { graceful }),
            HalfState::Busy | HalfState::Broken => {
                self.state = HalfState::Broken;
                Err(WireError::Poisoned)
            }
        }
    }

    fn finish(&mut self, r: Result<(), WireError>) -> Result<(), WireError> {
        self.state = if r.is_ok() {
            HalfState::Ready
        } else {
            HalfState::Broken
        };
        r
    }

    /// Puts a frame into the send buffer or on the wire; does not flush what stays buffered.
    async fn write_frame(&mut self, header: &FrameHeader, payload: &[u8]) -> Result<(), WireError> {
        let hdr = header.encode();
        match &mut self.crypto {
            None => {
                let wb = &mut self.wb;
                if payload.len() >= DIRECT_MIN {
                    if wb.space() < HEADER_LEN {
                        wb.flush().await?;
                    }
                    wb.push(&hdr);
                    wb.write_with(payload).await
                } else {
                    if wb.space() < HEADER_LEN + payload.len() {
                        wb.flush().await?;
                    }
                    wb.push(&hdr);
                    wb.push(payload);
                    Ok(())
                }
            }
            Some(c) => {
                seal(&mut self.wb, c, &hdr).await?;
                for chunk in payload.chunks(MAX_RECORD_PLAIN) {
                    seal(&mut self.wb, c, chunk).await?;
                }
                Ok(())
            }
        }
    }

    /// Test hook: raw bytes on the stream, as if a broken or hostile peer sent them.
    #[cfg(test)]
    pub(crate) async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.wb.push(bytes);
        self.wb.flush().await
    }

    /// Test hook: one sealed record with arbitrary plaintext (Encrypted mode).
    #[cfg(test)]
    pub(crate) async fn write_record(&mut self, plain: &[u8]) -> Result<(), WireError> {
        let Some(c) = &mut self.crypto else {
            return Err(WireError::BadFrame {
                reason: "not encrypted".into(),
            });
        };
        seal(&mut self.wb, c, plain).await?;
        self.wb.flush().await
    }
}

/// Encrypts one record into the send buffer.
async fn seal(wb: &mut WriteBuf, c: &mut Crypto, plain: &[u8]) -> Result<(), WireError> {
    if wb.space() < plain.len() + TAG_LEN {
        wb.flush().await?;
    }
    let n = c
        .transport
        .write_message(c.nonce, plain, &mut wb.buf[wb.filled..])?;
    c.nonce += 1;
    wb.filled += n;
    Ok(())
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("info", &self.info)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// Peer, role and mode of this connection.
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// Receives the next frame, a control message or a page frame. A page frame's payload is
    /// read into `pages` (its first `len` bytes; a frame longer than `pages` is an error that
    /// poisons the receiver). On any error the contents of `pages` are unspecified.
    ///
    /// [`WireError::Closed`] when the peer ended the stream between frames.
    pub async fn recv<T: DeserializeOwned>(
        &mut self,
        pages: &mut [u8],
    ) -> Result<Received<T>, WireError> {
        let h = self.begin_frame().await?;
        let r = match h.kind {
            FrameKind::Pages => self.pages_payload(&h, pages).await.map(Received::Pages),
            _ => self.msg_payload(h.len).await.map(Received::Msg),
        };
        self.end_frame(r)
    }

    /// Receives the next frame, which must be a control message.
    pub async fn recv_msg<T: DeserializeOwned>(&mut self) -> Result<T, WireError> {
        let h = self.begin_frame().await?;
        let r = if h.kind == FrameKind::Control {
            self.msg_payload(h.len).await
        } else {
            Err(WireError::UnexpectedFrame {
                expected: "control",
                got: h.kind,
            })
        };
        self.end_frame(r)
    }

    /// Receives the next frame, which must be a page frame, into `buf` (see [`recv`](Self::recv)).
    pub async fn recv_pages(&mut self, buf: &mut [u8]) -> Result<PageFrameHeader, WireError> {
        let h = self.begin_frame().await?;
        let r = if h.kind == FrameKind::Pages {
            self.pages_payload(&h, buf).await
        } else {
            Err(WireError::UnexpectedFrame {
                expected: "page",
                got: h.kind,
            })
        };
        self.end_frame(r)
    }

    /// Waits for and consumes the next header (cancel-safe until it returns).
    async fn begin_frame(&mut self) -> Result<FrameHeader, WireError> {
        match self.state {
            HalfState::Ready => {}
            HalfState::Closed { graceful } => return Err(WireError::Closed { graceful }),
            HalfState::Busy | HalfState::Broken => {
                self.state = HalfState::Broken;
                return Err(WireError::Poisoned);
            }
        }
        let r = self.read_header().await;
        self.state = match &r {
            Ok(_) => HalfState::Busy,
            Err(WireError::Closed { graceful }) => HalfState::Closed {
                graceful: *graceful,
            },
            Err(_) => HalfState::Broken,
        };
        r
    }

    fn end_frame<R>(&mut self, r: Result<R, WireError>) -> Result<R, WireError> {
        self.state = match &r {
            // The payload was consumed: the stream is in step.
            Ok(_) | Err(WireError::Decode(_) | WireError::TrailingBytes { .. }) => HalfState::Ready,
            Err(_) => HalfState::Broken,
        };
        r
    }

    async fn read_header(&mut self) -> Result<FrameHeader, WireError> {
        let wire_len = HEADER_LEN + if self.crypto.is_some() { TAG_LEN } else { 0 };
        match self.rb.fill(wire_len).await {
            Ok(()) => {}
            Err(Fill::Eof) if self.rb.is_empty() => {
                return Err(WireError::Closed { graceful: false });
            }
            Err(e) => return Err(e.into_error("frame header")),
        }
        let mut hdr = [0u8; HEADER_LEN];
        let wire = self.rb.take(wire_len);
        match &mut self.crypto {
            None => hdr.copy_from_slice(wire),
            Some(c) => {
                c.transport
                    .read_message(c.nonce, wire, &mut hdr)
                    .map_err(|_| WireError::Decrypt)?;
                c.nonce += 1;
            }
        }
        let h = FrameHeader::decode(&hdr)?;
        if h.kind == FrameKind::Close {
            return Err(WireError::Closed { graceful: true });
        }
        Ok(h)
    }

    async fn msg_payload<T: DeserializeOwned>(&mut self, len: u32) -> Result<T, WireError> {
        let mut buf = std::mem::take(&mut self.msg);
        buf.clear();
        // The header was checked against the 64 MiB limit before this allocation.
        buf.resize(len as usize, 0);
        self.payload(&mut buf, "control payload").await?;
        let r = match postcard::take_from_bytes::<T>(&buf) {
            Ok((v, [])) => Ok(v),
            Ok((_, rest)) => Err(WireError::TrailingBytes { extra: rest.len() }),
            Err(e) => Err(WireError::Decode(e)),
        };
        if buf.capacity() <= KEEP_MSG_CAPACITY {
            self.msg = buf;
        }
        r
    }

    async fn pages_payload(
        &mut self,
        h: &FrameHeader,
        buf: &mut [u8],
    ) -> Result<PageFrameHeader, WireError> {
        let len = h.len as usize;
        let Some(dest) = buf.get_mut(..len) else {
            return Err(WireError::BufferTooSmall {
                need: len,
                have: buf.len(),
            });
        };
        self.payload(dest, "page payload").await?;
        Ok(h.page_header())
    }

    /// Reads (and in Encrypted mode decrypts) a payload of `dest.len()` bytes into `dest`.
    async fn payload(&mut self, dest: &mut [u8], during: &'static str) -> Result<(), WireError> {
        match &mut self.crypto {
            None => self
                .rb
                .read_into(dest)
                .await
                .map_err(|e| e.into_error(during)),
            Some(c) => {
                for chunk in dest.chunks_mut(MAX_RECORD_PLAIN) {
                    let wire_len = chunk.len() + TAG_LEN;
                    self.rb
                        .fill(wire_len)
                        .await
                        .map_err(|e| e.into_error(during))?;
                    c.transport
                        .read_message(c.nonce, self.rb.take(wire_len), chunk)
                        .map_err(|_| WireError::Decrypt)?;
                    c.nonce += 1;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("info", &self.info)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The send buffer over the write half.
struct WriteBuf {
    io: OwnedWriteHalf,
    buf: Box<[u8]>,
    filled: usize,
}

impl WriteBuf {
    fn space(&self) -> usize {
        self.buf.len() - self.filled
    }

    /// Appends; the caller made room.
    fn push(&mut self, b: &[u8]) {
        self.buf[self.filled..self.filled + b.len()].copy_from_slice(b);
        self.filled += b.len();
    }

    async fn flush(&mut self) -> Result<(), WireError> {
        if self.filled > 0 {
            self.io
                .write_all(&self.buf[..self.filled])
                .await
                .map_err(WireError::io("sending to the peer"))?;
            self.filled = 0;
        }
        Ok(())
    }

    /// Writes the buffered bytes and then `payload`, with vectored writes.
    async fn write_with(&mut self, payload: &[u8]) -> Result<(), WireError> {
        let err = WireError::io("sending to the peer");
        let mut a = &self.buf[..self.filled];
        let mut b = payload;
        while !a.is_empty() || !b.is_empty() {
            let n = if a.is_empty() {
                self.io.write(b).await
            } else {
                self.io
                    .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
                    .await
            };
            let n = match n {
                Ok(0) => return Err(err(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => n,
                Err(e) => return Err(err(e)),
            };
            if n < a.len() {
                a = &a[n..];
            } else {
                b = &b[n - a.len()..];
                a = &[];
            }
        }
        self.filled = 0;
        Ok(())
    }
}

/// The receive buffer over the read half: `buf[start..end]` is received, not yet consumed.
struct ReadBuf {
    io: OwnedReadHalf,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

enum Fill {
    Eof,
    Io(std::io::Error),
}

impl Fill {
    fn into_error(self, during: &'static str) -> WireError {
        match self {
            Fill::Eof => WireError::Truncated { during },
            Fill::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                WireError::Truncated { during }
            }
            Fill::Io(source) => WireError::Io {
                during: "receiving from the peer",
                source,
            },
        }
    }
}

impl ReadBuf {
    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Makes at least `n` (≤ the buffer size) bytes available. Cancel-safe: what was read
    /// stays in the buffer.
    async fn fill(&mut self, n: usize) -> Result<(), Fill> {
        if self.end - self.start >= n {
            return Ok(());
        }
        if self.start + n > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end - self.start < n {
            match self.io.read(&mut self.buf[self.end..]).await {
                Ok(0) => return Err(Fill::Eof),
                Ok(r) => self.end += r,
                Err(e) => return Err(Fill::Io(e)),
            }
        }
        Ok(())
    }

    /// Consumes `n` available bytes.
    fn take(&mut self, n: usize) -> &[u8] {
        let s = self.start;
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        &self.buf[s..s + n]
    }

    /// Fills `dest` from the buffer, then, for a large rest, directly from the socket.
    async fn read_into(&mut self, dest: &mut [u8]) -> Result<(), Fill> {
        let have = (self.end - self.start).min(dest.len());
        dest[..have].copy_from_slice(self.take(have));
        let rest = &mut dest[have..];
        if rest.is_empty() {
            Ok(())
        } else if rest.len() < DIRECT_MIN {
            self.fill(rest.len()).await?;
            rest.copy_from_slice(self.take(rest.len()));
            Ok(())
        } else {
            match self.io.read_exact(rest).await {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Fill::Eof),
                Err(e) => Err(Fill::Io(e)),
            }
        }
    }
}
