//! URLs made fit for messages: whatever a URL carries before an `@` (a
//! password, a token) is replaced, keeping the user's name.

/// `url` (or a comma-separated list of URLs, as NATS takes) without its
/// passwords or tokens. Each `@` hides everything back to the `://` before
/// it, or the start: a password with an unencoded `,` or `/` in it is hidden
/// whole, at the cost of hiding more than it has to in a list without schemes.
pub fn redact_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(at) = rest.find('@') {
        let (before, after) = rest.split_at(at);
        let start = before.rfind("://").map_or(0, |i| i + 3);
        let (kept, userinfo) = before.split_at(start);
        out.push_str(kept);
        match userinfo.split_once(':') {
            // A user and password: the user stays.
            Some((user, _)) if !userinfo.contains(',') => {
                out.push_str(user);
                out.push_str(":***");
            }
            // A token alone, or more than one server's worth of text.
            _ => out.push_str("***"),
        }
        rest = after;
        // The `@` itself, then on past it.
        out.push('@');
        rest = rest.get(1..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_and_tokens_never_reach_messages() {
        assert_eq!(redact_url("postgres://u:hunter2@db:5432/x"), "postgres://u:***@db:5432/x");
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
        assert_eq!(redact_url("nats://s3cr3t@nats:4222"), "nats://***@nats:4222");
        assert_eq!(
            redact_url("nats://u:p1@a:4222,tls://u:p2@b:4222,c:4222"),
            "nats://u:***@a:4222,tls://u:***@b:4222,c:4222"
        );
        // Unencoded separators in a password: hidden whole.
        assert_eq!(redact_url("nats://u:pa,ss@h:4222"), "nats://***@h:4222");
        assert_eq!(redact_url("postgres://u:a@b@db/x"), "postgres://u:***@***@db/x");
        assert_eq!(redact_url("u:p@a:1,v:q@b:2"), "u:***@***@b:2");
        assert_eq!(redact_url("postgres://u:p@h1:5432,h2:5432/db"), "postgres://u:***@h1:5432,h2:5432/db");
    }
}
