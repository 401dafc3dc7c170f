//! Client sessions that behave as the protocol asks of apps: one logical client per session,
//! which, when the gateway closes its connection, reconnects (its home node first, else the
//! other) and resumes with `?since=<last id>` (the last event's id, or a `resync`'s). Every
//! frame goes to the [`Records`]. The suite can pause a session (it stops reading: a slow
//! consumer), send it home, or stop it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::records::Records;
use super::world::{AddressBook, NODE_NAMES};
use crate::token;

/// Not connected (value of [`SessionHandle::node`]).
const NOWHERE: usize = usize::MAX;

/// What a session is told to do.
#[derive(Clone, Debug, Default)]
struct Control {
    paused: bool,
    go_home: u64,
    stop: bool,
}

/// One running session.
pub struct SessionHandle {
    /// Its user.
    pub user: u64,
    /// The node slot it connects to first.
    pub home: usize,
    /// Its index in the records.
    pub index: usize,
    node: Arc<AtomicUsize>,
    control: watch::Sender<Control>,
    task: JoinHandle<()>,
}

impl SessionHandle {
    /// Start a session of `user` homed on node `home`; `rcvbuf` sets a small socket receive
    /// buffer (so that when paused it stops taking data soon).
    pub fn start(
        user: u64,
        home: usize,
        rcvbuf: Option<u32>,
        book: Arc<AddressBook>,
        records: Arc<Records>,
    ) -> SessionHandle {
        let name = format!("u{user}@{}", NODE_NAMES[home]);
        let index = records.add_session(user, name);
        let node = Arc::new(AtomicUsize::new(NOWHERE));
        let (control, rx) = watch::channel(Control::default());
        let session = Session {
            user,
            home,
            index,
            rcvbuf,
            book,
            records,
            node: node.clone(),
            control: rx,
            last: None,
        };
        SessionHandle {
            user,
            home,
            index,
            node,
            control,
            task: tokio::spawn(session.run()),
        }
    }

    /// The node slot it is connected to, if any.
    pub fn node(&self) -> Option<usize> {
        Some(self.node.load(Ordering::Relaxed)).filter(|n| *n != NOWHERE)
    }

    /// Stop (`true`) or resume (`false`) reading.
    pub fn pause(&self, paused: bool) {
        self.control.send_modify(|c| c.paused = paused);
    }

    /// Reconnect to the home node (with `since`) if connected elsewhere.
    pub fn go_home(&self) {
        self.control.send_modify(|c| c.go_home += 1);
    }

    /// Close and end the session.
    pub async fn stop(self) {
        self.control.send_modify(|c| c.stop = true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

struct Session {
    user: u64,
    home: usize,
    index: usize,
    rcvbuf: Option<u32>,
    book: Arc<AddressBook>,
    records: Arc<Records>,
    node: Arc<AtomicUsize>,
    control: watch::Receiver<Control>,
    last: Option<String>,
}

/// Why a connection ended.
enum End {
    /// The gateway ended it (close code, if a close frame came).
    Closed(Option<u16>),
    /// The suite sent the session home.
    Moved,
    /// The suite stopped the session.
    Stopped,
}

impl Session {
    async fn run(mut self) {
        let mut attempt = 0u32;
        let mut prefer = self.home;
        loop {
            if self.control.borrow().stop {
                return;
            }
            let node = if attempt.is_multiple_of(2) {
                prefer
            } else {
                1 - prefer
            };
            let ws = match self.book.public(node) {
                Some(addr) => self.connect(&addr).await.ok(),
                None => None,
            };
            let Some(ws) = ws else {
                attempt += 1;
                let backoff = 50u64 << attempt.min(4);
                tokio::time::sleep(Duration::from_millis(backoff)).await;
                continue;
            };
            attempt = 0;
            self.node.store(node, Ordering::Relaxed);
            let end = self.read(ws, node).await;
            self.node.store(NOWHERE, Ordering::Relaxed);
            match end {
                End::Closed(code) => {
                    self.records.closed(self.index, code, Instant::now());
                    prefer = self.home;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                End::Moved => prefer = self.home,
                End::Stopped => return,
            }
        }
    }

    async fn connect(&self, addr: &str) -> Result<WebSocketStream<TcpStream>> {
        let since = self
            .last
            .as_ref()
            .map(|id| format!("&since={id}"))
            .unwrap_or_default();
        let url = format!("ws://{addr}/ws?access_token={}{since}", token(self.user));
        let socket = TcpSocket::new_v4()?;
        if let Some(bytes) = self.rcvbuf {
            socket.set_recv_buffer_size(bytes)?;
        }
        tokio::time::timeout(Duration::from_secs(5), async {
            let stream = socket.connect(addr.parse()?).await?;
            let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
            Ok(ws)
        })
        .await
        .context("connect timed out")?
    }

    async fn read(&mut self, mut ws: WebSocketStream<TcpStream>, node: usize) -> End {
        let mut paused = self.control.borrow().paused;
        let mut home_calls = self.control.borrow().go_home;
        loop {
            tokio::select! {
                msg = ws.next(), if !paused => match msg {
                    Some(Ok(Message::Text(text))) => self.frame(text.as_str()),
                    Some(Ok(Message::Close(frame))) => {
                        return End::Closed(Some(frame.map_or(1005, |f| f.code.into())));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return End::Closed(None),
                },
                changed = self.control.changed() => {
                    let control = self.control.borrow_and_update().clone();
                    if changed.is_err() || control.stop {
                        let _ = ws.close(None).await;
                        return End::Stopped;
                    }
                    paused = control.paused;
                    if control.go_home != home_calls {
                        home_calls = control.go_home;
                        if node != self.home {
                            let _ = ws.close(None).await;
                            return End::Moved;
                        }
                    }
                }
            }
        }
    }

    fn frame(&mut self, text: &str) {
        let now = Instant::now();
        let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
            self.records.foreign(self.index, text, now);
            return;
        };
        let id = value["id"].as_str();
        if value["type"] == "resync" {
            let reason = value["data"]["reason"].as_str().unwrap_or("?");
            self.records.resync(self.index, id, reason, now);
        } else if let Some(id) = id {
            self.records.event(self.index, id, now);
        } else {
            self.records.foreign(self.index, text, now);
            return;
        }
        if let Some(id) = id {
            self.last = Some(id.to_owned());
        }
    }
}
