//! A TCP proxy that misbehaves on request, for the quiet faults a real network has: put it
//! between keygate and a server (Redis) and tell each connection, or the ones still to come,
//! to pass bytes, delay them, swallow them while acknowledging (a stuck NAT entry, a hung
//! middlebox: the sender's kernel sees its data acknowledged and never hears back), reset, or
//! stop reading (the sender's buffers fill and it gets no acknowledgement).
//!
//! It runs on a thread and runtime of its own, so a test blocking its own runtime (a CLI
//! call, a sleep) never stalls the traffic it carries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Bytes go through.
    Pass,
    /// Each chunk goes through after this long.
    Delay(Duration),
    /// Bytes are read (so TCP acknowledges them) and dropped, both ways.
    Blackhole,
    /// Both sides get a TCP reset.
    Reset,
    /// Nothing is read any more, both ways.
    Stall,
}

#[derive(Default)]
struct State {
    /// Every connection's fault, by acceptance order.
    connections: Vec<watch::Sender<Fault>>,
    /// What connections accepted from now on start with.
    new: Option<Fault>,
}

pub struct FaultProxy {
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to `127.0.0.1:target_port`.
    pub fn start(target_port: u16) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = CancellationToken::new();
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).unwrap();
                    loop {
                        let accepted = tokio::select! {
                            _ = stop.cancelled() => return,
                            accepted = listener.accept() => accepted,
                        };
                        let Ok((client, _)) = accepted else { continue };
                        let fault = {
                            let mut state = state.lock().unwrap();
                            let (tx, rx) = watch::channel(state.new.unwrap_or(Fault::Pass));
                            state.connections.push(tx);
                            rx
                        };
                        let stop = stop.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                _ = relay(client, target_port, fault) => {}
                            }
                        });
                    }
                });
            })
        };
        Self {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Applies `fault` to every connection made so far.
    pub fn set_existing(&self, fault: Fault) {
        for conn in &self.state.lock().unwrap().connections {
            conn.send_replace(fault);
        }
    }

    /// Connections accepted from now on start with `fault`.
    pub fn set_new(&self, fault: Fault) {
        self.state.lock().unwrap().new = Some(fault);
    }

    /// Applies `fault` to every connection, made so far or to come.
    pub fn set_all(&self, fault: Fault) {
        self.set_new(fault);
        self.set_existing(fault);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.lock().unwrap().connections.len()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn relay(client: TcpStream, target_port: u16, mut fault: watch::Receiver<Fault>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)).await else {
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    loop {
        let now = *fault.borrow_and_update();
        match now {
            Fault::Reset => {
                let _ = client_write.as_ref().set_zero_linger();
                let _ = server_write.as_ref().set_zero_linger();
                return;
            }
            Fault::Stall => {
                if fault.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Fault::Pass | Fault::Delay(_) | Fault::Blackhole => {}
        }
        tokio::select! {
            changed = fault.changed() => if changed.is_err() { return },
            read = client_read.read(&mut up) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if !pass(&mut server_write, &up[..n], now).await { return },
            },
            read = server_read.read(&mut down) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if !pass(&mut client_write, &down[..n], now).await { return },
            },
        }
    }
}

/// Forwards `bytes` as `fault` says; false if the other side is gone.
async fn pass(to: &mut tokio::net::tcp::OwnedWriteHalf, bytes: &[u8], fault: Fault) -> bool {
    match fault {
        Fault::Blackhole => true,
        Fault::Delay(d) => {
            tokio::time::sleep(d).await;
            to.write_all(bytes).await.is_ok()
        }
        _ => to.write_all(bytes).await.is_ok(),
    }
}
