//! Compressed uploads: detected by their magic bytes, never by file name
//! (Session-Buddy gzips a database whole under the same name), and decompressed
//! as a stream from one temporary file into another.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;

/// How a file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Lz4,
}

impl Compression {
    /// What the first bytes of a file say.
    pub fn sniff(head: &[u8]) -> Compression {
        match head {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            [0x04, 0x22, 0x4d, 0x18, ..] => Compression::Lz4,
            _ => Compression::None,
        }
    }

    /// A manifest's `compression_format`.
    pub fn named(name: &str) -> Option<Compression> {
        match name.to_ascii_lowercase().as_str() {
            "gzip" | "gz" => Some(Compression::Gzip),
            "zstd" | "zst" => Some(Compression::Zstd),
            "lz4" => Some(Compression::Lz4),
            "none" | "" => Some(Compression::None),
            _ => None,
        }
    }
}

/// The compression of the file at `path`, from its first bytes.
pub fn sniff_file(path: &Path) -> std::io::Result<Compression> {
    let mut head = [0u8; 4];
    let mut f = File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(Compression::sniff(&head[..n]))
}

/// A reader of `path` with `compression` undone.
pub fn reader(path: &Path, compression: Compression) -> std::io::Result<Box<dyn Read>> {
    let f = BufReader::new(File::open(path)?);
    Ok(match compression {
        Compression::None => Box::new(f),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(f)?),
        Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(f)),
    })
}

/// Write `src` with its compression (found by magic bytes) undone into `dst`;
/// returns what it was. Streams: memory stays bounded whatever the size.
pub fn decompress_into(src: &Path, dst: &Path) -> std::io::Result<Compression> {
    let compression = sniff_file(src)?;
    let mut out = std::io::BufWriter::new(File::create(dst)?);
    std::io::copy(&mut reader(src, compression)?, &mut out)?;
    out.flush()?;
    Ok(compression)
}

/// Check a downloaded file against what its manifest says: the compression its
/// magic bytes show must be the `declared` one, and the `checksum` must match.
/// Returns the compression found.
pub fn verify(path: &Path, declared: Option<Compression>, checksum: Option<&str>) -> Result<Compression, String> {
    let found = sniff_file(path).map_err(|e| e.to_string())?;
    if let Some(declared) = declared.filter(|d| *d != found) {
        return Err(format!("the manifest says {declared:?} but the file is {found:?}"));
    }
    if let Some(want) = checksum {
        check_sha256(path, found, want)?;
    }
    Ok(found)
}

/// Check a manifest's `checksum` (hex sha256, optionally `sha256:`-prefixed)
/// against the file as stored or with `compression` undone: uploaders differ in
/// which of the two they hash.
fn check_sha256(path: &Path, compression: Compression, want: &str) -> Result<(), String> {
    let want = want.trim_start_matches("sha256:").to_ascii_lowercase();
    let raw = sha256_of(reader(path, Compression::None).map_err(|e| e.to_string())?)?;
    if want == raw {
        return Ok(());
    }
    if compression != Compression::None && want == sha256_of(reader(path, compression).map_err(|e| e.to_string())?)? {
        return Ok(());
    }
    Err(format!("checksum mismatch (manifest {want}, file {raw})"))
}

/// The hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, String> {
    sha256_of(File::open(path).map_err(|e| format!("{}: {e}", path.display()))?)
}

fn sha256_of(mut r: impl Read) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).map_err(|e| e.to_string())? {
            0 => break,
            n => h.update(&buf[..n]),
        }
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format_is_found_by_its_magic_and_undone() {
        let dir = tempfile::tempdir().unwrap();
        let text = "reflections ünïcode ".repeat(1000);
        let write = |name: &str, bytes: Vec<u8>| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        let mut lz = lz4_flex::frame::FrameEncoder::new(Vec::new());
        lz.write_all(text.as_bytes()).unwrap();
        let cases = [
            ("plain.json", text.as_bytes().to_vec(), Compression::None),
            // Same name as the plain file would have: the name says nothing.
            ("reflection.duckdb", gz.finish().unwrap(), Compression::Gzip),
            ("m.json", zstd::encode_all(text.as_bytes(), 3).unwrap(), Compression::Zstd),
            ("m2.json", lz.finish().unwrap(), Compression::Lz4),
        ];
        for (name, bytes, want) in cases {
            let src = write(name, bytes);
            let dst = dir.path().join(format!("{name}.out"));
            assert_eq!(decompress_into(&src, &dst).unwrap(), want, "{name}");
            assert_eq!(std::fs::read_to_string(&dst).unwrap(), text, "{name}");
        }
        let bad = write("trunc", vec![0x1f, 0x8b, 0x08, 0x00, 0x01]);
        assert!(decompress_into(&bad, &dir.path().join("x")).is_err(), "a truncated gzip is an error");
    }
}
