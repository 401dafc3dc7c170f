//! Unit tests of the Sentinel connection that need no server: `ROLE` replies and settings.

use super::*;

#[test]
fn roles_and_readonly_replies_are_recognised() {
    let master = Value::Array(vec![Value::BulkString(b"master".to_vec()), Value::Int(0)]);
    assert_eq!(role_name(&master).as_deref(), Some("master"));
    let replica = Value::Array(vec![Value::BulkString(b"slave".to_vec())]);
    assert_eq!(role_name(&replica).as_deref(), Some("slave"));
    assert_eq!(role_name(&Value::Int(1)), None);
    assert!(!readonly_reply(&Value::Okay));
}

#[test]
fn an_empty_sentinel_list_is_refused() {
    let err = SentinelConn::new(&[], "m", RedisConnectionInfo::default(), Duration::ZERO);
    assert!(err.is_err());
    let conn = SentinelConn::new(
        &["redis://127.0.0.1:26379".to_string()],
        "m",
        RedisConnectionInfo::default().set_password("p"),
        Duration::from_secs(1),
    )
    .unwrap();
    let info = conn.node_info(&("10.0.0.1".to_string(), 6380));
    assert_eq!(
        info.addr(),
        &ConnectionAddr::Tcp("10.0.0.1".to_string(), 6380)
    );
    assert_eq!(info.redis_settings().password(), Some("p"));
}
