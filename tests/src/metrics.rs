//! A strict parser of the Prometheus text exposition format (0.0.4) and bounded waits on metric
//! values, so tests can check both that `/metrics` is well formed and that counters move.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::gateway::Gateway;

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name (e.g. `gleepost_gateway_delivery_latency_seconds_bucket`).
    pub name: String,
    /// Labels in the order written.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// A label's value.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed `/metrics` page.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    /// `# TYPE` of each family.
    pub types: HashMap<String, String>,
    /// `# HELP` of each family.
    pub help: HashMap<String, String>,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Parse strictly: every non-comment line is `name{labels} value [timestamp]` with a valid
    /// float value; every sample belongs to a family declared by an earlier `# TYPE` line
    /// (`_bucket`/`_sum`/`_count` for histograms, `_sum`/`_count` for summaries); each family is
    /// declared once; histogram buckets are cumulative and end with `le="+Inf"` equal to `_count`.
    pub fn parse(text: &str) -> Result<Exposition> {
        let mut out = Exposition::default();
        ensure!(
            text.is_empty() || text.ends_with('\n'),
            "exposition does not end with a newline"
        );
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if let Some(rest) = line.strip_prefix('#') {
                let mut parts = rest.trim_start().splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        check_name(name).with_context(|| format!("line {n}: {line}"))?;
                        ensure!(
                            matches!(
                                kind,
                                "counter" | "gauge" | "histogram" | "summary" | "untyped"
                            ),
                            "line {n}: unknown metric type {kind:?}"
                        );
                        ensure!(
                            !out.samples.iter().any(|s| family_base(&s.name) == name),
                            "line {n}: # TYPE {name} after its samples"
                        );
                        ensure!(
                            out.types
                                .insert(name.to_string(), kind.to_string())
                                .is_none(),
                            "line {n}: family {name} declared twice"
                        );
                    }
                    (Some("HELP"), Some(name), help) => {
                        check_name(name).with_context(|| format!("line {n}: {line}"))?;
                        ensure!(
                            out.help
                                .insert(name.to_string(), help.unwrap_or_default().to_string())
                                .is_none(),
                            "line {n}: two # HELP lines for {name}"
                        );
                    }
                    _ => {} // a plain comment
                }
                continue;
            }
            ensure!(!line.trim().is_empty(), "line {n}: empty line");
            let sample = parse_sample(line).with_context(|| format!("line {n}: {line:?}"))?;
            out.family_of(&sample.name)
                .with_context(|| format!("line {n}: sample {} has no # TYPE", sample.name))?;
            out.samples.push(sample);
        }
        out.check_histograms()?;
        Ok(out)
    }

    /// The family a sample name belongs to and its type.
    pub fn family_of(&self, sample: &str) -> Option<(&str, &str)> {
        if let Some((name, kind)) = self.types.get_key_value(sample) {
            return Some((name, kind));
        }
        for (suffix, kinds) in [
            ("_bucket", &["histogram"][..]),
            ("_sum", &["histogram", "summary"][..]),
            ("_count", &["histogram", "summary"][..]),
        ] {
            if let Some(base) = sample.strip_suffix(suffix) {
                if let Some((name, kind)) = self.types.get_key_value(base) {
                    if kinds.contains(&kind.as_str()) {
                        return Some((name, kind));
                    }
                }
            }
        }
        None
    }

    /// The value of the sample `name` with exactly these labels (`&[]` for none).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| s.label(k) == Some(v))
            })
            .map(|s| s.value)
    }

    /// Every histogram series (one per label set besides `le`): buckets in increasing `le`
    /// order, cumulative, ending at `+Inf` equal to its `_count`, with a `_sum`.
    fn check_histograms(&self) -> Result<()> {
        for (family, kind) in &self.types {
            if kind != "histogram" {
                continue;
            }
            let bucket_name = format!("{family}_bucket");
            // Per label set (without `le`), its buckets in page order.
            let mut series: Vec<(Labels, Vec<&Sample>)> = Vec::new();
            for b in self.samples.iter().filter(|s| s.name == bucket_name) {
                let key: Labels = b
                    .labels
                    .iter()
                    .filter(|(k, _)| k != "le")
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                match series.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, buckets)) => buckets.push(b),
                    None => series.push((key, vec![b])),
                }
            }
            for (labels, buckets) in &series {
                let mut last = f64::NEG_INFINITY;
                let mut last_le = f64::NEG_INFINITY;
                for b in buckets {
                    let le = b.label("le").context("histogram bucket without `le`")?;
                    let le: f64 = parse_float(le).with_context(|| format!("bad le {le:?}"))?;
                    ensure!(
                        le > last_le,
                        "{family}{labels:?}: buckets not in increasing `le` order"
                    );
                    ensure!(
                        b.value >= last,
                        "{family}{labels:?}: buckets are not cumulative"
                    );
                    last = b.value;
                    last_le = le;
                }
                ensure!(
                    last_le.is_infinite(),
                    "{family}{labels:?}: no le=\"+Inf\" bucket"
                );
                let count = self
                    .get(&format!("{family}_count"), labels)
                    .with_context(|| format!("{family}{labels:?}: no _count"))?;
                ensure!(
                    count == last,
                    "{family}{labels:?}: +Inf bucket {last} != _count {count}"
                );
                ensure!(
                    self.get(&format!("{family}_sum"), labels).is_some(),
                    "{family}{labels:?}: no _sum"
                );
            }
        }
        Ok(())
    }
}

