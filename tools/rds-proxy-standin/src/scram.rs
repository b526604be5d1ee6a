//! The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677), as PostgreSQL and RDS Proxy run it, so
//! clients log in to the stand-in exactly as they would to RDS Proxy and no password crosses the
//! wire. Channel binding is not offered (the stand-in has no TLS).

use anyhow::{anyhow, bail, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

use super::{auth_request, cstrings, read_message};

const ITERATIONS: u32 = 4096;

/// What a server keeps of a password: never the password itself is needed to check a login.
pub struct ServerKeys {
    salt: [u8; 16],
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Hi() of RFC 5802: PBKDF2-HMAC-SHA-256 with one block.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac(password, &[salt, &1u32.to_be_bytes()].concat());
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        out.iter_mut().zip(u).for_each(|(o, b)| *o ^= b);
    }
    out
}

impl ServerKeys {
    pub fn derive(password: &str) -> Self {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let salted = hi(password.as_bytes(), &salt, ITERATIONS);
        let client_key = hmac(&salted, b"Client Key");
        Self {
            salt,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }
}

fn attr(message: &str, name: char) -> Option<&str> {
    message
        .split(',')
        .find_map(|part| part.strip_prefix(name).and_then(|p| p.strip_prefix('=')))
}

/// Runs the exchange on `s`; `Ok(false)` when the client's proof is wrong.
pub async fn authenticate(s: &mut TcpStream, keys: &ServerKeys) -> Result<bool> {
    auth_request(s, 10, b"SCRAM-SHA-256\0\0").await?;
    let (kind, body) = read_message(s).await?;
    if kind != b'p' {
        bail!("expected SASLInitialResponse, got {:?}", kind as char);
    }
    let mechanism = cstrings(&body).into_iter().next().unwrap_or_default();
    if mechanism != "SCRAM-SHA-256" {
        bail!("unsupported mechanism {mechanism:?}");
    }
    let rest = &body[mechanism.len() + 1..];
    if rest.len() < 4 {
        bail!("short SASLInitialResponse");
    }
    let client_first = std::str::from_utf8(&rest[4..])?;
    // gs2 header: "n,," (no channel binding) or "y,," (client could, we don't offer it).
    let bare = match client_first
        .strip_prefix("n,,")
        .or_else(|| client_first.strip_prefix("y,,"))
    {
        Some(b) => b,
        None => bail!("channel binding requested but not offered"),
    };
    let client_nonce = attr(bare, 'r').ok_or_else(|| anyhow!("no client nonce"))?;
    let mut extra = [0u8; 18];
    rand::rng().fill_bytes(&mut extra);
    let nonce = format!("{client_nonce}{}", B64.encode(extra));
    let server_first = format!("r={nonce},s={},i={ITERATIONS}", B64.encode(keys.salt));
    auth_request(s, 11, server_first.as_bytes()).await?;

    let (kind, body) = read_message(s).await?;
    if kind != b'p' {
        bail!("expected SASLResponse, got {:?}", kind as char);
    }
    let client_final = std::str::from_utf8(&body)?;
    let (without_proof, proof) = client_final
        .rsplit_once(",p=")
        .ok_or_else(|| anyhow!("no client proof"))?;
    if attr(without_proof, 'r') != Some(nonce.as_str()) {
        return Ok(false);
    }
    let proof = B64.decode(proof).unwrap_or_default();
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let signature = hmac(&keys.stored_key, auth_message.as_bytes());
    if proof.len() != 32 {
        return Ok(false);
    }
    let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
    let computed: [u8; 32] = Sha256::digest(&client_key).into();
    // Constant time: no early exit on the first differing byte.
    if computed
        .iter()
        .zip(keys.stored_key)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        != 0
    {
        return Ok(false);
    }
    let verifier = hmac(&keys.server_key, auth_message.as_bytes());
    auth_request(s, 12, format!("v={}", B64.encode(verifier)).as_bytes()).await?;
    Ok(true)
}
