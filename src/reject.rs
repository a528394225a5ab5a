//! Every way keygate refuses a request, and the one place that turns a refusal into a
//! response: status, `content-type: application/json`, and the body
//! `{"error": {"code", "message", "type"}}`.
//!
//! Messages are fixed text plus, at most, facts the caller already knows (its own IP). They
//! never echo the presented key: a client that pasted the wrong secret must not see it
//! reflected into logs or proxies between it and us.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::vocab::Environment;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    MissingApiKey,
    InvalidApiKey,
    ExpiredApiKey,
    /// Two different keys in one request.
    ConflictingCredentials,
    /// An access token ([`crate::token`]) that is malformed, forged, or sealed with a
    /// secret no longer listed.
    InvalidToken,
    /// An access token past its lifetime: ask `/oauth/token` for a new one.
    ExpiredToken,
    /// The token endpoint's own refusals, in RFC 6749 §5.2 form.
    OAuth(OAuthError),
    /// A header-bound key (`keys create --header`) sent in another header; the headers it
    /// is accepted in.
    CredentialHeaderNotAllowed(crate::vocab::HeaderSet),
    /// A path that could mean something else to the upstream (`%2f`, `%00`, `;`, `\`, …);
    /// [`crate::path`] says which.
    InvalidPath(crate::path::PathError),
    /// Route rules match the path, but none for this method; what they allow, for `Allow`.
    MethodNotAllowed(Vec<http::Method>),
    /// A request keygate does not forward: a malformed head, ambiguous framing (see
    /// `wire::request`), an unsupported method or target form. The text says which.
    BadRequest(&'static str),
    InsufficientPermissions(Denial),
    IpNotAllowed(IpAddr),
    /// A browser request (its `Origin`) from an origin the public key does not allow
    /// ([`crate::cors`]).
    OriginNotAllowed(crate::cors::OriginDenial),
    /// Suspended by an operator (`keys suspend`) until resumed.
    KeySuspended,
    /// Suspended by `[limits.suspend]` for repeatedly exceeding its rate limit; lifts by
    /// itself after `retry_after` seconds.
    KeySuspendedFor {
        retry_after: u64,
    },
    /// Plain HTTP where only HTTPS is accepted.
    HttpsRequired,
    /// Request line and headers over `server.max_header_bytes`.
    HeadersTooLarge,
    /// Body over `server.max_body_bytes`.
    PayloadTooLarge,
    /// The client stopped sending its request body: the upstream waited for the rest for
    /// `[upstream] timeout` and nothing came. The client's silence, not the upstream's.
    RequestTimeout,
    RateLimitExceeded(crate::limits::Refusal),
    /// The client's address sent too many invalid keys ([`crate::guard`]); refused for
    /// `retry_after` seconds before any key lookup.
    TooManyInvalidKeys {
        retry_after: u64,
    },
    KeyStoreUnavailable,
    /// A long-window quota's lease is spent and the quota store does not answer, with
    /// `[store] quota_fallback = "refuse"` ([`crate::limits::QuotaFallback`]).
    QuotaStoreUnavailable {
        retry_after: u64,
    },
    UpstreamUnavailable,
    UpstreamTimeout,
    /// A client asked for a WebSocket (an HTTP/2 extended CONNECT, RFC 8441, or an HTTP/1.1
    /// upgrade) while the upstream speaks HTTP/2 (`[upstream] http2`): keygate passes
    /// WebSockets on only to an HTTP/1.1 upstream.
    WebSocketUnsupported,
    // The management API's own refusals (`crate::api`); the proxy path never makes them.
    /// A management request whose body or query cannot be read (malformed JSON, an unknown
    /// field, a bad cursor); the text says which.
    InvalidBody(String),
    /// A well-formed management request with a value that cannot be used (a scope's
    /// syntax, an unknown plan, an expiry in the past); the text names the field.
    InvalidParameter(String),
    /// No such key (or not one the caller may see), or no such management route.
    NotFound(&'static str),
    /// The key's state forbids the change (a revoked key rotated, a key resumed that is not
    /// suspended).
    Conflict(String),
    /// The owner already holds `[keys] max_per_owner` live keys.
    OwnerKeyLimit {
        max: u32,
    },
    /// An `Idempotency-Key` reused with a different request.
    IdempotencyKeyReused,
    /// An `Idempotency-Key` whose first request is still being processed.
    IdempotencyInProgress,
}

impl From<crate::limits::Limited> for Reject {
    fn from(limited: crate::limits::Limited) -> Self {
        use crate::limits::Limited;
        match limited {
            Limited::Rate(refusal) => Self::RateLimitExceeded(refusal),
            Limited::Suspended { retry_after } => Self::KeySuspendedFor { retry_after },
            Limited::StoreUnreachable { retry_after } => {
                Self::QuotaStoreUnavailable { retry_after }
            }
        }
    }
}

/// RFC 6749 §5.2 errors of `POST /oauth/token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuthError {
    /// Malformed body, missing `grant_type`, credentials sent twice; the text says which.
    InvalidRequest(&'static str),
    /// Unknown, revoked, suspended or expired key, or a secret that is not the id's key.
    InvalidClient,
    UnsupportedGrantType,
    /// `scope` asks for more than the key holds, or is too long.
    InvalidScope,
    /// A key bound to headers other than `Authorization` (`keys create --header`): a token is
    /// a Bearer credential, so issuing one would let the key arrive where it may not.
    UnauthorizedClient,
}

/// Why a known, valid key may not make this request (403 `insufficient_permissions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The route needs this scope (or, for an any-of list, one of these).
    MissingScope(Vec<String>),
    /// Public keys may only read.
    PublicKeyReadOnly,
    /// Sandbox keys are not accepted (no `[upstream] sandbox_url`).
    SandboxRefused,
    /// The key's environment is not one this keygate serves (`[environments]`).
    NotServed(Environment),
    /// The matched route is not open to this key's environment.
    Environment(Environment),
    /// The route is for one workspace/project and the key is not bound to it.
    NotBound { param: &'static str, value: String },
    /// No route matches and `[auth] unmatched = "deny"`.
    NoRoute,
    /// A management key may not grant (or manage a key holding) scopes it does not hold.
    ScopesNotHeld(Vec<String>),
    /// An owner-bound management key acting for another owner.
    OtherOwner,
}

impl Denial {
    fn message(&self) -> String {
        match self {
            Self::MissingScope(scopes) if scopes.len() == 1 => {
                format!("This API key lacks the required scope: {}", scopes[0])
            }
            Self::MissingScope(scopes) => format!(
                "This API key lacks the required scopes: one of {}",
                scopes.join(", ")
            ),
            Self::PublicKeyReadOnly => {
                "Public API keys may only read (GET, HEAD, OPTIONS); use a secret key".into()
            }
            Self::SandboxRefused => "Sandbox (test) API keys are not accepted here".into(),
            Self::NotServed(env) => format!("{env} API keys are not accepted here"),
            Self::Environment(env) => format!(
                "This route is not available to {} API keys",
                match *env {
                    Environment::LIVE => "production (live)".to_owned(),
                    Environment::TEST => "sandbox (test)".to_owned(),
                    other => other.to_string(),
                }
            ),
            Self::NotBound { param, value } => {
                // The value comes from the request path: bound it before echoing it.
                let shown: String = value.chars().take(64).collect();
                format!("This API key is not bound to {param} {shown:?}")
            }
            Self::NoRoute => "This API key may not access this path".into(),
            Self::ScopesNotHeld(scopes) => format!(
                "This API key may not grant or manage scopes it does not hold: {}",
                scopes.join(", ")
            ),
            Self::OtherOwner => "This API key may only manage keys of its own owner".into(),
        }
    }
}

impl Reject {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::ExpiredApiKey
            | Self::InvalidToken
            | Self::ExpiredToken
            | Self::OAuth(OAuthError::InvalidClient)
            | Self::CredentialHeaderNotAllowed(_) => StatusCode::UNAUTHORIZED,
            Self::OAuth(_) => StatusCode::BAD_REQUEST,
            Self::ConflictingCredentials | Self::InvalidPath(_) | Self::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvalidBody(_) => StatusCode::BAD_REQUEST,
            Self::InvalidParameter(_) | Self::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) | Self::OwnerKeyLimit { .. } | Self::IdempotencyInProgress => {
                StatusCode::CONFLICT
            }
            Self::InsufficientPermissions(_)
            | Self::IpNotAllowed(_)
            | Self::OriginNotAllowed(_)
            | Self::KeySuspended
            | Self::KeySuspendedFor { .. }
            | Self::HttpsRequired => StatusCode::FORBIDDEN,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::RateLimitExceeded(_) | Self::TooManyInvalidKeys { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::KeyStoreUnavailable | Self::QuotaStoreUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::WebSocketUnsupported => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The machine-readable code clients switch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingApiKey => "missing_api_key",
            Self::InvalidApiKey => "invalid_api_key",
            Self::ExpiredApiKey => "expired_api_key",
            Self::ConflictingCredentials => "conflicting_api_keys",
            Self::CredentialHeaderNotAllowed(_) => "credential_header_not_allowed",
            Self::InvalidToken => "invalid_token",
            Self::ExpiredToken => "expired_token",
            Self::OAuth(OAuthError::InvalidRequest(_)) => "invalid_request",
            Self::OAuth(OAuthError::InvalidClient) => "invalid_client",
            Self::OAuth(OAuthError::UnsupportedGrantType) => "unsupported_grant_type",
            Self::OAuth(OAuthError::InvalidScope) => "invalid_scope",
            Self::OAuth(OAuthError::UnauthorizedClient) => "unauthorized_client",
            Self::InvalidPath(_) => "invalid_path",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::BadRequest(_) => "invalid_request",
            Self::InsufficientPermissions(_) => "insufficient_permissions",
            Self::IpNotAllowed(_) => "ip_not_allowed",
            Self::OriginNotAllowed(_) => "origin_not_allowed",
            Self::KeySuspended | Self::KeySuspendedFor { .. } => "key_suspended",
            Self::HttpsRequired => "https_required",
            Self::HeadersTooLarge => "request_header_fields_too_large",
            Self::PayloadTooLarge => "request_too_large",
            Self::RequestTimeout => "request_timeout",
            Self::RateLimitExceeded(_) => "rate_limit_exceeded",
            Self::TooManyInvalidKeys { .. } => "too_many_invalid_keys",
            Self::KeyStoreUnavailable => "key_store_unavailable",
            Self::QuotaStoreUnavailable { .. } => "quota_store_unavailable",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::WebSocketUnsupported => "websocket_unsupported",
            Self::InvalidBody(_) => "invalid_body",
            Self::InvalidParameter(_) => "invalid_parameter",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::OwnerKeyLimit { .. } => "owner_key_limit",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::IdempotencyInProgress => "idempotency_in_progress",
        }
    }

    pub fn error_type(&self) -> &'static str {
        match self {
            Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::ExpiredApiKey
            | Self::InvalidToken
            | Self::ExpiredToken
            | Self::OAuth(OAuthError::InvalidClient)
            | Self::CredentialHeaderNotAllowed(_) => "authentication_error",
            Self::OAuth(_) => "invalid_request_error",
            Self::InsufficientPermissions(_)
            | Self::IpNotAllowed(_)
            | Self::OriginNotAllowed(_)
            | Self::KeySuspended
            | Self::KeySuspendedFor { .. } => "authorization_error",
            Self::ConflictingCredentials
            | Self::InvalidPath(_)
            | Self::MethodNotAllowed(_)
            | Self::BadRequest(_)
            | Self::HttpsRequired
            | Self::HeadersTooLarge
            | Self::PayloadTooLarge
            | Self::RequestTimeout
            | Self::InvalidBody(_)
            | Self::InvalidParameter(_)
            | Self::NotFound(_)
            | Self::Conflict(_)
            | Self::OwnerKeyLimit { .. }
            | Self::IdempotencyKeyReused
            | Self::IdempotencyInProgress => "invalid_request_error",
            Self::RateLimitExceeded(_) | Self::TooManyInvalidKeys { .. } => "rate_limit_error",
            Self::KeyStoreUnavailable
            | Self::QuotaStoreUnavailable { .. }
            | Self::UpstreamUnavailable
            | Self::UpstreamTimeout
            | Self::WebSocketUnsupported => "api_error",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::MissingApiKey => "No API key provided. Send it as 'Authorization: Bearer <key>' \
                                    or in the 'x-api-key' header"
                .into(),
            Self::InvalidApiKey => "The API key provided is invalid or has been revoked".into(),
            Self::ExpiredApiKey => "The API key provided has expired".into(),
            Self::ConflictingCredentials => {
                "The request carries more than one different API key; send exactly one".into()
            }
            Self::InvalidToken => "The access token provided is invalid; request a new one".into(),
            Self::ExpiredToken => "The access token provided has expired; request a new one".into(),
            Self::OAuth(OAuthError::InvalidRequest(why)) => format!("Invalid token request: {why}"),
            Self::OAuth(OAuthError::InvalidClient) => {
                "Client authentication failed: unknown client id, wrong secret, or a key that \
                 is revoked, suspended or expired"
                    .into()
            }
            Self::OAuth(OAuthError::UnsupportedGrantType) => {
                "Only grant_type=client_credentials is supported".into()
            }
            Self::OAuth(OAuthError::InvalidScope) => {
                "The requested scope is not among the key's scopes".into()
            }
            Self::OAuth(OAuthError::UnauthorizedClient) => {
                "This key is bound to headers other than Authorization and cannot be traded \
                 for a Bearer token"
                    .into()
            }
            Self::CredentialHeaderNotAllowed(allowed) => {
                let names: Vec<&str> = allowed
                    .iter()
                    .map(crate::vocab::CredentialHeader::usage)
                    .collect();
                match names.as_slice() {
                    [one] => format!("This API key is only accepted in the '{one}' header"),
                    many => format!(
                        "This API key is only accepted in these headers: {}",
                        many.join(", ")
                    ),
                }
            }
            Self::InvalidPath(why) => why.to_string(),
            Self::MethodNotAllowed(allowed) if allowed.is_empty() => {
                "This method is not allowed on this path".into()
            }
            Self::MethodNotAllowed(allowed) => format!(
                "This method is not allowed on this path; allowed: {}",
                allowed
                    .iter()
                    .map(http::Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Self::BadRequest(why) => format!("The request cannot be forwarded: {why}"),
            Self::InsufficientPermissions(denial) => denial.message(),
            Self::IpNotAllowed(ip) => {
                format!("Requests from IP address {ip} are not allowed for this API key")
            }
            Self::OriginNotAllowed(crate::cors::OriginDenial::NotListed) => {
                "Browser requests from this origin are not allowed for this API key".into()
            }
            Self::OriginNotAllowed(crate::cors::OriginDenial::NoneAllowed) => {
                "This API key allows no browser origins (keys create --allow-origin, or [cors] \
                 allow_origins)"
                    .into()
            }
            Self::KeySuspended => "The API key provided has been suspended".into(),
            Self::KeySuspendedFor { retry_after } => format!(
                "The API key provided is suspended for {retry_after} s after repeated requests \
                 over its rate limit"
            ),
            Self::HttpsRequired => "All API requests must be made over HTTPS".into(),
            Self::HeadersTooLarge => "The request headers are too large".into(),
            Self::PayloadTooLarge => "The request body is too large".into(),
            Self::RequestTimeout => {
                "The request body stopped arriving before its end; nothing came for the \
                 upstream timeout"
                    .into()
            }
            Self::RateLimitExceeded(r) => format!(
                "Rate limit exceeded: {} requests {}; retry after {} s",
                r.window.limit,
                r.window.name.replace('_', " "),
                r.retry_after
            ),
            Self::TooManyInvalidKeys { retry_after } => {
                format!("Too many invalid API keys from this address; retry after {retry_after} s")
            }
            Self::KeyStoreUnavailable => {
                "The API key could not be verified right now; retry shortly".into()
            }
            Self::QuotaStoreUnavailable { retry_after } => format!(
                "The API key's usage quota could not be checked right now; retry after \
                 {retry_after} s"
            ),
            Self::UpstreamUnavailable => "The upstream service is unavailable".into(),
            Self::UpstreamTimeout => "The upstream service did not respond in time".into(),
            Self::WebSocketUnsupported => "WebSockets are not passed on to this upstream \
                                           (it speaks HTTP/2)"
                .into(),
            Self::InvalidBody(why) => format!("The request cannot be read: {why}"),
            Self::InvalidParameter(why) => format!("Invalid parameter: {why}"),
            Self::NotFound(what) => format!("No such {what}"),
            Self::Conflict(why) => format!("The key's state forbids this change: {why}"),
            Self::OwnerKeyLimit { max } => {
                format!("The owner already holds {max} keys, the most allowed; revoke one first")
            }
            Self::IdempotencyKeyReused => {
                "This Idempotency-Key was used with a different request; use a new key".into()
            }
            Self::IdempotencyInProgress => {
                "A request with this Idempotency-Key is still being processed; retry shortly".into()
            }
        }
    }

    /// Seconds a client should wait before retrying, where waiting helps.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::KeyStoreUnavailable | Self::IdempotencyInProgress => Some(1),
            Self::RateLimitExceeded(r) => Some(r.retry_after),
            Self::KeySuspendedFor { retry_after }
            | Self::TooManyInvalidKeys { retry_after }
            | Self::QuotaStoreUnavailable { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// The JSON body: `{"error": {"code", "message", "type"}}`; for the token endpoint's
    /// refusals RFC 6749 §5.2's `{"error", "error_description"}`, which OAuth clients parse.
    pub fn body(&self) -> String {
        if let Self::OAuth(_) = self {
            return serde_json::json!({
                "error": self.code(),
                "error_description": self.message(),
            })
            .to_string();
        }
        serde_json::json!({
            "error": {
                "code": self.code(),
                "message": self.message(),
                "type": self.error_type(),
            }
        })
        .to_string()
    }

    /// The headers a refusal carries besides `content-type` and its framing.
    pub fn headers(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> {
        let retry = self
            .retry_after()
            .map(|secs| (RETRY_AFTER, HeaderValue::from(secs)));
        // RFC 6750 §3: tell the client which scheme to use; RFC 6749 §5.2: the token
        // endpoint's client authentication is Basic.
        let challenge = (self.status() == StatusCode::UNAUTHORIZED).then(|| {
            let value = match self {
                Self::OAuth(_) => "Basic realm=\"keygate\"",
                Self::InvalidToken | Self::ExpiredToken => {
                    "Bearer realm=\"keygate\", error=\"invalid_token\""
                }
                _ => "Bearer realm=\"keygate\"",
            };
            (WWW_AUTHENTICATE, HeaderValue::from_static(value))
        });
        // RFC 6749 §5.1: token responses are never cached; nor are its refusals.
        let no_store = matches!(self, Self::OAuth(_)).then(|| {
            (
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            )
        });
        // RFC 9110 §15.5.6: a 405 says what is allowed.
        let allow = match self {
            Self::MethodNotAllowed(allowed) if !allowed.is_empty() => {
                let list: Vec<&str> = allowed.iter().map(http::Method::as_str).collect();
                HeaderValue::from_str(&list.join(", "))
                    .ok()
                    .map(|v| (http::header::ALLOW, v))
            }
            _ => None,
        };
        retry
            .into_iter()
            .chain(challenge)
            .chain(allow)
            .chain(no_store)
    }

    /// The response for this refusal, for hyper's side of keygate; keygate's own HTTP/1.1
    /// writes the same status, headers and body (`wire::response`). Nowhere else does a `Reject`
    /// become HTTP.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.body())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in self.headers() {
            headers.insert(name, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn every_reject_renders_the_design_table() {
        let table: &[(Reject, u16, &str, &str)] = &[
            (
                Reject::MissingApiKey,
                401,
                "missing_api_key",
                "authentication_error",
            ),
            (
                Reject::InvalidApiKey,
                401,
                "invalid_api_key",
                "authentication_error",
            ),
            (
                Reject::ExpiredApiKey,
                401,
                "expired_api_key",
                "authentication_error",
            ),
            (
                Reject::ConflictingCredentials,
                400,
                "conflicting_api_keys",
                "invalid_request_error",
            ),
            (
                Reject::CredentialHeaderNotAllowed(crate::vocab::HeaderSet::of(&[
                    crate::vocab::CredentialHeader::ProjectAccessToken,
                ])),
                401,
                "credential_header_not_allowed",
                "authentication_error",
            ),
            (
                Reject::InvalidToken,
                401,
                "invalid_token",
                "authentication_error",
            ),
            (
                Reject::ExpiredToken,
                401,
                "expired_token",
                "authentication_error",
            ),
            (
                Reject::RateLimitExceeded(crate::limits::Refusal {
                    window: crate::limits::WindowState {
                        name: "per_hour",
                        limit: 1000,
                        remaining: 0,
                        reset_secs: 30,
                        window_secs: 3600,
                    },
                    retry_after: 30,
                }),
                429,
                "rate_limit_exceeded",
                "rate_limit_error",
            ),
            (
                Reject::IpNotAllowed("10.1.2.3".parse().unwrap()),
                403,
                "ip_not_allowed",
                "authorization_error",
            ),
            (
                Reject::OriginNotAllowed(crate::cors::OriginDenial::NotListed),
                403,
                "origin_not_allowed",
                "authorization_error",
            ),
            (
                Reject::KeySuspended,
                403,
                "key_suspended",
                "authorization_error",
            ),
            (
                Reject::KeySuspendedFor { retry_after: 60 },
                403,
                "key_suspended",
                "authorization_error",
            ),
            (
                Reject::BadRequest("the request head is malformed"),
                400,
                "invalid_request",
                "invalid_request_error",
            ),
            (
                Reject::InvalidPath(crate::path::PathError::EncodedSeparator),
                400,
                "invalid_path",
                "invalid_request_error",
            ),
            (
                Reject::TooManyInvalidKeys { retry_after: 30 },
                429,
                "too_many_invalid_keys",
                "rate_limit_error",
            ),
            (
                Reject::MethodNotAllowed(vec![http::Method::GET, http::Method::HEAD]),
                405,
                "method_not_allowed",
                "invalid_request_error",
            ),
            (
                Reject::HttpsRequired,
                403,
                "https_required",
                "invalid_request_error",
            ),
            (
                Reject::HeadersTooLarge,
                431,
                "request_header_fields_too_large",
                "invalid_request_error",
            ),
            (
                Reject::PayloadTooLarge,
                413,
                "request_too_large",
                "invalid_request_error",
            ),
            (
                Reject::RequestTimeout,
                408,
                "request_timeout",
                "invalid_request_error",
            ),
            (
                Reject::KeyStoreUnavailable,
                503,
                "key_store_unavailable",
                "api_error",
            ),
            (
                Reject::QuotaStoreUnavailable { retry_after: 1 },
                503,
                "quota_store_unavailable",
                "api_error",
            ),
            (
                Reject::UpstreamUnavailable,
                502,
                "upstream_unavailable",
                "api_error",
            ),
            (
                Reject::UpstreamTimeout,
                504,
                "upstream_timeout",
                "api_error",
            ),
            (
                Reject::WebSocketUnsupported,
                501,
                "websocket_unsupported",
                "api_error",
            ),
            (
                Reject::InvalidBody("expected JSON".into()),
                400,
                "invalid_body",
                "invalid_request_error",
            ),
            (
                Reject::InvalidParameter("scopes: bad".into()),
                422,
                "invalid_parameter",
                "invalid_request_error",
            ),
            (
                Reject::NotFound("key"),
                404,
                "not_found",
                "invalid_request_error",
            ),
            (
                Reject::Conflict("the key is revoked".into()),
                409,
                "conflict",
                "invalid_request_error",
            ),
            (
                Reject::OwnerKeyLimit { max: 3 },
                409,
                "owner_key_limit",
                "invalid_request_error",
            ),
            (
                Reject::IdempotencyKeyReused,
                422,
                "idempotency_key_reused",
                "invalid_request_error",
            ),
            (
                Reject::IdempotencyInProgress,
                409,
                "idempotency_in_progress",
                "invalid_request_error",
            ),
        ];
        for (reject, status, code, kind) in table {
            let response = reject.clone().into_response();
            assert_eq!(response.status().as_u16(), *status, "{code}");
            assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["error"]["code"], *code);
            assert_eq!(json["error"]["type"], *kind);
            assert!(json["error"]["message"].as_str().unwrap().len() > 10);
        }
    }

    #[test]
    fn denials_name_what_is_missing() {
        let one =
            Reject::InsufficientPermissions(Denial::MissingScope(vec!["content:write".into()]));
        assert!(one.message().contains("content:write"));
        let any =
            Reject::InsufficientPermissions(Denial::MissingScope(vec!["a:b".into(), "c:d".into()]));
        assert!(any.message().contains("one of a:b, c:d"));
        let bound = Denial::NotBound {
            param: "workspace",
            value: "x".repeat(500),
        };
        assert!(Reject::InsufficientPermissions(bound).message().len() < 200);
    }

    #[test]
    fn a_temporary_suspension_says_when_it_lifts() {
        let response = Reject::KeySuspendedFor { retry_after: 42 }.into_response();
        assert_eq!(response.headers()[RETRY_AFTER], "42");
        assert!(
            Reject::KeySuspendedFor { retry_after: 42 }
                .message()
                .contains("42 s")
        );
        assert!(
            !Reject::KeySuspended
                .into_response()
                .headers()
                .contains_key(RETRY_AFTER),
            "a manual suspension has no end to announce"
        );
    }

    #[test]
    fn a_header_bound_key_is_told_where_to_go() {
        use crate::vocab::{CredentialHeader::*, HeaderSet};
        let one = Reject::CredentialHeaderNotAllowed(HeaderSet::of(&[ProjectAccessToken]));
        assert!(
            one.message().contains("'Project-Access-Token'"),
            "{}",
            one.message()
        );
        let two = Reject::CredentialHeaderNotAllowed(HeaderSet::of(&[Authorization, XApiKey]));
        assert!(
            two.message().contains("Authorization: Bearer, X-Api-Key"),
            "{}",
            two.message()
        );
    }

    #[tokio::test]
    async fn token_endpoint_errors_take_the_rfc_6749_form() {
        let table = [
            (
                OAuthError::InvalidRequest("no grant_type"),
                400,
                "invalid_request",
                None,
            ),
            (
                OAuthError::InvalidClient,
                401,
                "invalid_client",
                Some("Basic realm=\"keygate\""),
            ),
            (
                OAuthError::UnsupportedGrantType,
                400,
                "unsupported_grant_type",
                None,
            ),
            (OAuthError::InvalidScope, 400, "invalid_scope", None),
            (
                OAuthError::UnauthorizedClient,
                400,
                "unauthorized_client",
                None,
            ),
        ];
        for (error, status, code, challenge) in table {
            let response = Reject::OAuth(error).into_response();
            assert_eq!(response.status().as_u16(), status, "{code}");
            assert_eq!(response.headers()["cache-control"], "no-store");
            assert_eq!(
                response
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .map(|v| v.to_str().unwrap()),
                challenge
            );
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["error"], code);
            assert!(json["error_description"].as_str().unwrap().len() > 10);
        }
    }

    #[test]
    fn ip_message_names_the_ip() {
        let m = Reject::IpNotAllowed("2001:db8::1".parse().unwrap()).message();
        assert!(m.contains("2001:db8::1"), "{m}");
    }
}
