//! Post-copy page traffic. CRIU's lazy-pages endpoints never face the network: on the source
//! CRIU's page server listens on 127.0.0.1 of the source node, on the destination the
//! lazy-pages daemon connects to 127.0.0.1 of the destination node, and haul carries the bytes
//! between them over an authenticated memory channel.

use std::path::Path;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The destination's side of the post-copy relay: the lazy-pages daemon's connection
/// (`local`) and the memory channel from the source (`remote`). The daemon closes first when
/// every page has arrived. If instead the source's side ends or fails first, pages are still
/// missing: the restored tree (its root pid is read from `tree_pid_file` once the restore has
/// written it) is killed *before* the daemon learns of the loss. A daemon that exits releases
/// its userfaultfd, and the kernel then fills every missing page with zeros: without this the
/// copy would run on with silently zeroed memory. Returns (bytes to the source, bytes from it).
pub async fn destination_relay(
    local: TcpStream,
    remote: TcpStream,
    tree_pid_file: &Path,
) -> std::io::Result<(u64, u64)> {
    let daemon_done = std::sync::atomic::AtomicBool::new(false);
    let (mut lr, mut lw) = local.into_split();
    let (mut rr, mut rw) = remote.into_split();
    let up = async {
        let n = tokio::io::copy(&mut lr, &mut rw).await;
        daemon_done.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = rw.shutdown().await;
        n
    };
    let down = async {
        let n = tokio::io::copy(&mut rr, &mut lw).await;
        if !daemon_done.load(std::sync::atomic::Ordering::SeqCst) {
            kill_restored_tree(tree_pid_file, &n);
        }
        let _ = lw.shutdown().await;
        n
    };
    let (a, b) = tokio::join!(up, down);
    Ok((a?, b?))
}

/// SIGKILLs the restored tree's root named in `tree_pid_file` (in its own pid namespace, that
/// ends the whole tree), if the restore got that far.
fn kill_restored_tree(tree_pid_file: &Path, why: &std::io::Result<u64>) {
    let pid = std::fs::read_to_string(tree_pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|p| *p > 1);
    let what = match why {
        Ok(n) => format!("the source closed the memory channel after {n} bytes"),
        Err(e) => format!("the memory channel failed: {e}"),
    };
    match pid {
        Some(p) => {
            tracing::warn!(
                "post-copy: {what} with pages still missing; killing the restored copy (pid {p}) before its memory could be zero-filled"
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        None => tracing::warn!("post-copy: {what} before the restore finished"),
    }
}

/// The source's side of the post-copy relay: CRIU's page server connection (`local`) and the
/// memory channel (`remote`). Unlike a plain pipe it never passes the destination's end-of-stream
/// to CRIU on its own: CRIU takes an end-of-stream for "all pages served" and kills the source
/// tasks. Only once `decision` says `Some(true)` (the process runs on the destination) is the
/// end passed on; `Some(false)` makes CRIU's page server fail instead, so CRIU resumes the
/// source tasks. Returns the bytes sent to the destination, or the memory channel's error if
/// the destination's side failed instead of closing: its copy then lacks pages (and its own
/// relay kills it), even though CRIU here saw an orderly end.
pub async fn source_relay(
    local: TcpStream,
    remote: TcpStream,
    mut decision: tokio::sync::watch::Receiver<Option<bool>>,
) -> std::io::Result<u64> {
    use tokio::io::AsyncReadExt;
    let (mut lr, mut lw) = local.into_split();
    let (mut rr, mut rw) = remote.into_split();
    let up = async move {
        let n = tokio::io::copy(&mut lr, &mut rw).await;
        let _ = rw.shutdown().await;
        n
    };
    let down = async move {
        let mut buf = vec![0u8; 256 << 10];
        let mut broken = None;
        loop {
            let n = tokio::select! {
                r = rr.read(&mut buf) => r.unwrap_or_else(|e| {
                    broken = Some(e);
                    0
                }),
                _ = decision.changed() => {
                    if *decision.borrow() == Some(false) {
                        0
                    } else {
                        continue;
                    }
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = lw.write_all(&buf[..n]).await {
                return Some(e);
            }
        }
        // The destination's side ended (or the migration failed): wait for the verdict.
        let verdict = loop {
            if let Some(v) = *decision.borrow() {
                break v;
            }
            if decision.changed().await.is_err() {
                break false;
            }
        };
        if verdict {
            let _ = lw.shutdown().await;
        } else {
            let _ = lw.write_all(&bogus_iov()).await;
            let _ = lw.flush().await;
        }
        broken
    };
    let (n, broken) = tokio::join!(up, down);
    match broken {
        Some(e) => Err(e),
        None => n,
    }
}

fn bogus_iov() -> [u8; 24] {
    // struct page_server_iov { u32 cmd; u32 nr_pages; u64 vaddr; u64 dst_id; } with an unknown cmd
    let mut iov = [0u8; 24];
    iov[..4].copy_from_slice(&0xdead_u32.to_ne_bytes());
    iov
}

/// A free TCP port on 127.0.0.1 of this node, for CRIU's local lazy-pages server.
pub fn free_local_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Makes CRIU's lazy-pages server on `127.0.0.1:port` fail, so that a lazy dump whose
/// destination never resumed the process ends with an error and CRIU resumes the source tasks:
/// CRIU's page server fails the dump on a command it does not know.
pub async fn abort_lazy_server(port: u16) -> std::io::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(&bogus_iov()).await?;
    s.flush().await?;
    // wait for CRIU to close its side
    let mut buf = [0u8; 16];
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut s, &mut buf),
    )
    .await;
    Ok(())
}
