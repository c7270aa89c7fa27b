//! SHA-256 over streams, in one place: input files, artifact blobs and the
//! blobs read back from an entry are all hashed the same way, with a
//! bounded buffer, never a whole file in memory.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

/// The read buffer for hashing and copying: large enough that a multi-GB
/// artifact costs few system calls, small enough to keep one per task.
pub(crate) const BUFFER_BYTES: usize = 64 * 1024;

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    text
}

/// True for 64 lowercase hex digits: a SHA-256 as this crate writes it.
pub(crate) fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Hashes everything `reader` yields, with `buffer` as scratch space;
/// returns the hex digest and the number of bytes read.
pub(crate) fn sha256_reader(reader: &mut dyn Read, buffer: &mut [u8]) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut length = 0u64;
    loop {
        match reader.read(buffer) {
            Ok(0) => return Ok((hex(&hasher.finalize()), length)),
            Ok(n) => {
                hasher.update(&buffer[..n]);
                length += n as u64;
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_a_stream_in_pieces() {
        let data = vec![7u8; BUFFER_BYTES * 2 + 5];
        let mut buffer = vec![0; 1000];
        let (digest, length) = sha256_reader(&mut data.as_slice(), &mut buffer).unwrap();
        assert_eq!(length, data.len() as u64);
        assert_eq!(digest, hex(&Sha256::digest(&data)));
        assert!(is_sha256_hex(&digest));
    }

    #[test]
    fn hex_of_known_values() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        let (empty, _) = sha256_reader(&mut io::empty(), &mut [0; 8]).unwrap();
        assert_eq!(
            empty,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(!is_sha256_hex(&empty.to_uppercase()));
        assert!(!is_sha256_hex("abc"));
    }
}
