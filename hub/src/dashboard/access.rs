//! Who may see the dashboard, and as what. The run token makes an
//! operator (sees, cancels, decides gates that name no approvers); an
//! approver's token an approver (sees, decides gates); the viewer token a
//! viewer (sees only).
//! A token comes as a bearer header, an `access_token` query (a URL a
//! person pastes, then traded for a cookie so it leaves the address bar),
//! or that cookie. Digests are compared in constant time.

use crate::token::digest;
use axum::http::{header, HeaderMap, HeaderValue};
use subtle::ConstantTimeEq;

/// The cookie the page's later requests carry the token in.
pub(crate) const COOKIE: &str = "muster_access";

/// What a token lets its holder do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    /// The run token: may cancel.
    Operator,
    /// A named approver's token: may decide gates.
    Approver(String),
    /// The viewer token: may only look.
    Viewer,
}

impl Role {
    pub(crate) fn word(&self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Approver(_) => "approver",
            Role::Viewer => "viewer",
        }
    }

    /// Who decides a gate with this role, if it may.
    pub(crate) fn decider(&self) -> Option<muster_core::gate::Decider> {
        match self {
            Role::Operator => Some(muster_core::gate::Decider::RunToken),
            Role::Approver(name) => Some(muster_core::gate::Decider::Approver(name.clone())),
            Role::Viewer => None,
        }
    }
}

/// The digests of the tokens that open the dashboard.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    run: [u8; 32],
    viewer: Option<[u8; 32]>,
    approvers: crate::decide::Approvers,
}

impl Access {
    pub(crate) fn new(
        run_token_digest: [u8; 32],
        viewer_token: Option<&str>,
        approvers: crate::decide::Approvers,
    ) -> Access {
        Access {
            run: run_token_digest,
            viewer: viewer_token.map(digest),
            approvers,
        }
    }

    /// The role `token` gives, if any.
    pub(crate) fn role_of(&self, token: &str) -> Option<Role> {
        let given = digest(token);
        let run = bool::from(given.ct_eq(&self.run));
        let viewer = self
            .viewer
            .is_some_and(|viewer| bool::from(given.ct_eq(&viewer)));
        let approver = self.approvers.named(token);
        if run {
            Some(Role::Operator)
        } else if let Some(name) = approver {
            Some(Role::Approver(name))
        } else if viewer {
            Some(Role::Viewer)
        } else {
            None
        }
    }

    /// The best role any token the request carries gives: its bearer
    /// header, its `access_token` query, its cookie.
    pub(crate) fn role(&self, headers: &HeaderMap, query_token: Option<&str>) -> Option<Role> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let cookie = cookie_token(headers);
        [bearer, query_token, cookie.as_deref()]
            .into_iter()
            .flatten()
            .filter_map(|token| self.role_of(token))
            .min_by_key(|role| match role {
                Role::Operator => 0,
                Role::Approver(_) => 1,
                Role::Viewer => 2,
            })
    }
}

/// The token in the request's `muster_access` cookie.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// The `Set-Cookie` that keeps `token` for the page: not readable by
/// scripts, not sent by other sites, for this host's paths only.
pub(crate) fn set_cookie(token: &str) -> Option<HeaderValue> {
    // A token the cookie syntax cannot carry is not kept (the page then
    // asks for it again); generated tokens are URL-safe.
    let safe = token
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"' | b'\\'));
    if !safe {
        return None;
    }
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        Access::new(digest("run-token"), Some("view-token"), Default::default())
    }

    fn with(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn each_token_gives_its_role_and_nothing_else_gives_one() {
        let access = access();
        assert_eq!(access.role_of("run-token"), Some(Role::Operator));
        assert_eq!(access.role_of("view-token"), Some(Role::Viewer));
        assert_eq!(access.role_of("view-toke"), None);
        assert_eq!(access.role_of(""), None);
        let no_viewer = Access::new(digest("run-token"), None, Default::default());
        assert_eq!(no_viewer.role_of("view-token"), None);
    }

    #[test]
    fn tokens_come_from_bearer_query_or_cookie_and_the_best_role_wins() {
        let access = access();
        let empty = HeaderMap::new();
        assert_eq!(access.role(&empty, None), None);
        assert_eq!(access.role(&empty, Some("view-token")), Some(Role::Viewer));
        let bearer = with(header::AUTHORIZATION, "Bearer run-token");
        assert_eq!(
            access.role(&bearer, Some("view-token")),
            Some(Role::Operator)
        );
        let cookie = with(header::COOKIE, "theme=dark; muster_access=view-token");
        assert_eq!(access.role(&cookie, None), Some(Role::Viewer));
        let wrong = with(header::COOKIE, "muster_access=guess");
        assert_eq!(access.role(&wrong, Some("other")), None);
    }

    #[test]
    fn the_cookie_is_http_only_and_refuses_what_would_break_it() {
        let value = set_cookie("abc-123_XYZ").unwrap();
        let text = value.to_str().unwrap();
        assert!(text.starts_with("muster_access=abc-123_XYZ;"));
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Strict"));
        assert!(set_cookie("a;b").is_none());
        assert!(set_cookie("a b").is_none());
    }
}
