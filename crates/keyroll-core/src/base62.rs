//! Base62 (`0-9A-Za-z`): the alphabet of kids, secrets and checksums.
//!
//! The charset check is a 256-entry table: SPEC §12 measured a naive
//! `chars().all(is_ascii_alphanumeric)` at more than the cost of the SHA-256 on the hot path.

/// The 62 symbols, in value order.
pub const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `VALUE[b]` is the base62 value of byte `b`, or `0xFF` when `b` is not in the alphabet.
const VALUE: [u8; 256] = {
    let mut table = [0xFFu8; 256];
    let mut i = 0;
    while i < 62 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// The position of the first byte outside the alphabet, if any.
#[inline]
pub fn first_invalid(bytes: &[u8]) -> Option<usize> {
    // Fold the table lookups without branching per byte; only look for the position when needed.
    let mut bad = 0u8;
    for &b in bytes {
        bad |= VALUE[b as usize] & 0x80;
    }
    if bad == 0 {
        None
    } else {
        bytes.iter().position(|&b| VALUE[b as usize] == 0xFF)
    }
}

/// Encodes `value` as exactly `N` base62 digits, most significant first.
pub fn encode_fixed<const N: usize>(mut value: u64) -> [u8; N] {
    let mut out = [b'0'; N];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    out
}

/// Decodes base62 digits; `None` if a byte is outside the alphabet or the value overflows.
pub fn decode(digits: &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for &b in digits {
        let v = VALUE[b as usize];
        if v == 0xFF {
            return None;
        }
        value = value.checked_mul(62)?.checked_add(u64::from(v))?;
    }
    Some(value)
}

/// The symbol for a random byte, or `None` when the byte must be rejected to keep the
/// distribution uniform (248 = 4 × 62 is the largest multiple of 62 that fits a byte).
#[inline]
pub fn symbol_for_random_byte(byte: u8) -> Option<u8> {
    (byte < 248).then(|| ALPHABET[(byte % 62) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_round_trip() {
        for v in [0u64, 1, 61, 62, u64::from(u32::MAX)] {
            let enc = encode_fixed::<6>(v);
            assert_eq!(decode(&enc), Some(v));
        }
        assert_eq!(&encode_fixed::<3>(62), b"010");
    }

    #[test]
    fn finds_the_first_bad_byte() {
        assert_eq!(first_invalid(b"abcXYZ019"), None);
        assert_eq!(first_invalid(b"abc-def"), Some(3));
        assert_eq!(first_invalid(&[b'a', 0xC3, 0xA9]), Some(1));
        assert_eq!(decode(b"a_b"), None);
    }
}
