//! SMS through an HTTP gateway (`--sms-gateway-url`): a JSON POST of the number and
//! the text, with `--sms-gateway-token` as a bearer token.

/// Whether a phone number is E.164: `+`, then 8 to 15 digits, the first not 0.
pub fn is_e164(number: &str) -> bool {
    let Some(digits) = number.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.chars().all(|c| c.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Sends one SMS; `Ok(status)` when the gateway accepted it (2xx).
pub async fn send(
    client: &reqwest::Client,
    gateway: &str,
    token: Option<&str>,
    to: &str,
    text: &str,
) -> Result<u16, (Option<u16>, String)> {
    let mut request = client
        .post(gateway)
        .json(&serde_json::json!({"to": to, "text": text}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    match request.send().await {
        Ok(response) if response.status().is_success() => Ok(response.status().as_u16()),
        Ok(response) => Err((
            Some(response.status().as_u16()),
            format!("the SMS gateway answered {}", response.status().as_u16()),
        )),
        Err(e) => Err((
            None,
            format!("the SMS gateway could not be reached ({})", kind(&e)),
        )),
    }
}

/// An HTTP client error described without URLs or bodies.
pub fn kind(err: &reqwest::Error) -> &'static str {
    if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connection refused or failed"
    } else if err.is_redirect() {
        "redirect"
    } else {
        "request failed"
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn e164_numbers() {
        assert!(super::is_e164("+254700000001"));
        assert!(!super::is_e164("0700000001"));
        assert!(!super::is_e164("+0700000001"));
        assert!(!super::is_e164("+2547000a0001"));
        assert!(!super::is_e164("+1234567"));
    }
}
