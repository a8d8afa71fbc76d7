//! The per-client signup limit: a token bucket per client address, so that one client cannot
//! use the service to mail-bomb third parties, however many addresses it signs up.
//!
//! Each client has a bucket of `signup.per_client_per_minute` signups that refills at that rate
//! (GCRA, from `governor`); a `POST /signups` that finds it empty is answered 429 with
//! `Retry-After`, before its body is even parsed, and sends nothing. 0 turns the limit off:
//! benchmarks and load tests drive thousands of signups from one address.
//!
//! **Who the client is.** By default, the TCP peer's address, which a client cannot forge. An
//! IPv6 client is keyed by its /64, the block that one subscriber usually holds, so that
//! stepping through its own addresses buys nothing. Behind a reverse proxy every peer is the
//! proxy, so `server.client_ip_header` names the header the proxy writes the client's address
//! into (`x-forwarded-for`, `x-real-ip`). Of a list, the right-most address is taken: it is the
//! one our proxy appended, while everything to its left came from the client and could be made
//! up. A request without a usable header is keyed by its peer (the proxy), so leaving the header
//! out puts a client in one shared bucket rather than in a fresh one. With no header
//! configured, the header is ignored: a client cannot pick its own key.
//!
//! The buckets live in this process's memory: each instance limits on its own, and a restart
//! refills every bucket. Buckets idle long enough to be full again are forgotten from time to
//! time, so memory follows the clients of the last minute or so.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, HeaderName, StatusCode, request::Parts},
};
use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use super::{ApiContext, Error};

/// Forget full buckets once per this many checks: a pass costs one sweep of the map.
const SWEEP_EVERY: u64 = 4096;

/// One token bucket per client, shared by every request handler.
#[derive(Clone)]
pub struct ClientLimit {
    /// `None` when `signup.per_client_per_minute` is 0.
    limiter: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    /// The trusted proxy's header holding the client's address, if any.
    client_ip_header: Option<HeaderName>,
    checks: Arc<AtomicU64>,
}

impl ClientLimit {
    /// `per_minute` signups per client per minute, as a burst too; 0 for no limit.
    pub fn new(per_minute: u32, client_ip_header: Option<HeaderName>) -> ClientLimit {
        ClientLimit {
            limiter: NonZeroU32::new(per_minute)
                .map(|n| Arc::new(RateLimiter::keyed(Quota::per_minute(n)))),
            client_ip_header,
            checks: Arc::default(),
        }
    }

    /// Takes one signup from `client`'s bucket, or says how long until one is back.
    fn take(&self, client: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter
            .check_key(&bucket_key(client))
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// The client's address: from the trusted header when one is configured and usable, from
    /// the TCP peer otherwise.
    fn client(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        self.client_ip_header
            .as_ref()
            .and_then(|name| forwarded_client(headers, name))
            .unwrap_or(peer)
    }
}

/// The right-most address of the header's (last) value: the one our proxy wrote.
fn forwarded_client(headers: &HeaderMap, name: &HeaderName) -> Option<IpAddr> {
    let value = headers.get_all(name).iter().next_back()?.to_str().ok()?;
    let last = value.rsplit(',').next()?.trim();
    last.parse::<IpAddr>()
        .ok()
        .or_else(|| last.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// An IPv4 address as is; an IPv6 address as its /64 (an IPv4-mapped one as the IPv4 address).
fn bucket_key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// An extractor that passes only while the client's bucket has a signup left; put it before
/// the body so that a refused request is not even parsed.
pub(super) struct WithinClientLimit;

impl FromRequestParts<ApiContext> for WithinClientLimit {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, ctx: &ApiContext) -> Result<Self, Error> {
        // The server inserts the peer into every request; a router driven without it (in a
        // unit test) has no client to limit.
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
            return Ok(WithinClientLimit);
        };
        let client = ctx.client_limit.client(&parts.headers, peer.ip());
        ctx.client_limit.take(client).map_err(|retry_after| {
            tracing::info!(%client, "per-client signup limit reached");
            Error::RetryLater {
                status: StatusCode::TOO_MANY_REQUESTS,
                detail: "Too many signups from your address; wait before sending another.".into(),
                retry_after,
            }
        })?;
        Ok(WithinClientLimit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn the_right_most_forwarded_address_is_the_client() {
        let limit = ClientLimit::new(5, Some(HeaderName::from_static("x-forwarded-for")));
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let spoofed = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.7")]);
        assert_eq!(
            limit.client(&spoofed, peer),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        let two_lines = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "[2001:db8::1]:443"),
        ]);
        assert_eq!(
            limit.client(&two_lines, peer),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        // Missing or garbage: the peer (the proxy), never a key of the client's choosing.
        assert_eq!(limit.client(&HeaderMap::new(), peer), peer);
        assert_eq!(
            limit.client(&headers(&[("x-forwarded-for", "1.1.1.1, nonsense")]), peer),
            peer
        );
    }

    #[test]
    fn without_a_configured_header_the_header_is_ignored() {
        let limit = ClientLimit::new(5, None);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let spoofed = headers(&[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(limit.client(&spoofed, peer), peer);
    }

    #[test]
    fn one_ipv6_subscriber_is_one_bucket() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(bucket_key(a), bucket_key(b));
        assert_ne!(bucket_key(a), bucket_key(other));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(bucket_key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_bucket_holds_its_size_then_says_when_to_come_back() {
        let limit = ClientLimit::new(3, None);
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limit.take(client).is_ok());
        }
        let wait = limit.take(client).unwrap_err();
        // One signup comes back every 60 s / 3.
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(limit.take("192.0.2.2".parse().unwrap()).is_ok());
        assert!(ClientLimit::new(0, None).take(client).is_ok());
    }
}
