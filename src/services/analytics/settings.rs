//! `analytics.*`: the resolutions metrics are kept at and the bounds that
//! keep memory bounded whatever callers send.

use std::{collections::BTreeMap, time::Duration};

use super::model::{MetricConfig, Resolution};
use crate::settings::{Problems, days, hours, join, mins, secs};

crate::section! {
    /// One resolution: buckets of `bucket`, each kept for `retention`.
    pub struct ResolutionSpec {
        /// The bucket's length; also the resolution's name (`1m`, `1h`).
        pub bucket: Duration = mins(1), range(secs(1), days(31));
        /// How long a bucket is kept after it ends.
        pub retention: Duration = hours(48), range(secs(1), days(1098));
    }
}

crate::section! {
    /// What one metric keeps, where it differs from the defaults.
    pub struct MetricSpec {
        /// Its resolutions (finest first); unset: `analytics.resolutions`.
        pub resolutions: Option<Vec<ResolutionSpec>> = None;
        /// Its most dimension combinations; unset: `analytics.max_combinations`.
        pub max_combinations: Option<u64> = None, range(1, 100_000);
    }
}

fn default_resolutions() -> Vec<ResolutionSpec> {
    [
        (mins(1), hours(48)),
        (hours(1), days(90)),
        (days(1), days(730)),
    ]
    .into_iter()
    .map(|(bucket, retention)| ResolutionSpec { bucket, retention })
    .collect()
}

crate::section! {
    /// Real-time analytics: resolutions and bounds.
    pub struct Settings {
        /// The resolutions every metric is kept at (finest first), e.g.
        /// `[{bucket = "1m", retention = "48h"}, {bucket = "1h", retention = "90d"}]`.
        pub resolutions: Vec<ResolutionSpec> = default_resolutions();
        /// Per-metric resolutions and combination caps, by metric name.
        pub metrics: BTreeMap<String, MetricSpec> = BTreeMap::new();
        /// Most events one `Track` carries.
        pub max_batch: usize = 1000, range(1, 100_000);
        /// Most metrics per tenant; a `Track` of a new one past it is
        /// RESOURCE_EXHAUSTED.
        pub max_metrics: usize = 1000, range(1, 100_000);
        /// Most distinct dimension combinations per metric; later ones are
        /// counted in the `__other__` series.
        pub max_combinations: u64 = 1000, range(1, 100_000);
        /// Most dimensions (and, separately, top labels) per event.
        pub max_dimensions: usize = 8, range(1, 32);
        /// Longest dimension value, top label value or `unique_id`, in bytes.
        pub max_value_bytes: usize = 256, range(1, 4096);
        /// Values a top list keeps per bucket (and the largest `k`).
        pub top_size: usize = 100, range(1, 10_000);
        /// Most points (buckets) one query reads.
        pub max_points: usize = 1500, range(1, 100_000);
        /// Oldest explicit event time accepted, before now.
        pub max_event_age: Duration = hours(1), range(secs(1), days(31));
        /// Furthest explicit event time accepted, after now.
        pub max_clock_skew: Duration = mins(1), range(secs(0), hours(1));
        /// How often rate-limit analytics flush what they counted in memory
        /// (the most a crash loses).
        pub flush_interval: Duration = secs(1), range(crate::settings::ms(100), mins(1));
    }
    check = Settings::rules;
}

impl Settings {
    fn rules(&self, path: &str, problems: &mut Problems) {
        check_resolutions(&self.resolutions, &join(path, "resolutions"), problems);
        for (name, spec) in &self.metrics {
            let at = join(&join(path, "metrics"), name);
            if crate::validate::name(name, "name").is_err() {
                problems.push(&at, "metric names are 1 to 128 bytes of [A-Za-z0-9_.:-]");
            }
            if let Some(resolutions) = &spec.resolutions {
                check_resolutions(resolutions, &join(&at, "resolutions"), problems);
            }
        }
    }

    /// What `metric` keeps (settings were validated at load).
    pub fn metric(&self, metric: &str) -> MetricConfig {
        let spec = self.metrics.get(metric);
        let resolutions = spec
            .and_then(|s| s.resolutions.as_ref())
            .unwrap_or(&self.resolutions);
        MetricConfig {
            resolutions: resolutions
                .iter()
                .map(|r| Resolution::new(r.bucket, r.retention))
                .collect(),
            max_combinations: spec
                .and_then(|s| s.max_combinations)
                .unwrap_or(self.max_combinations),
            top_size: self.top_size,
        }
    }
}

/// One to eight resolutions, buckets growing, each a whole number of
/// seconds (a bucket's name is its length).
fn check_resolutions(list: &[ResolutionSpec], path: &str, problems: &mut Problems) {
    if list.is_empty() || list.len() > 8 {
        problems.push(path, "must list 1 to 8 resolutions");
    }
    for pair in list.windows(2) {
        if pair[1].bucket <= pair[0].bucket {
            problems.push(
                path,
                "buckets must grow, finest first, e.g. [{bucket = \"1m\", retention = \"48h\"}, {bucket = \"1h\", retention = \"90d\"}]",
            );
            break;
        }
    }
    for (i, r) in list.iter().enumerate() {
        if r.bucket.subsec_nanos() != 0 {
            problems.push(
                format!("{path}[{i}].bucket"),
                "must be whole seconds, e.g. `1m`",
            );
        }
    }
}
