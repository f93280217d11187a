//! The analytics domain: resolutions and buckets, dimension combinations,
//! what an event adds, how a batch is aggregated before it is written, and
//! how a read's buckets are filtered and grouped. No proto, no Redis.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The series (and dimension value) events fold into once a metric holds
/// its most combinations.
pub const OTHER: &str = "__other__";

/// Buckets of one length, each kept `retention` after it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The bucket's length as settings write it: `1m`, `1h`, `1d`.
    pub name: String,
    pub bucket_ms: u64,
    pub retention_ms: u64,
}

impl Resolution {
    pub fn new(bucket: Duration, retention: Duration) -> Self {
        Self {
            name: crate::validate::duration(bucket),
            bucket_ms: (bucket.as_millis() as u64).max(1),
            retention_ms: retention.as_millis() as u64,
        }
    }

    pub fn start_of(&self, ms: u64) -> u64 {
        ms - ms % self.bucket_ms
    }

    /// When the bucket starting at `start` is dropped.
    pub fn expires_at(&self, start: u64) -> u64 {
        start + self.bucket_ms + self.retention_ms
    }

    /// The starts of the buckets that overlap `range`.
    pub fn starts(&self, range: Range) -> Vec<u64> {
        let first = self.start_of(range.from_ms);
        let last = self.start_of(range.to_ms);
        (0..=(last - first) / self.bucket_ms)
            .map(|i| first + i * self.bucket_ms)
            .collect()
    }

    fn points(&self, range: Range) -> u64 {
        (self.start_of(range.to_ms) - self.start_of(range.from_ms)) / self.bucket_ms + 1
    }
}

/// What one metric keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricConfig {
    /// Finest first.
    pub resolutions: Vec<Resolution>,
    pub max_combinations: u64,
    pub top_size: usize,
}

impl MetricConfig {
    /// How long the metric's bookkeeping (its combinations, its folded
    /// count) outlives its last event: its longest bucket life.
    pub fn keep_ms(&self) -> u64 {
        self.resolutions
            .iter()
            .map(|r| r.bucket_ms + r.retention_ms)
            .max()
            .unwrap_or(0)
    }

    /// The resolution a read uses: the one named, or else the finest still
    /// kept at `range.from_ms` that answers in at most `max_points` points
    /// (the coarsest that does, when none is kept that long).
    pub fn choose(
        &self,
        name: &str,
        range: Range,
        now_ms: u64,
        max_points: usize,
    ) -> Result<&Resolution, String> {
        let fits = |r: &Resolution| r.points(range) <= max_points as u64;
        if !name.is_empty() {
            let r = self
                .resolutions
                .iter()
                .find(|r| r.name == name)
                .ok_or_else(|| format!("must be one of {}, or empty", self.names()))?;
            return if fits(r) {
                Ok(r)
            } else {
                Err(format!(
                    "`{name}` would answer {} points over this range, more than analytics.max_points ({max_points}); choose a coarser one or leave it empty",
                    r.points(range)
                ))
            };
        }
        let start_kept = |r: &Resolution| r.expires_at(r.start_of(range.from_ms)) > now_ms;
        self.resolutions
            .iter()
            .find(|r| fits(r) && start_kept(r))
            .or_else(|| self.resolutions.iter().rev().find(|r| fits(r)))
            .ok_or_else(|| {
                format!(
                    "the range spans more than analytics.max_points ({max_points}) buckets of the coarsest resolution"
                )
            })
    }

    fn names(&self) -> String {
        let names: Vec<String> = self
            .resolutions
            .iter()
            .map(|r| format!("`{}`", r.name))
            .collect();
        names.join(", ")
    }
}

/// A read's range, in ms since the epoch, `from_ms <= to_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub from_ms: u64,
    pub to_ms: u64,
}

/// One combination of dimension values: the sorted `name=value` pairs
/// joined with control characters that validated names and values never
/// hold, so two different combinations never share a spelling.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Combo(String);

const PAIR: char = '\u{1f}';
const EQ: char = '\u{1e}';

impl Combo {
    pub fn of(dimensions: &BTreeMap<String, String>) -> Self {
        let mut s = String::new();
        for (i, (name, value)) in dimensions.iter().enumerate() {
            if i > 0 {
                s.push(PAIR);
            }
            s.push_str(name);
            s.push(EQ);
            s.push_str(value);
        }
        Self(s)
    }

    pub fn other() -> Self {
        Self(OTHER.to_owned())
    }

    /// As a store kept it.
    pub fn stored(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_other(&self) -> bool {
        self.0 == OTHER
    }

    /// The combination's value of `dimension`: `__other__` for folded
    /// events, `None` when the combination lacks it.
    pub fn get(&self, dimension: &str) -> Option<&str> {
        if self.is_other() {
            return Some(OTHER);
        }
        self.0.split(PAIR).find_map(|pair| {
            let (name, value) = pair.split_once(EQ)?;
            (name == dimension).then_some(value)
        })
    }
}

/// What a bucket holds per combination.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Agg {
    pub count: i64,
    pub sum: f64,
    /// Of samples only: counts add none.
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Agg {
    pub fn add(&mut self, other: &Agg) {
        self.count = self.count.saturating_add(other.count);
        self.sum += other.sum;
        self.min = pick(self.min, other.min, f64::min);
        self.max = pick(self.max, other.max, f64::max);
    }
}

fn pick(a: Option<f64>, b: Option<f64>, f: fn(f64, f64) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(f(a, b)),
        (a, b) => a.or(b),
    }
}

