//! Peer authentication (added by splitmask-rs; not in burn 0.21): every WebSocket connection
//! of a multi-node run starts with a mutual challenge-response over a secret the nodes share,
//! before any collective or tensor message is read.
//!
//! 1. server -> client: `MAGIC` and a fresh 32-byte nonce `ns`
//! 2. client -> server: a fresh nonce `nc` and HMAC-SHA256(secret, "client" | ns | nc)
//! 3. server -> client: HMAC-SHA256(secret, "server" | ns | nc)
//!
//! The secret never crosses the wire and a recorded exchange cannot be replayed (both sides
//! pick a nonce). Without a secret set, servers refuse every connection and clients connect to
//! nothing: the mode fails closed. The traffic after the handshake is not encrypted; run the
//! nodes on a network you trust against eavesdroppers, or tunnel it.

use std::sync::RwLock;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The first bytes of the server's challenge (protocol name and version).
pub(crate) const MAGIC: &[u8; 8] = b"bcauth01";
const NONCE: usize = 32;
const TAG: usize = 32;
/// The longest a peer may take over its part of the handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest secret accepted (128 bits).
pub const MIN_SECRET_LEN: usize = 16;

static SECRET: RwLock<Option<Vec<u8>>> = RwLock::new(None);

/// Sets the secret every node of the run shares (at least [`MIN_SECRET_LEN`] bytes).
pub fn set_cluster_secret(secret: &[u8]) -> Result<(), String> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "the cluster secret has {} bytes; at least {MIN_SECRET_LEN} are needed",
            secret.len()
        ));
    }
    *SECRET.write().unwrap_or_else(|e| e.into_inner()) = Some(secret.to_vec());
    Ok(())
}

fn secret() -> Option<Vec<u8>> {
    SECRET.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn tag(secret: &[u8], role: &[u8], ns: &[u8], nc: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(role);
    mac.update(ns);
    mac.update(nc);
    mac
}

fn nonce() -> Result<[u8; NONCE], String> {
    let mut n = [0u8; NONCE];
    getrandom::fill(&mut n).map_err(|e| format!("no randomness for a nonce: {e}"))?;
    Ok(n)
}

/// The server's side: the challenge it sends, and the state to check the answer with.
pub(crate) struct Challenge {
    secret: Vec<u8>,
    ns: [u8; NONCE],
}

impl Challenge {
    pub(crate) fn new() -> Result<(Self, Vec<u8>), String> {
        let secret = secret().ok_or("no cluster secret is set: connection refused")?;
        let ns = nonce()?;
        let hello = [MAGIC.as_slice(), &ns].concat();
        Ok((Challenge { secret, ns }, hello))
    }

    /// Checks the client's answer; returns the server's proof to send back.
    pub(crate) fn verify(&self, answer: &[u8]) -> Result<Vec<u8>, String> {
        if answer.len() != NONCE + TAG {
            return Err(format!("a handshake answer of {} bytes", answer.len()));
        }
        let (nc, mac) = answer.split_at(NONCE);
        tag(&self.secret, b"client", &self.ns, nc)
            .verify_slice(mac)
            .map_err(|_| "the peer does not know the cluster secret".to_string())?;
        Ok(tag(&self.secret, b"server", &self.ns, nc).finalize().into_bytes().to_vec())
    }
}

/// The client's side: its answer to `hello`, and the check of the server's proof.
pub(crate) struct Answer {
    secret: Vec<u8>,
    ns: Vec<u8>,
    nc: [u8; NONCE],
}

impl Answer {
    pub(crate) fn new(hello: &[u8]) -> Result<(Self, Vec<u8>), String> {
        let secret = secret().ok_or("no cluster secret is set: not connecting")?;
        let ns = hello
            .strip_prefix(MAGIC.as_slice())
            .filter(|ns| ns.len() == NONCE)
            .ok_or("the server's greeting is not an authentication challenge")?
            .to_vec();
        let nc = nonce()?;
        let mac = tag(&secret, b"client", &ns, &nc).finalize().into_bytes();
        let answer = [nc.as_slice(), &mac].concat();
        Ok((Answer { secret, ns, nc }, answer))
    }

    /// Checks that the server knows the secret too.
    pub(crate) fn verify(&self, proof: &[u8]) -> Result<(), String> {
        tag(&self.secret, b"server", &self.ns, &self.nc)
            .verify_slice(proof)
            .map_err(|_| "the server does not know the cluster secret".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_passes_with_one_secret_and_fails_with_two() {
        set_cluster_secret(b"0123456789abcdef-shared").unwrap();
        let (server, hello) = Challenge::new().unwrap();
        let (client, answer) = Answer::new(&hello).unwrap();
        let proof = server.verify(&answer).unwrap();
        client.verify(&proof).unwrap();

        // A replayed answer fails against a fresh challenge.
        let (fresh, _) = Challenge::new().unwrap();
        assert!(fresh.verify(&answer).is_err());
        // A client with another secret is refused, and a server with another fails the client.
        let (server, hello) = Challenge::new().unwrap();
        set_cluster_secret(b"another secret, 16+ bytes").unwrap();
        let (client, answer) = Answer::new(&hello).unwrap();
        assert!(server.verify(&answer).is_err());
        let forged = vec![0u8; TAG];
        assert!(client.verify(&forged).is_err());
        assert!(Answer::new(b"not a challenge").is_err());
        assert!(set_cluster_secret(b"short").is_err());
    }
}
