//! Channel / key templates and the hash-tagged keys.

use gleepost_event::{
    epoch_key, history_key, Template, TemplateError, DEFAULT_CHANNELS, DEFAULT_TOKEN_KEY,
    PROBE_CHANNEL_PREFIX,
};

#[test]
fn defaults_parse() {
    assert_eq!(DEFAULT_CHANNELS, &["c:{id}", "n:{id}"]);
    for c in DEFAULT_CHANNELS {
        Template::parse_channel(c).unwrap();
    }
    let t = Template::parse_token_key(DEFAULT_TOKEN_KEY).unwrap();
    assert_eq!(t.render_token(9, "abc"), "users:9:token:abc");
    assert_eq!(t.to_string(), DEFAULT_TOKEN_KEY);
}

#[test]
fn render() {
    let t = Template::parse("c:{id}").unwrap();
    assert_eq!(t.render_id(9), "c:9");
    assert_eq!(t.render_id(0), "c:0");
    assert_eq!(t.render_id(u64::MAX), "c:18446744073709551615");
    let t: Template = "{id}:x".parse().unwrap();
    assert_eq!(t.render_id(7), "7:x");
    assert_eq!(t.as_str(), "{id}:x");
}

#[test]
fn parse_errors() {
    assert_eq!(
        Template::parse("c:"),
        Err(TemplateError::MissingId("c:".into()))
    );
    assert_eq!(
        Template::parse("c:{user}"),
        Err(TemplateError::UnknownPlaceholder {
            template: "c:{user}".into(),
            name: "user".into()
        })
    );
    assert!(Template::parse("c:{user}")
        .unwrap_err()
        .to_string()
        .contains("{user}"));
    assert_eq!(
        Template::parse("c:{}{id}"),
        Err(TemplateError::UnknownPlaceholder {
            template: "c:{}{id}".into(),
            name: String::new()
        })
    );
    for bad in ["c:{id", "c:id}{id}", "c:{{id}}", "{id}}"] {
        assert_eq!(
            Template::parse(bad),
            Err(TemplateError::UnbalancedBrace(bad.into())),
            "{bad}"
        );
    }
    assert!(matches!(
        Template::parse("{id}:{id}"),
        Err(TemplateError::DuplicatePlaceholder { name: "id", .. })
    ));
    assert_eq!(
        Template::parse_token_key("users:{id}"),
        Err(TemplateError::MissingToken("users:{id}".into()))
    );
    assert_eq!(
        Template::parse_channel("c:{id}:{token}"),
        Err(TemplateError::UnexpectedToken("c:{id}:{token}".into()))
    );
    assert_eq!(
        Template::parse("users:{token}"),
        Err(TemplateError::MissingId("users:{token}".into()))
    );
}

#[test]
fn match_id() {
    let c = Template::parse("c:{id}").unwrap();
    assert_eq!(c.match_id(b"c:9"), Some(9));
    assert_eq!(c.match_id(b"c:0"), Some(0));
    assert_eq!(c.match_id(b"c:18446744073709551615"), Some(u64::MAX));
    for bad in [
        &b"c:18446744073709551616"[..], // overflow
        b"c:99999999999999999999999",
        b"c:12x",
        b"c:x12",
        b"c:",
        b"c:-1",
        b"c:+1",
        b"c:09",
        b"c:00",
        b"c: 9",
        b"n:9",
        b"cc:9",
        b"c:9\n",
        b"",
        b"c",
    ] {
        assert_eq!(c.match_id(bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
    let n = Template::parse("n:{id}").unwrap();
    assert_eq!(n.match_id(b"c:9"), None);
    assert_eq!(n.match_id(b"n:9"), Some(9));
    for id in [1, 10, 2147, u64::MAX - 1] {
        assert_eq!(c.match_id(c.render_id(id).as_bytes()), Some(id));
    }
}

#[test]
fn match_id_with_suffix_and_prefix_collisions() {
    let t = Template::parse("user.{id}.events").unwrap();
    assert_eq!(t.match_id(b"user.42.events"), Some(42));
    assert_eq!(t.match_id(b"user.42.eventsx"), None);
    assert_eq!(t.match_id(b"user.42x.events"), None);
    assert_eq!(t.match_id(b"user..events"), None);
    assert_eq!(t.match_id(b"user.events"), None);
    let bare = Template::parse("{id}").unwrap();
    assert_eq!(bare.match_id(b"123"), Some(123));
    assert_eq!(bare.match_id(b"c:123"), None);
    let suffix_only = Template::parse("{id}:c").unwrap();
    assert_eq!(suffix_only.match_id(b"5:c"), Some(5));
    assert_eq!(suffix_only.match_id(b"5:cc"), None);
    // Templates with a token never match channels.
    let tok = Template::parse("u:{id}:{token}").unwrap();
    assert_eq!(tok.match_id(b"u:1:"), None);
    assert_eq!(tok.render_id(1), "u:1:");
}

#[test]
fn hash_tagged_keys() {
    assert_eq!(history_key(9), "gp:hist:{9}");
    assert_eq!(epoch_key(9), "gp:epoch:{9}");
    assert_eq!(history_key(u64::MAX), "gp:hist:{18446744073709551615}");
    assert_eq!(epoch_key(0), "gp:epoch:{0}");
    assert_eq!(gleepost_event::keys::revoked_key(10), "gp:revoked:{10}");
    assert_eq!(gleepost_event::keys::presence_key(7), "gp:presence:{7}");
    // Same hash tag => same Redis Cluster slot.
    let tag = |k: &str| {
        let open = k.find('{').unwrap();
        let close = open + k[open..].find('}').unwrap();
        k[open + 1..close].to_owned()
    };
    assert_eq!(tag(&history_key(2147)), tag(&epoch_key(2147)));
    assert_eq!(PROBE_CHANNEL_PREFIX, "gp:probe:");
}

#[test]
fn user_channels_carry_the_hash_tag_of_the_history_keys() {
    use gleepost_event::keys::{history_key, parse_user_channel, user_channel};
    assert_eq!(user_channel(9), "gp:user:{9}");
    assert_eq!(history_key(9), "gp:hist:{9}");
    for user in [0, 9, u64::MAX] {
        assert_eq!(
            parse_user_channel(user_channel(user).as_bytes()),
            Some(user)
        );
    }
    for bad in [
        &b"gp:user:{}"[..],
        b"gp:user:9",
        b"gp:user:{9",
        b"gp:user:{+9}",
        b"gp:user:{18446744073709551616}",
        b"c:9",
        b"gp:user:{9}x",
    ] {
        assert_eq!(parse_user_channel(bad), None, "{bad:?}");
    }
}

#[test]
fn slots_follow_hash_tags() {
    use gleepost_event::keys::{slot_of, user_channel};
    // Values of CLUSTER KEYSLOT (Redis 7.0).
    assert_eq!(slot_of(b"foo"), 12182);
    assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
    assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
    assert_eq!(slot_of(b"gp:hist:{9}"), slot_of(b"9"));
    assert_eq!(
        slot_of(user_channel(9).as_bytes()),
        slot_of(b"gp:epoch:{9}")
    );
}
