//! A TCP forwarder standing in for the `<name>-rw` Service: PgBouncer
//! connects to it, and the test moves its target to the new primary the
//! way the operator relabels pods so the Service selects the new primary.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread::JoinHandle;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub struct ServiceProxy {
    pub port: u16,
    target: Arc<AtomicU16>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServiceProxy {
    pub fn start(port: u16, target: u16) -> Self {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let target = Arc::new(AtomicU16::new(target));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let t = Arc::clone(&target);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => {
                            let Ok((mut inbound, _)) = accepted else { continue };
                            let port = t.load(Ordering::SeqCst);
                            tokio::spawn(async move {
                                if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", port)).await {
                                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                                }
                            });
                        }
                    }
                }
            });
            // Dropping the runtime ends every forwarded connection.
        });
        Self {
            port,
            target,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn set_target(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
