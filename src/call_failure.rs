//! Whether a failed connection or call to a server can heal by waiting, and
//! what the user must change when it cannot. Clients retry transient
//! failures (a server restarting, a network blip) and stop at once on these,
//! since no amount of retrying fixes a missing token or an untrusted CA.

use std::error::Error;

use tonic::Code;

/// What the user must change for calls to succeed, when waiting cannot
/// help; `None` when the failure may be transient.
///
/// TLS and HTTP/2 failures reach us as transport errors whose types
/// (rustls, h2) sit behind `std::io::Error`, whose `source()` skips the
/// error it wraps; matching the chain's `Debug` text finds them wherever
/// they are nested. Each pattern is pinned by a test against a real server.
pub fn lasting_cause(error: &(dyn Error + 'static)) -> Option<&'static str> {
    let mut text = String::new();
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(status) = e.downcast_ref::<tonic::Status>() {
            match status.code() {
                Code::Unauthenticated | Code::PermissionDenied => return Some(TOKEN),
                Code::Unimplemented => return Some(UNKNOWN_SERVICE),
                _ => {}
            }
        }
        text.push_str(&format!("{e:?}\n"));
        next = e.source();
    }
    LASTING
        .iter()
        .find(|(patterns, _)| patterns.iter().any(|p| text.contains(p)))
        .map(|(_, hint)| *hint)
}

const TOKEN: &str = "the server wants a valid bearer token: give it with --auth-token-file \
                     (TRIBUTARY_AUTH_TOKEN_FILE) or TRIBUTARY_AUTH_TOKEN";
const UNKNOWN_SERVICE: &str = "the server does not offer this service: check that --connect \
                               points at `tributary up`, an ingest server or Envoy, as the \
                               command needs";

/// Patterns of the transport error's text, and the hint each one earns.
const LASTING: &[(&[&str], &str)] = &[
    (
        &["UnknownIssuer", "UnknownCA", "BadSignature"],
        "the server's certificate is not signed by a CA this client trusts: give the CA that \
         signed it with --tls-ca (TRIBUTARY_TLS_CA)",
    ),
    (
        &["NotValidForName"],
        "the server's certificate does not name the host in the URL: connect by a name the \
         certificate lists",
    ),
    (
        &["CertificateRequired", "certificate required"],
        "the server requires a client certificate: give --tls-client-cert and --tls-client-key",
    ),
    (
        // A TLS listener answers a plaintext HTTP/2 preface with a TLS
        // alert, which h2 reads as a frame of impossible size.
        &["FRAME_SIZE_ERROR", "frame with invalid size"],
        "the server may speak TLS: connect with https:// (and --tls-ca if its CA is private)",
    ),
    (
        &["InvalidContentType", "corrupt message"],
        "the server does not speak TLS: connect with http://",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_tokens_and_unknown_services_cannot_heal_and_outages_can() {
        let token = tonic::Status::unauthenticated("this server requires a bearer token");
        assert_eq!(lasting_cause(&token), Some(TOKEN));
        let missing = tonic::Status::unimplemented("");
        assert_eq!(lasting_cause(&missing), Some(UNKNOWN_SERVICE));
        let outage = tonic::Status::unavailable("tcp connect error: Connection refused");
        assert_eq!(lasting_cause(&outage), None);
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(lasting_cause(&refused), None);
    }

    #[test]
    fn tls_failures_nested_in_io_errors_are_found() {
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        );
        let hint = lasting_cause(&tls).expect("an untrusted CA cannot heal");
        assert!(hint.contains("--tls-ca"), "{hint}");
        let plain =
            std::io::Error::other("http2 error: connection error detected: FRAME_SIZE_ERROR");
        assert!(lasting_cause(&plain).is_some_and(|h| h.contains("https://")));
    }
}
