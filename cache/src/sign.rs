//! Entry signatures: HMAC-SHA256 (RFC 2104) of the whole archive under
//! the signing key (`MUSTER_CACHE_SIGNING_KEY`), as 64 hex digits. Stores
//! keep the tag beside the entry (a `.tag` file; the `x-artifact-tag`
//! header on a Turborepo server), so anyone who can write to a shared
//! cache but lacks the key cannot make muster restore their files.
//!
//! The archive holds its own key ([`crate::Manifest::key`], checked by
//! [`crate::read_entry`]), so a validly signed entry moved to another key
//! is still refused. Verification compares in constant time.

use std::fs;
use std::io;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::digest::{hex, BUFFER_BYTES};
use crate::CacheError;

type HmacSha256 = Hmac<Sha256>;

/// The tag of the archive at `archive` under `key`.
pub fn sign(key: &[u8], archive: &Path) -> Result<String, CacheError> {
    Ok(hex(&mac_of_file(key, archive)?))
}

/// True when `tag` is the archive's tag under `key`. A tag that is not
/// 64 hex digits is simply wrong; only a file that cannot be read is an
/// error.
pub fn verify(key: &[u8], archive: &Path, tag: &str) -> Result<bool, CacheError> {
    let Some(claimed) = unhex(tag.trim()) else {
        return Ok(false);
    };
    let actual = mac_of_file(key, archive)?;
    Ok(bool::from(actual.as_slice().ct_eq(&claimed)))
}

fn mac_of_file(key: &[u8], archive: &Path) -> Result<[u8; 32], CacheError> {
    let mut file = fs::File::open(archive)
        .map_err(|e| CacheError::io(archive, "open the cache entry to check its signature", e))?;
    mac_of(key, &mut file)
        .map_err(|e| CacheError::io(archive, "read the cache entry to check its signature", e))
}

/// HMAC-SHA256 of everything `reader` yields.
fn mac_of(key: &[u8], reader: &mut dyn io::Read) -> io::Result<[u8; 32]> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    let mut buffer = vec![0u8; BUFFER_BYTES];
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => return Ok(mac.finalize().into_bytes().into()),
            Ok(n) => mac.update(&buffer[..n]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

/// 32 bytes from 64 hex digits (either case), or `None`.
fn unhex(text: &str) -> Option<[u8; 32]> {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let value = |d: u8| (d as char).to_digit(16).map(|v| v as u8);
    let mut bytes = [0u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac_hex(key: &[u8], data: &[u8]) -> String {
        hex(&mac_of(key, &mut &data[..]).unwrap())
    }

    fn unhex_any(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 4231's HMAC-SHA256 test cases (case 5 truncates its output, so
    /// it is left out).
    #[test]
    fn rfc_4231_test_vectors() {
        let long_key = vec![0xaa; 131];
        let cases: [(Vec<u8>, Vec<u8>, &str); 6] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 20],
                vec![0xdd; 50],
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            (
                unhex_any("0102030405060708090a0b0c0d0e0f10111213141516171819"),
                vec![0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (
                long_key.clone(),
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                long_key,
                b"This is a test using a larger than block-size key and a larger than \
                  block-size data. The key needs to be hashed before being used by the \
                  HMAC algorithm."
                    .to_vec(),
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (key, data, expected) in cases {
            assert_eq!(mac_hex(&key, &data), expected);
        }
    }

    #[test]
    fn verifies_its_own_tag_only() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("entry.tar");
        fs::write(&archive, vec![3u8; BUFFER_BYTES + 10]).unwrap();
        let tag = sign(b"key", &archive).unwrap();
        assert_eq!(tag.len(), 64);
        assert!(verify(b"key", &archive, &tag).unwrap());
        assert!(verify(b"key", &archive, &tag.to_uppercase()).unwrap());
        assert!(!verify(b"other key", &archive, &tag).unwrap());
        assert!(!verify(b"key", &archive, "").unwrap());
        assert!(!verify(b"key", &archive, &tag[..63]).unwrap());
        assert!(!verify(b"key", &archive, &format!("{}g", &tag[..63])).unwrap());
        fs::write(&archive, vec![3u8; BUFFER_BYTES + 11]).unwrap();
        assert!(!verify(b"key", &archive, &tag).unwrap());
        let error = sign(b"key", &dir.path().join("missing.tar")).unwrap_err();
        assert!(error.to_string().contains("missing.tar"), "{error}");
    }
}
