//! `pivot.v1`: the protobuf contracts of Pivot, generated with tonic/prost at build time
//! from `proto/pivot/v1`: `pivot.proto` between the control plane and its proxies (the
//! config stream), `admin.proto` for operators' automation and `pivotctl` (the admin API).

/// Generated types and gRPC stubs of package `pivot.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("pivot.v1");
}

/// Proxy user passwords as the config stream carries them (see `ProxyUser` in the proto):
/// `SHA-256(salt || password)`, computed by the control plane and checked by proxies.
pub mod password {
    use sha2::{Digest, Sha256};

    /// Salt length the control plane generates.
    pub const SALT_LEN: usize = 16;

    /// `SHA-256(salt || password)`.
    pub fn hash(salt: &[u8], password: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(salt);
        h.update(password);
        h.finalize().into()
    }

    /// True when `password` hashes to `expected` with `salt`. The comparison takes the
    /// same time wherever the digests differ.
    pub fn verify(salt: &[u8], expected: &[u8], password: &[u8]) -> bool {
        let got = hash(salt, password);
        expected.len() == got.len()
            && expected
                .iter()
                .zip(got.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn verifies_only_the_right_password_and_salt() {
            let h = hash(b"salt", b"secret");
            assert!(verify(b"salt", &h, b"secret"));
            assert!(!verify(b"salt", &h, b"Secret"));
            assert!(!verify(b"SALT", &h, b"secret"));
            assert!(!verify(b"salt", &h[..31], b"secret"));
            // Known answer: sha256("abc").
            assert_eq!(
                hash(b"a", b"bc")[..4],
                [0xba, 0x78, 0x16, 0xbf],
                "SHA-256 of salt || password"
            );
        }
    }
}
