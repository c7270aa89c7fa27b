//! The live dashboard at `/` on the hub's port: one self-contained page
//! (`page.html`, no build step, nothing fetched from elsewhere) that
//! follows the run over a WebSocket on the same port. It reads the same
//! records the journal holds, once they are durable (`JournalFeed`), so
//! a run without a journal has no dashboard. The same page, with a
//! finished run's records and logs written into it, is the offline report
//! (`muster report --html`).
//!
//! `access.rs` says who may look (run token: operator; viewer token:
//! viewer), `routes.rs` serves the page, the feed and the Cancel button,
//! `viewer.rs` is one viewer's socket.

mod access;
mod routes;
mod viewer;

use std::collections::BTreeMap;

pub(crate) use access::Access;
pub(crate) use routes::{routes, DashboardState};

/// The page, as served live.
pub const PAGE: &str = include_str!("page.html");

/// Where an offline page's data goes: the page looks for it before it
/// connects anywhere.
const OFFLINE_MARKER: &str = "<!--muster-offline-->";

/// The page as one static file: `records` (journal lines, one JSON object
/// each) and each module's log written into it, to open offline.
pub fn offline_page(records: &[u8], logs: &BTreeMap<String, String>) -> String {
    let text = String::from_utf8_lossy(records);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let data = serde_json::json!({ "records": lines, "logs": logs }).to_string();
    // Inside a <script> element only "</" (and "<!--") could end or bend
    // it; JSON lets every '<' be written as an escape.
    let data = data.replace('<', "\\u003c");
    let script = format!("<script id=\"muster-offline\" type=\"application/json\">{data}</script>");
    PAGE.replacen(OFFLINE_MARKER, &script, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained_and_small() {
        assert!(PAGE.len() < 150 * 1024, "{} bytes", PAGE.len());
        assert!(PAGE.contains(OFFLINE_MARKER));
        for outside in ["http://", "https://", "//cdn", "@import"] {
            let found = PAGE
                .match_indices(outside)
                .map(|(i, _)| &PAGE[i.saturating_sub(40)..(i + 40).min(PAGE.len())])
                .find(|around| !around.contains("location.protocol") && !around.contains("xmlns"));
            assert!(found.is_none(), "the page reaches outside: {found:?}");
        }
    }

    #[test]
    fn offline_data_cannot_close_its_script() {
        let logs = BTreeMap::from([(
            "m".to_owned(),
            "</script><script>alert(1)</script>".to_owned(),
        )]);
        let page = offline_page(b"{\"seq\":1,\"module\":\"</script>\"}\n", &logs);
        let start = page.find("id=\"muster-offline\"").unwrap();
        let body = &page[start..];
        let end = body.find("</script>").unwrap();
        let data = &body[body.find('>').unwrap() + 1..end];
        let value: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(value["records"][0]["module"], "</script>");
        assert_eq!(value["logs"]["m"], "</script><script>alert(1)</script>");
        assert!(!page.contains(OFFLINE_MARKER));
    }
}
