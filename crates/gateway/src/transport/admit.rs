//! Admission of a client on any transport (WebSocket, SSE, long-poll): the client address's
//! limits, authentication, registration in the node's registry (per-user and node caps), the
//! broker subscription for the user, and the revocation check. Every step is bounded by the
//! request's deadline; a refusal is the JSON answer to send.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::{timeout_at, Instant};

use super::client_ip::AddrKey;
use super::connection::Registration;
use super::limits::{Refused, Slot};
use super::public::{json_error, Edge};
use crate::auth::{AuthError, Credentials, Identity};
use crate::log_limit::LogLimit;
use crate::node::Node;
use crate::registry::AtCapacity;

/// A subscription that is not confirmed in time is logged at most once per second.
static SUBSCRIBE_LOG: LogLimit = LogLimit::new(Duration::from_secs(1));
/// Revocation checks that could not be made are logged at most once per second.
static REVOCATION_LOG: LogLimit = LogLimit::new(Duration::from_secs(1));

/// An admitted client: its place in the registry (subscribed), who it is, and its address slot
/// (held until the client leaves).
pub(super) struct Admitted {
    pub(super) registration: Registration,
    pub(super) identity: Identity,
    pub(super) slot: Option<Slot>,
}

/// Admit the client of `req`, or the response that refuses it.
pub(super) async fn admit<B>(
    req: &Request<B>,
    node: &std::sync::Arc<Node>,
    edge: &Edge,
    peer: IpAddr,
    deadline: Instant,
) -> Result<Admitted, Response<Full<Bytes>>> {
    let addr = AddrKey::of(edge.proxies.client(peer, req.headers()));
    // Held until the client leaves (or admission fails).
    let slot = match edge.limits.admit(addr) {
        Ok(slot) => slot,
        Err(refused) => return Err(refuse(node, refused, &addr)),
    };
    let authenticated = timeout_at(
        deadline,
        node.auth.authenticate(req.headers(), req.uri().query()),
    )
    .await
    .unwrap_or(Err(AuthError::Unavailable));
    let identity = authenticated.map_err(|e| auth_refusal(node, edge, addr, e))?;

    let (registration, mut subscribed) = match Registration::new(node.clone(), identity.user) {
        Ok(registered) => registered,
        Err(AtCapacity::User) => return Err(refuse(node, Refused::PerUser, &addr)),
        Err(AtCapacity::Node) => {
            node.metrics
                .connections_refused
                .with_label_values(&["capacity"])
                .inc();
            tracing::debug!(user = identity.user, "connection refused: node at capacity");
            return Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Server at capacity",
            ));
        }
    };
    let wait_until = deadline.min(Instant::now() + node.conn.subscribe_timeout);
    let confirmed = timeout_at(wait_until, async {
        subscribed.wait_for(|s| *s).await.is_ok()
    })
    .await;
    if confirmed != Ok(true) {
        node.metrics
            .connections_refused
            .with_label_values(&["broker"])
            .inc();
        if let Some(suppressed) = SUBSCRIBE_LOG.allow() {
            tracing::warn!(
                user = identity.user,
                suppressed,
                "subscription not confirmed in time"
            );
        }
        return Err(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Broker unavailable",
        ));
    }
    node.registry.confirmed(identity.user);
    // Checked once the subscription is confirmed: a disconnect published after a revocation
    // cannot slip between this check and the subscription.
    timeout_at(deadline, not_revoked(node, &identity))
        .await
        .unwrap_or(Err(AuthError::Unavailable))
        .map_err(|e| auth_refusal(node, edge, addr, e))?;
    Ok(Admitted {
        registration,
        identity,
        slot,
    })
}

/// Count an authentication failure and answer it (401, or 503 when the store is away or the
/// JWKS keys are not loaded yet).
fn auth_refusal(node: &Node, edge: &Edge, addr: AddrKey, e: AuthError) -> Response<Full<Bytes>> {
    node.metrics
        .auth_failures
        .with_label_values(&[e.label()])
        .inc();
    tracing::debug!(reason = e.label(), "connection rejected");
    match e {
        AuthError::Invalid(_) => {
            edge.limits.auth_failed(addr);
            json_error(StatusCode::UNAUTHORIZED, "Invalid credentials")
        }
        AuthError::Unavailable | AuthError::KeysUnavailable => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Authentication temporarily unavailable",
        ),
    }
}

/// A JWT issued before its user's revocation time (or without `iat` while one holds) is
/// refused (`POST /v1/disconnect` with `revoke_tokens_before`). When the broker cannot answer
/// (within the Redis timeout) the connection is admitted and counted
/// (`revocation_unchecked_total`).
async fn not_revoked(node: &Node, identity: &Identity) -> Result<(), AuthError> {
    let Credentials::Jwt { issued_at } = identity.credentials else {
        return Ok(());
    };
    match node.broker.revoked_before(identity.user).await {
        Ok(Some(before)) if issued_at.is_none_or(|iat| iat < before) => {
            Err(AuthError::Invalid("jwt_revoked"))
        }
        Ok(_) => Ok(()),
        // Availability first: a broker that cannot answer could not deliver a disconnect
        // either; the connection is admitted, counted and logged.
        Err(e) => {
            node.metrics.revocation_unchecked.inc();
            if let Some(suppressed) = REVOCATION_LOG.allow() {
                tracing::warn!(error = %e, suppressed, "revocation not checked: broker unavailable");
            }
            Ok(())
        }
    }
}

/// Count and answer a 429.
fn refuse(node: &Node, refused: Refused, addr: &AddrKey) -> Response<Full<Bytes>> {
    node.metrics
        .connections_refused
        .with_label_values(&[refused.label()])
        .inc();
    tracing::debug!(reason = refused.label(), %addr, "connection refused: limit");
    refused.response()
}
