//! Redis channel and key naming.
//!
//! Channel and token-key names are configurable [`Template`]s such as `c:{id}` or
//! `users:{id}:token:{token}` (the names the original Gleepost backend used, see
//! [`DEFAULT_CHANNELS`] and [`DEFAULT_TOKEN_KEY`]).
//!
//! Keys introduced by the gateway itself ([`history_key`], [`epoch_key`]) put the user id inside a
//! Redis Cluster *hash tag* (`{…}`): Redis Cluster hashes only the part between the first `{` and
//! the following `}`, so every such key of one user maps to the same slot. That keeps multi-key
//! operations on one user's keys (scripts, `MULTI`) legal on a cluster and on a single node alike.

use std::fmt;
use std::str::FromStr;

/// Default channel templates the gateway subscribes to for each user: `c:{id}` (messages and
/// conversation events) and `n:{id}` (notifications, video-ready).
pub const DEFAULT_CHANNELS: &[&str] = &["c:{id}", "n:{id}"];
/// Default template of the Redis key whose existence makes a Gleepost token valid.
pub const DEFAULT_TOKEN_KEY: &str = "users:{id}:token:{token}";
/// Prefix of the channels used by gateway nodes to probe the broker end to end (readiness).
pub const PROBE_CHANNEL_PREFIX: &str = "gp:probe:";

/// Error parsing a [`Template`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template has no `{id}` placeholder.
    #[error("template {0:?} must contain {{id}}")]
    MissingId(String),
    /// A token-key template has no `{token}` placeholder.
    #[error("token key template {0:?} must contain {{token}}")]
    MissingToken(String),
    /// A channel template contains `{token}`.
    #[error("channel template {0:?} must not contain {{token}}")]
    UnexpectedToken(String),
    /// A placeholder other than `{id}` / `{token}`.
    #[error(
        "template {template:?} has unknown placeholder {{{name}}}; known are {{id}} and {{token}}"
    )]
    UnknownPlaceholder {
        /// The template.
        template: String,
        /// The unknown placeholder name.
        name: String,
    },
    /// A placeholder appears more than once.
    #[error("template {template:?} contains {{{name}}} more than once")]
    DuplicatePlaceholder {
        /// The template.
        template: String,
        /// The repeated placeholder name.
        name: &'static str,
    },
    /// A `{` without `}` or a `}` without `{`.
    #[error("template {0:?} has an unbalanced brace")]
    UnbalancedBrace(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Id,
    Token,
}

/// A parsed name template with an `{id}` and optionally a `{token}` placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses a template. It must contain `{id}` exactly once and may contain `{token}` at most
    /// once; any other `{placeholder}` or an unbalanced brace is an error.
    pub fn parse(s: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = s;
        let (mut ids, mut tokens) = (0, 0);
        while !rest.is_empty() {
            let open = rest.find('{');
            let close = rest.find('}');
            match (open, close) {
                (None, None) => {
                    parts.push(Part::Lit(rest.to_owned()));
                    break;
                }
                (Some(o), Some(c)) if o < c => {
                    if o > 0 {
                        parts.push(Part::Lit(rest[..o].to_owned()));
                    }
                    let name = &rest[o + 1..c];
                    match name {
                        "id" => {
                            ids += 1;
                            parts.push(Part::Id);
                        }
                        "token" => {
                            tokens += 1;
                            parts.push(Part::Token);
                        }
                        _ if name.contains('{') => {
                            return Err(TemplateError::UnbalancedBrace(s.to_owned()))
                        }
                        _ => {
                            return Err(TemplateError::UnknownPlaceholder {
                                template: s.to_owned(),
                                name: name.to_owned(),
                            })
                        }
                    }
                    rest = &rest[c + 1..];
                }
                _ => return Err(TemplateError::UnbalancedBrace(s.to_owned())),
            }
        }
        for (count, name) in [(ids, "id"), (tokens, "token")] {
            if count > 1 {
                return Err(TemplateError::DuplicatePlaceholder {
                    template: s.to_owned(),
                    name,
                });
            }
        }
        if ids == 0 {
            return Err(TemplateError::MissingId(s.to_owned()));
        }
        Ok(Template {
            source: s.to_owned(),
            parts,
        })
    }

    /// Parses a channel template: like [`Template::parse`], but `{token}` is rejected.
    pub fn parse_channel(s: &str) -> Result<Template, TemplateError> {
        let t = Template::parse(s)?;
        if t.has_token() {
            return Err(TemplateError::UnexpectedToken(s.to_owned()));
        }
        Ok(t)
    }

    /// Parses a token-key template: like [`Template::parse`], but `{token}` is required.
    pub fn parse_token_key(s: &str) -> Result<Template, TemplateError> {
        let t = Template::parse(s)?;
        if !t.has_token() {
            return Err(TemplateError::MissingToken(s.to_owned()));
        }
        Ok(t)
    }

    /// The template text as given.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the template contains `{token}`.
    pub fn has_token(&self) -> bool {
        self.parts.contains(&Part::Token)
    }

    /// Renders the name for a user. A `{token}` placeholder, if any, renders as empty.
    pub fn render_id(&self, user: u64) -> String {
        self.render_token(user, "")
    }

    /// Renders the name for a user and token (e.g. `users:9:token:abc`).
    pub fn render_token(&self, user: u64, token: &str) -> String {
        let mut out = String::with_capacity(self.source.len() + 20 + token.len());
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Id => {
                    use fmt::Write;
                    // Infallible: fmt::Write for String never returns an error.
                    let _ = write!(out, "{user}");
                }
                Part::Token => out.push_str(token),
            }
        }
        out
    }

    /// Recognises a channel rendered by [`Template::render_id`] and returns its user id.
    ///
    /// Only canonical decimal ids match (no sign, no leading zeros, fits in `u64`). Always `None`
    /// for templates containing `{token}`. Does not allocate.
    pub fn match_id(&self, channel: &[u8]) -> Option<u64> {
        let (prefix, suffix) = match self.parts.as_slice() {
            [Part::Id] => ("", ""),
            [Part::Lit(p), Part::Id] => (p.as_str(), ""),
            [Part::Id, Part::Lit(s)] => ("", s.as_str()),
            [Part::Lit(p), Part::Id, Part::Lit(s)] => (p.as_str(), s.as_str()),
            _ => return None,
        };
        let digits = channel
            .strip_prefix(prefix.as_bytes())?
            .strip_suffix(suffix.as_bytes())?;
        parse_canonical_u64(digits)
    }
}

