//! The workers and their listeners: one SO_REUSEPORT listener per worker on the one port, each
//! worker a thread with its own monoio runtime (io_uring, or epoll), accepting connections and
//! handing each to the proxy.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use super::ServeError;
use crate::config::Driver;
use crate::proxy::{Shared, connect};

/// Starts one worker thread per listener and waits until each is accepting; returns their
/// handles and the I/O driver they run.
pub(super) fn start_workers(
    listeners: Vec<StdListener>,
    shared: &Arc<Shared>,
    driver: Driver,
) -> Result<(Vec<std::thread::JoinHandle<()>>, &'static str), ServeError> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut handles = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("airlock-worker-{i}"))
            .spawn(move || worker(i, driver, listener, shared, ready))
            .map_err(|source| ServeError::Worker { worker: i, source })?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut driver_name = "";
    for _ in 0..handles.len() {
        match ready_rx.recv() {
            Ok(Ok(name)) => driver_name = name,
            Ok(Err((worker, source))) => return Err(ServeError::Worker { worker, source }),
            Err(_) => {
                return Err(ServeError::Worker {
                    worker: 0,
                    source: std::io::Error::other("a worker exited during start-up"),
                });
            }
        }
    }
    Ok((handles, driver_name))
}

/// Binds `workers` SO_REUSEPORT listeners on one port, after checking that no other process
/// holds it (a plain bind would otherwise silently share traffic with it).
pub(super) fn bind(listen: SocketAddr, workers: usize) -> Result<Vec<StdListener>, ServeError> {
    let err = |source| ServeError::Bind { listen, source };
    let probe = StdListener::bind(listen).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            ServeError::InUse(listen)
        } else {
            err(e)
        }
    })?;
    let addr = probe.local_addr().map_err(err)?;
    drop(probe);
    (0..workers)
        .map(|_| {
            use socket2::{Domain, Socket, Type};
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
            socket.set_reuse_port(true).map_err(err)?;
            socket.set_reuse_address(true).map_err(err)?;
            socket.set_nonblocking(true).map_err(err)?;
            socket.bind(&addr.into()).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    ServeError::InUse(addr)
                } else {
                    err(e)
                }
            })?;
            socket.listen(1024).map_err(err)?;
            Ok(socket.into())
        })
        .collect()
}

pub(super) type Ready = mpsc::Sender<Result<&'static str, (usize, std::io::Error)>>;

pub(super) fn worker(
    i: usize,
    driver: Driver,
    listener: StdListener,
    shared: Arc<Shared>,
    ready: Ready,
) {
    crate::proxy::stats::Stats::enter_worker(i);
    let use_uring = match driver {
        Driver::IoUring => true,
        Driver::Epoll => false,
        Driver::Auto => monoio::utils::detect_uring(),
    };
    let fut = accept_loop(
        i,
        listener,
        shared,
        ready.clone(),
        if use_uring { "io-uring" } else { "epoll" },
    );
    let built = if use_uring {
        uring_runtime().map(|mut rt| rt.block_on(fut))
    } else {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .attach_thread_pool(blocking_pool())
            .build()
            .map(|mut rt| rt.block_on(fut))
    };
    if let Err(e) = built {
        let _ = ready.send(Err((i, e)));
    }
}

/// The threads a worker hands blocking work to (LMDB commits, name lookups, Argon2).
pub(super) fn blocking_pool() -> Box<monoio::blocking::DefaultThreadPool> {
    Box::new(monoio::blocking::DefaultThreadPool::new(2))
}

/// A worker's io_uring runtime. Its ring belongs to one thread, and is set up so: only this
/// thread submits (`SINGLE_ISSUER`), and completions are run when the worker next enters the
/// kernel to wait for them (`DEFER_TASKRUN`, with `COOP_TASKRUN`) instead of interrupting it
/// with an inter-processor interrupt each. In the load harness this raised keep-alive
/// throughput and cut the added p99 (docs/src/performance.md). A kernel without those flags
/// (before 6.1) gets a plain ring.
pub(super) fn uring_runtime()
-> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    let build = |ring: io_uring::Builder| {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .uring_builder(ring)
            .enable_timer()
            .attach_thread_pool(blocking_pool())
            .build()
    };
    let mut tuned = io_uring::IoUring::builder();
    tuned
        .setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun();
    match build(tuned) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
            build(io_uring::IoUring::builder())
        }
        built => built,
    }
}

pub(super) async fn accept_loop(
    i: usize,
    listener: StdListener,
    shared: Arc<Shared>,
    ready: Ready,
    driver: &'static str,
) {
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err((i, e)));
            return;
        }
    };
    let _ = ready.send(Ok(driver));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                monoio::spawn(connect::accepted(shared.clone(), stream));
            }
            Err(e) => {
                tracing::warn!(worker = i, "accept failed: {e}");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The address the listeners got (the port chosen for `:0`).
pub(super) fn local_addr(
    listeners: &[StdListener],
    listen: SocketAddr,
) -> Result<SocketAddr, ServeError> {
    let first = listeners.first().ok_or_else(|| ServeError::Bind {
        listen,
        source: std::io::ErrorKind::AddrNotAvailable.into(),
    })?;
    first
        .local_addr()
        .map_err(|source| ServeError::Bind { listen, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One listener per worker, all on the one port `:0` resolved to; a port another process
    /// listens on is refused as in use.
    #[test]
    fn one_port_for_every_worker() {
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let listeners = bind(listen, 3).unwrap();
        let local = local_addr(&listeners, listen).unwrap();
        assert_ne!(local.port(), 0);
        assert!(listeners.iter().all(|l| l.local_addr().unwrap() == local));
        let taken = StdListener::bind("127.0.0.1:0").unwrap();
        let busy = taken.local_addr().unwrap();
        assert!(matches!(bind(busy, 1), Err(ServeError::InUse(a)) if a == busy));
        assert!(local_addr(&[], listen).is_err());
    }
}
