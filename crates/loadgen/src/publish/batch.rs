//! `POST /v1/publish/batch` bodies and replies (`--publish http-batch`).
//!
//! Request: `{"items":[{"users":[<uid>],"event":{…}}, …]}`, one item per event. A 200 reply is
//! `{"published":<user copies>,"results":[…]}` with one result per item, in item order:
//! `{"published":1,"ids":{…},"online":{…}}` for an accepted item, `{"error":"<reason>"}` for a
//! refused one. Any other status fails every item of the request.

use serde::Deserialize;

use super::{push_u64, EventSpec};

/// Appends the request body for `jobs` (`(user index, sequence, t)`).
pub(crate) fn write_body(
    out: &mut Vec<u8>,
    spec: &EventSpec,
    first_user: u64,
    jobs: &[(u32, u64, u64)],
) {
    out.extend_from_slice(b"{\"items\":[");
    for (i, &(ui, seq, t)) in jobs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let user = first_user + u64::from(ui);
        out.extend_from_slice(b"{\"users\":[");
        push_u64(out, user);
        out.extend_from_slice(b"],\"event\":");
        spec.write_event(out, seq, t, user);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

#[derive(Deserialize)]
struct Reply {
    results: Vec<ItemResult>,
}

/// One item's result; `ids` and `online` are not needed and skipped by serde.
#[derive(Deserialize)]
struct ItemResult {
    #[serde(default)]
    published: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    error: Option<String>,
}

/// Per-item outcome of a 200 reply for `items` items: `Ok(())` for an accepted item, the reason
/// for a refused one. A reply that is not JSON of the documented shape, or holds another number
/// of results than items, is an error of the whole request.
pub(crate) fn parse_reply(body: &[u8], items: usize) -> Result<Vec<Result<(), String>>, String> {
    let reply: Reply = serde_json::from_slice(body).map_err(|e| {
        let shown = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        format!("batch reply is not {{\"results\":[…]}} ({e}): {shown}")
    })?;
    if reply.results.len() != items {
        return Err(format!(
            "batch reply holds {} results for {items} items",
            reply.results.len()
        ));
    }
    Ok(reply
        .results
        .into_iter()
        .map(|r| match (r.error, r.published) {
            (Some(e), _) => Err(format!("batch item refused: {e}")),
            (None, Some(_)) => Ok(()),
            (None, None) => Err("batch item result without published or error".to_string()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_holds_one_item_per_event_in_order() {
        let spec = EventSpec::new("bench", 0);
        let mut out = Vec::new();
        write_body(&mut out, &spec, 10, &[(0, 1, 5), (3, 7, 6)]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let items = v["items"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0]["users"], serde_json::json!([10]));
        assert_eq!(items[0]["event"]["data"]["seq"], 1);
        assert_eq!(items[0]["event"]["data"]["t"], 5);
        assert_eq!(items[1]["users"], serde_json::json!([13]));
        assert_eq!(items[1]["event"]["data"]["u"], 13);
        assert_eq!(items[1]["event"]["type"], "bench");
    }

    #[test]
    fn replies_are_read_per_item() {
        let body = br#"{"published":2,"results":[
            {"published":1,"ids":{"9":"1-0"},"online":{"9":true}},
            {"error":"event too large"},
            {"published":1,"online":{"11":false}}]}"#;
        let r = parse_reply(body, 3).unwrap();
        assert_eq!(r[0], Ok(()));
        assert_eq!(r[1], Err("batch item refused: event too large".to_string()));
        assert_eq!(r[2], Ok(()));
        assert!(parse_reply(body, 2)
            .unwrap_err()
            .contains("3 results for 2 items"));
        assert!(parse_reply(b"{\"ok\":true}", 1).is_err());
        assert!(parse_reply(br#"{"results":[{}]}"#, 1).unwrap()[0].is_err());
    }
}
