//! Random identifiers: negotiate's connection tokens, resume keys,
//! artifact upload names.

/// 128 random bits as 32 hex digits.
pub(crate) fn random_id() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