/// Parses a canonical decimal `u64`: non-empty, ASCII digits only, no leading zero (except "0").
fn parse_canonical_u64(digits: &[u8]) -> Option<u64> {
    match digits {
        [] => None,
        [b'0'] => Some(0),
        [b'0', ..] => None,
        _ => digits.iter().try_fold(0u64, |acc, &b| {
            if !b.is_ascii_digit() {
                return None;
            }
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        }),
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for Template {
    type Err = TemplateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Template::parse(s)
    }
}

/// Prefix of the gateway's own per-user channels ([`user_channel`]).
const USER_CHANNEL_PREFIX: &str = "gp:user:{";

/// The channel the gateway's own publishers (the publish API, [`crate::Publisher`]) use for a
/// user: `gp:user:{<id>}`, hash-tagged like the user's history keys, so the publish script can
/// publish to it on a cluster too. Only events arriving on it carry ids the gateway trusts for
/// deduplication and gap repair; the legacy channels ([`DEFAULT_CHANNELS`]) are delivered
/// verbatim and any `id` inside their payloads is never interpreted.
pub fn user_channel(user: u64) -> String {
    tagged(USER_CHANNEL_PREFIX, user)
}

/// `<prefix><user>}`: a per-user name whose id is its hash tag. Built directly rather than with
/// `format!`, whose formatting machinery cost ≈ 700 instructions per name in callgrind: the
/// publish path builds three names per user copy.
fn tagged(prefix: &str, user: u64) -> String {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(user);
    let mut name = String::with_capacity(prefix.len() + digits.len() + 1);
    name.push_str(prefix);
    name.push_str(digits);
    name.push('}');
    name
}

/// The user of a [`user_channel`] name (`None` for any other channel).
pub fn parse_user_channel(channel: &[u8]) -> Option<u64> {
    let digits = channel
        .strip_prefix(USER_CHANNEL_PREFIX.as_bytes())?
        .strip_suffix(b"}")?;
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Redis Cluster slots.
pub const SLOTS: u16 = 16_384;

/// The Redis Cluster slot of a key or shard channel: CRC16 (XMODEM) of its hash tag (the part
/// between the first `{` and the next `}`, when not empty) or of the whole name, mod 16384.
pub fn slot_of(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % SLOTS
}

/// Key of a user's event history: `gp:hist:{<id>}`.
///
/// The id is a Redis Cluster hash tag so all `gp:*:{<id>}` keys of one user share a slot.
pub fn history_key(user: u64) -> String {
    tagged("gp:hist:{", user)
}

/// Key of a user's history epoch: `gp:epoch:{<id>}`.
///
/// The id is a Redis Cluster hash tag, so it lands in the same slot as [`history_key`] and both
/// can be updated atomically by one script.
pub fn epoch_key(user: u64) -> String {
    tagged("gp:epoch:{", user)
}

/// The payload that, published to a user's [`user_channel`], makes every gateway node close
/// that user's connections (close code 4003). It is not JSON, so it can never be an event.
pub const DISCONNECT_PAYLOAD: &[u8] = b"gp:disconnect";

/// Key of a user's token revocation: `gp:revoked:{<id>}`, the unix time (s) before which the
/// user's JWTs were issued are refused (in the user's slot on a cluster).
pub fn revoked_key(user: u64) -> String {
    tagged("gp:revoked:{", user)
}

/// Key of a user's presence: `gp:presence:{<id>}`, a hash of gateway node name → the number of
/// that node's connections of the user (in the user's slot on a cluster).
pub fn presence_key(user: u64) -> String {
    tagged("gp:presence:{", user)
}

/// Key that exists while gateway node `node` is alive (its presence counts count only then).
pub fn node_key(node: &str) -> String {
    format!("gp:node:{node}")
}
