//! Arbitrary bytes into the frame decoder, untagged and tagged: it must return a message or an
//! error, never panic, hang or allocate beyond the frame limit.
#![no_main]

use haul::wire::frame::{Conn, Header, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= HEADER_LEN {
        let _ = Header::decode(data[..HEADER_LEN].try_into().unwrap());
    }
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for tagged in [false, true] {
        rt.block_on(async {
            let (mut tx, rx) = tokio::io::duplex(1 << 16);
            let mut conn = Conn::new(rx);
            if tagged {
                conn.enable_tags([3; 32], [4; 32]);
            }
            let writer = async move {
                let _ = tokio::io::AsyncWriteExt::write_all(&mut tx, data).await;
                drop(tx);
            };
            let reader = async {
                // at most a few frames: every path ends in a message, an error, or end of input
                for _ in 0..8 {
                    if let Ok(m) = conn.recv().await {
                        let _ = m.kind_name();
                    } else {
                        break;
                    }
                }
            };
            tokio::join!(writer, reader);
        });
    }
});
