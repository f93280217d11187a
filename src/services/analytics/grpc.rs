//! `datalayer.analytics.v1.AnalyticsService`: the wire ↔ the domain, then
//! the store. Request parsing is in `grpc/parse.rs`.

mod parse;

use std::collections::BTreeMap;
use std::sync::Arc;

use super::model::{self, Filters, MetricConfig, Resolution};
use super::service::{Analytics, TrackError};
use crate::error::Error;
use crate::grpc::Ctx;
use crate::grpc::convert::timestamp_ms_out;
use crate::proto::datalayer::analytics::v1 as pb;
use crate::validate::{self, FieldViolation, Invalid};

pub struct Handler {
    analytics: Arc<Analytics>,
}

crate::grpc_service! {
    pb::analytics_service_server::{AnalyticsService, AnalyticsServiceServer} for Handler {
        unary Track => track(pb::TrackRequest) -> pb::TrackResponse;
        unary Query => query(pb::QueryRequest) -> pb::QueryResponse;
        unary Unique => unique(pb::UniqueRequest) -> pb::UniqueResponse;
        unary Top => top(pb::TopRequest) -> pb::TopResponse;
        unary ListMetrics => list_metrics(pb::ListMetricsRequest) -> pb::ListMetricsResponse;
    }
}

/// A read's metric, range and resolution, with the buckets it covers.
struct Read {
    metric: String,
    resolution: Resolution,
    starts: Vec<u64>,
}

fn point(start: u64, agg: &model::Agg) -> pb::Point {
    pb::Point {
        time: Some(timestamp_ms_out(start)),
        count: agg.count,
        sum: agg.sum,
        min: agg.min.unwrap_or(0.0),
        max: agg.max.unwrap_or(0.0),
    }
}

fn resolutions(config: &MetricConfig) -> Vec<pb::Resolution> {
    config
        .resolutions
        .iter()
        .map(|r| pb::Resolution {
            name: r.name.clone(),
            bucket_seconds: (r.bucket_ms / 1000) as i64,
            retention_seconds: (r.retention_ms / 1000) as i64,
        })
        .collect()
}

impl Handler {
    pub fn new(analytics: Arc<Analytics>) -> Self {
        Self { analytics }
    }

    /// The metric, range and resolution of a read, each bad one named.
    fn read(
        &self,
        metric: &str,
        from: Option<&prost_types::Timestamp>,
        to: Option<&prost_types::Timestamp>,
        resolution: &str,
    ) -> Result<Read, Invalid> {
        let (_, range) = validate::all((parse::metric(metric, "metric"), parse::range(from, to)))?;
        let s = self.analytics.settings();
        let config = s.metric(metric);
        let resolution = config
            .choose(resolution, range, parse::now_ms(), s.max_points)
            .map_err(|e| {
                let field = if resolution.is_empty() {
                    "from"
                } else {
                    "resolution"
                };
                FieldViolation::new(field, e)
            })?
            .clone();
        Ok(Read {
            metric: metric.to_owned(),
            starts: resolution.starts(range),
            resolution,
        })
    }

    async fn series(
        &self,
        ctx: &Ctx,
        read: &Read,
        filters: &Filters,
        group_by: &[String],
    ) -> Result<BTreeMap<model::GroupKey, Vec<model::Agg>>, Error> {
        let buckets = ctx
            .store(self.analytics.store().series(
                &ctx.tenant,
                &read.metric,
                &read.resolution,
                &read.starts,
            ))
            .await?;
        Ok(model::group(&buckets, filters, group_by))
    }

    async fn track(&self, ctx: Ctx, req: pb::TrackRequest) -> Result<pb::TrackResponse, Error> {
        let events = parse::events(self.analytics.settings(), &req.events)?;
        let accepted = events.len() as u32;
        let folded = ctx
            .store(async {
                match self.analytics.track(&ctx.tenant, events).await {
                    Ok(folded) => Ok(Ok(folded)),
                    Err(TrackError::Store(e)) => Err(e),
                    Err(TrackError::Full(metrics)) => Ok(Err(metrics)),
                }
            })
            .await?
            .map_err(|metrics| {
                Error::ResourceExhausted(format!(
                    "this tenant has {} metrics, the most analytics.max_metrics allows, so new metrics ({}) are refused; nothing was recorded. Metrics leave once their longest retention passes without events",
                    self.analytics.settings().max_metrics,
                    metrics.join(", ")
                ))
            })?;
        Ok(pb::TrackResponse {
            accepted,
            folded: folded as u32,
        })
    }

