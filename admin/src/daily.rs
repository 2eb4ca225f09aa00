//! The last day of the request log summarised per vault, for the overview: requests per 5-minute
//! bucket over the hour and per hour over the day by status class; per service requests, errors,
//! status split and p50 / p99 latency; error codes; agents active; hosts refused. Computed by the
//! log copy's refresher thread ([`crate::logcache`]) when rows arrived, so the overview page only
//! renders. Pure: no I/O.

use std::collections::{BTreeMap, HashMap};

use airlock_core::requestlog::{self, HostTried, Row};

/// Counts per time bucket and status class (2xx/3xx, 4xx, 5xx or none).
pub(crate) type Buckets = Vec<[u64; 3]>;

const HOUR_MS: u64 = 3_600_000;
pub(crate) const DAY_MS: u64 = 24 * HOUR_MS;

/// The summary as of `at_ms`.
#[derive(Debug, Default)]
pub(crate) struct Day {
    pub(crate) vaults: BTreeMap<String, VaultDay>,
    /// Hosts refused for want of a service over the day, every vault.
    pub(crate) refused: Vec<HostTried>,
    /// Per agent (as the log names it), every vault: its requests in the day, and when it was
    /// last seen in the whole log copy (Unix ms).
    pub(crate) seen: HashMap<String, (u64, u64)>,
}

/// One vault's day; names are borrowed from the rows while counting (`K = &str`), owned after.
#[derive(Debug, Default)]
pub(crate) struct VaultDay<K = String> {
    pub(crate) requests: u64,
    /// 12 buckets of 5 minutes, oldest first.
    pub(crate) hour: Buckets,
    /// 24 buckets of an hour, oldest first.
    pub(crate) day: Buckets,
    pub(crate) services: BTreeMap<K, ServiceDay>,
    pub(crate) errors: BTreeMap<K, u64>,
    /// Agent → (requests in the last hour, in the last day).
    pub(crate) agents: BTreeMap<K, (u64, u64)>,
}

/// The same map with owned keys.
fn own<V>(m: BTreeMap<&str, V>) -> BTreeMap<String, V> {
    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

impl VaultDay<&str> {
    fn owned(self) -> VaultDay {
        VaultDay {
            requests: self.requests,
            hour: self.hour,
            day: self.day,
            services: own(self.services),
            errors: own(self.errors),
            agents: own(self.agents),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct ServiceDay {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    /// Requests by status class.
    pub(crate) classes: [u64; 3],
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    latencies_us: Vec<u64>,
}

fn class(r: &Row) -> usize {
    match r.status {
        200..=399 => 0,
        400..=499 => 1,
        _ => 2,
    }
}

/// Summarises the rows of `rows` (oldest first) younger than a day at `now_ms`.
pub(crate) fn summarise(rows: &[(u64, Row)], now_ms: u64) -> Day {
    let mut vaults: BTreeMap<&str, VaultDay<&str>> = BTreeMap::new();
    let mut seen: HashMap<&str, (u64, u64)> = HashMap::new();
    for (_, r) in rows {
        let age = now_ms.saturating_sub(r.at_ms);
        if let Some(a) = &r.agent {
            let e = seen.entry(a.as_str()).or_default();
            e.0 += u64::from(age < DAY_MS);
            e.1 = e.1.max(r.at_ms);
        }
        if age >= DAY_MS {
            continue;
        }
        let v = vaults.entry(r.vault.as_str()).or_default();
        if v.hour.is_empty() {
            (v.hour, v.day) = (vec![[0; 3]; 12], vec![[0; 3]; 24]);
        }
        v.requests += 1;
        let c = class(r);
        if let Some(b) = v
            .day
            .get_mut(23usize.saturating_sub((age / HOUR_MS) as usize))
        {
            b[c] += 1;
        }
        let in_hour = age < HOUR_MS;
        if in_hour
            && let Some(b) = v
                .hour
                .get_mut(11usize.saturating_sub((age / 300_000) as usize))
        {
            b[c] += 1;
        }
        if let Some(s) = &r.service {
            let sd = v.services.entry(s.as_str()).or_default();
            sd.requests += 1;
            sd.errors += u64::from(r.error.is_some());
            sd.classes[c] += 1;
            sd.latencies_us.push(r.latency_us);
        }
        if let Some(e) = &r.error {
            *v.errors.entry(e.as_str()).or_default() += 1;
        }
        if let Some(a) = &r.agent {
            let e = v.agents.entry(a.as_str()).or_default();
            e.0 += u64::from(in_hour);
            e.1 += 1;
        }
    }
    for v in vaults.values_mut() {
        for s in v.services.values_mut() {
            (s.p50_us, s.p99_us) = percentiles(&mut s.latencies_us);
            s.latencies_us = Vec::new();
        }
    }
    let start = rows.partition_point(|(_, r)| r.at_ms < now_ms.saturating_sub(DAY_MS));
    Day {
        vaults: vaults
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.owned()))
            .collect(),
        refused: requestlog::hosts_tried(&rows[start..]),
        seen: seen.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}

/// The p50 and p99 of `v` (reordered in place; linear time, no sort).
fn percentiles(v: &mut [u64]) -> (u64, u64) {
    if v.is_empty() {
        return (0, 0);
    }
    let last = v.len() - 1;
    let (i50, i99) = (last / 2, (last as f64 * 0.99).round() as usize);
    let p99 = *v.select_nth_unstable(i99).1;
    let p50 = if i50 < i99 {
        *v[..i99].select_nth_unstable(i50).1
    } else {
        p99
    };
    (p50, p99)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_without_sorting() {
        let mut v: Vec<u64> = (1..=1000).rev().collect();
        assert_eq!(percentiles(&mut v), (500, 990));
        assert_eq!(percentiles(&mut [7]), (7, 7));
        assert_eq!(percentiles(&mut []), (0, 0));
    }

    #[test]
    fn a_day_in_buckets() {
        let now = 10 * DAY_MS;
        let row = |age_ms: u64, status: u16, service: &str| {
            let r = Row {
                at_ms: now - age_ms,
                vault: "v".into(),
                status,
                service: Some(service.into()),
                agent: Some("bot".into()),
                latency_us: age_ms / 1000,
                ..Row::default()
            };
            (0, r)
        };
        let rows = [
            row(DAY_MS + 1, 200, "a"),
            row(2 * HOUR_MS, 403, "a"),
            row(10 * 60_000, 200, "a"),
            row(1000, 502, "b"),
        ];
        let d = summarise(&rows, now);
        let v = &d.vaults["v"];
        assert_eq!(v.requests, 3, "the day-old row is left out");
        assert_eq!(v.day[21], [0, 1, 0]);
        assert_eq!(v.day[23], [1, 0, 1]);
        assert_eq!(v.hour[9], [1, 0, 0]);
        assert_eq!(v.hour[11], [0, 0, 1]);
        assert_eq!(v.services["a"].classes, [1, 1, 0]);
        assert_eq!(v.agents["bot"], (2, 3));
    }
}
