//! A TCP forwarder between a gateway node and Redis that the suite controls: while
//! [`Forwarder::partition`]ed it moves no byte in either direction and closes nothing — no
//! packet is answered, no connection is reset, an end of stream is held back — like a network
//! that silently drops packets (TCP would retransmit them after the partition, so what was
//! held is delivered on [`Forwarder::heal`]). New connections are accepted by the kernel
//! meanwhile (a userspace forwarder cannot refuse a SYN without answering it), but nothing they
//! send reaches Redis until the heal.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A running forwarder (`127.0.0.1:<port>` → `upstream`); stops with every connection on drop.
pub struct Forwarder {
    port: u16,
    open: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Forwarder {
    /// Listen on a free loopback port and forward every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Forwarder> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("forwarder: bind")?;
        let port = listener.local_addr()?.port();
        let (open, gate) = watch::channel(true);
        let accept = tokio::spawn(accept_loop(listener, upstream, gate));
        Ok(Forwarder { port, open, accept })
    }

    /// `redis://127.0.0.1:<port>/`: Redis as seen through the forwarder.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stop moving bytes (both directions, every connection, new ones too).
    pub fn partition(&self) {
        self.open.send_replace(false);
    }

    /// Move bytes again, starting with what was held.
    pub fn heal(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // Dropping the accept task's JoinSet aborts every connection's pumps.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, gate: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((inbound, _)) = accepted {
                    connections.spawn(forward(inbound, upstream, gate.clone()));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One connection: connect upstream (refused upstream = the inbound connection is closed, as
/// Redis down would refuse it), then pump both ways.
async fn forward(inbound: TcpStream, upstream: SocketAddr, mut gate: watch::Receiver<bool>) {
    // A connection made during a partition reaches Redis only after the heal.
    if gate.wait_for(|open| *open).await.is_err() {
        return;
    }
    let Ok(outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::join!(
        pump(in_read, out_write, gate.clone()),
        pump(out_read, in_write, gate)
    );
}

/// Copy `from` → `to`, holding every chunk (and the end of stream) while the gate is closed.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut gate: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        if gate.wait_for(|open| *open).await.is_err() {
            return;
        }
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_partition_holds_bytes_and_closes_nothing_until_healed() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut b = [0u8; 64];
            loop {
                let n = s.read(&mut b).await.unwrap();
                if n == 0 {
                    return;
                }
                s.write_all(&b[..n]).await.unwrap();
            }
        });
        let fwd = Forwarder::start(upstream).await.unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", fwd.port)).await.unwrap();
        let mut b = [0u8; 5];
        c.write_all(b"hello").await.unwrap();
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"hello");

        fwd.partition();
        c.write_all(b"again").await.unwrap();
        let silent = tokio::time::timeout(Duration::from_millis(300), c.read(&mut b)).await;
        assert!(
            silent.is_err(),
            "nothing may come back (no data, no EOF, no reset)"
        );
        fwd.heal();
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&b, b"again");
    }
}
