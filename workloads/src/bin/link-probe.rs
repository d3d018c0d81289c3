//! `link-probe`: the TCP bandwidth of the link between two nodes, for the link floor of
//! haul's experiments (bytes to move / bandwidth).
//!
//! ```text
//! link-probe listen ADDR:PORT            # on the destination: one stream, then exit
//! link-probe send ADDR:PORT BYTES        # on the source: prints "BYTES SECONDS"
//! ```
//!
//! The sender streams BYTES (k/m/g suffixes) of a fixed pattern and half-closes; the
//! receiver counts them and answers with the count as 8 bytes; the sender's clock runs from
//! its connect until that answer, so the time covers every byte arriving. The sender retries
//! connecting for 30 s (the listener may be starting).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn listen(addr: &str) -> std::io::Result<()> {
    let l = TcpListener::bind(addr)?;
    let (mut s, _) = l.accept()?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n: u64 = 0;
    loop {
        let k = s.read(&mut buf)?;
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    s.write_all(&n.to_le_bytes())
}

fn send(addr: &str, bytes: u64) -> std::io::Result<(u64, f64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut s = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    };
    let t = Instant::now();
    let buf = vec![0x5au8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..k])?;
        left -= k as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut ack = [0u8; 8];
    s.read_exact(&mut ack)?;
    Ok((u64::from_le_bytes(ack), t.elapsed().as_secs_f64()))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["listen", addr] => listen(addr).map(|()| None),
        ["send", addr, bytes] => match haul_workloads::mtouch_spec::parse_size(bytes) {
            Ok(b) => send(addr, b).map(Some),
            Err(e) => {
                eprintln!("link-probe: {e}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: link-probe listen ADDR:PORT | link-probe send ADDR:PORT BYTES");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(Some((n, secs))) => {
            println!("{n} {secs:.6}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("link-probe: {e}");
            ExitCode::FAILURE
        }
    }
}
