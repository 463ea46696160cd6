//! Webhooks: Standard Webhooks signatures, and the address check that keeps them from
//! being pointed at the service's own network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A new signing secret: `whsec_` and 32 random bytes in base64 (shown once).
pub fn new_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The associated data of a sealed webhook secret.
pub fn secret_aad(webhook_id: uuid::Uuid) -> Vec<u8> {
    format!("haven-webhook-secret:{webhook_id}").into_bytes()
}

/// The `webhook-signature` header: `v1,` and the base64 HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` keyed with the secret's bytes (after `whsec_`).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> anyhow::Result<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|_| anyhow::anyhow!("the webhook secret is not base64"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key)
        .map_err(|_| anyhow::anyhow!("the webhook secret cannot key an HMAC"))?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// Why a webhook target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("must be an http:// or https:// URL")]
    Scheme,
    #[error("is not a valid URL")]
    Invalid,
    #[error("cannot be resolved")]
    Unresolvable,
    #[error("points to a private, loopback, link-local or metadata address")]
    Private,
}

/// Whether an address is one a webhook must not reach: the host itself, private
/// networks, link-local (cloud metadata lives at 169.254.169.254), shared, multicast,
/// documentation and unspecified addresses.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || v6 == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) // AWS metadata (IPv6)
        }
    }
}

fn forbidden_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_private()
        || v4.is_loopback()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240
}

/// Parses and resolves a webhook URL; the addresses it resolves to, all allowed (or
/// any, when `allow_private`). Delivery connects to exactly these addresses, so a DNS
/// answer that changes between the check and the connection changes nothing.
pub async fn resolve_target(
    url: &str,
    allow_private: bool,
) -> Result<(url::Url, Vec<SocketAddr>), TargetError> {
    let parsed = url::Url::parse(url).map_err(|_| TargetError::Invalid)?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(TargetError::Scheme);
    }
    let host = parsed.host_str().ok_or(TargetError::Invalid)?.to_string();
    let port = parsed.port_or_known_default().ok_or(TargetError::Invalid)?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| TargetError::Unresolvable)?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(TargetError::Unresolvable);
    }
    if !allow_private && addrs.iter().any(|a| is_forbidden(a.ip())) {
        return Err(TargetError::Private);
    }
    Ok((parsed, addrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_metadata_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_forbidden(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1::1"] {
            assert!(!is_forbidden(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_signature_follows_standard_webhooks() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = r#"{"test": 2432232314}"#;
        let signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
