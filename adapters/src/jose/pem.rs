//! PEM armour: `-----BEGIN <label>-----`, base64, `-----END <label>-----`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// One PEM block. Its contents may be a private key: no `Debug` that would print them.
pub struct Block {
    pub label: String,
    pub der: Vec<u8>,
}

/// Every PEM block in `text`, in order. Text outside blocks is ignored, as OpenSSL does.
pub fn parse_all(text: &str) -> Result<Vec<Block>, String> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        let mut closed = false;
        for line in lines.by_ref() {
            if line == end {
                closed = true;
                break;
            }
            if line.contains(':') {
                return Err(format!(
                    "PEM block {label} has headers (an encrypted key?), which are not supported"
                ));
            }
            body.push_str(line);
        }
        if !closed {
            return Err(format!("PEM block {label} has no END line"));
        }
        let der = STANDARD
            .decode(body.as_bytes())
            .map_err(|_| format!("PEM block {label} is not valid base64"))?;
        blocks.push(Block {
            label: label.to_owned(),
            der,
        });
    }
    Ok(blocks)
}

pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_finds_several_blocks() {
        let text = format!(
            "junk\n{}{}",
            encode("PUBLIC KEY", &[1, 2, 3]),
            encode("RSA PUBLIC KEY", &[9; 100])
        );
        let blocks = parse_all(&text).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].label, "PUBLIC KEY");
        assert_eq!(blocks[1].der, vec![9; 100]);
    }

    #[test]
    fn unterminated_and_encrypted_blocks_are_errors() {
        assert!(parse_all("-----BEGIN X-----\nAAAA\n").is_err());
        assert!(
            parse_all("-----BEGIN X-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END X-----\n")
                .is_err()
        );
    }
}