/// A series' labels, borrowed from its samples.
type Labels<'a> = Vec<(&'a str, &'a str)>;

fn family_base(sample: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| sample.strip_suffix(s))
        .unwrap_or(sample)
}

fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    ensure!(
        first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "invalid metric name {name:?}"
    );
    Ok(())
}

fn check_label_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    ensure!(
        first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "invalid label name {name:?}"
    );
    Ok(())
}

/// A sample value: a Go-style float, `+Inf`, `-Inf` or `NaN`.
fn parse_float(s: &str) -> Result<f64> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => {
            ensure!(
                !s.is_empty()
                    && s.bytes().all(
                        |b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')
                    ),
                "invalid float {s:?}"
            );
            s.parse().with_context(|| format!("invalid float {s:?}"))
        }
    }
}

fn parse_sample(line: &str) -> Result<Sample> {
    let name_end = line.find(['{', ' ']).context("no value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut s = after;
        loop {
            if let Some(after) = s.strip_prefix('}') {
                s = after;
                break;
            }
            let eq = s.find('=').context("label without '='")?;
            let label = &s[..eq];
            check_label_name(label)?;
            let body = s[eq + 1..]
                .strip_prefix('"')
                .context("label value not quoted")?;
            let mut value = String::new();
            let mut chars = body.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => bail!("bad escape in label value: {other:?}"),
                    },
                    Some((_, c)) => value.push(c),
                    None => bail!("unterminated label value"),
                }
            };
            ensure!(
                labels.iter().all(|(n, _): &(String, String)| n != label),
                "duplicate label {label}"
            );
            labels.push((label.to_string(), value));
            s = &body[end + 1..];
            if let Some(after) = s.strip_prefix(',') {
                s = after;
            } else {
                ensure!(s.starts_with('}'), "expected ',' or '}}' after a label");
            }
        }
        rest = s;
    }
    let rest = rest
        .strip_prefix(' ')
        .context("no space before the value")?;
    let mut fields = rest.split(' ');
    let value = parse_float(fields.next().unwrap_or_default())?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .with_context(|| format!("invalid timestamp {ts:?}"))?;
    }
    ensure!(fields.next().is_none(), "trailing fields");
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Scrape and strictly parse the gateway's `/metrics`.
pub async fn scrape(gw: &Gateway) -> Result<Exposition> {
    let res = gw.admin_get("/metrics").await?;
    ensure!(res.status == 200, "/metrics answered {}", res.status);
    Exposition::parse(&res.body_text())
}

/// Wait (bounded) until the sample (as [`Gateway::metric`] names it, e.g.
/// `gleepost_gateway_auth_failures_total{reason="missing"}`) equals `expected`. Metrics move
/// right after the observable effect (a frame arrives before its delivery is counted), hence
/// the wait; a value that overshoots still fails once the limit passes.
pub async fn wait_metric(gw: &Gateway, sample: &str, expected: f64) -> Result<()> {
    crate::eventually(Duration::from_secs(10), sample, || async {
        let value = gw.metric(sample).await?;
        ensure!(
            value == expected,
            "{sample} is {value}, expected {expected}"
        );
        Ok(())
    })
    .await
}

/// Wait until `n` more of the node's self-probes have come back (everything published before
/// them, on Redis, has reached the node or is lost to it).
pub async fn probes_come_back(gw: &Gateway, n: u32) -> Result<()> {
    let probes = "gleepost_gateway_broker_probe_rtt_seconds_count";
    let before = gw.metric(probes).await?;
    crate::eventually(Duration::from_secs(30), "probes came back", || async {
        ensure!(gw.metric(probes).await? >= before + f64::from(n));
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_well_formed_page() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{reason=\"x\\\"y\"} 3\n\
                    # TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.7\nh_count 2\n";
        let e = Exposition::parse(text).unwrap();
        assert_eq!(e.get("a_total", &[("reason", "x\"y")]), Some(3.0));
        assert_eq!(e.get("h_count", &[]), Some(2.0));
    }

    #[test]
    fn rejects_malformed_pages() {
        for bad in [
            "a 1\n",                                      // no TYPE
            "# TYPE a gauge\na one\n",                    // not a float
            "# TYPE a gauge\na{l=x} 1\n",                 // unquoted label
            "# TYPE a gauge\na  1\n",                     // two spaces
            "# TYPE a gauge\n# TYPE a gauge\na 1\n",      // declared twice
            "# TYPE a gauge\na 1",                        // no final newline
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        ] {
            assert!(Exposition::parse(bad).is_err(), "{bad:?}");
        }
    }
}
