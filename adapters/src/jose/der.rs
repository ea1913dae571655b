//! The little DER this service reads and writes: SubjectPublicKeyInfo and PKCS#1 RSA public keys.
//! ring parses private keys itself; public keys from PEM files need these few structures.

pub const TAG_INTEGER: u8 = 0x02;
pub const TAG_BIT_STRING: u8 = 0x03;
pub const TAG_NULL: u8 = 0x05;
pub const TAG_OID: u8 = 0x06;
pub const TAG_SEQUENCE: u8 = 0x30;

pub const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
pub const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
pub const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
pub const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// A cursor over DER bytes.
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads one element with the expected tag and returns its contents.
    pub fn read(&mut self, tag: u8) -> Option<&'a [u8]> {
        let (&t, rest) = self.0.split_first()?;
        if t != tag {
            return None;
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            first as usize
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let mut len = 0usize;
            for &b in &rest[..n] {
                len = (len << 8) | b as usize;
            }
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        let (value, rest) = rest.split_at(len);
        self.0 = rest;
        Some(value)
    }

    /// Reads the next element if it has this tag, else leaves the cursor alone.
    pub fn read_optional(&mut self, tag: u8) -> Option<&'a [u8]> {
        if self.0.first() == Some(&tag) {
            self.read(tag)
        } else {
            None
        }
    }

    /// A non-negative INTEGER's big-endian bytes without leading zeros.
    pub fn read_unsigned(&mut self) -> Option<&'a [u8]> {
        let v = self.read(TAG_INTEGER)?;
        if v.first().is_some_and(|b| b & 0x80 != 0) {
            return None; // negative
        }
        let start = v.iter().position(|&b| b != 0).unwrap_or(v.len());
        Some(&v[start..])
    }
}

/// The algorithm and key bytes of a SubjectPublicKeyInfo.
pub enum SpkiKey<'a> {
    /// PKCS#1 `RSAPublicKey` DER.
    Rsa(&'a [u8]),
    /// Uncompressed SEC1 point.
    P256(&'a [u8]),
    Ed25519(&'a [u8]),
}

pub fn parse_spki(der: &[u8]) -> Option<SpkiKey<'_>> {
    let mut outer = Reader::new(der);
    let mut spki = Reader::new(outer.read(TAG_SEQUENCE)?);
    let mut alg = Reader::new(spki.read(TAG_SEQUENCE)?);
    let oid = alg.read(TAG_OID)?;
    let bits = spki.read(TAG_BIT_STRING)?;
    let (&unused, key) = bits.split_first()?;
    if unused != 0 || !outer.is_empty() || !spki.is_empty() {
        return None;
    }
    match oid {
        OID_RSA_ENCRYPTION => Some(SpkiKey::Rsa(key)),
        OID_EC_PUBLIC_KEY => (alg.read(TAG_OID)? == OID_P256).then_some(SpkiKey::P256(key)),
        OID_ED25519 => Some(SpkiKey::Ed25519(key)),
        _ => None,
    }
}

/// `(n, e)` of a PKCS#1 `RSAPublicKey`.
pub fn parse_rsa_public_key(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut outer = Reader::new(der);
    let mut seq = Reader::new(outer.read(TAG_SEQUENCE)?);
    let n = seq.read_unsigned()?;
    let e = seq.read_unsigned()?;
    (seq.is_empty() && outer.is_empty()).then_some((n, e))
}

fn write_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

pub fn write(out: &mut Vec<u8>, tag: u8, contents: &[u8]) {
    out.push(tag);
    write_len(out, contents.len());
    out.extend_from_slice(contents);
}

fn write_unsigned(out: &mut Vec<u8>, value: &[u8]) {
    let start = value
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(value.len().saturating_sub(1));
    let value = &value[start..];
    let mut contents = Vec::with_capacity(value.len() + 1);
    if value.first().is_none_or(|b| b & 0x80 != 0) {
        contents.push(0);
    }
    contents.extend_from_slice(value);
    write(out, TAG_INTEGER, &contents);
}

/// SubjectPublicKeyInfo DER for a public key, for `BEGIN PUBLIC KEY` output.
pub fn spki(key: &SpkiKey<'_>) -> Vec<u8> {
    let mut alg = Vec::new();
    let bits: &[u8] = match key {
        SpkiKey::Rsa(pkcs1) => {
            write(&mut alg, TAG_OID, OID_RSA_ENCRYPTION);
            write(&mut alg, TAG_NULL, &[]);
            pkcs1
        }
        SpkiKey::P256(point) => {
            write(&mut alg, TAG_OID, OID_EC_PUBLIC_KEY);
            write(&mut alg, TAG_OID, OID_P256);
            point
        }
        SpkiKey::Ed25519(x) => {
            write(&mut alg, TAG_OID, OID_ED25519);
            x
        }
    };
    let mut inner = Vec::new();
    write(&mut inner, TAG_SEQUENCE, &alg);
    let mut bit_string = vec![0u8];
    bit_string.extend_from_slice(bits);
    write(&mut inner, TAG_BIT_STRING, &bit_string);
    let mut out = Vec::new();
    write(&mut out, TAG_SEQUENCE, &inner);
    out
}

/// PKCS#1 `RSAPublicKey` DER from `(n, e)`.
pub fn rsa_public_key(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut inner = Vec::new();
    write_unsigned(&mut inner, n);
    write_unsigned(&mut inner, e);
    let mut out = Vec::new();
    write(&mut out, TAG_SEQUENCE, &inner);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_public_key_round_trips() {
        let n = [0xc5u8; 256];
        let e = [0x01, 0x00, 0x01];
        let der = rsa_public_key(&n, &e);
        let (n2, e2) = parse_rsa_public_key(&der).unwrap();
        assert_eq!((n2, e2), (&n[..], &e[..]));
        let spki_der = spki(&SpkiKey::Rsa(&der));
        assert!(matches!(parse_spki(&spki_der), Some(SpkiKey::Rsa(k)) if k == &der[..]));
    }

    #[test]
    fn truncated_and_overlong_lengths_are_refused() {
        assert!(Reader::new(&[0x30, 0x85, 1, 0, 0, 0, 0])
            .read(TAG_SEQUENCE)
            .is_none());
        assert!(Reader::new(&[0x30, 0x82, 0x01])
            .read(TAG_SEQUENCE)
            .is_none());
        assert!(Reader::new(&[0x30, 0x05, 0x00])
            .read(TAG_SEQUENCE)
            .is_none());
        assert!(parse_spki(&[]).is_none());
    }
}