    async fn query(&self, ctx: Ctx, req: pb::QueryRequest) -> Result<pb::QueryResponse, Error> {
        let s = self.analytics.settings();
        let (read, filters, group_by) = validate::all((
            self.read(
                &req.metric,
                req.from.as_ref(),
                req.to.as_ref(),
                &req.resolution,
            ),
            parse::filters(s, &req.filters),
            parse::group_by(s, &req.group_by),
        ))?;
        let groups = self.series(&ctx, &read, &filters, &group_by).await?;
        Ok(pb::QueryResponse {
            resolution: read.resolution.name.clone(),
            series: groups
                .into_iter()
                .map(|(dimensions, aggs)| pb::Series {
                    dimensions: dimensions.into_iter().collect(),
                    points: read
                        .starts
                        .iter()
                        .zip(&aggs)
                        .map(|(start, agg)| point(*start, agg))
                        .collect(),
                })
                .collect(),
        })
    }

    async fn unique(&self, ctx: Ctx, req: pb::UniqueRequest) -> Result<pb::UniqueResponse, Error> {
        let read = self.read(
            &req.metric,
            req.from.as_ref(),
            req.to.as_ref(),
            &req.resolution,
        )?;
        let count = ctx
            .store(self.analytics.store().unique(
                &ctx.tenant,
                &read.metric,
                &read.resolution,
                &read.starts,
            ))
            .await?;
        Ok(pb::UniqueResponse {
            resolution: read.resolution.name,
            count,
        })
    }

    async fn top(&self, ctx: Ctx, req: pb::TopRequest) -> Result<pb::TopResponse, Error> {
        let top_size = self.analytics.settings().top_size;
        let k = match req.k as usize {
            0 => Ok(10.min(top_size)),
            k if k > top_size => Err(FieldViolation::new(
                "k",
                format!("must be at most {top_size} (analytics.top_size), got {k}"),
            )),
            k => Ok(k),
        };
        let (read, _, k) = validate::all((
            self.read(
                &req.metric,
                req.from.as_ref(),
                req.to.as_ref(),
                &req.resolution,
            ),
            parse::label(&req.dimension, "dimension"),
            k,
        ))?;
        let mut counts = ctx
            .store(self.analytics.store().top(
                &ctx.tenant,
                &read.metric,
                &req.dimension,
                &read.resolution,
                &read.starts,
            ))
            .await?;
        if counts.is_empty() {
            // No top list by that name: rank the dimension's series.
            let groups = self
                .series(
                    &ctx,
                    &read,
                    &Filters::default(),
                    std::slice::from_ref(&req.dimension),
                )
                .await?;
            counts = groups
                .into_iter()
                .filter_map(|(key, aggs)| {
                    let value = key.get(&req.dimension).filter(|v| !v.is_empty())?.clone();
                    Some((value, aggs.iter().map(|a| a.count).sum()))
                })
                .collect();
        }
        Ok(pb::TopResponse {
            resolution: read.resolution.name,
            entries: model::top_k(counts, k)
                .into_iter()
                .map(|(value, count)| pb::TopEntry { value, count })
                .collect(),
        })
    }

    async fn list_metrics(
        &self,
        ctx: Ctx,
        _req: pb::ListMetricsRequest,
    ) -> Result<pb::ListMetricsResponse, Error> {
        let metrics = ctx
            .store(self.analytics.store().metrics(&ctx.tenant))
            .await?;
        let s = self.analytics.settings();
        Ok(pb::ListMetricsResponse {
            metrics: metrics
                .into_iter()
                .map(|m| pb::Metric {
                    resolutions: resolutions(&s.metric(&m.name)),
                    name: m.name,
                    combinations: m.combinations,
                    folded_events: m.folded,
                    last_tracked: Some(timestamp_ms_out(m.last_ms)),
                })
                .collect(),
        })
    }
}