/// What an event adds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    Count(i64),
    Sample(f64),
}

impl Amount {
    pub fn agg(self) -> Agg {
        match self {
            Amount::Count(n) => Agg {
                count: n,
                sum: n as f64,
                min: None,
                max: None,
            },
            Amount::Sample(v) => Agg {
                count: 1,
                sum: v,
                min: Some(v),
                max: Some(v),
            },
        }
    }

    /// What it adds to a top list.
    pub fn weight(self) -> i64 {
        match self {
            Amount::Count(n) => n,
            Amount::Sample(_) => 1,
        }
    }
}

/// A validated event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub metric: String,
    pub dimensions: BTreeMap<String, String>,
    pub amount: Amount,
    /// `None`: the store's clock.
    pub at_ms: Option<u64>,
    pub unique_id: Option<String>,
    pub top: BTreeMap<String, String>,
}

/// The events of one Track at one time, aggregated: explicit times are
/// merged by their finest bucket (every coarser bucket contains it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slice {
    /// `None`: the store's clock.
    pub at_ms: Option<u64>,
    /// Per combination: what it adds, and from how many events (what is
    /// reported as folded when it goes to `__other__`).
    pub series: BTreeMap<Combo, (Agg, u32)>,
    pub uniques: BTreeSet<String>,
    /// (label, value) → weight.
    pub tops: BTreeMap<(String, String), i64>,
}

/// What one Track writes to one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricBatch {
    pub metric: String,
    pub config: MetricConfig,
    pub slices: Vec<Slice>,
    pub events: u32,
}

/// A metric's config, slices by time, and event count, while grouping.
type Pending = (MetricConfig, BTreeMap<Option<u64>, Slice>, u32);

/// Groups `events` by metric and time, merging what lands in the same
/// bucket, so a store writes each (bucket, combination) once per call.
pub fn batches(events: Vec<Event>, config: impl Fn(&str) -> MetricConfig) -> Vec<MetricBatch> {
    let mut by_metric: BTreeMap<String, Pending> = BTreeMap::new();
    for event in events {
        let (config, slices, n) = by_metric
            .entry(event.metric.clone())
            .or_insert_with(|| (config(&event.metric), BTreeMap::new(), 0));
        *n += 1;
        let finest = &config.resolutions[0];
        let at = event.at_ms.map(|ms| finest.start_of(ms));
        let slice = slices.entry(at).or_insert_with(|| Slice {
            at_ms: at,
            ..Slice::default()
        });
        let (agg, n) = slice
            .series
            .entry(Combo::of(&event.dimensions))
            .or_default();
        agg.add(&event.amount.agg());
        *n += 1;
        if let Some(id) = event.unique_id {
            slice.uniques.insert(id);
        }
        for (label, value) in event.top {
            *slice.tops.entry((label, value)).or_default() += event.amount.weight();
        }
    }
    by_metric
        .into_iter()
        .map(|(metric, (config, slices, events))| MetricBatch {
            metric,
            config,
            slices: slices.into_values().collect(),
            events,
        })
        .collect()
}

/// Which series a read keeps: every filter's dimension has one of its
/// values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters(pub Vec<(String, BTreeSet<String>)>);

impl Filters {
    pub fn matches(&self, combo: &Combo) -> bool {
        self.0
            .iter()
            .all(|(dim, values)| combo.get(dim).is_some_and(|v| values.contains(v)))
    }
}

/// A group's values of the `group_by` dimensions (empty where a series
/// lacks one).
pub type GroupKey = BTreeMap<String, String>;

/// Sums each bucket's matching series by `group_by`: one row of points
/// per group, a point per bucket, zeros where nothing was tracked. With no
/// `group_by` there is always one group, even when nothing matched.
pub fn group(
    buckets: &[Vec<(Combo, Agg)>],
    filters: &Filters,
    group_by: &[String],
) -> BTreeMap<GroupKey, Vec<Agg>> {
    let mut groups: BTreeMap<GroupKey, Vec<Agg>> = BTreeMap::new();
    if group_by.is_empty() {
        groups.insert(GroupKey::new(), vec![Agg::default(); buckets.len()]);
    }
    for (i, bucket) in buckets.iter().enumerate() {
        for (combo, agg) in bucket {
            if !filters.matches(combo) {
                continue;
            }
            let key: GroupKey = group_by
                .iter()
                .map(|d| (d.clone(), combo.get(d).unwrap_or_default().to_owned()))
                .collect();
            groups
                .entry(key)
                .or_insert_with(|| vec![Agg::default(); buckets.len()])[i]
                .add(agg);
        }
    }
    groups
}

/// The `k` heaviest of `counts`, heaviest first, ties by value.
pub fn top_k(counts: BTreeMap<String, i64>, k: usize) -> Vec<(String, i64)> {
    let mut all: Vec<(String, i64)> = counts.into_iter().filter(|(_, n)| *n > 0).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

#[cfg(test)]
mod tests;
