//! The final dump's progress bar: bytes the kernel saw acknowledged on the memory channel
//! that CRIU writes to directly, polled every 100 ms.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::super::sockopt;

/// A bar over `total` bytes fed from the TCP socket `sock` (drawn only on a terminal).
pub fn dump_bar(total: u64, sock: RawFd) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total.max(1)), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} dumping memory {bytes}/{total_bytes} {bytes_per_sec} {wide_bar}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let p = pb.clone();
    let borrowed = BorrowedRaw(sock);
    tokio::spawn(async move {
        while !p.is_finished() {
            if let Some(b) = sockopt::tcp_bytes_acked(&borrowed) {
                p.set_position(b);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    pb
}

/// A raw fd read only for TCP_INFO; reading a closed or reused fd only fails the getsockopt.
struct BorrowedRaw(RawFd);

impl AsRawFd for BorrowedRaw {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}
