//! Reversible encoding of arbitrary key bytes (and collection names) into safe file names.
//!
//! Bytes in `[A-Za-z0-9_-]`, and `.` anywhere but first, are kept; every other byte becomes
//! `%XX` (uppercase hex). The empty key is `%`. A name whose encoding would exceed
//! [`MAX_NAME_LEN`] bytes is cut and suffixed with `~` and the SHA-256 of the key (hex, 64
//! chars): such names are not decodable on their own, and the full key is always stored in
//! `document.json`. See `docs/FORMAT.md`.

use sha2::{Digest, Sha256};

/// The longest file name the encoding produces (most file systems allow 255 bytes).
pub const MAX_NAME_LEN: usize = 200;

/// Encodes key bytes as a safe, reversible file name.
pub fn encode(key: &[u8]) -> String {
    if key.is_empty() {
        return "%".to_string();
    }
    let mut out = String::with_capacity(key.len());
    for (i, &b) in key.iter().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if keep {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(hex_digit(b >> 4));
            out.push(hex_digit(b & 0xf));
        }
        if out.len() > MAX_NAME_LEN {
            break;
        }
    }
    if out.len() <= MAX_NAME_LEN {
        return out;
    }
    let prefix_len = MAX_NAME_LEN - 65;
    let mut cut = prefix_len;
    // Never split a `%XX` escape.
    while cut > 0
        && out.as_bytes()[..cut]
            .iter()
            .rev()
            .take(2)
            .any(|&c| c == b'%')
    {
        cut -= 1;
    }
    let digest = Sha256::digest(key);
    let mut name = out[..cut].to_string();
    name.push('~');
    for b in digest {
        name.push(hex_digit(b >> 4));
        name.push(hex_digit(b & 0xf));
    }
    name
}

/// Decodes a name produced by [`encode`]. Returns `None` for hashed (`~`) names and for names
/// that no key encodes to.
pub fn decode(name: &str) -> Option<Vec<u8>> {
    if name == "%" {
        return Some(Vec::new());
    }
    if name.is_empty() || name.contains('~') {
        return None;
    }
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex_value(*bytes.get(i + 1)?)?;
            let lo = hex_value(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    (encode(&out) == name).then_some(out)
}

/// A short human-readable rendering of a key for messages: UTF-8 text as is (quoted), other
/// bytes as hex.
pub fn display_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if !s.chars().any(char::is_control) => {
            if s.len() > 80 {
                let mut end = 80;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{:?}…", &s[..end])
            } else {
                format!("{s:?}")
            }
        }
        _ => {
            let shown: String = key.iter().take(40).map(|b| format!("{b:02x}")).collect();
            let more = if key.len() > 40 { "…" } else { "" };
            format!("0x{shown}{more}")
        }
    }
}

fn hex_digit(n: u8) -> char {
    b"0123456789ABCDEF"[n as usize] as char
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn readable_keys_stay_readable() {
        assert_eq!(encode(b"42"), "42");
        assert_eq!(encode(b"user-1.json"), "user-1.json");
        assert_eq!(encode(b".."), "%2E.");
        assert_eq!(encode(b"a/b"), "a%2Fb");
        assert_eq!(encode(b""), "%");
        assert_eq!(encode(&[0xff, 0]), "%FF%00");
    }

    #[test]
    fn long_keys_are_hashed_and_bounded() {
        let a = vec![b'x'; 1000];
        let mut b = a.clone();
        b[999] = b'y';
        let (ea, eb) = (encode(&a), encode(&b));
        assert!(ea.len() <= MAX_NAME_LEN && eb.len() <= MAX_NAME_LEN);
        assert_ne!(ea, eb);
        assert!(decode(&ea).is_none());
        let bin = vec![0u8; 300];
        let e = encode(&bin);
        assert!(e.len() <= MAX_NAME_LEN, "{}", e.len());
        assert!(e.split('~').next().is_some_and(|p| p.len() % 3 == 0));
    }

    proptest! {
        #[test]
        fn encoding_round_trips(key in proptest::collection::vec(any::<u8>(), 0..80)) {
            let name = encode(&key);
            prop_assert!(!name.is_empty() && !name.starts_with('.') && !name.contains('/'));
            prop_assert!(name.len() <= MAX_NAME_LEN);
            if name.contains('~') {
                prop_assert!(decode(&name).is_none());
            } else {
                prop_assert_eq!(decode(&name), Some(key));
            }
        }

        #[test]
        fn distinct_keys_get_distinct_names(a in proptest::collection::vec(any::<u8>(), 0..300),
                                            b in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assume!(a != b);
            prop_assert_ne!(encode(&a), encode(&b));
        }
    }
}
