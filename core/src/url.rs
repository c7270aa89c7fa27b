//! URLs as text, made safe to print: the hub's (with its token) and
//! Redis's (with its password) lose their secrets before anyone shows them.
//! The URLs of the hub's endpoints are built in [`crate::wire::http`].
//!
//! No I/O and no parsing beyond what these need: a URL that is not quite
//! valid is still redacted (it is most likely to be printed in an error).

/// Query parameters whose values are secrets (compared without regard to
/// case, after percent-decoding, as the hub reads them): the hub's token,
/// and the password forms Redis URLs take.
const SECRET_PARAMETERS: &[&str] = &["access_token", "token", "pass", "password"];

/// `url` as it may be printed: the password of its user info (or a lone
/// user part, which is how tokens are often passed, `https://TOKEN@host`)
/// and the values of its `access_token`, `token`, `pass` and `password`
/// query (or fragment) parameters become `***`. Everything else is kept as written.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (main, tail) = rest.split_at(rest.find(['?', '#']).unwrap_or(rest.len()));
    // The user info ends at the last '@' before the query or fragment: a
    // password written without escaping may itself hold '/' or '@'. A
    // path holding '@' is then hidden too, which errs on the safe side.
    let main = match (scheme, main.rfind('@')) {
        (Some(_), Some(at)) => {
            let user = match main[..at].split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_owned(),
            };
            format!("{user}@{}", &main[at + 1..])
        }
        _ => main.to_owned(),
    };
    let (query, fragment) = tail.split_at(tail.find('#').unwrap_or(tail.len()));
    let mut shown = String::with_capacity(url.len());
    if let Some(scheme) = scheme {
        shown.push_str(scheme);
        shown.push_str("://");
    }
    shown.push_str(&main);
    if let Some(query) = query.strip_prefix('?') {
        shown.push('?');
        shown.push_str(&redact_parameters(query));
    }
    if let Some(fragment) = fragment.strip_prefix('#') {
        shown.push('#');
        shown.push_str(&redact_parameters(fragment));
    }
    shown
}

/// `a=1&access_token=x` → `a=1&access_token=***`; separators and the
/// other pairs are kept as written.
fn redact_parameters(pairs: &str) -> String {
    pairs
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !value.is_empty() && is_secret(key) => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn is_secret(key: &str) -> bool {
    let key = percent_decoded(key);
    SECRET_PARAMETERS
        .iter()
        .any(|secret| key.eq_ignore_ascii_case(secret))
}

/// A query key as a form decoder reads it: `+` is a space, `%XX` a byte.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => decoded.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    decoded.push((high * 16 + low) as u8);
                    i += 2;
                }
                _ => decoded.push(b'%'),
            },
            byte => decoded.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_urls_never_show() {
        let cases = [
            // Nothing to hide.
            ("http://10.0.0.5:7400/hub", "http://10.0.0.5:7400/hub"),
            ("wss://h.example/hub/", "wss://h.example/hub/"),
            ("not a url", "not a url"),
            ("", ""),
            ("http://h/hub?id=abc&x", "http://h/hub?id=abc&x"),
            // Query tokens, wherever they stand and however they are spelt.
            (
                "http://h/hub?access_token=s3cret",
                "http://h/hub?access_token=***",
            ),
            (
                "http://h/hub?id=1&token=s3cret&x=2",
                "http://h/hub?id=1&token=***&x=2",
            ),
            (
                "http://h/hub?Access_Token=s3cret",
                "http://h/hub?Access_Token=***",
            ),
            (
                "http://h/hub?access%5Ftoken=s3cret",
                "http://h/hub?access%5Ftoken=***",
            ),
            (
                "http://h/hub?access_token=a&access_token=b",
                "http://h/hub?access_token=***&access_token=***",
            ),
            ("http://h/hub?token=", "http://h/hub?token="),
            ("http://h/hub?tokens=x", "http://h/hub?tokens=x"),
            (
                "http://h/hub/?access_token=s3cret#frag",
                "http://h/hub/?access_token=***#frag",
            ),
            (
                "http://h/cb#access_token=s3cret&state=1",
                "http://h/cb#access_token=***&state=1",
            ),
            // A URL missing its scheme still hides its query token.
            (
                "h:7400/hub?access_token=s3cret",
                "h:7400/hub?access_token=***",
            ),
            // User info: the password, or a lone user part.
            (
                "https://user:s3cret@h.example/hub",
                "https://user:***@h.example/hub",
            ),
            ("https://s3cret@h.example/hub", "https://***@h.example/hub"),
            (
                "http://u:p@ss/w0rd@h:1/hub?token=t",
                "http://u:***@h:1/hub?token=***",
            ),
            ("http://:s3cret@h/hub", "http://:***@h/hub"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "redact_url({url:?})");
            for secret in ["s3cret", "p@ss"] {
                assert!(!redact_url(url).contains(secret), "{url:?}");
            }
        }
    }

    #[test]
    fn keys_decode_as_a_form_decoder_reads_them() {
        let cases = [
            ("access%5Ftoken", "access_token"),
            ("a+b", "a b"),
            ("100%", "100%"),
            ("%zz", "%zz"),
            ("%4", "%4"),
            ("%41", "A"),
        ];
        for (raw, decoded) in cases {
            assert_eq!(percent_decoded(raw), decoded, "{raw:?}");
        }
    }
}
