//! Secrets and ids from the operating system's CSPRNG, written once.

/// `bytes` random bytes, hex-encoded (`2 × bytes` characters).
pub fn hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    Ok(hex::encode(buf))
}

/// Whether `s` is lower-case hex of exactly `len` characters.
pub fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_tokens_have_their_length_and_differ() {
        let a = super::hex(16).unwrap();
        assert!(super::is_hex(&a, 32));
        assert_ne!(a, super::hex(16).unwrap());
        assert!(!super::is_hex("ABCD", 4));
    }
}
