//! Tokens are kept and compared as SHA-256 digests, in constant time, so
//! a wrong token and a short one take the same time to refuse; the
//! approvers' tokens are known only by their digests.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The SHA-256 of `token`.
pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `token` is the one whose digest is `expected`.
pub(crate) fn matches(token: &str, expected: &[u8; 32]) -> bool {
    bool::from(digest(token).ct_eq(expected))
}
