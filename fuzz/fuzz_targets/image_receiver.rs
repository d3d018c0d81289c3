//! Arbitrary chunk sequences into the destination's image receiver: whatever the names,
//! offsets and sizes, nothing may appear outside its directory, and it must not panic.
#![no_main]

use arbitrary::Arbitrary;
use haul::migrate::transfer::ImageReceiver;
use haul::wire::pb;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Chunk {
    name: String,
    offset: u16,
    data: Vec<u8>,
    last: bool,
}

fuzz_target!(|chunks: Vec<Chunk>| {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("img");
    std::fs::create_dir(&dir).unwrap();
    let mut r = ImageReceiver::new(&dir, 1 << 20);
    for c in chunks.iter().take(64) {
        let _ = r.accept(&pb::ImageChunk {
            round: 0,
            name: c.name.clone(),
            offset: u64::from(c.offset),
            data: c.data.clone(),
            last: c.last,
        });
    }
    // the only entry beside the image directory is the directory itself
    let outside: Vec<_> = std::fs::read_dir(root.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(outside, vec![std::ffi::OsString::from("img")], "a chunk escaped the directory");
});
