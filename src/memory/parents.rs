//! Pre-copy rounds' pagemaps on the source, so that a lazy final dump (hybrid, and
//! stop-and-copy over the memory path after pre-copy) sends each page once.
//!
//! A pre-dump round's pages and pagemaps are written by the destination's page server; the
//! source's round directory holds neither. CRIU's final lazy dump writes its pagemap locally
//! and looks for the parent round's pagemap there to tell unchanged pages (holes in the parent)
//! from dirty ones: finding none, it marks every page lazy, and the lazy phase re-sends what
//! the rounds already moved (criu issue #2542). So after each round the destination sends the
//! round's `pagemap-*.img` back ([`collect`]), and the source puts them, with an empty pages
//! file each (CRIU opens it; only the pagemap is consulted), into its round directory
//! ([`install`]). The final pagemap then marks unchanged pages `PE_PARENT`: CRIU's restore
//! reads them from the parent rounds on the destination (its final round directory gets a
//! `parent` link, [`link_parent`]), and only dirty pages travel lazily.

use std::path::Path;

use prost::Message;

use super::image::{entries, PAGEMAP_MAGIC};
use crate::criu::pb;
use crate::wire::pb as wpb;

/// Pagemaps sent back per round, in bytes at most (a pagemap is ~20 bytes per run of pages).
pub const MAX_PAGEMAPS: usize = 64 << 20;

/// The round directory's `pagemap-*.img` files (destination side).
pub fn collect(dir: &Path) -> std::io::Result<Vec<wpb::ImageFile>> {
    let mut out = Vec::new();
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("pagemap-") && name.ends_with(".img") && e.file_type()?.is_file()) {
            continue;
        }
        let data = std::fs::read(e.path())?;
        total += data.len();
        if total > MAX_PAGEMAPS {
            return Err(std::io::Error::other(format!(
                "pagemaps of {} exceed {MAX_PAGEMAPS} bytes",
                dir.display()
            )));
        }
        out.push(wpb::ImageFile { name, data });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Writes the round's pagemaps into the source's round directory `dir`, each with an empty
/// `pages-<id>.img` (source side). Names are checked: plain `pagemap-*.img` only.
pub fn install(dir: &Path, files: &[wpb::ImageFile]) -> Result<(), String> {
    let mut total = 0;
    for f in files {
        let name = crate::wire::names::validate(&f.name).map_err(|e| e.to_string())?;
        if !(name.starts_with("pagemap-") && name.ends_with(".img")) {
            return Err(format!("{name} is not a pagemap"));
        }
        total += f.data.len();
        if total > MAX_PAGEMAPS {
            return Err(format!("pagemaps exceed {MAX_PAGEMAPS} bytes"));
        }
        let path = dir.join(name);
        let ents = entries(&path, &f.data, PAGEMAP_MAGIC).map_err(|e| e.to_string())?;
        let head = ents
            .first()
            .ok_or_else(|| format!("{name} has no head"))
            .and_then(|h| pb::PagemapHead::decode(*h).map_err(|e| format!("{name}: {e}")))?;
        std::fs::write(&path, &f.data).map_err(|e| format!("{}: {e}", path.display()))?;
        let pages = dir.join(format!("pages-{}.img", head.pages_id));
        if !pages.exists() {
            std::fs::write(&pages, b"").map_err(|e| format!("{}: {e}", pages.display()))?;
        }
    }
    Ok(())
}

/// Links the final round directory `dir` to its parent round (`parent -> ../<round>`), as
/// CRIU's dump did on the source (destination side).
pub fn link_parent(dir: &Path, parent_round: &str) -> std::io::Result<()> {
    let link = dir.join("parent");
    if link.symlink_metadata().is_ok() {
        return Ok(());
    }
    std::os::unix::fs::symlink(format!("../{parent_round}"), link)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::image::encode_image;

    fn pagemap(id: u32) -> Vec<u8> {
        encode_image(
            PAGEMAP_MAGIC,
            &[pb::PagemapHead { pages_id: id }.encode_to_vec()],
        )
    }

    #[test]
    fn pagemaps_go_back_with_an_empty_pages_file() {
        let dst = tempfile::tempdir().unwrap();
        std::fs::write(dst.path().join("pagemap-1.img"), pagemap(7)).unwrap();
        std::fs::write(dst.path().join("pages-7.img"), b"not sent").unwrap();
        std::fs::write(dst.path().join("core-1.img"), b"not sent").unwrap();
        let files = collect(dst.path()).unwrap();
        assert_eq!(files.len(), 1);
        let src = tempfile::tempdir().unwrap();
        install(src.path(), &files).unwrap();
        assert_eq!(
            std::fs::read(src.path().join("pagemap-1.img")).unwrap(),
            pagemap(7)
        );
        assert_eq!(std::fs::read(src.path().join("pages-7.img")).unwrap(), b"");
    }

    #[test]
    fn refuses_what_is_not_a_pagemap() {
        let src = tempfile::tempdir().unwrap();
        for (name, data) in [
            ("../pagemap-1.img", pagemap(1)),
            ("core-1.img", pagemap(1)),
            ("pagemap-1.img", b"garbage".to_vec()),
        ] {
            let f = wpb::ImageFile {
                name: name.into(),
                data,
            };
            assert!(install(src.path(), &[f]).is_err(), "{name}");
        }
    }

    #[test]
    fn the_final_round_links_its_parent() {
        let d = tempfile::tempdir().unwrap();
        link_parent(d.path(), "round-2").unwrap();
        link_parent(d.path(), "round-2").unwrap();
        assert_eq!(
            std::fs::read_link(d.path().join("parent")).unwrap(),
            Path::new("../round-2")
        );
    }
}
